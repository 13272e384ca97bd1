"""Exported explainers for object detectors: the top detections and one map per detection.

The Python path (``onnxcam.detection``) decodes the outputs, runs per-class NMS in numpy, and explains
each kept detection with ``DetectionScoreTarget`` (its class score at its own pre-NMS prediction).
Here the same steps are ONNX ops, after the model's own nodes:

- decode (``DetectionLayout.rows`` / ``decode.candidates``): xyxy pixel boxes, class probabilities
  (x objectness for YOLOv5 layouts), one label per prediction (its best class);
- ``NonMaxSuppression`` on a score tensor that holds each live prediction's rank at its own class
  only (so NMS compares boxes of one class, one label per box, as ``decode.nms``; the rank orders by
  score, equal scores lower index first, so no runtime's tie order matters), then the first ``K``
  kept predictions of each image in that order;
- per detection rank ``k``, the seed of its ``DetectionScoreTarget`` (``DetectionLayout.backprop``:
  one-hot at (class, prediction), through the score activation, times objectness; d/d objectness =
  the class probability) and onnxcam's gradient graph of the head spliced in once per rank. The head's
  forward nodes are the model's own (shared by the splice), so each rank adds one backward pass at
  batch ``N``: a static batch-1 export stays batch 1, as the Python path runs it;
- the method arithmetic of ``onnxcam.export.arithmetic`` on the ``(N*K, ...)`` rows, layers fused as
  the Python path fuses them. EigenCAM needs no gradient: the Python path gives every detection of an
  image the same map, and so does this.

Padding ranks (fewer than ``K`` detections above ``conf``) have score 0, class -1, box 0 and an all-zero map.
Models with NMS inside are explained through the tensors their NMS reads (``onnxcam.detection.end2end``,
what ``onnxcam.load`` does); the exported file returns those tensors in place of the model's NMS outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper

from onnxcam.detection.decode import check_options
from onnxcam.detection.layouts import DetectionLayout
from onnxcam.detection.task import DetectionTask
from onnxcam.errors import ArgumentError, OutputError, UnsupportedModelError
from onnxcam.export import arithmetic as ar
from onnxcam.export._graph import GraphWriter, exported_model
from onnxcam.export.eigen import eigencam
from onnxcam.export.splice import SpliceTarget
from onnxcam.graph.protos import opset_version
from onnxcam.model import Model

BOXES_OUTPUT = "detection_boxes"
SCORES_OUTPUT = "detection_scores"
CLASSES_OUTPUT = "detection_classes"
DETECTION_OUTPUTS = (BOXES_OUTPUT, SCORES_OUTPUT, CLASSES_OUTPUT)
# Methods with a per-detection map from one backward pass (or none). CAM reads a classifier's pooled
# linear head, which a detector has not; FullGrad would differentiate the whole model per detection.
DETECTION_EXPORTABLE: tuple[str, ...] = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam",
                                         "gradcam-elementwise", "eigencam")
# NonMaxSuppression 10, TopK with k as an input 10, ScatterND / GatherElements 11.
MIN_OPSET = 11
_PAD = -1.0  # the score of what NMS must never keep: below any conf in [0, 1]

# ``explainer._gradient_graph``: (model, wrt, seeded) -> (graph, seed input, grad outputs, head inputs)
GraphFn = Callable[[Model, tuple[str, ...], str], tuple[onnx.GraphProto, str, dict[str, str], tuple[str, ...]]]


def check_detection_methods(names: Sequence[str], model_name: str) -> None:
    bad = [k for k in names if k not in DETECTION_EXPORTABLE]
    if bad:
        raise ArgumentError(
            f"{model_name} is a detector: {', '.join(bad)} cannot be exported per detection ("
            f"{'CAM needs a classifier head (global pooling + linear)' if 'cam' in bad else 'no per-detection form'}"
            f"); methods exportable for detectors: {', '.join(DETECTION_EXPORTABLE)}"
        )


def resolve_options(task: DetectionTask, detections: int, conf: float | None,
                    iou: float | None) -> tuple[int, float, float]:
    """``detections``, ``conf`` and ``iou`` checked, the task's own thresholds where not given."""
    conf = task.options.conf if conf is None else float(conf)
    iou = task.options.iou if iou is None else float(iou)
    check_options(conf, iou, 1)
    if int(detections) < 1:
        raise ArgumentError(f"detections must be >= 1, got {detections}: the number of detections explained per image")
    if int(detections) > task.options.max_det:
        raise ArgumentError(f"detections ({detections}) exceeds the task's max_det ({task.options.max_det})")
    return int(detections), conf, iou


