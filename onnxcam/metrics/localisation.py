"""Localisation metrics: does the map point at the annotated object?

* Pointing game: Zhang, Bargal, Lin, Brandt, Shen, Sclaroff, "Top-down Neural Attention by
  Excitation Backprop", ECCV 2016 (arXiv:1608.00507). A hit when the map's maximum lies on the
  object; the paper allows a 15-pixel tolerance around the annotation to absorb annotation and
  upsampling slack. Here ``tolerance`` defaults to 0 (a strict hit inside the box), because the
  15 px were chosen for ~224 px inputs and do not transfer to other resolutions; pass
  ``tolerance=15`` to reproduce the paper's protocol. The tolerance is a Euclidean distance from
  the pixel to the nearest box pixel.
  When several pixels share the maximum the hit requires *all* of them inside, so a flat map
  only scores when the box covers the whole image.
* Energy-based pointing game: Wang, Wang, Du, Yang, Zhang, Ding, Mardziel, Hu, "Score-CAM:
  Score-Weighted Visual Explanations for CNNs", CVPRW 2020 (arXiv:1910.01279), section 5.3:
  the share of the map's total mass inside the box(es).
* CAM box IoU: the weakly-supervised localisation protocol of Zhou et al., "Learning Deep
  Features for Discriminative Localization", CVPR 2016 (threshold 20 % of the maximum, box of
  the largest connected component, 8-connectivity), scored by IoU against the true box.

Boxes are ``(x0, y0, x1, y1)`` pixel coordinates with ``x1`` and ``y1`` exclusive. ``boxes`` is
either ``(N, 4)`` (one box per image) or a sequence of ``(k_i, 4)`` arrays (several boxes of the
class per image: their union for the pointing games, the best IoU for :func:`cam_box_iou`).
Boxes are clipped to the image; one with no pixel left is an error.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import cv2
import numpy as np
from numpy.typing import ArrayLike, NDArray

from onnxcam.errors import ArgumentError, InputError, OnnxCamWarning

Boxes = ArrayLike | Sequence[ArrayLike]


def _check_maps(maps: ArrayLike) -> NDArray[np.float64]:
    arr = np.asarray(maps, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] == 0:
        raise InputError(f"maps has shape {arr.shape}; expected (N, H, W) maps at input resolution.")
    if not np.all(np.isfinite(arr)):
        raise InputError("maps contains NaN or Inf; normalise the maps to [0, 1] first.")
    return arr


def _check_boxes(boxes: Boxes, n: int, size: tuple[int, int]) -> list[NDArray[np.int64]]:
    """One ``(k, 4)`` int array of clipped boxes per image."""
    try:
        regular = np.asarray(boxes, dtype=np.float64)
    except ValueError:  # ragged: a different number of boxes per image
        regular = None
    if regular is not None and regular.ndim == 1:
        per_image = [regular]
    elif regular is not None and regular.ndim == 2:
        per_image = [regular[i : i + 1] for i in range(regular.shape[0])]
    elif regular is not None and regular.ndim == 3:
        per_image = list(regular)
    else:
        per_image = [np.asarray(b, dtype=np.float64) for b in boxes]  # type: ignore[union-attr]
    if len(per_image) != n:
        raise ArgumentError(f"boxes gives {len(per_image)} entries for {n} maps; pass one box (or list) per map.")
    h, w = size
    out: list[NDArray[np.int64]] = []
    for i, b in enumerate(per_image):
        if b.size % 4 or b.ndim > 2:
            raise ArgumentError(f"boxes[{i}] has shape {b.shape}; expected (4,) or (k, 4) as (x0, y0, x1, y1).")
        b = b.reshape(-1, 4)
        if b.shape[0] == 0:
            raise ArgumentError(f"boxes[{i}] is empty; every map needs at least one ground-truth box.")
        if not np.all(np.isfinite(b)) or np.any(b != np.rint(b)):
            raise ArgumentError(f"boxes[{i}]={b.tolist()} must hold integer pixel coordinates.")
        c = b.astype(np.int64)
        c[:, [0, 2]] = np.clip(c[:, [0, 2]], 0, w)
        c[:, [1, 3]] = np.clip(c[:, [1, 3]], 0, h)
        bad = (c[:, 2] <= c[:, 0]) | (c[:, 3] <= c[:, 1])
        if np.any(bad):
            raise ArgumentError(
                f"boxes[{i}]={b[bad].tolist()} is empty inside the {w}x{h} map; boxes are "
                "(x0, y0, x1, y1) with x1 > x0 and y1 > y0, x1/y1 exclusive."
            )
        out.append(c)
    return out


def box_mask(boxes: NDArray[np.int64], size: tuple[int, int], tolerance: float = 0.0) -> NDArray[np.bool_]:
    """``(H, W)`` union of ``(k, 4)`` boxes, grown by a Euclidean ``tolerance`` in pixels."""
    h, w = size
    ys = np.arange(h)[:, None]
    xs = np.arange(w)[None, :]
    mask = np.zeros((h, w), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        dx = np.maximum(np.maximum(x0 - xs, xs - (x1 - 1)), 0)
        dy = np.maximum(np.maximum(y0 - ys, ys - (y1 - 1)), 0)
        mask |= dx * dx + dy * dy <= tolerance * tolerance
    return mask


def pointing_game(maps: ArrayLike, boxes: Boxes, tolerance: float = 0.0) -> NDArray[np.bool_]:
    """``(N,)`` True where the map's maximum falls inside the box (grown by ``tolerance`` px)."""
    if tolerance < 0:
        raise ArgumentError(f"tolerance={tolerance} must be >= 0 pixels (Zhang et al. used 15).")
    cams = _check_maps(maps)
    size = (cams.shape[1], cams.shape[2])
    per_image = _check_boxes(boxes, cams.shape[0], size)
    hits = np.zeros(cams.shape[0], dtype=bool)
    for i, (cam, b) in enumerate(zip(cams, per_image, strict=True)):
        peak = cam == cam.max()
        hits[i] = bool(np.all(box_mask(b, size, tolerance)[peak]))
    return hits


