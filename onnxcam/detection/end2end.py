"""Detectors with NMS inside the graph ("end2end" exports): explained through their pre-NMS tensors.

After a ``NonMaxSuppression`` node the outputs are a ragged list of kept boxes gathered by index:
their number depends on the image and a score there has no gradient to most predictions. The
tensors NMS reads - boxes ``(N, A, 4)`` and scores ``(N, K, A)`` - are a box/score pair detector's
outputs. ``pre_nms`` returns a new model whose outputs are those two, laid out as onnxcam's
``pairs`` layout reads them (boxes ``xyxy``, scores ``(N, A, K)``); decoding and NMS then happen in
numpy (``onnxcam.detection.decode``), with the thresholds the graph's NMS node used as defaults.

A pass: it returns a new model and never edits the caller's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcam.errors import UnsupportedModelError
from onnxcam.graph.prune import prune_to_outputs

BOXES, SCORES = "onnxcam_pre_nms_boxes", "onnxcam_pre_nms_scores"


@dataclass(frozen=True)
class PreNms:
    """``model``: outputs ``BOXES (N, A, 4)`` xyxy and ``SCORES (N, A, K)``; the NMS node's own
    ``iou`` and ``score`` thresholds and ``max_per_class`` (None where the graph leaves them out or
    computes them)."""

    model: onnx.ModelProto
    iou: float | None
    score: float | None
    max_per_class: int | None


def nms_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == "NonMaxSuppression"]


def _constant(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
    return None


def _scalar(model: onnx.ModelProto, node: onnx.NodeProto, k: int) -> float | None:
    if len(node.input) <= k or not node.input[k]:
        return None
    value = _constant(model, node.input[k])
    return None if value is None or value.size != 1 else float(value.reshape(()))


def pre_nms(model: onnx.ModelProto) -> PreNms | None:
    """The model explained through what its ``NonMaxSuppression`` reads; None without one.

    ``center_point_box=1`` boxes (cx, cy, w, h) are turned into ``xyxy`` inside the graph (so the
    gradient of a box coordinate reaches the raw tensor). Corner boxes (``center_point_box=0``) are
    read as ``xyxy``: the ONNX spec writes ``(y1, x1, y2, x2)``, but IoU does not depend on the order,
    and exporters (torchvision, ultralytics, mmdet) feed NMS the ``xyxy`` boxes they have.
    """
    found = nms_nodes(model)
    if not found:
        return None
    if len(found) > 1:
        raise UnsupportedModelError(
            f"the graph has {len(found)} NonMaxSuppression nodes; onnxcam explains a detector with one, through "
            "its boxes and scores: export the model without NMS (e.g. ultralytics nms=False) instead"
        )
    node = found[0]
    boxes, scores = node.input[0], node.input[1]
    centre = any(a.name == "center_point_box" and a.i == 1 for a in node.attribute)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    p = "onnxcam_pre_nms"

    def const(name: str, value: np.ndarray) -> str:
        g.initializer.append(numpy_helper.from_array(value, f"{p}_{name}"))
        return f"{p}_{name}"

    nodes: list[onnx.NodeProto] = []
    if centre:
        first, last, axis = const("s0", np.array([0], np.int64)), const("s2", np.array([2], np.int64)), \
            const("ax", np.array([2], np.int64))
        end, half = const("s4", np.array([4], np.int64)), const("half", np.array(0.5, np.float32))
        nodes += [
            helper.make_node("Slice", [boxes, first, last, axis], [f"{p}_cxcy"]),
            helper.make_node("Slice", [boxes, last, end, axis], [f"{p}_wh"]),
            helper.make_node("Mul", [f"{p}_wh", half], [f"{p}_half_wh"]),
            helper.make_node("Sub", [f"{p}_cxcy", f"{p}_half_wh"], [f"{p}_x1y1"]),
            helper.make_node("Add", [f"{p}_cxcy", f"{p}_half_wh"], [f"{p}_x2y2"]),
            helper.make_node("Concat", [f"{p}_x1y1", f"{p}_x2y2"], [BOXES], axis=2),
        ]
    else:
        nodes.append(helper.make_node("Identity", [boxes], [BOXES]))
    nodes.append(helper.make_node("Transpose", [scores], [SCORES], perm=[0, 2, 1]))
    g.node.extend(nodes)
    del g.output[:]
    g.output.extend([helper.make_tensor_value_info(BOXES, onnx.TensorProto.FLOAT, None),
                     helper.make_tensor_value_info(SCORES, onnx.TensorProto.FLOAT, None)])
    pruned = prune_to_outputs(m, [BOXES, SCORES])
    # Shapes of the new outputs, so the task reads them before anything runs.
    try:
        inferred = onnx.shape_inference.infer_shapes(pruned)
        shapes = {v.name: v for v in inferred.graph.value_info}
        for out in pruned.graph.output:
            if out.name in shapes:
                out.type.CopyFrom(shapes[out.name].type)
    except Exception:  # noqa: BLE001 - shapes are then found by onnxcam's own probe
        pass
    max_out = _scalar(model, node, 2)
    return PreNms(pruned, _scalar(model, node, 3), _scalar(model, node, 4),
                  None if max_out is None else int(max_out))


__all__ = ["BOXES", "SCORES", "PreNms", "nms_nodes", "pre_nms"]
