"""How a layer's tensor is seen as a feature map ``(N, C, h, w)``, and back.

Methods are 4-D functions of arrays. A ``FeatureView`` is the one place where a tensor of another
layout becomes such a map: channels-last ``(N, h, w, C)`` (TensorFlow exports, Swin stages),
token sequences ``(N, T, D)`` with ``T = prefix + h * w`` (vision transformers:
class, distillation and register tokens come first and are dropped). The same view converts
activations and gradients (they share the tensor's layout), and its inverse puts an edited map
back into the tensor for methods that re-run the head (Ablation-CAM), keeping the prefix tokens.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from onnxcam.errors import ArgumentError, LayerShapeError

ViewLayout = Literal["NCHW", "NHWC", "NTD"]
# Prefix tokens tried when a token view's prefix is not given: class (1), class + distillation (2),
# register tokens (4, + class = 5) all fall in this range.
MAX_PREFIX = 8


@dataclass(frozen=True)
class FeatureView:
    """``layout`` of the tensor; for tokens, ``prefix`` tokens before the ``grid`` (h, w) of patches."""

    layout: ViewLayout = "NCHW"
    prefix: int = 0
    grid: tuple[int, int] | None = None

    @property
    def is_identity(self) -> bool:
        return self.layout == "NCHW"

    @property
    def is_tokens(self) -> bool:
        return self.layout == "NTD"

    def describe(self) -> str:
        if not self.is_tokens:
            return self.layout
        grid = f"{self.grid[0]}x{self.grid[1]}" if self.grid else "?"
        return f"tokens {self.layout} {self.prefix}+{grid}"

    def map_shape(self, shape: Sequence[object]) -> tuple[object, ...]:
        """The feature-map shape ``(N, C, h, w)`` of a tensor of ``shape``."""
        s = tuple(shape)
        if self.layout == "NCHW":
            return s
        if self.layout == "NHWC":
            return (s[0], s[3], s[1], s[2])
        assert self.grid is not None
        return (s[0], s[2], self.grid[0], self.grid[1])

    def to_map(self, tensor: np.ndarray) -> np.ndarray:
        """The tensor as ``(N, C, h, w)`` (a view of it where the layout allows)."""
        t = np.asarray(tensor)
        if self.layout == "NCHW":
            return t
        if self.layout == "NHWC":
            return t.transpose(0, 3, 1, 2)
        assert self.grid is not None
        n, _, d = t.shape
        h, w = self.grid
        return t[:, self.prefix:, :].reshape(n, h, w, d).transpose(0, 3, 1, 2)

    def to_tensor(self, feature_map: np.ndarray, like: np.ndarray) -> np.ndarray:
        """The inverse of ``to_map``: ``feature_map (M, C, h, w)`` back in the tensor's layout.

        ``like`` is a tensor ``(M, ...)`` of this layout that supplies what the map does not hold
        (prefix tokens); for layouts without any, it is not read.
        """
        m = np.asarray(feature_map)
        if self.layout == "NCHW":
            return m
        if self.layout == "NHWC":
            return np.ascontiguousarray(m.transpose(0, 2, 3, 1))
        rows, d = m.shape[0], m.shape[1]
        patches = m.transpose(0, 2, 3, 1).reshape(rows, -1, d)
        tokens = np.array(like, dtype=m.dtype)
        tokens[:, self.prefix:, :] = patches
        return tokens


IDENTITY = FeatureView()

ViewSpec = None | str | FeatureView


def _square_grid(count: int) -> tuple[int, int] | None:
    side = math.isqrt(count)
    return (side, side) if side > 0 and side * side == count else None


def _token_view(tokens: int, prefix: int | None, where: str) -> FeatureView:
    tries = [prefix] if prefix is not None else list(range(MAX_PREFIX + 1))
    for p in tries:
        grid = _square_grid(tokens - p) if tokens - p > 0 else None
        if grid is not None:
            return FeatureView("NTD", p, grid)
    said = f"{prefix} prefix tokens + " if prefix is not None else f"0..{MAX_PREFIX} prefix tokens + "
    raise LayerShapeError(
        f"{where} has {tokens} tokens, which is not {said}a square grid of patches: give the view as "
        "FeatureView('NTD', prefix=P, grid=(h, w))"
    )


def view_for(shape: Sequence[object], spec: ViewSpec, where: str = "tensor") -> FeatureView:
    """The view of a tensor of ``shape`` described by ``spec``.

    ``spec``: None or ``"NCHW"`` (the tensor is already a feature map), ``"NHWC"``, ``"tokens"``
    (``(N, T, D)``; the prefix is the smallest count of 0..8 that leaves a square grid),
    ``"tokens:P"`` (P prefix tokens), or a ``FeatureView`` (its grid is filled in from the shape when missing).
    """
    dims = tuple(shape)
    if isinstance(spec, FeatureView):
        view = spec
    else:
        text = (spec or "NCHW").strip()
        name, _, count = text.partition(":")
        key = name.upper()
        layout: ViewLayout
        if key in ("NCHW", "NHWC"):
            layout = "NCHW" if key == "NCHW" else "NHWC"
            view = FeatureView(layout)
        elif key in ("TOKENS", "NTD"):
            try:
                prefix = int(count) if count else None
            except ValueError:
                prefix = -1
            if prefix is not None and prefix < 0:
                raise ArgumentError(f"view {spec!r}: the prefix token count must be an integer >= 0, e.g. 'tokens:1'")
            view = FeatureView("NTD", prefix if prefix is not None else -1)
        else:
            raise ArgumentError(f"unknown view {spec!r}: use NCHW, NHWC, tokens or tokens:P (P prefix tokens)")
    rank = 4 if view.layout in ("NCHW", "NHWC") else 3
    if len(dims) != rank or not all(isinstance(d, int) for d in dims[1:]):
        raise LayerShapeError(
            f"{where} has shape {dims}, which a {view.layout} view cannot read: it needs a rank-{rank} tensor "
            "with known non-batch sizes"
        )
    if not view.is_tokens:
        return view
    tokens = int(dims[1])  # type: ignore[call-overload]
    if view.grid is not None:
        if view.prefix + view.grid[0] * view.grid[1] != tokens:
            raise LayerShapeError(
                f"{where} has {tokens} tokens but the view says {view.prefix} + {view.grid[0]}x{view.grid[1]}: "
                "fix the view's prefix or grid"
            )
        return view
    return _token_view(tokens, view.prefix if view.prefix >= 0 else None, where)


def as_maps(tensors: Mapping[str, np.ndarray], views: Mapping[str, FeatureView]) -> dict[str, np.ndarray]:
    """Each tensor through its layer's view (identity where none is given)."""
    return {k: views.get(k, IDENTITY).to_map(v) for k, v in tensors.items()}
