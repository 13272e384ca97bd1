"""What a CAM explains: a differentiable scalar per image, computed from the model's outputs.

A ``Target`` reads one image's outputs (all of them, each without its batch axis) and gives its
``score`` and its ``seeds``: ``{output index: d score / d output}``. Gradient methods seed the ONNX
gradient graph with those seeds evaluated at the outputs the body run already produced, so any
target - a logit, a softmax probability, a masked segmentation sum, a cosine to a reference
embedding, a detection's box and score together - costs one gradient run, with no extra nodes in
the graph.

Most targets read a single output: they derive from ``OutputTarget`` and implement the one-output
hooks (``score_output``, ``output_gradient``). Which target an image gets when the user names none
(top-1 class, ...) is the ``Task``'s business (``onnxcam.tasks``), not the target's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from onnxcam.errors import TargetError
from onnxcam.sparse_seed import Seed, SparseSeed, stack_seeds


class Target:
    """A scalar per image from the model's outputs, and its gradient w.r.t. them.

    Subclass it for a target that reads several outputs (say boxes and scores): implement ``score``
    and ``seeds``; ``reads`` names the outputs it depends on; ``validate`` checks the per-image
    output shapes before any work. ``scores`` scores many rows at once (re-run methods score
    thousands); override it when a vectorised form exists.
    """

    def reads(self, n_outputs: int) -> tuple[int, ...]:
        """Indices of the model outputs the score depends on (all of them unless overridden)."""
        return tuple(range(n_outputs))

    def validate(self, shapes: Sequence[tuple[int, ...]]) -> None:
        """Raise ``TargetError`` if the target does not fit the outputs' per-image shapes (no batch axis)."""

    def score(self, outputs: Sequence[np.ndarray]) -> float:
        """The scalar explained, from one image's outputs."""
        raise NotImplementedError

    def seeds(self, outputs: Sequence[np.ndarray]) -> dict[int, np.ndarray]:
        """``{output index: d score / d output}`` for one image, each the shape of that output."""
        raise NotImplementedError

    def sparse_seeds(self, outputs: Sequence[np.ndarray]) -> dict[int, SparseSeed] | None:
        """``seeds`` as ``SparseSeed``s (their non-zero entries only), or None: use ``seeds``. Worth
        overriding where a seed touches a few entries of a large output (a detection's one
        prediction): the gradient engine then never writes out the rest of it."""
        return None

    def scores(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        """``(M,)`` scores of ``M`` rows: ``outputs[k]`` is ``(M, ...)`` for every output ``k``."""
        m = int(outputs[0].shape[0]) if outputs else 0
        return np.array([self.score([o[j] for o in outputs]) for j in range(m)], dtype=np.float32)

    def describe(self) -> str:
        return type(self).__name__


class OutputTarget(Target):
    """A target that reads one model output, ``output_index`` (0 = the first).

    Subclasses implement ``score_output`` and ``output_gradient`` on that output alone, optionally
    ``validate_output`` and a vectorised ``scores_output``.
    """

    output_index: int = 0

    def reads(self, n_outputs: int) -> tuple[int, ...]:
        return (self.output_index,)

    def validate(self, shapes: Sequence[tuple[int, ...]]) -> None:
        k = self.output_index
        if not 0 <= k < len(shapes):
            raise TargetError(
                f"{self.describe()} reads model output #{k} but the model has {len(shapes)} output(s): "
                f"pass output_index between 0 and {len(shapes) - 1}"
            )
        self.validate_output(tuple(shapes[k]))

    def validate_output(self, shape: tuple[int, ...]) -> None:
        """Raise ``TargetError`` if the target does not fit its output's per-image shape."""

    def score_output(self, output: np.ndarray) -> float:
        raise NotImplementedError

    def output_gradient(self, output: np.ndarray) -> np.ndarray:
        """d score / d output, the same shape as ``output``."""
        raise NotImplementedError

    def scores_output(self, rows: np.ndarray) -> np.ndarray:
        """``(M,)`` scores of rows ``(M, ...)`` of the output."""
        return np.array([self.score_output(o) for o in rows], dtype=np.float32)

    def score(self, outputs: Sequence[np.ndarray]) -> float:
        return self.score_output(outputs[self.output_index])

    def seeds(self, outputs: Sequence[np.ndarray]) -> dict[int, np.ndarray]:
        return {self.output_index: self.output_gradient(outputs[self.output_index])}

    def scores(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        return self.scores_output(outputs[self.output_index])


def _class_axis_size(output_shape: tuple[int, ...]) -> int:
    if len(output_shape) == 0:
        raise TargetError("the model output is a scalar per image: class targets need a vector of scores")
    return int(output_shape[0])


def _check_class(category: int, output_shape: tuple[int, ...], what: str) -> None:
    k = _class_axis_size(output_shape)
    if not 0 <= category < k:
        raise TargetError(f"{what} {category} is out of range: the model output has {k} classes (0..{k - 1})")


def softmax(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """Numerically stable softmax in float64."""
    z = x.astype(np.float64) - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=axis, keepdims=True))


@dataclass
class ClassTarget(OutputTarget):
    """The raw (pre-softmax) score of ``category``: the usual Grad-CAM target.

    Raw logits are the default because the softmax gradient of a confident prediction vanishes
    (p(1 - p) -> 0) and mixes in every other class. On a ``(C, H, W)`` output the class map is
    summed over its pixels.
    """

    category: int
    output_index: int = 0

    def validate_output(self, shape: tuple[int, ...]) -> None:
        _check_class(self.category, shape, "target class")

    def score_output(self, output: np.ndarray) -> float:
        return float(output.reshape(output.shape[0], -1)[self.category].sum())

    def output_gradient(self, output: np.ndarray) -> np.ndarray:
        g = np.zeros_like(output, dtype=np.float32)
        g[self.category] = 1.0
        return g

    def scores_output(self, rows: np.ndarray) -> np.ndarray:
        flat = rows.reshape(rows.shape[0], rows.shape[1], -1)
        return flat[:, self.category].sum(axis=1).astype(np.float32)

    def describe(self) -> str:
        return f"class {self.category} (logit)"


@dataclass
class SoftmaxTarget(OutputTarget):
    """The softmax probability of ``category`` over the class axis (axis 0 of one image's output)."""

    category: int
    output_index: int = 0

    def validate_output(self, shape: tuple[int, ...]) -> None:
        _check_class(self.category, shape, "target class")

    def score_output(self, output: np.ndarray) -> float:
        return float(softmax(output)[self.category].sum())

    def output_gradient(self, output: np.ndarray) -> np.ndarray:
        p = softmax(output)
        pc = p[self.category]
        g = -pc * p
        g[self.category] += pc
        return g.astype(np.float32)

    def describe(self) -> str:
        return f"class {self.category} (softmax probability)"


@dataclass
class SegmentationTarget(OutputTarget):
    """Sum of ``category``'s scores over the pixels of ``mask``, for (C, H, W) segmentation outputs."""

    category: int
    mask: np.ndarray = field(repr=False)
    output_index: int = 0

    def validate_output(self, shape: tuple[int, ...]) -> None:
        if len(shape) != 3:
            raise TargetError(
                f"SegmentationTarget needs a (N, C, H, W) model output, got per-image shape {shape}: "
                "use ClassTarget for classifiers"
            )
        _check_class(self.category, shape, "segmentation category")
        if tuple(self.mask.shape) != tuple(shape[1:]):
            raise TargetError(
                f"segmentation mask has shape {tuple(self.mask.shape)} but the output is {tuple(shape[1:])} "
                "per category: resize the mask to the output size"
            )

    def score_output(self, output: np.ndarray) -> float:
        return float((output[self.category] * self.mask).sum())

    def output_gradient(self, output: np.ndarray) -> np.ndarray:
        g = np.zeros_like(output, dtype=np.float32)
        g[self.category] = self.mask
        return g

    def describe(self) -> str:
        return f"segmentation category {self.category}"


@dataclass
class EmbeddingTarget(OutputTarget):
    """Cosine similarity between the output embedding and ``reference`` (a vector of the same size)."""

    reference: np.ndarray = field(repr=False)
    output_index: int = 0

    def validate_output(self, shape: tuple[int, ...]) -> None:
        if int(np.prod(shape)) != self.reference.size:
            raise TargetError(
                f"reference embedding has {self.reference.size} values but the output has {int(np.prod(shape))} "
                "per image: pass a reference produced by the same model output"
            )

    def _parts(self, output: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
        o = output.reshape(-1).astype(np.float64)
        r = self.reference.reshape(-1).astype(np.float64)
        return o, r, float(np.linalg.norm(o)), float(np.linalg.norm(r))

    def score_output(self, output: np.ndarray) -> float:
        o, r, no, nr = self._parts(output)
        if no == 0.0 or nr == 0.0:
            return 0.0
        return float(o @ r / (no * nr))

    def output_gradient(self, output: np.ndarray) -> np.ndarray:
        o, r, no, nr = self._parts(output)
        if no == 0.0 or nr == 0.0:
            return np.zeros_like(output, dtype=np.float32)
        cos = o @ r / (no * nr)
        g = r / (no * nr) - cos * o / (no * no)
        return g.reshape(output.shape).astype(np.float32)

    def describe(self) -> str:
        return "embedding cosine similarity"


@dataclass
class SequenceTarget(OutputTarget):
    """A recognizer's path through a ``(T, C)`` output: the sum of ``output[t, path[t]]`` over ``positions``.

    ``path``: one class per position (the best path, usually); ``positions``: the positions summed
    (None: all). ``path=None`` is filled in with each image's best path by ``SequenceTask``, so a
    target made before the run (``--target 3``: position 3) still explains what the model read.
    """

    path: tuple[int, ...] | None = None
    positions: tuple[int, ...] | None = None
    output_index: int = 0

    def _path(self) -> tuple[int, ...]:
        if self.path is None:
            raise TargetError("SequenceTarget has no path yet: pass path= or let SequenceTask fill in the best path")
        return self.path

    def validate_output(self, shape: tuple[int, ...]) -> None:
        if len(shape) != 2:
            raise TargetError(f"SequenceTarget needs a (N, T, C) model output, got per-image shape {shape}")
        t, c = int(shape[0]), int(shape[1])
        path = self._path()
        if len(path) != t:
            raise TargetError(f"SequenceTarget's path has {len(path)} positions but the output has {t}")
        if any(not 0 <= k < c for k in path):
            raise TargetError(f"SequenceTarget's path names a class outside 0..{c - 1}")
        if self.positions is not None and any(not 0 <= p < t for p in self.positions):
            raise TargetError(f"SequenceTarget position out of range: the output has {t} positions (0..{t - 1})")

    def _where(self) -> tuple[np.ndarray, np.ndarray]:
        path = np.asarray(self._path(), dtype=np.int64)
        pos = np.arange(path.size) if self.positions is None else np.asarray(self.positions, dtype=np.int64)
        return pos, path[pos]

    def score_output(self, output: np.ndarray) -> float:
        pos, cls = self._where()
        return float(np.asarray(output, dtype=np.float64)[pos, cls].sum())

    def output_gradient(self, output: np.ndarray) -> np.ndarray:
        pos, cls = self._where()
        g = np.zeros_like(output, dtype=np.float32)
        g[pos, cls] = 1.0
        return g

    def scores_output(self, rows: np.ndarray) -> np.ndarray:
        pos, cls = self._where()
        return np.asarray(rows, dtype=np.float64)[:, pos, cls].sum(axis=1).astype(np.float32)

    def describe(self) -> str:
        if self.positions is not None and len(self.positions) == 1:
            return f"sequence position {self.positions[0]}"
        n = len(self.path) if self.positions is None and self.path is not None else len(self.positions or ())
        return f"best path over {n} position(s)"

#: pytorch-grad-cam's name for a class target (``ClassifierOutputTarget(281)``): the same as ``ClassTarget``.
ClassifierOutputTarget = ClassTarget

TargetSpec = None | int | Target | Sequence[int | Target]


def per_image(outputs: Sequence[np.ndarray], i: int) -> list[np.ndarray]:
    """Image ``i``'s outputs, each without its batch axis."""
    return [o[i] for o in outputs]


def output_shapes(outputs: Sequence[np.ndarray]) -> list[tuple[int, ...]]:
    """The per-image shapes (batch axis dropped) of a batch's outputs."""
    return [tuple(int(d) for d in o.shape[1:]) for o in outputs]


def target_scores(targets: Sequence[Target], outputs: Sequence[np.ndarray]) -> np.ndarray:
    """``(N,)`` scores of each image's target on the model outputs of the batch."""
    return np.array([t.score(per_image(outputs, i)) for i, t in enumerate(targets)], dtype=np.float32)


def score_rows(targets: Sequence[Target], outputs: Sequence[np.ndarray], samples: np.ndarray) -> np.ndarray:
    """``(M,)`` float64 scores of output rows ``(M, ...)``, row ``j`` scored by ``targets[samples[j]]``.

    Rows of one sample are scored together, so a target's vectorised ``scores`` does the work.
    """
    samples = np.asarray(samples).reshape(-1)
    out = np.empty(samples.shape[0], dtype=np.float64)
    for s in np.unique(samples):
        rows = np.flatnonzero(samples == s)
        whole = rows.size == samples.size
        out[rows] = targets[int(s)].scores([o if whole else o[rows] for o in outputs])
    return out


def output_seeds(targets: Sequence[Target], outputs: Sequence[np.ndarray]) -> dict[int, np.ndarray]:
    """Seeds d(score)/d(output) ``(N, ...)`` per model output index that some target reads."""
    return {k: stack_seeds(rows) for k, rows in output_seed_rows(targets, outputs).items()}


def output_seed_rows(targets: Sequence[Target], outputs: Sequence[np.ndarray],
                     sparse: bool = False) -> dict[int, list[Seed]]:
    """``output_seeds`` as a list of ``N`` rows per output: each target's own array, not copied into a
    batch (a detector's seed is megabytes per row and one value of it is not zero). Rows of targets
    that do not read an output share one read-only zero row. ``sparse``: a target's ``sparse_seeds``
    where it has them (rows are then ``SparseSeed``s, in the output's float type)."""
    seeds: dict[int, list[Seed | None]] = {}
    for i, t in enumerate(targets):
        image = per_image(outputs, i)
        found: Mapping[int, Seed] | None = t.sparse_seeds(image) if sparse else None
        for k, g in (found if found is not None else t.seeds(image)).items():
            if not 0 <= k < len(outputs):
                raise TargetError(f"{t.describe()} seeds model output #{k} but the model has {len(outputs)} outputs")
            # In the output's own float type: a float16 output takes a float16 seed.
            kind = outputs[k].dtype
            dtype = kind if kind.kind == "f" else np.dtype(np.float32)
            if isinstance(g, SparseSeed):
                if g.shape != outputs[k].shape[1:]:
                    raise TargetError(f"{t.describe()} gives a seed of shape {g.shape} for model output #{k}, "
                                      f"which is {tuple(outputs[k].shape[1:])} per image")
                row: Seed = g.astype(dtype)
            else:
                row = np.asarray(g, dtype=dtype)
                if row.shape != outputs[k].shape[1:]:
                    row = np.broadcast_to(row, outputs[k].shape[1:])
            seeds.setdefault(k, [None] * len(targets))[i] = row
    out: dict[int, list[Seed]] = {}
    for k, rows in seeds.items():
        kind = outputs[k].dtype
        zero = np.zeros((1,) * (outputs[k].ndim - 1), dtype=kind if kind.kind == "f" else np.float32)
        blank = np.broadcast_to(zero, outputs[k].shape[1:])
        out[k] = [blank if r is None else r for r in rows]
    return out
