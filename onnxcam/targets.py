"""What a CAM explains: a differentiable scalar per image, computed from the model output.

A target gives, for one image's output, its ``score`` and ``output_gradient`` (d score / d output).
Gradient methods seed the ONNX gradient graph with ``output_gradient`` evaluated at the output the
body run already produced, so any target - softmax probability, masked segmentation sum, cosine
to a reference embedding - costs one gradient run, with no extra nodes in the graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from onnxcam.errors import TargetError


class Target:
    """Base class. ``output_index`` picks the model output the target reads (0 = first)."""

    output_index: int = 0

    def validate(self, output_shape: tuple[int, ...]) -> None:
        """Raise ``TargetError`` if the target does not fit one image's output shape (no batch axis)."""

    def score(self, output: np.ndarray) -> float:
        """The scalar explained, from one image's output (its shape without the batch axis)."""
        raise NotImplementedError

    def output_gradient(self, output: np.ndarray) -> np.ndarray:
        """d score / d output, the same shape as ``output``."""
        raise NotImplementedError

    def scores(self, outputs: np.ndarray) -> np.ndarray:
        """``(M,)`` scores of a batch of outputs ``(M, ...)`` (re-run methods score thousands of rows)."""
        return np.array([self.score(o) for o in outputs], dtype=np.float32)

    def describe(self) -> str:
        return type(self).__name__


def _class_axis_size(output_shape: tuple[int, ...]) -> int:
    if len(output_shape) == 0:
        raise TargetError("the model output is a scalar per image: class targets need a vector of scores")
    return int(output_shape[0])


def _check_class(category: int, output_shape: tuple[int, ...], what: str) -> None:
    k = _class_axis_size(output_shape)
    if not 0 <= category < k:
        raise TargetError(f"{what} {category} is out of range: the model output has {k} classes (0..{k - 1})")


def _softmax(x: np.ndarray, axis: int = 0) -> np.ndarray:
    z = x.astype(np.float64) - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=axis, keepdims=True))


@dataclass
class ClassTarget(Target):
    """The raw (pre-softmax) score of ``category``: the usual Grad-CAM target.

    Raw logits are the default because the softmax gradient of a confident prediction vanishes
    (p(1 - p) -> 0) and mixes in every other class.
    """

    category: int
    output_index: int = 0

    def validate(self, output_shape: tuple[int, ...]) -> None:
        _check_class(self.category, output_shape, "target class")

    def score(self, output: np.ndarray) -> float:
        return float(output.reshape(output.shape[0], -1)[self.category].sum())

    def output_gradient(self, output: np.ndarray) -> np.ndarray:
        g = np.zeros_like(output, dtype=np.float32)
        g[self.category] = 1.0
        return g

    def scores(self, outputs: np.ndarray) -> np.ndarray:
        flat = outputs.reshape(outputs.shape[0], outputs.shape[1], -1)
        return flat[:, self.category].sum(axis=1).astype(np.float32)

    def describe(self) -> str:
        return f"class {self.category} (logit)"


@dataclass
class SoftmaxTarget(Target):
    """The softmax probability of ``category`` over the class axis (axis 0 of one image's output)."""

    category: int
    output_index: int = 0

    def validate(self, output_shape: tuple[int, ...]) -> None:
        _check_class(self.category, output_shape, "target class")

    def score(self, output: np.ndarray) -> float:
        return float(_softmax(output)[self.category].sum())

    def output_gradient(self, output: np.ndarray) -> np.ndarray:
        p = _softmax(output)
        pc = p[self.category]
        g = -pc * p
        g[self.category] += pc
        return g.astype(np.float32)

    def describe(self) -> str:
        return f"class {self.category} (softmax probability)"


