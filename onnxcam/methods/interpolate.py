"""Bilinear resizing that reproduces torch's ``F.interpolate(mode="bilinear")`` in numpy.

Score-CAM masks must match the reference bit-for-bit in spirit (same sample positions, same border
clamping), and cv2.resize clamps borders differently, so the interpolation is written out as two
small matrices: ``out = Ry @ x @ Rx.T``.
"""

from __future__ import annotations

import numpy as np


def interpolation_matrix(in_size: int, out_size: int, align_corners: bool) -> np.ndarray:
    """``(out_size, in_size)`` float32 matrix of 1-D linear interpolation weights, as torch computes them."""
    dst = np.arange(out_size, dtype=np.float64)
    if align_corners:
        scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        src = dst * scale
    else:
        # torch uses in/out (not a user scale factor) when an output size is given, and clamps
        # negative source positions to 0 rather than extrapolating.
        src = np.maximum((dst + 0.5) * (in_size / out_size) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam = src - i0
    mat = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.arange(out_size)
    np.add.at(mat, (rows, i0), 1.0 - lam)
    np.add.at(mat, (rows, i1), lam)
    return mat.astype(np.float32)


def resize_bilinear(
    maps: np.ndarray, size: tuple[int, int], align_corners: bool = False
) -> np.ndarray:
    """Resize ``(..., h, w)`` maps to ``(..., H, W)`` like torch's bilinear ``F.interpolate``.

    ``align_corners=True`` is what ``torch.nn.UpsamplingBilinear2d`` (pytorch-grad-cam's Score-CAM)
    uses; ``False`` is torchcam's choice.
    """
    arr = np.asarray(maps, dtype=np.float32)
    ry = interpolation_matrix(arr.shape[-2], size[0], align_corners)
    rx = interpolation_matrix(arr.shape[-1], size[1], align_corners)
    return np.matmul(np.matmul(ry, arr), rx.T)
