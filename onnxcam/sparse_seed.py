"""Seeds that are zero but at a few entries.

A detection's target is one prediction's score: its seed d score / d output is one column of a
YOLOv8 ``(84, 8400)`` output (one entry for a class score, a few more for D-RISE's box terms).
Spelled out densely it is 2.8 MB per row, which every step then scans (which Concat parts does it
reach?) and copies (the part fed to the gradient graph). A ``SparseSeed`` holds only the entries:
it is narrowed by index (``onnxcam.graph.seed_parts``) and written densely once, for the part its
gradient graph is fed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxcam.errors import TargetError


@dataclass(frozen=True)
class SparseSeed:
    """A seed of ``shape`` that is zero but for ``values (M,)`` at ``index`` (one ``(M,)`` int array
    per axis); entries at the same index add up. ``np.asarray(seed)`` gives the dense array."""

    shape: tuple[int, ...]
    index: tuple[np.ndarray, ...]
    values: np.ndarray
    dtype: np.dtype[Any] = np.dtype(np.float32)

    @classmethod
    def of(cls, shape: Sequence[int], index: Sequence[Sequence[int] | np.ndarray], values: Sequence[float] | np.ndarray,
           dtype: Any = np.float32) -> SparseSeed:
        """A seed from entry coordinates (one sequence per axis) and their values."""
        shape = tuple(int(d) for d in shape)
        idx = tuple(np.asarray(i, dtype=np.int64).reshape(-1) for i in index)
        vals = np.asarray(values).reshape(-1)
        if len(idx) != len(shape) or any(i.shape != vals.shape for i in idx):
            raise TargetError(f"a seed of shape {shape} needs {len(shape)} index arrays (one per axis) of "
                              f"{vals.size} entries each, one per value; got {[len(i) for i in idx]}")
        for axis, i in enumerate(idx):
            if i.size and (int(i.min()) < 0 or int(i.max()) >= shape[axis]):
                raise TargetError(f"seed index out of range along axis {axis} of shape {shape}: indices "
                                  f"{int(i.min())}..{int(i.max())}; pass positions within the output's own shape")
        return cls(shape, idx, vals, np.dtype(dtype))

    def dense(self) -> np.ndarray:
        """The seed written out, ``shape`` in ``dtype``."""
        out = np.zeros(self.shape, dtype=self.dtype)
        self.write(out)
        return out

    def write(self, out: np.ndarray) -> None:
        """Add the entries into ``out`` (``shape``, zeros where the caller wants the seed alone)."""
        # Entry by entry, in float32 like a dense seed built with ``+=``: the same bits.
        np.add.at(out, self.index, self.values.astype(out.dtype))

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        d = self.dense()
        return d if dtype is None else d.astype(dtype)

    def astype(self, dtype: Any) -> SparseSeed:
        return SparseSeed(self.shape, self.index, self.values, np.dtype(dtype))

    def reached(self, axis: int) -> np.ndarray:
        """Positions along ``axis`` that hold a non-zero entry (NaN included: it must reach the
        gradient check)."""
        return self.index[axis][self.values != 0]

    def sliced(self, axis: int, lo: int, hi: int) -> SparseSeed:
        """The seed on ``lo:hi`` along ``axis`` (a Concat part's slice)."""
        keep = (self.index[axis] >= lo) & (self.index[axis] < hi)
        idx = tuple(i[keep] - (lo if a == axis else 0) for a, i in enumerate(self.index))
        shape = self.shape[:axis] + (hi - lo,) + self.shape[axis + 1:]
        return SparseSeed(shape, idx, self.values[keep], self.dtype)

    def batched(self) -> SparseSeed:
        """The seed as a batch of one row: a leading axis of 1."""
        return SparseSeed((1,) + self.shape, (np.zeros_like(self.values, dtype=np.int64),) + self.index,
                          self.values, self.dtype)

    def __add__(self, other: SparseSeed) -> SparseSeed:
        if not isinstance(other, SparseSeed) or other.shape != self.shape:
            return NotImplemented
        return SparseSeed(self.shape, tuple(np.concatenate([a, b]) for a, b in zip(self.index, other.index)),
                          np.concatenate([self.values, other.values]), self.dtype)


Seed = np.ndarray | SparseSeed


def add_seeds(a: Seed, b: Seed) -> Seed:
    """``a + b`` for seeds dense or sparse (sparse stays sparse only when both are)."""
    if isinstance(a, SparseSeed) and isinstance(b, SparseSeed):
        return a + b
    return np.asarray(a) + np.asarray(b)


def stack_seeds(rows: Sequence[Seed], axis_zero_is_batch: bool = False) -> np.ndarray:
    """Rows of seeds as one dense batch. ``axis_zero_is_batch``: each row already has a leading
    batch axis (``(k, ...)``) and rows are concatenated along it; else each row is one image's seed
    and gets one."""
    first = rows[0]
    shape = tuple(first.shape[1:]) if axis_zero_is_batch else tuple(first.shape)
    counts = [int(r.shape[0]) if axis_zero_is_batch else 1 for r in rows]
    if not any(isinstance(r, SparseSeed) for r in rows):
        dense = [np.asarray(r) for r in rows]
        if axis_zero_is_batch:
            return dense[0] if len(dense) == 1 else np.concatenate(dense)
        return np.stack(dense)
    dtype = np.result_type(*(r.dtype for r in rows))
    out = np.zeros((sum(counts),) + shape, dtype=dtype)
    start = 0
    for r, k in zip(rows, counts):
        view = out[start:start + k] if axis_zero_is_batch else out[start]
        if isinstance(r, SparseSeed):
            r.write(view)
        else:
            view[...] = r
        start += k
    return out


__all__ = ["Seed", "SparseSeed", "add_seeds", "stack_seeds"]