@dataclass
class SegmentationTarget(Target):
    """Sum of ``category``'s scores over the pixels of ``mask``, for (C, H, W) segmentation outputs."""

    category: int
    mask: np.ndarray = field(repr=False)
    output_index: int = 0

    def validate(self, output_shape: tuple[int, ...]) -> None:
        if len(output_shape) != 3:
            raise TargetError(
                f"SegmentationTarget needs a (N, C, H, W) model output, got per-image shape {output_shape}: "
                "use ClassTarget for classifiers"
            )
        _check_class(self.category, output_shape, "segmentation category")
        if tuple(self.mask.shape) != tuple(output_shape[1:]):
            raise TargetError(
                f"segmentation mask has shape {tuple(self.mask.shape)} but the output is {tuple(output_shape[1:])} "
                "per category: resize the mask to the output size"
            )

    def score(self, output: np.ndarray) -> float:
        return float((output[self.category] * self.mask).sum())

    def output_gradient(self, output: np.ndarray) -> np.ndarray:
        g = np.zeros_like(output, dtype=np.float32)
        g[self.category] = self.mask
        return g

    def describe(self) -> str:
        return f"segmentation category {self.category}"


@dataclass
class EmbeddingTarget(Target):
    """Cosine similarity between the output embedding and ``reference`` (a vector of the same size)."""

    reference: np.ndarray = field(repr=False)
    output_index: int = 0

    def validate(self, output_shape: tuple[int, ...]) -> None:
        if int(np.prod(output_shape)) != self.reference.size:
            raise TargetError(
                f"reference embedding has {self.reference.size} values but the output has {int(np.prod(output_shape))} "
                "per image: pass a reference produced by the same model output"
            )

    def _parts(self, output: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
        o = output.reshape(-1).astype(np.float64)
        r = self.reference.reshape(-1).astype(np.float64)
        return o, r, float(np.linalg.norm(o)), float(np.linalg.norm(r))

    def score(self, output: np.ndarray) -> float:
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


def to_probabilities(outputs: np.ndarray) -> np.ndarray:
    """``(N, K)`` probabilities from a model output ``(N, K, ...)``.

    Outputs that already are probabilities (in [0, 1], rows summing to 1) are kept: applying a
    softmax twice would flatten them towards uniform and hide near-ties.
    """
    n = int(outputs.shape[0])
    flat = np.asarray(outputs, dtype=np.float64).reshape(n, -1)
    if flat.size and flat.min() >= 0.0 and flat.max() <= 1.0 and np.allclose(flat.sum(axis=1), 1.0, atol=1e-3):
        return flat
    z = flat - flat.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))



TargetSpec = None | int | Target | Sequence[int | Target]


def resolve_targets(targets: TargetSpec, outputs: np.ndarray) -> list[Target]:
    """One ``Target`` per image from ``targets`` and the model output ``(N, ...)``.

    ``None`` picks each image's top-1 class; an int applies to every image; a sequence must have
    exactly one entry per image (a shorter list is an error, never a silent truncation).
    """
    n = int(outputs.shape[0])
    per_image: list[int | Target]
    if targets is None:
        flat = outputs.reshape(n, outputs.shape[1], -1).mean(axis=2) if outputs.ndim > 2 else outputs.reshape(n, -1)
        per_image = [int(i) for i in flat.argmax(axis=1)]
    elif isinstance(targets, (int, np.integer)):
        per_image = [int(targets)] * n
    elif isinstance(targets, Target):
        per_image = [targets] * n
    else:
        per_image = list(targets)
        if len(per_image) != n:
            raise TargetError(
                f"got {len(per_image)} targets for a batch of {n} images: give one target per image, "
                "a single int for all, or None for each image's top-1 class"
            )
    resolved: list[Target] = []
    for t in per_image:
        if isinstance(t, Target):
            resolved.append(t)
        elif isinstance(t, (int, np.integer)) and not isinstance(t, bool):
            resolved.append(ClassTarget(int(t)))
        else:
            raise TargetError(f"target {t!r} is neither a class index nor a Target object")
    for t in resolved:
        t.validate(tuple(outputs.shape[1:]))
    return resolved
