"""Decoding: prediction rows -> confidence filter -> per-class greedy NMS -> detections, in numpy.

A ``Detection`` keeps the index of the pre-NMS prediction it came from, so a target can read that
prediction's own score (instance-specific) from the outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from onnxcam.detection.layouts import DetectionLayout
from onnxcam.errors import ArgumentError


@dataclass(frozen=True)
class Detection:
    """One kept detection of one image.

    ``index``: its pre-NMS prediction (anchor or query). ``box``: ``(x1, y1, x2, y2)`` in model-input
    pixels (``onnxcam.detection.to_image_boxes`` maps it onto the original image). ``score``: class
    probability (x objectness for YOLOv5 layouts).
    """

    index: int
    category: int
    score: float
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class DecodeOptions:
    """``conf``: minimum score kept; ``iou``: NMS overlap above which the lower box goes;
    ``max_det``: detections kept per image (best first)."""

    conf: float = 0.25
    iou: float = 0.45
    max_det: int = 300

    def __post_init__(self) -> None:
        check_options(self.conf, self.iou, self.max_det)


def check_options(conf: float, iou: float, max_det: int) -> None:
    if not 0.0 <= conf <= 1.0:
        raise ArgumentError(f"confidence threshold must be in [0, 1], got {conf}: pass e.g. conf=0.25 (CLI --conf)")
    if not 0.0 <= iou <= 1.0:
        raise ArgumentError(f"NMS IoU threshold must be in [0, 1], got {iou}: pass e.g. iou=0.45 (CLI --iou)")
    if int(max_det) < 1:
        raise ArgumentError(f"max_det must be >= 1, got {max_det}")


def box_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU ``(P, Q)`` of xyxy boxes ``a (P, 4)`` and ``b (Q, 4)`` (0 where both are empty)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0.0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.asarray(np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0))


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float, max_det: int) -> np.ndarray:
    """Indices kept by per-class greedy NMS, best score first (ties: lower index first).

    ``boxes (P, 4)`` xyxy, ``scores (P,)``, ``classes (P,)``. A box is suppressed by a better kept box
    of the same class overlapping it by IoU > ``iou``.
    """
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    suppressed = np.zeros(len(order), dtype=bool)
    boxes = np.asarray(boxes, dtype=np.float64)
    for pos, i in enumerate(order):
        if suppressed[pos]:
            continue
        keep.append(int(i))
        if len(keep) >= max_det:
            break
        rest = order[pos + 1:]
        same = (classes[rest] == classes[i]) & ~suppressed[pos + 1:]
        if not same.any():
            continue
        overlap = box_iou_matrix(boxes[i][None], boxes[rest[same]])[0]
        idx = np.flatnonzero(same)[overlap > iou]
        suppressed[pos + 1 + idx] = True
    return np.asarray(keep, dtype=np.int64)


def candidates(layout: DetectionLayout, outputs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's ``boxes (A, 4)`` xyxy pixels, best ``scores (A,)`` and ``classes (A,)`` per prediction
    (one label per box, as ultralytics' default ``multi_label=False``)."""
    boxes, probs, obj = layout.rows(outputs)
    scores = probs if obj is None else probs * obj[:, None]
    classes = scores.argmax(axis=1) if scores.shape[1] else np.zeros(scores.shape[0], dtype=np.int64)
    best = scores[np.arange(scores.shape[0]), classes] if scores.shape[1] else np.zeros(scores.shape[0])
    return boxes, best, classes


def decode(layout: DetectionLayout, outputs: Sequence[np.ndarray], options: DecodeOptions) -> list[list[Detection]]:
    """Per image (outputs with their batch axis), its detections best first (possibly none)."""
    n = int(outputs[0].shape[0]) if outputs else 0
    result = []
    for i in range(n):
        boxes, scores, classes = candidates(layout, [o[i] for o in outputs])
        live = np.flatnonzero(scores > options.conf)
        kept = live[nms(boxes[live], scores[live], classes[live], options.iou, options.max_det)]
        result.append([Detection(int(a), int(classes[a]), float(scores[a]),
                                 tuple(float(v) for v in boxes[a]))  # type: ignore[arg-type]
                       for a in kept])
    return result


def to_image_boxes(boxes: np.ndarray, region: tuple[float, float, float, float],
                   input_size: tuple[int, int]) -> np.ndarray:
    """xyxy boxes ``(..., 4)`` in model-input pixels -> original-image pixels.

    ``region``: the part of the original image the input shows, ``onnxcam.image.crop_box``'s
    ``(x0, y0, x1, y1)`` (it reaches outside the image for a letterbox's padding).
    """
    x0, y0, x1, y1 = region
    sx, sy = (x1 - x0) / input_size[1], (y1 - y0) / input_size[0]
    b = np.asarray(boxes, dtype=np.float64)
    return np.asarray(b * np.array([sx, sy, sx, sy]) + np.array([x0, y0, x0, y0]))


__all__ = ["DecodeOptions", "Detection", "box_iou_matrix", "candidates", "check_options", "decode", "nms",
           "to_image_boxes"]