def energy_pointing_game(maps: ArrayLike, boxes: Boxes) -> NDArray[np.float64]:
    """``(N,)`` share of the map's mass inside the box(es): ``sum(map * in_box) / sum(map)``.

    Maps must be non-negative. An all-zero map has no mass: its value is NaN, with an
    :class:`~onnxcam.errors.OnnxCamWarning`.
    """
    cams = _check_maps(maps)
    if np.any(cams < 0):
        raise InputError("maps has negative values; the energy pointing game needs maps >= 0 (clip or rescale).")
    size = (cams.shape[1], cams.shape[2])
    per_image = _check_boxes(boxes, cams.shape[0], size)
    out = np.empty(cams.shape[0], dtype=np.float64)
    for i, (cam, b) in enumerate(zip(cams, per_image, strict=True)):
        total = cam.sum()
        if total <= 0:
            warnings.warn(f"map {i} is all zero; its energy pointing game is NaN.", OnnxCamWarning, stacklevel=2)
            out[i] = np.nan
        else:
            out[i] = cam[box_mask(b, size)].sum() / total
    return out


def cam_boxes(maps: ArrayLike, threshold: float = 0.2) -> NDArray[np.int64]:
    """``(N, 4)`` box of the largest 8-connected component of ``map >= threshold * max(map)``.

    A flat (e.g. all-zero) map selects the whole image, with an
    :class:`~onnxcam.errors.OnnxCamWarning`. Equal-area components: the first in OpenCV's
    labelling (row-major scan) wins.
    """
    if not 0 <= threshold <= 1:
        raise ArgumentError(f"threshold={threshold} must be in [0, 1] (fraction of the map maximum; Zhou et al. 0.2).")
    cams = _check_maps(maps)
    out = np.empty((cams.shape[0], 4), dtype=np.int64)
    for i, cam in enumerate(cams):
        peak = cam.max()
        if peak <= cam.min():
            warnings.warn(f"map {i} is flat; its CAM box is the whole image.", OnnxCamWarning, stacklevel=2)
        binary = (cam >= threshold * peak).astype(np.uint8)
        _, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
        # Label 0 is the background (the pixels below threshold); the maximum is always in
        # the foreground, so there is at least one other label.
        label = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        x, y = stats[label, cv2.CC_STAT_LEFT], stats[label, cv2.CC_STAT_TOP]
        out[i] = (x, y, x + stats[label, cv2.CC_STAT_WIDTH], y + stats[label, cv2.CC_STAT_HEIGHT])
    return out


def box_iou(a: NDArray[np.int64], b: NDArray[np.int64]) -> NDArray[np.float64]:
    """IoU of ``(..., 4)`` boxes ``a`` and ``b`` (broadcast), exclusive ``x1``/``y1``."""
    ix = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    iy = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = ix * iy
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return np.asarray(inter / (area_a + area_b - inter), dtype=np.float64)


def cam_box_iou(maps: ArrayLike, boxes: Boxes, threshold: float = 0.2) -> NDArray[np.float64]:
    """``(N,)`` IoU of each :func:`cam_boxes` box with its true box (best over several boxes)."""
    cams = _check_maps(maps)
    per_image = _check_boxes(boxes, cams.shape[0], (cams.shape[1], cams.shape[2]))
    predicted = cam_boxes(cams, threshold)
    return np.array([box_iou(predicted[i][None], b).max() for i, b in enumerate(per_image)])
