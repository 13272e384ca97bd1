"""Turning raw CAMs ``(N, h, w)`` into displayable maps ``(N, H, W)`` in [0, 1].

The order is pytorch-grad-cam's, because parity depends on it: per layer ReLU -> min-max
normalise -> cv2 resize (:func:`layer_to_image`), then across layers ReLU -> mean -> normalise
(:func:`fuse_layers`; a single layer goes through it too, as the reference does).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import cv2
import numpy as np

from onnxcam.errors import ArgumentError
from onnxcam.methods.eigen import principal_projection
from onnxcam.methods.maps import NORMALIZE_EPS, as_maps, normalize_maps, resize_maps


def relu(maps: np.ndarray) -> np.ndarray:
    """Element-wise max(x, 0) as float32."""
    return np.maximum(np.asarray(maps, dtype=np.float32), np.float32(0))


def finish_single(layer_map: np.ndarray) -> np.ndarray:
    """``fuse_layers([layer_map])`` for a map straight from :func:`layer_to_image`: it is already
    finite and non-negative, so only the final normalisation is left to do."""
    return normalize_maps(layer_map, finite=True)


def layer_to_image(raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One layer's raw CAM ``(N, h, w)`` -> ReLU -> normalise -> resize to ``(N, H, W)``."""
    return resize_maps(normalize_maps(relu(raw)), size)


