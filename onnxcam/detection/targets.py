"""Targets for one detection: what a CAM of "this box" explains.

- ``DetectionScoreTarget`` (the default): the class score at the detection's own pre-NMS prediction
  (its anchor or query), as ODAM does. Instance-specific: two detections of the same class get
  different maps, because each seeds only its own prediction. For YOLOv5 layouts the score is
  objectness x class probability and both are seeded.
- ``DRiseTarget``: D-RISE's similarity over all pre-NMS predictions, ``max_j IoU(box, box_j) x
  cos(onehot(class), p_j) x o_j`` (``o_j``: objectness, or the prediction's best class probability
  where there is none); the gradient flows through the maximising prediction. It does not depend on
  which anchor produced the box, so it stays meaningful when the image is masked or channels are
  ablated (Score-CAM, Ablation-CAM) and the detection moves to a neighbouring anchor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from onnxcam.detection.layouts import DetectionLayout
from onnxcam.errors import TargetError
from onnxcam.sparse_seed import SparseSeed
from onnxcam.targets import Target


class _DetectionTarget(Target):
    layout: DetectionLayout
    category: int

    def reads(self, n_outputs: int) -> tuple[int, ...]:
        return self.layout.outputs

    def validate(self, shapes: Sequence[tuple[int, ...]]) -> None:
        self.layout.check(shapes)
        k = self.layout.num_classes
        if not 0 <= self.category < k:
            raise TargetError(f"detection class {self.category} is out of range: the detector has {k} classes")


@dataclass
class DetectionScoreTarget(_DetectionTarget):
    """The score of class ``category`` at pre-NMS prediction ``index`` (see the module docstring)."""

    layout: DetectionLayout
    index: int
    category: int

    def validate(self, shapes: Sequence[tuple[int, ...]]) -> None:
        super().validate(shapes)
        n = _num_predictions(self.layout, shapes)
        if not 0 <= self.index < n:
            raise TargetError(f"prediction {self.index} is out of range: the detector makes {n} per image")

    def _scores(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        probs, obj = self.layout.prediction(outputs, self.index)
        s = probs[..., self.category]
        return np.asarray(s if obj is None else s * obj)

    def scores(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        return self._scores(outputs).astype(np.float32)

    def score(self, outputs: Sequence[np.ndarray]) -> float:
        return float(self._scores(outputs))

    def seeds(self, outputs: Sequence[np.ndarray]) -> dict[int, np.ndarray]:
        return {k: s.dense() for k, s in self.sparse_seeds(outputs).items()}

    def sparse_seeds(self, outputs: Sequence[np.ndarray]) -> dict[int, SparseSeed]:
        probs, obj = self.layout.prediction(outputs, self.index)
        d = np.zeros(probs.shape[-1])
        o = 1.0 if obj is None else float(obj)
        d[self.category] = o
        return self.layout.sparse_backprop(outputs, self.index, None, d, float(probs[self.category]))

    def describe(self) -> str:
        return f"detection score of class {self.category} at prediction {self.index}"


@dataclass
class DRiseTarget(_DetectionTarget):
    """D-RISE similarity to a detection ``box`` (xyxy, model-input pixels) of class ``category``."""

    layout: DetectionLayout
    box: tuple[float, float, float, float]
    category: int

    def _terms(self, outputs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                                              np.ndarray, np.ndarray | None]:
        boxes, probs, obj = self.layout.rows(outputs)
        iou = _iou_to(np.asarray(self.box, dtype=np.float64), boxes)
        norm = np.sqrt((probs * probs).sum(axis=-1))
        cos = np.where(norm > 0, probs[..., self.category] / np.where(norm > 0, norm, 1.0), 0.0)
        o = probs.max(axis=-1) if obj is None else obj
        return iou * cos * o, iou, cos, boxes, probs, obj

    def scores(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        return np.asarray(self._terms(outputs)[0].max(axis=-1), dtype=np.float32)

    def score(self, outputs: Sequence[np.ndarray]) -> float:
        return float(self._terms(outputs)[0].max())

    def seeds(self, outputs: Sequence[np.ndarray]) -> dict[int, np.ndarray]:
        return {k: s.dense() for k, s in self.sparse_seeds(outputs).items()}

    def sparse_seeds(self, outputs: Sequence[np.ndarray]) -> dict[int, SparseSeed]:
        s, iou, cos, boxes, probs, obj = self._terms(outputs)
        j = int(np.argmax(s))
        p = probs[j]
        norm = float(np.sqrt(p @ p))
        o = float(p.max()) if obj is None else float(obj[j])
        d_cos = np.zeros_like(p)
        if norm > 0:
            d_cos = -p[self.category] * p / norm**3
            d_cos[self.category] += 1.0 / norm
        d_probs = iou[j] * o * d_cos
        d_obj = 0.0
        if obj is None:
            d_probs[int(np.argmax(p))] += iou[j] * cos[j]
        else:
            d_obj = float(iou[j] * cos[j])
        d_box = cos[j] * o * _iou_grad(np.asarray(self.box, dtype=np.float64), boxes[j])
        return self.layout.sparse_backprop(outputs, j, d_box, d_probs, d_obj)

    def describe(self) -> str:
        return f"D-RISE similarity to a class {self.category} box"


def _num_predictions(layout: DetectionLayout, shapes: Sequence[tuple[int, ...]]) -> int:
    s = shapes[layout.outputs[0]]
    return int(s[1] if layout.kind == "yolov8" else s[0])


def _iou_to(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU ``(...,)`` of one xyxy ``box`` with ``boxes (..., 4)``."""
    iw = np.clip(np.minimum(box[2], boxes[..., 2]) - np.maximum(box[0], boxes[..., 0]), 0, None)
    ih = np.clip(np.minimum(box[3], boxes[..., 3]) - np.maximum(box[1], boxes[..., 1]), 0, None)
    inter = iw * ih
    area = max(box[2] - box[0], 0) * max(box[3] - box[1], 0)
    areas = np.clip(boxes[..., 2] - boxes[..., 0], 0, None) * np.clip(boxes[..., 3] - boxes[..., 1], 0, None)
    union = area + areas - inter
    return np.asarray(np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0))


def _side(inner: float, outer: float) -> float:
    """1 where edge ``inner`` lies strictly inside ``outer``, 0.5 on it, 0 outside."""
    return 1.0 if inner > outer else 0.5 if inner == outer else 0.0


def _iou_grad(t: np.ndarray, b: np.ndarray) -> np.ndarray:
    """d IoU(t, b) / d b for xyxy boxes (one-sided where a min/max or a clip switches)."""
    iw = min(t[2], b[2]) - max(t[0], b[0])
    ih = min(t[3], b[3]) - max(t[1], b[1])
    w, h = b[2] - b[0], b[3] - b[1]
    if iw <= 0 or ih <= 0 or w <= 0 or h <= 0:
        return np.zeros(4)
    inter = iw * ih
    union = (t[2] - t[0]) * (t[3] - t[1]) + w * h - inter
    # Where an edge of b sits exactly on t's (the detection's own prediction), the two one-sided
    # derivatives average to 0, as torch's min/max split a tie: IoU peaks there.
    inner = np.array([_side(b[0], t[0]), _side(b[1], t[1]), _side(t[2], b[2]), _side(t[3], b[3])])
    d_inter = inner * np.array([-ih, -iw, ih, iw])
    d_area = np.array([-h, -w, h, w])
    return np.asarray((d_inter * union - inter * (d_area - d_inter)) / union**2)


__all__ = ["DRiseTarget", "DetectionScoreTarget"]
