"""Dead-node elimination: keep only what a set of outputs needs.

onnxruntime runs every node of a session whatever the outputs asked for. A gradient graph keeps
the head's forward nodes (rules read their intermediates), but a linear head's backward needs none
of them: at EfficientNet's last layer the pooled logits cost more than the gradient itself.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx


def prune_to_outputs(model: onnx.ModelProto, outputs: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs are ``outputs`` (kept in graph order) and whose nodes
    and initializers are those they depend on. Graph inputs all stay: callers feed them by name."""
    keep_out = set(outputs)
    graph = model.graph
    missing = keep_out - {o.name for o in graph.output}
    if missing:
        raise ValueError(f"prune_to_outputs: {sorted(missing)} are not outputs of the graph")
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return copy  # subgraphs read outer tensors without listing them as inputs: leave such graphs whole
    needed = set(keep_out)
    kept: list[int] = []
    for k in range(len(graph.node) - 1, -1, -1):
        if any(o in needed for o in graph.node[k].output):
            kept.append(k)
            needed.update(n for n in graph.node[k].input if n)
    g = copy.graph
    del g.node[:]
    g.node.extend(graph.node[k] for k in reversed(kept))
    del g.initializer[:]
    g.initializer.extend(i for i in graph.initializer if i.name in needed)
    del g.output[:]
    g.output.extend(o for o in graph.output if o.name in keep_out)
    del g.value_info[:]
    g.value_info.extend(v for v in graph.value_info if v.name in needed)
    return copy


__all__ = ["prune_to_outputs"]