class _Decoded:
    """Tensor names of the decoded predictions of each image (``A`` predictions, ``C`` classes)."""

    def __init__(self, boxes: str, probs: str, obj: str | None, raw_scores: str, sigmoid_flag: str | None,
                 best: str, classes: str) -> None:
        self.boxes, self.probs, self.obj, self.raw_scores = boxes, probs, obj, raw_scores
        self.sigmoid_flag, self.best, self.classes = sigmoid_flag, best, classes


def decode(w: GraphWriter, layout: DetectionLayout, outputs: Sequence[str], size: tuple[int, int]) -> _Decoded:
    """``DetectionLayout.rows`` + ``decode.candidates`` for every image: boxes ``(N, A, 4)`` xyxy pixels,
    probabilities ``(N, A, C)``, objectness ``(N, A)``, best score ``(N, A)`` and its class ``(N, A)`` int64."""
    c = layout.num_classes
    obj: str | None = None
    if layout.kind == "yolov8":
        rows = w.op("Transpose", [outputs[layout.outputs[0]]], perm=[0, 2, 1])  # (N, A, 4 + C)
        raw_boxes, raw_scores = w.slice(rows, 0, 4, 2), w.slice(rows, 4, 4 + c, 2)
    elif layout.kind == "yolov5":
        rows = outputs[layout.outputs[0]]
        raw_boxes, raw_scores = w.slice(rows, 0, 4, 2), w.slice(rows, 5, 5 + c, 2)
        obj = w.squeeze(w.slice(rows, 4, 5, 2), [2])
    else:
        raw_boxes, raw_scores = outputs[layout.outputs[0]], outputs[layout.outputs[1]]
    boxes = _scaled(w, _to_xyxy(w, raw_boxes, layout.box_format), raw_boxes, layout, size)
    probs, sigmoid_flag = _activate(w, raw_scores, layout, c)
    scores = probs if obj is None else w.op("Mul", [probs, w.unsqueeze(obj, [2])])
    classes = w.op("ArgMax", [scores], axis=2, keepdims=0)
    best = w.reduce("ReduceMax", scores, [2], keepdims=0)
    return _Decoded(boxes, probs, obj, raw_scores, sigmoid_flag, best, classes)


def _to_xyxy(w: GraphWriter, boxes: str, fmt: str) -> str:
    if fmt == "xyxy":
        return boxes
    a, b, c, d = (w.slice(boxes, i, i + 1, 2) for i in range(4))
    if fmt == "cxcywh":
        half_w, half_h = w.op("Div", [c, w.f32(2.0)]), w.op("Div", [d, w.f32(2.0)])
        parts = [w.op("Sub", [a, half_w]), w.op("Sub", [b, half_h]), w.op("Add", [a, half_w]), w.op("Add", [b, half_h])]
    else:  # xywh
        parts = [a, b, w.op("Add", [a, c]), w.op("Add", [b, d])]
    return w.op("Concat", parts, axis=2)


