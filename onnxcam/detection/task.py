"""``DetectionTask``: a detector's outputs read as detections, one target per detection.

Recognised from the output shapes (see ``onnxcam.detection.layouts``) or forced with
``task="detect"``. Default target: each image's top detection (``DetectionScoreTarget``, or
``DRiseTarget`` with ``target="drise"``); an int ``k`` is each image's k-th detection (0 = the top).
``top_targets(outputs, k)`` gives each image up to ``k`` detections: the lists are ragged (an image
may have fewer, or none), so a caller explains image by image, or flattens the lists and repeats
each image once per target. Boxes are in model-input pixels; ``to_image_boxes`` maps them onto the
original image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from onnxcam.detection.decode import DecodeOptions, Detection, decode
from onnxcam.detection.layers import head_layers
from onnxcam.detection.layouts import DetectionLayout, LayoutError, recognise
from onnxcam.detection.targets import DetectionScoreTarget, DRiseTarget
from onnxcam.errors import ArgumentError, TargetError
from onnxcam.labels import LabelsSpec, metadata_labels
from onnxcam.targets import Target, TargetSpec
from onnxcam.tasks import Task

if TYPE_CHECKING:
    from onnxcam.model import Model

TargetKind = Literal["score", "drise"]
# A (4 + K, A) or (A, 5 + K) output is read as a YOLO head without metadata only when predictions
# clearly outnumber channels: a token sequence (197, 768) is not a detector.
MIN_PREDICTIONS_PER_CHANNEL = 4


class DetectionTask(Task):
    """Detections from a detector's outputs (``layout``), decoded with ``conf``/``iou``/``max_det``.

    ``target``: ``"score"`` (the detection's own class score, the default) or ``"drise"``.
    """

    name = "detect"

    def __init__(self, layout: DetectionLayout, labels: LabelsSpec = None, *, conf: float = 0.25,
                 iou: float = 0.45, max_det: int = 300, target: TargetKind = "score") -> None:
        super().__init__(labels, output=layout.outputs[0])
        if target not in ("score", "drise"):
            raise ArgumentError(f"unknown detection target {target!r}: use 'score' or 'drise'")
        self.layout = layout
        self.options = DecodeOptions(conf, iou, max_det)
        self.target_kind: TargetKind = target

    # -- detections -------------------------------------------------------------------------------
    def detections(self, outputs: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Per image, its detections best first (boxes in model-input pixels)."""
        return decode(self.layout, outputs, self.options)

    def detection_target(self, det: Detection) -> Target:
        if self.target_kind == "drise":
            return DRiseTarget(self.layout, det.box, det.category)
        return DetectionScoreTarget(self.layout, det.index, det.category)

    def resolve(self, spec: TargetSpec, outputs: Sequence[np.ndarray]) -> list[Target]:
        """As ``Task.resolve``; an int ``k`` is each image's k-th detection (0 = its top one)."""
        ints = isinstance(spec, (int, np.integer)) and not isinstance(spec, bool)
        if ints or (isinstance(spec, Sequence) and any(isinstance(s, (int, np.integer)) for s in spec)):
            n = int(outputs[0].shape[0])
            entries = [spec] * n if ints else list(spec)  # type: ignore[arg-type]
            if len(entries) != n:
                raise TargetError(f"got {len(entries)} targets for a batch of {n} images: give one target per image")
            dets = self.detections(outputs)
            chosen: list[int | Target] = []
            for i, e in enumerate(entries):
                if isinstance(e, (int, np.integer)):
                    chosen.append(self._kth(dets[i], int(e), i))
                elif isinstance(e, Target):
                    chosen.append(e)
                else:
                    raise TargetError(f"target {e!r} is neither a detection rank nor a Target object")
            spec = chosen
        return super().resolve(spec, outputs)

    def _kth(self, dets: list[Detection], k: int, image: int) -> Target:
        if not 0 <= k < len(dets):
            which = f"pick 0..{len(dets) - 1} or lower conf" if dets else "lower conf, or pass a Target"
            raise TargetError(
                f"image {image} has {len(dets)} detection(s) above conf {self.options.conf}, so detection {k} does "
                f"not exist: {which}"
            )
        return self.detection_target(dets[k])

    def default_targets(self, outputs: Sequence[np.ndarray]) -> list[Target]:
        return [self._kth(d, 0, i) for i, d in enumerate(self.detections(outputs))]

    def target(self, k: int) -> Target:
        raise TargetError(f"detection {k} depends on the image: pass targets through resolve(k, outputs)")

    def top_targets(self, outputs: Sequence[np.ndarray], k: int) -> list[list[Target]]:
        """Up to ``k`` detection targets per image, best first (ragged; see the module docstring)."""
        if k < 1:
            raise ArgumentError(f"number of detections must be >= 1, got {k}")
        return [[self.detection_target(d) for d in dets[:k]] for dets in self.detections(outputs)]

    def default_reads(self) -> tuple[int, ...]:
        return self.layout.outputs

    def default_layers(self, model: Model) -> tuple[str, ...] | None:
        """The feature maps feeding the detection head, one per stride (see ``onnxcam.detection.layers``)."""
        shape = model.output_shapes[self.layout.outputs[0]]
        a = shape[1] if self.layout.kind == "yolov8" else shape[0]
        if not isinstance(a, int):
            return None
        return head_layers(model.proto, model.layers(), a, model.name)

    # -- reading outputs --------------------------------------------------------------------------
    def check(self, outputs: Sequence[np.ndarray]) -> None:
        self.layout.check([tuple(int(d) for d in o.shape[1:]) for o in outputs])
        k = self.layout.num_classes
        if self.labels is not None and len(self.labels) != k:
            raise ArgumentError(
                f"the labels file has {len(self.labels)} names but the detector has {k} classes: "
                "pass the labels file that belongs to this model"
            )

    def row(self, det: Detection) -> dict[str, Any]:
        """A summary row: class, label, score, box (model-input pixels) and the pre-NMS prediction."""
        return {"class": det.category, "label": self.label(det.category), "score": det.score,
                "box": [round(v, 2) for v in det.box], "prediction": det.index}

    def predictions(self, outputs: Sequence[np.ndarray], top: int) -> list[list[dict[str, Any]]]:
        return [[self.row(d) for d in dets[:top]] for dets in self.detections(outputs)]

    def describe(self, target: Target) -> dict[str, Any]:
        category = getattr(target, "category", None)
        if category is None:
            return {"target": target.describe()}
        row: dict[str, Any] = {"class": int(category), "label": self.label(int(category)), "target": target.describe()}
        if isinstance(target, DetectionScoreTarget):
            row["prediction"] = target.index
        return row

    def caption(self, target: Target) -> str:
        category = getattr(target, "category", None)
        return self.label(int(category)) if category is not None else target.describe()


def recognise_task(shapes: Sequence[tuple[Any, ...]], kind: str | None, labels: LabelsSpec,
                   metadata: Mapping[str, str] | None) -> Task | None:
    """``onnxcam.tasks.detect_task``'s hook: a ``DetectionTask`` for ``kind="detect"`` (or an error
    naming the shapes and options), or for ``kind`` auto when the outputs read as a detector's."""
    if kind not in (None, "auto", "detect"):
        return None
    names = labels if labels is not None else metadata_labels(metadata or {})
    if kind == "detect":
        return DetectionTask(recognise(shapes, metadata), names)
    try:
        layout = recognise(shapes, metadata)
    except (LayoutError, ArgumentError):
        return None
    said = (metadata or {}).get("task") == "detect"
    # A single output that ends in a Softmax over its last axis is a classifier's or a recognizer's
    # (N, T, C) distribution (PP-OCR's 40 x 6625), not a YOLO head, whose scores come out of a Concat.
    final = getattr(shapes, "activations", {}).get(layout.outputs[0])
    if final in ("Softmax", "LogSoftmax") and not said:
        return None
    if layout.kind in ("yolov8", "yolov5") and not said:
        c, a = shapes[layout.outputs[0]]
        if max(c, a) < MIN_PREDICTIONS_PER_CHANNEL * min(c, a):
            return None
    return DetectionTask(layout, names)


__all__ = ["DetectionTask", "recognise_task"]
