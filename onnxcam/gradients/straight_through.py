"""The smooth function that straight-through gradients of a quantised (QDQ) graph belong to.

A QuantizeLinear -> DequantizeLinear pair on an activation rounds it to the int8 grid: the
quantised model is piecewise constant, so finite differences of it are zero or jumps, never the
straight-through gradient the builder computes. That gradient is exact for the same graph with
each activation pair replaced by the identity, which ``straight_through`` returns; checks compare
against finite differences of that graph. Weight DequantizeLinear nodes (constant input) stay.
"""

from __future__ import annotations

import onnx
from onnx import helper


def _constants(graph: onnx.GraphProto) -> set[str]:
    return {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}


def straight_through(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` with every activation Q -> DQ pair replaced by the identity, and the pair count.

    The copy computes what the quantised model would without rounding (and without clipping to the
    quantised range); the count is 0 (and the copy equal to ``model``) for a float model.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    consts = _constants(graph)
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
        nodes.append(helper.make_node("Identity", [q.input[0]], [node.output[0]], name=f"{node.name}_straight"))
    used = {i for n in nodes for i in n.input} | {o.name for o in graph.output}
    # a Q whose every DQ consumer was bypassed is dead now
    kept = [n for n in nodes if not (n.output and n.output[0] in quant and n.output[0] not in used)]
    del graph.node[:]
    graph.node.extend(kept)
    return copy, pairs


def straight_through_note(model: onnx.ModelProto) -> str | None:
    """What to tell a user whose gradients crossed activation Q/DQ nodes of ``model``; None if none."""
    consts = _constants(model.graph)
    count = sum(
        n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.domain in ("", "ai.onnx") and n.input[0] not in consts
        for n in model.graph.node
    )
    if not count:
        return None
    return (
        f"gradients pass straight through {count} QuantizeLinear/DequantizeLinear node(s) (straight-through "
        "estimator): they are the exact gradients of the model without activation quantisation"
    )