def _scaled(w: GraphWriter, boxes: str, raw_boxes: str, layout: DetectionLayout, size: tuple[int, int]) -> str:
    """Normalised boxes to pixels (``DetectionLayout.scale``: per image where ``normalized`` is None,
    read from the raw boxes)."""
    if layout.normalized is False:
        return boxes
    h, wd = layout.input_size or size
    pixels = w.const(np.array([wd, h, wd, h], np.float32))
    if layout.normalized:
        return w.op("Mul", [boxes, pixels])
    # an image whose boxes all lie within [-1.5, 1.5] has normalised ones
    large = w.op("Greater", [w.reduce("ReduceMax", w.op("Abs", [raw_boxes]), [1, 2], keepdims=1), w.f32(1.5)])
    return w.op("Mul", [boxes, w.op("Where", [large, w.const(np.ones(4, np.float32)), pixels])])


def _activate(w: GraphWriter, raw: str, layout: DetectionLayout, c: int) -> tuple[str, str | None]:
    """Probabilities ``(N, A, C)`` (``layouts._activate``) and, for ``auto``, the per-image ``(N, 1, 1)``
    flag "read through a sigmoid" (``DetectionLayout.score_kind``: raw scores outside [0, 1])."""
    if layout.scores == "probabilities":
        return raw, None
    if layout.scores == "sigmoid":
        return w.op("Sigmoid", [raw]), None
    if layout.scores == "softmax":
        return w.slice(w.op("Softmax", [raw], axis=-1), 0, c, 2), None  # the last class is "no object"
    below = w.op("Less", [w.reduce("ReduceMin", raw, [1, 2], keepdims=1), w.f32(0.0)])
    above = w.op("Greater", [w.reduce("ReduceMax", raw, [1, 2], keepdims=1), w.f32(1.0)])
    flag = w.op("Or", [below, above])
    return w.op("Where", [flag, w.op("Sigmoid", [raw]), raw]), flag


class _Kept:
    """The top ``K`` kept detections of each image, best first, all ``(N, K, ...)``: prediction index,
    class (of the prediction, also at padding), label (-1 at padding), validity, score (0 at padding), box."""

    def __init__(self, index: str, classes: str, labels: str, valid: str, scores: str, boxes: str) -> None:
        self.index, self.classes, self.labels, self.valid = index, classes, labels, valid
        self.scores, self.boxes = scores, boxes


def top_detections(w: GraphWriter, d: _Decoded, c: int, a: int, k: int, conf: float, iou: float) -> _Kept:
    """Per-class NMS as ``decode.nms`` (IoU > ``iou`` suppresses, scores > ``conf`` live), best first."""
    live = w.op("Greater", [d.best, w.f32(conf)])  # (N, A)
    priority = _priority(w, w.op("Where", [live, d.best, w.f32(_PAD)]), a)
    own_class = w.op("Equal", [w.unsqueeze(d.classes, [1]), w.const(np.arange(c, dtype=np.int64).reshape(1, c, 1))])
    candidate = w.op("And", [own_class, w.unsqueeze(live, [1])])  # (N, C, A)
    # NMS ranks boxes by their priority (distinct values, so the runtime's tie order never matters);
    # the threshold only drops the padding: which predictions live was decided above, with the
    # Python path's strict '> conf', whatever a runtime's NMS does at its threshold.
    nms_scores = w.op("Where", [candidate, w.unsqueeze(priority, [1]), w.f32(_PAD)])
    # decode.nms clips an inverted box's width / height to 0 (it overlaps nothing); NMS ops take the
    # min / max of the corners instead: the far corner is clamped to the near one first
    near = w.slice(d.boxes, 0, 2, 2)
    nms_boxes = w.op("Concat", [near, w.op("Max", [w.slice(d.boxes, 2, 4, 2), near])], axis=2)
    selected = w.op("NonMaxSuppression", [nms_boxes, nms_scores, w.ints([k]), w.const(np.array([iou], np.float32)),
                                          w.const(np.array([0.0], np.float32))], center_point_box=0)
    where = w.op("Gather", [selected, w.ints([0, 2])], axis=1)  # (M, 2): image, prediction
    ones = w.op("ConstantOfShape", [w.slice(w.op("Shape", [selected]), 0, 1, 0)],
                value=helper.make_tensor("one", onnx.TensorProto.FLOAT, [1], [1.0]))
    zeros = w.op("ConstantOfShape", [w.op("Shape", [d.best])],
                 value=helper.make_tensor("zero", onnx.TensorProto.FLOAT, [1], [0.0]))
    kept = w.op("ScatterND", [zeros, where, ones])  # (N, A): 1 where NMS kept the prediction
    ranked = w.op("Where", [w.op("Greater", [kept, w.f32(0.5)]), priority, w.f32(_PAD)])
    values, index = _topk(w, ranked, k, largest=1)
    valid = w.op("Greater", [values, w.f32(0.0)])  # (N, K)
    scores = w.op("Where", [valid, w.op("GatherElements", [d.best, index], axis=1), w.f32(0.0)])
    classes = w.op("GatherElements", [d.classes, index], axis=1)
    labels = w.op("Where", [valid, classes, w.const(np.array(-1, np.int64))])
    boxes = w.op("Where", [w.unsqueeze(valid, [2]), _gather_rows(w, d.boxes, index, 4), w.f32(0.0)])  # (N, K, 4)
    return _Kept(index, classes, labels, valid, scores, boxes)


