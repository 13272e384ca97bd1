"""Shared plumbing of the metrics: argument checks, layout handling and batched forwards.

Every metric talks to the model only through ``predict(images: (M, ...) float32) -> (M, K)``;
the caller backs it with batched onnxruntime sessions, so the helpers here make sure each call
carries up to ``batch_size`` images and never one image per call when more fit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from onnxcam.errors import ArgumentError, InputError, TargetError

Predict = Callable[[NDArray[np.float32]], NDArray[np.floating]]
"""``predict(images (M, C, H, W) | (M, H, W, C) float32) -> (M, K)`` probabilities or scores."""

BatchBuilder = Callable[[int, int], NDArray[np.float32]]
"""``build(start, stop) -> (stop - start, ...)``: the model inputs of jobs ``start:stop``."""

LAYOUTS = ("NCHW", "NHWC")

_T = TypeVar("_T", bound=np.generic)


def check_layout(layout: str) -> str:
    """Return ``layout`` upper-cased, or raise if it is neither NCHW nor NHWC."""
    upper = str(layout).upper()
    if upper not in LAYOUTS:
        raise ArgumentError(f"layout={layout!r} is not supported; pass 'NCHW' or 'NHWC'.")
    return upper


def check_batch_size(batch_size: int) -> int:
    """Return ``batch_size`` as an int >= 1, or raise."""
    if int(batch_size) != batch_size or int(batch_size) < 1:
        raise ArgumentError(f"batch_size={batch_size!r} must be a positive integer (e.g. 32).")
    return int(batch_size)


def spatial_size(images: NDArray[np.float32], layout: str) -> tuple[int, int]:
    """``(H, W)`` of a batch ``(N, C, H, W)`` / ``(N, H, W, C)``."""
    if layout == "NCHW":
        return int(images.shape[2]), int(images.shape[3])
    return int(images.shape[1]), int(images.shape[2])


def check_images(images: ArrayLike, layout: str) -> NDArray[np.float32]:
    """``images`` as a float32 ``(N, C, H, W)`` / ``(N, H, W, C)`` array of finite values."""
    arr = np.asarray(images, dtype=np.float32)
    if arr.ndim != 4:
        raise InputError(
            f"images has shape {arr.shape}; expected a 4-D batch laid out as {layout} "
            "(add a batch axis with images[None] for a single image)."
        )
    if arr.shape[0] == 0:
        raise InputError("images is an empty batch (N=0); pass at least one image.")
    if not np.all(np.isfinite(arr)):
        raise InputError("images contains NaN or Inf; fix the preprocessing before scoring.")
    return arr


def check_maps(maps: ArrayLike, n: int, size: tuple[int, int], name: str = "maps") -> NDArray[np.float32]:
    """``maps`` as float32 ``(N, H, W)`` matching ``n`` images of spatial ``size``."""
    arr = np.asarray(maps, dtype=np.float32)
    if arr.ndim == 2 and n == 1:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] != n or tuple(arr.shape[1:]) != tuple(size):
        raise InputError(
            f"{name} has shape {arr.shape}; expected ({n}, {size[0]}, {size[1]}), one map per image "
            "at input resolution (upsample the CAM to the model input size first)."
        )
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name} contains NaN or Inf; normalise the maps to [0, 1] first.")
    return arr


def check_classes(classes: int | Sequence[int] | ArrayLike, n: int) -> NDArray[np.int64]:
    """One class index per image as ``(N,)`` int64; a scalar applies to every image."""
    arr = np.asarray(classes)
    if arr.ndim == 0:
        arr = np.full(n, arr)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise TargetError(f"classes has shape {arr.shape}; expected one class index per image ({n},).")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise TargetError(f"classes must be integer class indices, got {arr.tolist()!r}.")
    out = arr.astype(np.int64)
    if np.any(out < 0):
        raise TargetError(f"classes contains negative indices {out[out < 0].tolist()}; use 0..K-1.")
    return out


def expand_spatial(arr: NDArray[_T], layout: str) -> NDArray[_T]:
    """Spatial ``(B, H, W)`` array (mask or map) broadcastable against a ``layout`` batch."""
    return arr[:, None, :, :] if layout == "NCHW" else arr[:, :, :, None]


def to_hwc(image: NDArray[np.float32], layout: str) -> NDArray[np.float32]:
    """One image ``(C, H, W)`` / ``(H, W, C)`` as ``(H, W, C)`` (a view where possible)."""
    return np.moveaxis(image, 0, -1) if layout == "NCHW" else image


def from_hwc(image: NDArray[np.float32], layout: str) -> NDArray[np.float32]:
    """Inverse of :func:`to_hwc`."""
    return np.moveaxis(image, -1, 0) if layout == "NCHW" else image


def class_scores(
    predict: Predict,
    build: BatchBuilder,
    total: int,
    classes: NDArray[np.int64],
    batch_size: int,
) -> NDArray[np.float64]:
    """Score of ``classes[j]`` for each of ``total`` jobs, ``batch_size`` jobs per ``predict`` call.

    ``build`` materialises only one batch at a time so memory stays at ``batch_size`` images
    however many perturbations a metric needs.
    """
    out = np.empty(total, dtype=np.float64)
    for start in range(0, total, batch_size):
        stop = min(start + batch_size, total)
        batch = np.ascontiguousarray(build(start, stop), dtype=np.float32)
        probs = np.asarray(predict(batch))
        if probs.ndim != 2 or probs.shape[0] != stop - start:
            raise ArgumentError(
                f"predict returned shape {probs.shape} for a batch of {stop - start} images; "
                "it must return (M, K) class probabilities or scores."
            )
        wanted = classes[start:stop]
        if np.any(wanted >= probs.shape[1]):
            raise TargetError(
                f"class index {int(wanted.max())} is out of range for a model with {probs.shape[1]} "
                f"outputs; use 0..{probs.shape[1] - 1}."
            )
        out[start:stop] = probs[np.arange(stop - start), wanted]
    return out
