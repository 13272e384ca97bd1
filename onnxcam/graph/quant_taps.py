"""Float views of a QOperator model's int8 activations, so they can be chosen as CAM layers.

A QOperator model (``QLinearConv``, ``QLinearAdd``, ...) passes uint8 tensors from op to op: no
float feature map exists between its input and its output, and a CAM needs one. ``expose_int8_activations``
inserts, after each int8 activation ``q`` an op produces, ``DequantizeLinear`` -> ``<q>_dequantized``
(float, the activation's real value) -> ``QuantizeLinear`` with the same scale and zero point, and
points the original consumers at the requantised copy. ``Q(DQ(q)) == q`` exactly (the value is an
integer times the scale, divided by the same scale, then rounded), so the model computes bit for bit
what it did; the float tensor is a layer like any other.
"""

from __future__ import annotations

import onnx
from onnx import helper

# QOperator ops whose first output is an int8 activation, and the positions of its scale and zero point.
_OUTPUT_QPARAMS: dict[str, tuple[int, int]] = {
    "QLinearConv": (6, 7), "QLinearAdd": (6, 7), "QLinearMul": (6, 7), "QLinearConcat": (0, 1),
    "QLinearGlobalAveragePool": (3, 4), "QLinearAveragePool": (3, 4), "QLinearSigmoid": (3, 4),
    "QLinearLeakyRelu": (3, 4),
}  # fmt: skip
SUFFIX = "_dequantized"


def tap_name(name: str) -> str:
    """The float view of int8 activation ``name`` (``x_quantized`` -> ``x_dequantized``)."""
    return (name[: -len("_quantized")] if name.endswith("_quantized") else name) + SUFFIX


def expose_int8_activations(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` with a float view of every QOperator activation, and how many were added
    (0: ``model`` itself, not copied, when it has no QOperator op)."""
    if not any(n.op_type in _OUTPUT_QPARAMS for n in model.graph.node):
        return model, 0
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    taken = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    taken |= {i.name for i in graph.initializer}
    consumed_by_dq = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    outputs = {o.name for o in graph.output}
    taps: dict[str, tuple[str, str]] = {}
    for node in graph.node:
        where = _OUTPUT_QPARAMS.get(node.op_type) if node.domain in ("", "ai.onnx", "com.microsoft") else None
        if where is None or not node.output or len(node.input) <= where[1]:
            continue
        q = node.output[0]
        if q in consumed_by_dq or q in outputs or tap_name(q) in taken:
            continue
        taps[q] = (node.input[where[0]], node.input[where[1]])
    if not taps:
        return copy, 0
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name in taps:
                node.input[k] = f"{name}_requantized"
        nodes.append(node)
        for q in node.output:
            if q in taps:
                scale, zero = taps[q]
                view = tap_name(q)
                nodes.append(helper.make_node("DequantizeLinear", [q, scale, zero], [view], name=f"{view}_node"))
                nodes.append(helper.make_node("QuantizeLinear", [view, scale, zero], [f"{q}_requantized"],
                                              name=f"{q}_requantized_node"))
    del graph.node[:]
    graph.node.extend(nodes)
    return copy, len(taps)