def _priority(w: GraphWriter, scores: str, a: int) -> str:
    """``(N, A)`` float32: ``A - position`` of each prediction in ``decode.nms``'s order (score
    descending, equal scores lower index first), so every value is distinct and exact.

    Runtimes break TopK and NMS ties their own way (OpenVINO not by index, measured on saturated
    scores of 1.0). Sorted once by value, equal values are made one group (a dense rank by CumSum
    over "differs from the previous"); the int64 key ``group * A + index`` has no ties, and sorting
    it gives the Python order whatever the runtime.
    """
    if a >= 1 << 24:
        raise UnsupportedModelError(f"{a} predictions per image: over the 2^24 a float32 rank holds exactly")
    values, position = _topk(w, scores, a, largest=1)  # (N, A); equal values in any order
    differs = w.op("Cast", [w.op("Not", [w.op("Equal", [w.slice(values, 1, a, 1), w.slice(values, 0, a - 1, 1)])])],
                   to=onnx.TensorProto.INT64)
    first = w.op("Mul", [w.slice(position, 0, 1, 1), w.const(np.zeros(1, np.int64))])  # (N, 1) zeros
    group = w.op("CumSum", [w.op("Concat", [first, differs], axis=1), w.const(np.array(1, np.int64))])
    key = w.op("Add", [w.op("Mul", [group, w.const(np.array(a, np.int64))]), position])
    _, order = _topk(w, key, a, largest=0)
    ordered = w.op("GatherElements", [position, order], axis=1)  # (N, A): predictions in the Python order
    rank = w.op("Expand", [w.const(np.arange(a, 0, -1, dtype=np.float32).reshape(1, a)), w.op("Shape", [ordered])])
    return w.op("ScatterElements", [w.op("Cast", [w.op("Mul", [position, w.const(np.zeros(1, np.int64))])],
                                         to=onnx.TensorProto.FLOAT), ordered, rank], axis=1)


def _topk(w: GraphWriter, x: str, k: int, largest: int) -> tuple[str, str]:
    name = w.fresh("topk")
    values, index = f"{name}/values", f"{name}/indices"
    w.nodes.append(helper.make_node("TopK", [x, w.ints([k])], [values, index], name=name, axis=1, largest=largest,
                                    sorted=1))
    return values, index


def _gather_rows(w: GraphWriter, x: str, index: str, width: int) -> str:
    """``x (N, A, width)`` at ``index (N, K)`` along axis 1 -> ``(N, K, width)``."""
    # GatherElements reads an index shaped like its output: the index broadcast over the last axis
    shape = w.op("Concat", [w.op("Shape", [index]), w.ints([width])], axis=0)
    return w.op("GatherElements", [x, w.op("Expand", [w.unsqueeze(index, [2]), shape])], axis=1)


