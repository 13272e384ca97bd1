"""Bounding boxes from activation maps (weakly supervised localisation, as in the CAM paper).

Boxes are ``(x0, y0, x1, y1)`` integer pixel coordinates with ``x1``/``y1`` exclusive, so
``x1 - x0`` is the width and a box covering a whole ``(H, W)`` map is ``(0, 0, W, H)``.
"""

from __future__ import annotations

import cv2
import numpy as np

from onnxcam.errors import ArgumentError, InputError

__all__ = ["Box", "box_in_region", "box_iou", "cam_to_boxes", "scale_box"]

Box = tuple[int, int, int, int]


def cam_to_boxes(cam: np.ndarray, threshold: float = 0.2) -> Box | None | list[Box | None]:
    """Box around the largest region where the map reaches ``threshold`` of its maximum.

    ``cam``: ``(H, W)`` -> one box (or ``None``); ``(N, H, W)`` -> a list of N of them.
    Pixels with ``value >= threshold * max`` form a mask; its largest 8-connected component
    (ties: the one whose first pixel comes first in row-major order) gives the box. A map whose
    maximum is ``<= 0`` (all zero, or all negative) has no region and yields ``None``.
    NaN counts as 0.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ArgumentError(f"threshold must be in [0, 1] (a fraction of the max), got {threshold}")
    arr = np.asarray(cam)
    if arr.ndim == 2:
        return _one_box(arr, threshold)
    if arr.ndim == 3:
        return [_one_box(m, threshold) for m in arr]
    raise InputError(f"cam must be (H, W) or (N, H, W), got shape {arr.shape}")


def _one_box(cam: np.ndarray, threshold: float) -> Box | None:
    m = np.nan_to_num(cam.astype(np.float64), nan=0.0)
    if m.size == 0:
        return None
    peak = float(m.max())
    if peak <= 0:
        return None
    mask = (m >= threshold * peak).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    # Label 0 is the background; labels are numbered in row-major order of first pixel,
    # so argmax's first-max rule gives the documented tie-break.
    best = 1 + int(np.argmax(stats[1:n, cv2.CC_STAT_AREA]))
    x, y, w, h = (int(stats[best, k]) for k in (
        cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT
    ))  # fmt: skip
    return (x, y, x + w, y + h)


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (exclusive ends); 0.0 when both are empty."""
    for name, box in (("a", a), ("b", b)):
        if len(box) != 4 or box[2] < box[0] or box[3] < box[1]:
            raise ArgumentError(f"box {name} must be (x0, y0, x1, y1) with x1>=x0, y1>=y0: {box}")
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def scale_box(box: Box, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> Box:
    """``box`` on a ``from_hw`` map -> the same region on a ``to_hw`` image (outward rounding)."""
    sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
    x0, y0, x1, y1 = box
    return (
        int(np.floor(x0 * sx)),
        int(np.floor(y0 * sy)),
        min(int(np.ceil(x1 * sx)), to_hw[1]),
        min(int(np.ceil(y1 * sy)), to_hw[0]),
    )


def box_in_region(box: Box, from_hw: tuple[int, int], region: tuple[float, float, float, float],
                  image_hw: tuple[int, int]) -> Box:
    """``box`` on a ``from_hw`` map -> pixels of an ``image_hw`` image whose ``region``
    ``(x0, y0, x1, y1)`` the map covers (``onnxcam.image.crop_box``: all of the image for a stretch,
    the central part for a center crop). Rounded outwards and clipped to the image."""
    rx0, ry0, rx1, ry1 = region
    sx, sy = (rx1 - rx0) / from_hw[1], (ry1 - ry0) / from_hw[0]
    x0, y0, x1, y1 = box
    # The epsilon keeps exact pixel boundaries from growing by one through float error.
    return (
        max(0, int(np.floor(rx0 + x0 * sx + 1e-6))),
        max(0, int(np.floor(ry0 + y0 * sy + 1e-6))),
        min(int(np.ceil(rx0 + x1 * sx - 1e-6)), image_hw[1]),
        min(int(np.ceil(ry0 + y1 * sy - 1e-6)), image_hw[0]),
    )
