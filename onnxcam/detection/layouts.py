"""How a detector's outputs are laid out, read from their shapes (and the exporter's metadata).

Layouts (per-image shapes, batch axis dropped):

- ``yolov8``: one output ``(4 + K, A)`` (YOLOv8 / YOLO11 / ultralytics exports): box centre x, y,
  width, height in input pixels, then K class probabilities (the sigmoid is inside the graph).
- ``yolov5``: one output ``(A, 5 + K)`` (YOLOv5, YOLOv7, YOLOX exports): box, objectness, K class
  probabilities; a prediction's score is objectness x class probability.
- ``pairs``: ``(A, 4)`` boxes and ``(A, K)`` scores (SSD, RetinaNet, FCOS exports), boxes ``xyxy``
  unless ``box_format`` says otherwise.
- ``queries``: ``(Q, 4)`` + ``(Q, K)`` with few predictions (``Q <= 1000``, DETR-style): normalised
  centre boxes, scores through a sigmoid (``scores="softmax"``: DETR's softmax with the last class
  as "no object").

A ``DetectionLayout`` turns one image's outputs (or ``(M, ...)`` rows of them, for the scorers)
into prediction rows - boxes ``xyxy`` in the layout's units, class probabilities, objectness - and
maps a gradient on those rows back onto the raw outputs (``backprop``), so targets never reason
about layouts.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from onnxcam.errors import ArgumentError, TargetError
from onnxcam.labels import metadata_labels
from onnxcam.sparse_seed import SparseSeed

Kind = Literal["yolov8", "yolov5", "pairs", "queries"]
BoxFormat = Literal["cxcywh", "xyxy", "xywh"]
ScoreKind = Literal["probabilities", "sigmoid", "softmax", "auto"]
KINDS: tuple[str, ...] = ("yolov8", "yolov5", "pairs", "queries")
BOX_FORMATS: tuple[str, ...] = ("cxcywh", "xyxy", "xywh")
SCORE_KINDS: tuple[str, ...] = ("probabilities", "sigmoid", "softmax", "auto")
# DETR-style models predict at most a few hundred queries; anchor-based heads thousands.
MAX_QUERIES = 1000


class LayoutError(TargetError):
    """The outputs do not have a detector layout onnxcam can read."""


@dataclass(frozen=True)
class DetectionLayout:
    """Where boxes and scores are in a detector's outputs.

    ``outputs``: the model output indices read (one for YOLO layouts, (boxes, scores) for pairs and
    queries). ``box_format``: ``cxcywh`` (centre, size), ``xyxy`` (corners) or ``xywh`` (top-left
    corner, size). ``normalized``: coordinates in [0, 1] of the input (None: decided from the
    values, boxes within [0, 1.5] are normalised). ``scores``: how raw scores become probabilities.
    ``input_size``: the model input ``(H, W)``, to turn normalised boxes into pixels.
    """

    kind: Kind
    outputs: tuple[int, ...]
    num_classes: int
    box_format: BoxFormat = "cxcywh"
    normalized: bool | None = False
    scores: ScoreKind = "probabilities"
    input_size: tuple[int, int] | None = None

    @property
    def has_objectness(self) -> bool:
        return self.kind == "yolov5"

    def describe(self) -> str:
        return f"{self.kind} ({self.num_classes} classes, boxes {self.box_format})"

    # -- reading rows ------------------------------------------------------------------------------
    def raw(self, outputs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Raw ``boxes (..., A, 4)``, ``scores (..., A, K')``, ``objectness (..., A)`` or None, as
        views of the per-image outputs (any leading axes kept)."""
        if self.kind == "yolov8":
            out = outputs[self.outputs[0]]
            return np.swapaxes(out[..., :4, :], -1, -2), np.swapaxes(out[..., 4:, :], -1, -2), None
        if self.kind == "yolov5":
            out = outputs[self.outputs[0]]
            return out[..., :4], out[..., 5:], out[..., 4]
        return outputs[self.outputs[0]], outputs[self.outputs[1]], None

    def scale(self, boxes: np.ndarray) -> tuple[float, float]:
        """Pixels per box unit along x and y (1 for pixel boxes)."""
        normalized = self.normalized
        if normalized is None:
            normalized = bool(boxes.size) and float(np.abs(boxes).max()) <= 1.5
        if not normalized:
            return 1.0, 1.0
        if self.input_size is None:
            raise ArgumentError("normalised boxes need the model's input size to become pixels: pass input_size")
        return float(self.input_size[1]), float(self.input_size[0])

    def score_kind(self, scores: np.ndarray) -> str:
        if self.scores != "auto":
            return self.scores
        inside = scores.size == 0 or (float(scores.min()) >= 0.0 and float(scores.max()) <= 1.0)
        return "probabilities" if inside else "sigmoid"

    def rows(self, outputs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``boxes (..., A, 4)`` xyxy in input pixels, class probabilities ``(..., A, K)`` and
        objectness ``(..., A)`` (None without one), all float64."""
        boxes, scores, obj = self.raw(outputs)
        sx, sy = self.scale(boxes)
        xyxy = to_xyxy(np.asarray(boxes, dtype=np.float64), self.box_format) * np.array([sx, sy, sx, sy])
        probs = _activate(np.asarray(scores, dtype=np.float64), self.score_kind(scores))
        return xyxy, probs, None if obj is None else np.asarray(obj, dtype=np.float64)

    def prediction(self, outputs: Sequence[np.ndarray], a: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Prediction ``a``'s class probabilities ``(..., K)`` and objectness ``(...)`` (None without
        one), float64: ``rows`` for one prediction, without decoding every box."""
        _, scores, obj = self.raw(outputs)
        probs = _activate(np.asarray(scores[..., a, :], dtype=np.float64), self.score_kind(scores))
        return probs, None if obj is None else np.asarray(obj[..., a], dtype=np.float64)

    def backprop(self, outputs: Sequence[np.ndarray], a: int, d_box: np.ndarray | None, d_probs: np.ndarray | None,
                 d_obj: float = 0.0) -> dict[int, np.ndarray]:
        """Seeds ``{output index: d/d output}`` of one image from gradients on prediction ``a``'s row:
        ``d_box (4,)`` on its xyxy pixel box, ``d_probs (K,)`` on its class probabilities, ``d_obj``."""
        return {k: s.dense() for k, s in self.sparse_backprop(outputs, a, d_box, d_probs, d_obj).items()}

    def sparse_backprop(self, outputs: Sequence[np.ndarray], a: int, d_box: np.ndarray | None,
                        d_probs: np.ndarray | None, d_obj: float = 0.0) -> dict[int, SparseSeed]:
        """``backprop`` as ``SparseSeed``s: the entries of prediction ``a``'s row only."""
        entries: dict[int, list[tuple[tuple[int, int], float]]] = {k: [] for k in self.outputs}
        boxes, scores, _ = self.raw(outputs)
        if d_box is not None:
            sx, sy = self.scale(boxes)
            d_raw_box = from_xyxy_grad(np.asarray(d_box, np.float64) * np.array([sx, sy, sx, sy]), self.box_format)
            self._put(entries, "box", a, d_raw_box)
        if d_probs is not None:
            kind = self.score_kind(scores)
            self._put(entries, "scores", a, _activate_grad(np.asarray(scores[a], np.float64), d_probs, kind))
        if d_obj and self.kind == "yolov5":
            entries[self.outputs[0]].append(((a, 4), float(np.float32(d_obj))))
        out = {}
        for k, got in entries.items():
            got = [(at, v) for at, v in got if v != 0]  # zeros add nothing (NaN stays: it is not 0)
            index = [[at[axis] for at, _ in got] for axis in (0, 1)]
            # float32 values, as a dense seed of float32 would hold them
            out[k] = SparseSeed.of(outputs[k].shape, index, np.array([v for _, v in got], dtype=np.float32))
        return out

    def _put(self, entries: dict[int, list[tuple[tuple[int, int], float]]], part: str, a: int,
             values: np.ndarray) -> None:
        v = values.astype(np.float32)
        if self.kind == "yolov8":
            first = 0 if part == "box" else 4
            entries[self.outputs[0]].extend(((first + j, a), float(x)) for j, x in enumerate(v))
        elif self.kind == "yolov5":
            first = 0 if part == "box" else 5
            entries[self.outputs[0]].extend(((a, first + j), float(x)) for j, x in enumerate(v))
        else:
            entries[self.outputs[0 if part == "box" else 1]].extend(((a, j), float(x)) for j, x in enumerate(v))

    def check(self, shapes: Sequence[tuple[int, ...]]) -> None:
        """Raise ``LayoutError`` when per-image output shapes do not fit this layout."""
        try:
            found = _read(shapes, self.kind, self.num_classes)
        except LayoutError as e:
            raise LayoutError(f"outputs {_fmt(shapes)} do not fit the {self.describe()} layout: {e}") from None
        if found.outputs != self.outputs:
            raise LayoutError(f"outputs {_fmt(shapes)} do not fit the {self.describe()} layout")


def to_xyxy(boxes: np.ndarray, fmt: str) -> np.ndarray:
    """``(..., 4)`` boxes in ``fmt`` -> corners ``x1, y1, x2, y2``."""
    a, b, c, d = (boxes[..., i] for i in range(4))
    if fmt == "xyxy":
        return np.stack([a, b, c, d], axis=-1)
    if fmt == "cxcywh":
        return np.stack([a - c / 2, b - d / 2, a + c / 2, b + d / 2], axis=-1)
    if fmt == "xywh":
        return np.stack([a, b, a + c, b + d], axis=-1)
    raise ArgumentError(f"unknown box format {fmt!r}: use one of {', '.join(BOX_FORMATS)}")


def from_xyxy_grad(d: np.ndarray, fmt: str) -> np.ndarray:
    """The gradient on the raw ``fmt`` box from a gradient ``d (4,)`` on its xyxy corners."""
    d1, d2, d3, d4 = (float(v) for v in d)
    if fmt == "xyxy":
        return np.array([d1, d2, d3, d4])
    if fmt == "cxcywh":
        return np.array([d1 + d3, d2 + d4, (d3 - d1) / 2, (d4 - d2) / 2])
    return np.array([d1 + d3, d2 + d4, d3, d4])  # xywh


def _activate(scores: np.ndarray, kind: str) -> np.ndarray:
    if kind == "probabilities":
        return scores
    if kind == "sigmoid":
        return np.asarray(1.0 / (1.0 + np.exp(-scores)))
    z = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return np.asarray((z / z.sum(axis=-1, keepdims=True))[..., :-1])  # the last class is "no object"


def _activate_grad(raw: np.ndarray, d_probs: np.ndarray, kind: str) -> np.ndarray:
    """d/d raw scores (one row) from ``d_probs`` on the activated probabilities."""
    d = np.asarray(d_probs, dtype=np.float64)
    if kind == "probabilities":
        return d
    if kind == "sigmoid":
        p = 1.0 / (1.0 + np.exp(-raw))
        return d * p * (1.0 - p)
    z = np.exp(raw - raw.max())
    p = z / z.sum()
    full = np.append(d, 0.0)  # nothing asks for the "no object" probability
    return np.asarray(p * (full - float(p @ full)))


def _fmt(shapes: Sequence[tuple[Any, ...]]) -> str:
    return ", ".join("(N, " + ", ".join(str(d) for d in s) + ")" for s in shapes) or "none"


def _read(shapes: Sequence[tuple[Any, ...]], kind: str | None, num_classes: int | None) -> DetectionLayout:
    """The layout of outputs with per-image ``shapes``; ``kind``/``num_classes`` narrow the choice."""
    known = [tuple(s) for s in shapes]
    two_d = [i for i, s in enumerate(known) if len(s) == 2 and all(isinstance(d, int) for d in s)]
    if kind in (None, "pairs", "queries"):
        box = [i for i in two_d if known[i][1] == 4]
        for b in box:
            others = [i for i in two_d if i != b and known[i][0] == known[b][0] and (known[i][1] != 4 or i > b)]
            if others:
                s = others[0]
                n = known[b][0]
                chosen = kind or ("queries" if n <= MAX_QUERIES else "pairs")
                if chosen == "queries":
                    return DetectionLayout("queries", (b, s), known[s][1], "cxcywh", True, "sigmoid")
                return DetectionLayout("pairs", (b, s), known[s][1], "xyxy", None, "auto")
    if kind in (None, "yolov8", "yolov5") and len(known) >= 1 and 0 in two_d:
        c, a = known[0]
        v8_ok = c > 4 and (num_classes is None or c == 4 + num_classes)
        v5_ok = a > 5 and (num_classes is None or a == 5 + num_classes)
        if kind == "yolov8" and v8_ok:
            return DetectionLayout("yolov8", (0,), c - 4)
        if kind == "yolov5" and v5_ok:
            return DetectionLayout("yolov5", (0,), a - 5)
        # Unforced, the smaller axis holds box + classes: predictions outnumber channels.
        if kind is None and v8_ok and c < a:
            return DetectionLayout("yolov8", (0,), c - 4)
        if kind is None and v5_ok and a < c:
            return DetectionLayout("yolov5", (0,), a - 5)
    raise LayoutError(f"no {kind or 'detector'} layout fits outputs {_fmt(known)}")


def metadata_size(metadata: Mapping[str, str] | None) -> tuple[int, int] | None:
    """The input size ``(H, W)`` from metadata ``imgsz`` (``[640, 640]`` or ``640``)."""
    raw = (metadata or {}).get("imgsz")
    if not raw:
        return None
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return None
    if isinstance(value, int):
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    return None


def recognise(
    shapes: Sequence[tuple[Any, ...]],
    metadata: Mapping[str, str] | None = None,
    *,
    kind: str | None = None,
    box_format: str | None = None,
    normalized: bool | None = None,
    scores: str | None = None,
    input_size: tuple[int, int] | None = None,
) -> DetectionLayout:
    """The detector layout of outputs with per-image ``shapes``, or ``LayoutError`` naming the
    shapes and the options that would make them readable.

    ``metadata``: the model's metadata_props (``names`` fixes K, ``imgsz`` the input size).
    ``kind``, ``box_format``, ``normalized``, ``scores`` override what is read from the shapes.
    """
    if kind is not None and kind not in KINDS:
        raise ArgumentError(f"unknown detection layout {kind!r}: use one of {', '.join(KINDS)}")
    if box_format is not None and box_format not in BOX_FORMATS:
        raise ArgumentError(f"unknown box format {box_format!r}: use one of {', '.join(BOX_FORMATS)}")
    if scores is not None and scores not in SCORE_KINDS:
        raise ArgumentError(f"unknown score kind {scores!r}: use one of {', '.join(SCORE_KINDS)}")
    names = metadata_labels(metadata or {})
    layout: DetectionLayout | None = None
    for k in ([len(names)] if names else []) + [None]:  # metadata can be stale: the shapes decide
        try:
            layout = _read(shapes, kind, k)
            break
        except LayoutError:
            continue
    if layout is None:
        raise LayoutError(
            f"cannot read detections from outputs {_fmt(shapes)}: onnxcam reads YOLOv8 (N, 4 + K, A), YOLOv5 "
            "(N, A, 5 + K), box/score pairs (N, A, 4) + (N, A, K) and DETR queries (N, Q, 4) + (N, Q, K); "
            "for another task pass task='classification' / 'segmentation' (CLI --task), for a detector "
            f"export the pre-NMS boxes and scores in one of those layouts (layout kinds: {', '.join(KINDS)}; "
            f"box formats: {', '.join(BOX_FORMATS)})"
        )
    size = input_size or metadata_size(metadata)
    softmax = (scores or layout.scores) == "softmax"
    return replace(
        layout,
        num_classes=layout.num_classes - 1 if softmax else layout.num_classes,  # DETR's last class: no object
        box_format=box_format or layout.box_format,  # type: ignore[arg-type]
        normalized=layout.normalized if normalized is None else normalized,
        scores=scores or layout.scores,  # type: ignore[arg-type]
        input_size=size,
    )


__all__ = ["BOX_FORMATS", "KINDS", "DetectionLayout", "LayoutError", "metadata_size",
           "recognise", "to_xyxy"]