def fuse_to_image(raws: Sequence[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """``fuse_layers([layer_to_image(r, size) for r in raws], clean=True)`` (``finish_single`` for one
    layer), the same float32 arithmetic, without keeping a full-size map per layer: each row's layer
    maps are resized into one scratch row and added up there. With a map per detection at full image
    size, the arrays left out cost more (fresh memory the kernel zeroes) than the arithmetic."""
    if len(raws) == 0:
        raise ArgumentError("fuse_to_image needs at least one layer map")
    small = [normalize_maps(relu(r)) for r in raws]
    n = small[0].shape[0]
    height, width = int(size[0]), int(size[1])
    if any(m.shape[0] != n for m in small):
        raise ArgumentError(f"layer maps must share the batch, got {[m.shape for m in small]}")
    total = resize_maps(small[0], size) if len(small) == 1 else np.empty((n, height, width), dtype=np.float32)
    if len(small) > 1:
        scratch = np.empty((height, width), dtype=np.float32)
        # A normalised map that is all zeros resizes to zeros and adds nothing: skipped, with the same
        # bits (a detection at stride 8 has no gradient at the coarser layers).
        live = np.stack([m.reshape(n, -1).max(axis=1) > 0 for m in small], axis=1)  # (N, layers)
        for i in range(n):
            row = total[i]
            layers = [m for m, on in zip(small, live[i]) if on]
            if not layers:
                row.fill(0)
                continue
            cv2.resize(layers[0][i], (width, height), dst=row)
            for m in layers[1:]:
                cv2.resize(m[i], (width, height), dst=scratch)
                row += scratch
        total /= np.float32(len(small))
    return normalize_maps(total, finite=True, inplace=True)


class LayerMaps(Mapping[str, np.ndarray]):
    """Per-layer maps ``(N, H, W)`` at input resolution (``layer_to_image`` of each raw map), made when
    first read: most callers only read the fused map."""

    def __init__(self, raw: Mapping[str, np.ndarray], size: tuple[int, int]) -> None:
        self._raw = raw
        self._size = size
        self._made: dict[str, np.ndarray] = {}

    def __getitem__(self, layer: str) -> np.ndarray:
        if layer not in self._made:
            self._made[layer] = layer_to_image(self._raw[layer], self._size)
        return self._made[layer]

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __repr__(self) -> str:
        return f"LayerMaps({list(self._raw)}, size={self._size})"


def fuse_layers(layer_maps: Sequence[np.ndarray], clean: bool = False) -> np.ndarray:
    """Aggregate per-layer maps (each the output of :func:`layer_to_image`, same ``(N, H, W)``).

    ReLU, mean over layers, normalise, as pytorch-grad-cam's ``aggregate_multi_layers``. Call it with
    one layer too: the reference normalises once more after resizing. ``clean=True``: the caller knows
    every map is finite and non-negative (``layer_to_image``'s are), so the ReLU and the screening
    passes are skipped (a detector's maps are full-size, one per detection and layer).
    """
    if len(layer_maps) == 0:
        raise ArgumentError("fuse_layers needs at least one layer map")
    stacked = [as_maps(m, f"layer map {i}") for i, m in enumerate(layer_maps)]
    if len(stacked) == 1:  # the mean of one map is the map: skip the stack
        only = stacked[0]
        return normalize_maps(only if only.min() >= 0 else np.maximum(only, np.float32(0)))
    shapes = {m.shape for m in stacked}
    if len(shapes) != 1:
        raise ArgumentError(
            f"layer maps must share one shape (N, H, W) to be fused, got {sorted(shapes)}; "
            "resize each with layer_to_image(raw, (H, W)) first"
        )
    # Summed in place, layer after layer, as the mean over a stacked axis adds them (no (N, L, H, W)
    # cube: with a map per detection at full image size it cost more than the gradients).
    dtype = np.result_type(*stacked)
    if clean:
        total = np.add(stacked[0], stacked[1], dtype=dtype)
        for m in stacked[2:]:
            total += m
    else:
        total = np.maximum(stacked[0], dtype.type(0)).astype(dtype, copy=False)
        scratch = np.empty_like(total)
        for m in stacked[1:]:
            np.maximum(m, dtype.type(0), out=scratch)
            total += scratch
    total /= dtype.type(len(stacked))
    return normalize_maps(total, finite=clean, inplace=True)


def _distinct(v: np.ndarray) -> np.ndarray:
    """``v`` without the axes a broadcast view repeats (stride 0): the same values, each once (a
    ``"channel-mean"`` gradient is ``(C, h, w)`` of ``C`` numbers)."""
    return v[tuple(slice(0, 1) if stride == 0 else slice(None) for stride in v.strides)]


def eigen_smooth(weighted_activations: np.ndarray, sign: str = "activation") -> np.ndarray:
    """pytorch-grad-cam ``eigen_smooth=True``: first principal component of ``(N, C, h, w)`` -> ``(N, h, w)``.

    Use it instead of the channel sum of ``weights[:, :, None, None] * activations`` (or of the
    element-wise products of LayerCAM / HiResCAM). Sign rule: see
    :func:`onnxcam.methods.eigen.principal_projection`.
    """
    return principal_projection(weighted_activations, sign)  # type: ignore[arg-type]


def live_maps(maps: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: which raw maps of ``(N, h, w)`` keep a positive range after ReLU (the others
    display as blank)."""
    positive = np.maximum(np.nan_to_num(as_maps(maps, "maps")), 0)
    return np.asarray((positive.max(axis=(1, 2)) - positive.min(axis=(1, 2))) > 0)


def zero_map_reasons(
    maps: np.ndarray,
    *,
    activations: np.ndarray | None = None,
    gradients: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    only: np.ndarray | None = None,
) -> list[str | None]:
    """For each raw map of ``(N, h, w)``, why it will display as blank, or None when it will not.

    A map is blank when ReLU leaves nothing with a positive range. The reasons are checked from the
    most upstream cause down, so the caller's warning names the root cause. ``only``: ``(N,)`` bool,
    the rows to diagnose (the others get None).
    """
    arr = as_maps(maps, "maps")
    live = live_maps(arr) if only is None else ~np.asarray(only, dtype=bool)
    reasons: list[str | None] = []
    for i, img in enumerate(arr):
        if live[i]:
            reasons.append(None)
            continue
        if not np.all(np.isfinite(img)):
            reasons.append("the map contains NaN or Inf values")
        elif activations is not None and not np.any(activations[i]):
            reasons.append("the layer's activations are all zero for this image")
        elif gradients is not None and not np.any(_distinct(gradients[i])):
            reasons.append(
                "the gradients of the target score w.r.t. the layer are all zero "
                "(saturated or disconnected target)"
            )
        elif weights is not None and np.all(np.asarray(weights[i]) <= 0):
            reasons.append("all channel weights are zero or negative")
        elif activations is not None and np.all(
            np.ptp(np.asarray(activations[i]).reshape(activations[i].shape[0], -1), axis=1) == 0
        ):
            reasons.append("the layer's activations are spatially constant for this image (every channel is flat)")
        elif np.all(img <= 0):
            reasons.append("the map is zero or negative everywhere, so ReLU removes it")
        else:
            reasons.append("the map is constant")
    return reasons


__all__ = [
    "NORMALIZE_EPS", "LayerMaps", "eigen_smooth", "finish_single", "fuse_layers", "fuse_to_image", "layer_to_image",
    "live_maps", "normalize_maps", "relu",
    "resize_maps", "zero_map_reasons",
]