def channel_seeds(w: GraphWriter, layout: DetectionLayout, d: _Decoded, kept: _Kept) -> tuple[str, int]:
    """Each detection's seed along the class axis of the seeded output, ``(N, K, D)``, and ``D``.

    ``DetectionScoreTarget.seeds``: d/d prob[class] = objectness (1 without one), carried through the
    score activation (``layouts._activate_grad``); YOLOv5 adds d/d objectness = prob[class] at column 4.
    Padding ranks get an all-zero seed.
    """
    c = layout.num_classes
    valid = w.op("Cast", [kept.valid], to=onnx.TensorProto.FLOAT)  # (N, K)
    cls = w.op("Where", [kept.valid, kept.classes, w.const(np.array(0, np.int64))])
    if layout.scores == "softmax":
        # the detections' own rows, never a Slice of the Softmax: OpenVINO 2026.4 drops that Slice under a
        # GatherElements and then rejects its shapes (measured)
        full = w.op("Softmax", [_gather_rows(w, d.raw_scores, kept.index, c + 1)], axis=-1)  # (N, K, C + 1)
        p = w.op("GatherElements", [full, w.unsqueeze(cls, [2])], axis=2)  # (N, K, 1)
    else:
        p = w.op("GatherElements", [_gather_rows(w, d.probs, kept.index, c), w.unsqueeze(cls, [2])], axis=2)
    if d.obj is not None:
        valid = w.op("Mul", [valid, w.op("GatherElements", [d.obj, kept.index], axis=1)])
    value = w.unsqueeze(valid, [2])  # (N, K, 1): d score / d prob[class], 0 at padding
    offset = {"yolov8": 4, "yolov5": 5}.get(layout.kind, 0)
    if layout.scores == "softmax":
        hot = _one_hot(w, cls, c + 1, 0)
        # p * (onehot - p[class]) (layouts._activate_grad with d = onehot)
        return w.op("Mul", [value, w.op("Mul", [full, w.op("Sub", [hot, p])])]), c + 1
    if layout.scores == "sigmoid" or layout.scores == "auto":
        slope = w.op("Mul", [p, w.op("Sub", [w.f32(1.0), p])])  # p (1 - p)
        if layout.scores == "auto":
            flag = d.sigmoid_flag
            assert flag is not None
            slope = w.op("Where", [flag, slope, w.f32(1.0)])  # (N, 1, 1) flag per image
        value = w.op("Mul", [value, slope])
    width = offset + c
    seed = w.op("Mul", [_one_hot(w, cls, width, offset), value])  # (N, K, D)
    if d.obj is not None:
        obj_hot = w.const(np.eye(width, dtype=np.float32)[4].reshape(1, 1, width))
        live = w.unsqueeze(w.op("Cast", [kept.valid], to=onnx.TensorProto.FLOAT), [2])
        seed = w.op("Add", [seed, w.op("Mul", [obj_hot, w.op("Mul", [p, live])])])
    return seed, width


def _one_hot(w: GraphWriter, index: str, depth: int, offset: int) -> str:
    """``(..., depth)`` float32 one-hot at ``index + offset``."""
    at = index if offset == 0 else w.op("Add", [index, w.const(np.array(offset, np.int64))])
    return w.op("OneHot", [at, w.const(np.array([depth], np.int64)), w.const(np.array([0, 1], np.float32))], axis=-1)


def output_seed(w: GraphWriter, layout: DetectionLayout, channel: str, index: str, rank: int, a: int) -> str:
    """Detection ``rank``'s seed on the seeded output: ``(N, D, A)`` for YOLOv8, else ``(N, A, D)``."""
    ch = w.squeeze(w.slice(channel, rank, rank + 1, 1), [1])  # (N, D)
    at = w.squeeze(w.slice(index, rank, rank + 1, 1), [1])  # (N,)
    anchor = _one_hot(w, at, a, 0)  # (N, A)
    if layout.kind == "yolov8":
        return w.op("Mul", [w.unsqueeze(ch, [2]), w.unsqueeze(anchor, [1])])
    return w.op("Mul", [w.unsqueeze(anchor, [2]), w.unsqueeze(ch, [1])])


