"""The smooth function that straight-through gradients of a quantised (QDQ) graph belong to.

A QuantizeLinear -> DequantizeLinear pair on an activation rounds it to the int8 grid: the
quantised model is piecewise constant, so finite differences of it are zero or jumps, never the
straight-through gradient the builder computes. The builder uses the *clipped* straight-through
estimator of quantisation-aware training: the gradient passes where the value is inside the
quantiser's range and is zero where the quantiser clips it. That matters: quantisers fold
ReLU/ReLU6 into their range (the int8 EfficientNet has no Clip node left), and without the mask
the gradient would flow through activations the model zeroes or saturates.

That gradient is exact for the same graph with each activation pair replaced by a clip to the
quantiser's range (the identity when the range is not constant), which ``straight_through``
returns; checks compare against finite differences of that graph. Weight DequantizeLinear nodes
(constant input) stay.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcam.gradients._facts import collect_consts
from onnxcam.gradients.quant_ops import float_surrogate, integer_op_count, quantiser_range

__all__ = ["node_range", "output_quantizers", "quantiser_range", "straight_through", "straight_through_note"]


def node_range(node: onnx.NodeProto, values: dict[str, np.ndarray]) -> tuple[float, float] | None:
    """``quantiser_range`` of a QuantizeLinear node, from constant scale and zero point."""
    scale = values.get(node.input[1]) if len(node.input) > 1 else None
    zero = values.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if len(node.input) > 2 and node.input[2] and zero is None:
        return None  # a zero point that is not a constant
    out_dtype = next((a.i for a in node.attribute if a.name == "output_dtype"), 0)
    return quantiser_range(scale, zero, out_dtype)


def _constants(graph: onnx.GraphProto) -> set[str]:
    return {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}


def output_quantizers(graph: onnx.GraphProto) -> set[str]:
    """Outputs of the QuantizeLinear nodes whose DequantizeLinear is a graph output (the model's
    own output quantisers, e.g. of the logits)."""
    outputs = {o.name for o in graph.output}
    dq_of = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.output and n.output[0] in outputs}
    return {n.output[0] for n in graph.node if n.op_type == "QuantizeLinear" and n.output and n.output[0] in dq_of}


def straight_through(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` with every activation Q -> DQ pair replaced by a clip to the quantiser's
    range (the identity where it is not constant), its dynamic / QOperator integer ops by float ops
    and clips (``quant_ops.float_surrogate``), and how many pairs and ops were replaced.

    The copy computes what the quantised model would without rounding; the count is 0 (and the
    copy equal to ``model``) for a float model. Raises ``UnsupportedOpError`` for an integer op
    with no float surrogate.
    """
    copy, rewritten = float_surrogate(model)
    graph = copy.graph
    consts = _constants(graph)
    values = collect_consts(graph, max_elements=16)  # scales and zero points
    unclipped = output_quantizers(graph)
    quant = {
        n.output[0]: n for n in graph.node
        if n.op_type == "QuantizeLinear" and n.domain in ("", "ai.onnx") and n.input[0] not in consts
    }  # fmt: skip
    nodes: list[onnx.NodeProto] = []
    pairs = 0
    for node in graph.node:
        q = quant.get(node.input[0]) if node.op_type == "DequantizeLinear" and node.input else None
        if q is None:
            nodes.append(node)
            continue
        pairs += 1
        bounds = None if q.output[0] in unclipped else node_range(q, values)
        if bounds is None:
            nodes.append(helper.make_node("Identity", [q.input[0]], [node.output[0]], name=f"{node.name}_straight"))
            continue
        lo, hi = (numpy_helper.from_array(np.asarray(v, dtype=np.float32), f"{node.output[0]}_straight_{side}")
                  for v, side in zip(bounds, ("lo", "hi")))
        graph.initializer.extend([lo, hi])
        nodes.append(helper.make_node("Clip", [q.input[0], lo.name, hi.name], [node.output[0]],
                                      name=f"{node.name}_straight"))
    used = {i for n in nodes for i in n.input} | {o.name for o in graph.output}
    # a Q whose every DQ consumer was bypassed is dead now
    kept = [n for n in nodes if not (n.output and n.output[0] in quant and n.output[0] not in used)]
    del graph.node[:]
    graph.node.extend(kept)
    return copy, pairs + rewritten


def straight_through_note(model: onnx.ModelProto) -> str | None:
    """What to tell a user whose gradients crossed activation Q/DQ nodes of ``model``; None if none."""
    consts = _constants(model.graph)
    count = sum(
        n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.domain in ("", "ai.onnx") and n.input[0] not in consts
        for n in model.graph.node
    )
    integer = integer_op_count(model)
    if not count and not integer:
        return None
    what = f"{count} QuantizeLinear/DequantizeLinear node(s)" if count else ""
    if integer:
        what += (" and " if what else "") + (f"{integer} int8 op(s) (dynamic / QOperator: ConvInteger, QLinearConv, "
                                              "...) rewritten as float ops with dequantised weights")
    return (
        f"gradients pass straight through {what} (clipped straight-through estimator): they are the exact gradients "
        "of the model with each activation quantiser replaced by a clip to its range"
    )
