"""The parts of a Concat-made output: where a seed reaches only some of them, those are seeded instead.

A YOLOv8 export ends in ``Concat([boxes (N, 4, A), sigmoid(classes) (N, K, A)], axis=1)``; a class
score's seed is zero on the box rows, yet a gradient graph seeded at the output differentiates the
box decoder (the DFL softmax over every anchor) too. Seeding the Concat's inputs that the seed
touches, each with its slice of the seed, gives the same gradients (a Concat's gradient is the
slice) through a graph that holds only the branches the seed reaches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from onnxcam.graph.shapes import TensorInfo
from onnxcam.sparse_seed import Seed, SparseSeed, add_seeds, stack_seeds


@dataclass(frozen=True)
class ConcatParts:
    """``output`` = Concat(``names``) along ``axis``; part ``i`` covers ``bounds[i]:bounds[i + 1]``."""

    output: str
    axis: int
    names: tuple[str, ...]
    bounds: tuple[int, ...]

    def reached(self, seed: Seed) -> tuple[int, ...]:
        """Indices of the parts where ``seed`` (the output's shape) has a non-zero entry."""
        if isinstance(seed, SparseSeed):
            hit = np.unique(np.searchsorted(self.bounds, seed.reached(self.axis), side="right") - 1)
            return tuple(int(i) for i in hit)
        # One pass: which positions along the axis hold a non-zero (NaN counts: it must reach the
        # gradient check), then which parts those fall in.
        others = tuple(a for a in range(seed.ndim) if a != self.axis)
        along = np.any(seed != 0, axis=others) if others else seed != 0
        return tuple(i for i in range(len(self.names)) if along[self.bounds[i]:self.bounds[i + 1]].any())

    def part(self, seed: Seed, i: int) -> Seed:
        """Part ``i``'s slice of ``seed``, a view (what is fed to onnxruntime is made contiguous there)."""
        if isinstance(seed, SparseSeed):
            return seed.sliced(self.axis, self.bounds[i], self.bounds[i + 1])
        index = [slice(None)] * seed.ndim
        index[self.axis] = slice(self.bounds[i], self.bounds[i + 1])
        return seed[tuple(index)]


def concat_parts(graph: onnx.GraphProto, output: str, infos: Mapping[str, TensorInfo]) -> ConcatParts | None:
    """How ``output`` is concatenated from computed tensors of known extent, or None (not a Concat, a
    part repeated or constant, an unknown extent along the axis, the batch axis)."""
    producers = {o: node for node in graph.node for o in node.output}
    producer = producers.get(output)
    if producer is None or producer.op_type != "Concat" or len(set(producer.input)) != len(producer.input):
        return None
    # Every part computed by a node: a constant part (or a graph input) has no graph to seed.
    if not all(name in producers and producers[name].op_type != "Constant" for name in producer.input):
        return None
    info = infos.get(output)
    if info is None or info.shape is None:
        return None
    axis = next((a.i for a in producer.attribute if a.name == "axis"), None)
    if axis is None:
        return None
    axis = axis + len(info.shape) if axis < 0 else axis
    bounds = [0]
    for name in producer.input:
        part = infos.get(name)
        if part is None or part.shape is None or len(part.shape) != len(info.shape):
            return None
        extent = part.shape[axis]
        if not isinstance(extent, int):
            return None
        bounds.append(bounds[-1] + extent)
    if axis == 0:  # the batch: rows are not parts
        return None
    return ConcatParts(output, axis, tuple(producer.input), tuple(bounds))


def narrow_seeds(seeds: Mapping[str, Seed],
                 parts: Mapping[str, ConcatParts | None]) -> dict[str, Seed] | None:
    """Seeds by tensor name with each Concat-made output's seed moved to the inputs it reaches, or
    None where none narrows (every part reached, or no output a Concat)."""
    out: dict[str, Seed] = {}
    narrowed = False
    for name, seed in seeds.items():
        p = parts.get(name)
        if p is None:
            out[name] = add_seeds(out[name], seed) if name in out else seed
            continue
        reached = p.reached(seed) or (0,)  # an all-zero seed: any one part gives the zero gradients
        narrowed = narrowed or len(reached) < len(p.names)
        for i in reached:
            piece = p.part(seed, i)
            out[p.names[i]] = add_seeds(out[p.names[i]], piece) if p.names[i] in out else piece
    return out if narrowed else None


def narrow_fully(seeds: Mapping[str, Seed],
                 parts_of: Callable[[str], ConcatParts | None]) -> dict[str, Seed] | None:
    """``narrow_seeds`` repeated while a reached part is a Concat again (after ``hoist_concats``, a
    YOLOv8 Sigmoid's output is a Concat of per-level parts), or None where nothing narrows."""
    narrowed: dict[str, Seed] | None = None
    current = dict(seeds)
    for _ in range(8):
        parts = {name: parts_of(name) for name in current}
        step = narrow_seeds(current, parts) if any(p is not None for p in parts.values()) else None
        if step is None:
            break
        narrowed = current = step
    return narrowed


def narrow_rows(seeds: Mapping[str, np.ndarray | Sequence[Seed]],
                parts_of: Callable[[str], ConcatParts | None]) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """The rows of a batch of ``seeds`` (each ``(N, ...)``, or a list of its ``N`` rows) grouped by the
    parts they reach, each group with its rows' narrowed seeds as batches: ``[(row indices, seeds by
    tensor name)]``. Narrowing the batch as a whole seeds the union of what its rows reach (a stride-8
    and a stride-32 detection side by side would both run every level's decoder); per group each row
    runs only its own. One group (every row reaching the same parts, or nothing to narrow) gives the
    whole batch back in one. Rows may be ``SparseSeed``s: the batches come back dense."""
    total = len(next(iter(seeds.values())))

    def whole() -> dict[str, np.ndarray]:
        return {name: v if isinstance(v, np.ndarray) else stack_seeds(v) for name, v in seeds.items()}

    def one(v: Seed) -> Seed:  # a row as a batch of one
        return v.batched() if isinstance(v, SparseSeed) else v[None]

    if not any(parts_of(name) is not None for name in seeds):
        return [(np.arange(total), whole())]
    groups: dict[tuple[str, ...], list[tuple[int, dict[str, Seed]]]] = {}
    for i in range(total):
        row = {name: one(v[i]) for name, v in seeds.items()}
        got = narrow_fully(row, parts_of) or row
        groups.setdefault(tuple(sorted(got)), []).append((i, got))
    if list(groups) == [tuple(sorted(seeds))]:  # nothing narrows: the batch as it came
        return [(np.arange(total), whole())]
    return [(np.array([i for i, _ in members]),
             {name: stack_seeds([m[name] for _, m in members], axis_zero_is_batch=True) for name in members[0][1]})
            for members in groups.values()]


__all__ = ["ConcatParts", "concat_parts", "narrow_fully", "narrow_rows", "narrow_seeds"]