def _stack(w: GraphWriter, per_rank: Sequence[str], dims: tuple[int, ...]) -> str:
    """``K`` tensors ``(N, *dims)`` -> ``(N*K, *dims)``, image-major (row ``n*K + k``)."""
    stacked = w.op("Concat", [w.unsqueeze(t, [1]) for t in per_rank], axis=1)
    return w.op("Reshape", [stacked, w.ints([-1, *dims])])


def _repeat(w: GraphWriter, x: str, k: int, dims: tuple[int, ...]) -> str:
    """``(N, *dims)`` -> ``(N*K, *dims)``, each image ``k`` times."""
    shape = w.op("Concat", [w.batch(x), w.ints([k, *dims])], axis=0)
    return w.op("Reshape", [w.op("Expand", [w.unsqueeze(x, [1]), shape]), w.ints([-1, *dims])])




def assemble_detector(m: Model, task: DetectionTask, names: list[str], features: Sequence[Any],
                      base: onnx.ModelProto, gradient_graph: GraphFn, as_map: Callable[[GraphWriter, str, Any], str],
                      map_name: Callable[[str], str], batch_dim: int | str, k: int, conf: float,
                      iou: float) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The exported graph of a detector (see the module docstring); ``features``: the explained layers
    (``explainer._Feature``), ``gradient_graph``: ``explainer._gradient_graph``."""
    layout = task.layout
    opset = opset_version(base)
    if opset < MIN_OPSET:
        raise UnsupportedModelError(
            f"{m.name} is at opset {opset}; exporting a detector's explainer needs opset >= {MIN_OPSET} "
            "(NonMaxSuppression, ScatterND, GatherElements): re-export the model at a newer opset")
    size = m.input.size
    shape = m.output_shapes[layout.outputs[0]]
    a = int(shape[1] if layout.kind == "yolov8" else shape[0])
    if k > a:
        raise ArgumentError(f"detections ({k}) exceeds the {a} predictions {m.name} makes per image")
    taken = {o for n in base.graph.node for o in n.output} | {i.name for i in base.graph.input}
    for out in [*DETECTION_OUTPUTS, *(map_name(x) for x in names)]:
        if out in taken:
            raise OutputError(f"{m.name} already has a tensor named {out!r}; export cannot add its own of that name")

    det = GraphWriter("detect", opset)
    decoded = decode(det, layout, m.outputs, size)
    kept = top_detections(det, decoded, layout.num_classes, a, k, conf, iou)
    det.op("Identity", [kept.boxes], out=BOXES_OUTPUT)
    det.op("Identity", [kept.scores], out=SCORES_OUTPUT)
    det.op("Identity", [kept.labels], out=CLASSES_OUTPUT)
    valid = det.op("Cast", [kept.valid], to=onnx.TensorProto.FLOAT)

    spliced = SpliceTarget(base)
    maps = GraphWriter("maps", opset)
    gradients: dict[str, str] = {}
    grads: dict[str, str] = {}
    head_acts: dict[str, str] = {}
    if any(x != "eigencam" for x in names):
        seeded = m.outputs[layout.outputs[1] if layout.kind in ("pairs", "queries") else layout.outputs[0]]
        channel, _ = channel_seeds(det, layout, decoded, kept)
        wrt = tuple(f.name for f in features)
        graph, seed_input, grad_outputs, head_inputs = gradient_graph(m, wrt, seeded)
        per_rank: dict[str, list[str]] = {f.name: [] for f in features}
        weights: dict[str, str] = {}
        for rank in range(k):
            seed = output_seed(det, layout, channel, kept.index, rank, a)
            bind = {hi: hi for hi in head_inputs} | {seed_input: seed} | weights
            rename = spliced.splice(graph, bind, f"det{rank}/grad")
            if not weights:
                # Later ranks read the first one's constants: equal nodes on them (all but the seed's
                # backward) are then one node, and no constant is stored K times.
                weights = {t.name: rename[t.name] for t in graph.initializer}
                graph = _without_initializers(graph)
                # A layer inside the head is read from the gradient run, as the engine does: the same
                # tensor as the model's, but for a quantised head, whose straight-through surrogate
                # computes it without the rounding (one quantisation step apart, measured).
                head_acts = {f.name: as_map(maps, rename.get(f.name, f.name), f) for f in features}
            for f in features:
                g = rename[grad_outputs[f.name]]
                gradients[f"{f.name}#{rank}"] = g
                per_rank[f.name].append(as_map(maps, g, f))
        grads = {f.name: _stack(maps, per_rank[f.name], f.dims) for f in features}
    acts = {f.name: as_map(maps, f.name, f) for f in features}  # the model's, as EigenCAM's body run reads them
    mask = maps.unsqueeze(valid, [2, 3])  # (N, K, 1, 1)
    h, wd = size
    for x in names:
        if x == "eigencam":
            raws = [(eigencam(maps, acts[f.name], *f.dims), f.dims[1:]) for f in features]
            final = ar.finish(maps, raws, size, maps.fresh("eigencam"))  # (N, H, W): one map per image
            maps.op("Mul", [maps.unsqueeze(final, [1]), mask], out=map_name(x))
            continue
        raws = [(ar.gradient_map(maps, x, _repeat(maps, head_acts[f.name], k, f.dims), grads[f.name]), f.dims[1:])
                for f in features]
        final = ar.finish(maps, raws, size, maps.fresh(x))  # (N*K, H, W)
        per_image = maps.op("Reshape", [final, maps.ints([-1, k, h, wd])])
        maps.op("Mul", [per_image, mask], out=map_name(x))

    g = base.graph
    outputs = [_typed(m, o, batch_dim) for o in g.output]
    outputs += [helper.make_tensor_value_info(BOXES_OUTPUT, onnx.TensorProto.FLOAT, [batch_dim, k, 4]),
                helper.make_tensor_value_info(SCORES_OUTPUT, onnx.TensorProto.FLOAT, [batch_dim, k]),
                helper.make_tensor_value_info(CLASSES_OUTPUT, onnx.TensorProto.INT64, [batch_dim, k])]
    outputs += [helper.make_tensor_value_info(map_name(x), onnx.TensorProto.FLOAT, [batch_dim, k, h, wd])
                for x in names]
    proto = exported_model(base, list(g.node) + det.nodes + spliced.nodes + maps.nodes, list(g.input), outputs,
                           list(g.initializer) + det.initializers + spliced.initializers + maps.initializers)
    return proto, gradients


def _without_initializers(graph: onnx.GraphProto) -> onnx.GraphProto:
    bare = onnx.GraphProto()
    bare.CopyFrom(graph)
    del bare.initializer[:]
    return bare


def _typed(m: Model, out: onnx.ValueInfoProto, batch_dim: int | str) -> onnx.ValueInfoProto:
    """``out`` with its shape: the pre-NMS tensors of an end2end model come without one."""
    if out.type.tensor_type.HasField("shape"):
        return out
    info = m.tensor_info(out.name)
    shape = None if info.shape is None else [batch_dim, *info.shape[1:]]
    return helper.make_tensor_value_info(out.name, info.elem_type, shape)


__all__ = ["BOXES_OUTPUT", "CLASSES_OUTPUT", "DETECTION_EXPORTABLE", "DETECTION_OUTPUTS", "SCORES_OUTPUT",
           "assemble_detector", "check_detection_methods", "resolve_options"]
