"""Per-map arithmetic shared by the methods and the post-processing: pytorch-grad-cam's min-max
normalisation and cv2 resize of ``(N, H, W)`` maps.

It sits below both: FullGrad (a method) normalises and resizes its channels the same way
``onnxcam.postprocess`` finishes every map, and postprocessing in turn uses the methods' PCA.
"""

from __future__ import annotations

import cv2
import numpy as np

from onnxcam.errors import ArgumentError

# pytorch-grad-cam's scale_cam_image epsilon; kept so normalised values match to float32 rounding.
NORMALIZE_EPS = 1e-7


def as_maps(maps: np.ndarray, name: str) -> np.ndarray:
    """``maps`` as float32 ``(N, H, W)``; ArgumentError naming ``name`` otherwise."""
    arr = np.asarray(maps, dtype=np.float32)
    if arr.ndim != 3:
        raise ArgumentError(f"{name} must have shape (N, H, W), got {tuple(arr.shape)}")
    return arr


def normalize_maps(maps: np.ndarray, finite: bool = False, inplace: bool = False) -> np.ndarray:
    """Min-max scale each map of ``(N, H, W)`` to [0, 1] (pytorch-grad-cam ``scale_cam_image``).

    ``(x - min) / (max - min + 1e-7)``: a constant map gives exact zeros. NaN entries count as 0
    and +/-inf are clipped to the largest finite float32, so the result is always finite.
    ``finite=True``: the caller knows there is no NaN/Inf (skips the screening pass).
    ``inplace=True``: ``maps`` is the caller's own float32 scratch and is overwritten (at full image
    size a second array of the batch's maps costs more in page faults than the arithmetic).
    """
    arr = as_maps(maps, "maps")
    if not finite and not np.isfinite(arr.sum(dtype=np.float64)):
        finfo = np.finfo(np.float32)
        arr = np.nan_to_num(arr, nan=0.0, posinf=float(finfo.max), neginf=float(finfo.min))
    # float32 arithmetic like the reference, per image, vectorised over the batch.
    if inplace and arr is maps:
        shifted = arr
        shifted -= arr.min(axis=(1, 2), keepdims=True)
    else:
        shifted = arr - arr.min(axis=(1, 2), keepdims=True)
    shifted /= np.float32(NORMALIZE_EPS) + shifted.max(axis=(1, 2), keepdims=True)
    return shifted


def resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``(N, h, w)`` to ``(N, H, W)`` with ``cv2.resize(..., (W, H))`` (bilinear, as the reference)."""
    arr = as_maps(maps, "maps")
    height, width = int(size[0]), int(size[1])
    if height < 1 or width < 1:
        raise ArgumentError(f"resize size must be positive (H, W), got {size!r}")
    if arr.shape[1:] == (height, width):
        return arr.copy()
    out = np.empty((arr.shape[0], height, width), dtype=np.float32)
    for i, img in enumerate(arr):
        cv2.resize(img, (width, height), dst=out[i])
    return out


__all__ = ["NORMALIZE_EPS", "as_maps", "normalize_maps", "resize_maps"]
