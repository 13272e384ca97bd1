"""Shape checks shared by the methods, so every method fails with the same actionable message."""

from __future__ import annotations

import numpy as np

from onnxcam.errors import ArgumentError, LayerShapeError


def as_feature_map(array: np.ndarray, name: str) -> np.ndarray:
    """Return ``array`` as float32 ``(N, C, h, w)``; raise LayerShapeError otherwise."""
    arr = np.asarray(array)
    if arr.ndim != 4:
        raise LayerShapeError(
            f"{name} must be a 4-D feature map (N, C, h, w), got shape {tuple(arr.shape)}; "
            "pick a convolutional layer or reshape token outputs to (N, C, h, w) first"
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise LayerShapeError(f"{name} must be floating point, got dtype {arr.dtype}")
    return arr.astype(np.float32, copy=False)


def same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    """Raise LayerShapeError when two feature maps do not line up element for element."""
    if a.shape != b.shape:
        raise LayerShapeError(
            f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}; "
            "they must come from the same layer and batch"
        )


def positive_int(value: int, name: str) -> int:
    """Raise ArgumentError unless ``value`` is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ArgumentError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def check_layout(layout: str) -> str:
    """Raise ArgumentError unless ``layout`` is 'NCHW' or 'NHWC'."""
    if layout not in ("NCHW", "NHWC"):
        raise ArgumentError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    return layout


def spatial_size(images: np.ndarray, layout: str) -> tuple[int, int]:
    """(H, W) of a 4-D image batch in ``layout``."""
    if images.ndim != 4:
        raise ArgumentError(
            f"images must be a 4-D batch in {layout} layout, got shape {tuple(images.shape)}"
        )
    if layout == "NCHW":
        return int(images.shape[2]), int(images.shape[3])
    return int(images.shape[1]), int(images.shape[2])


def scores_vector(scores: object, expected: int, who: str) -> np.ndarray:
    """Coerce a score callable's result to float64 ``(expected,)``; raise ArgumentError otherwise."""
    arr = np.asarray(scores, dtype=np.float64).reshape(-1)
    if arr.shape != (expected,):
        raise ArgumentError(
            f"{who} returned {arr.size} scores for a batch of {expected}; it must return one scalar "
            "score per masked input, shape (M,)"
        )
    return arr
