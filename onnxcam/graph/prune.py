"""Dead-node elimination: keep only what a set of outputs needs.

onnxruntime runs every node of a session whatever the outputs asked for. A gradient graph keeps
the head's forward nodes (rules read their intermediates), but a linear head's backward needs none
of them: at EfficientNet's last layer the pooled logits cost more than the gradient itself.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx

from onnxcam.errors import ArgumentError
from onnxcam.graph.toposort import ancestors, topological_order


def prune_to_outputs(model: onnx.ModelProto, outputs: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs are ``outputs`` (kept in graph order) and whose nodes
    and initializers are those they depend on, in topological order. Graph inputs all stay: callers
    feed them by name.

    Dependencies are followed by name, not by position, so a graph whose nodes are out of order
    loses none of the producers its outputs need (and comes back sorted).
    """
    keep_out = set(outputs)
    graph = model.graph
    missing = keep_out - {o.name for o in graph.output}
    if missing:
        raise ArgumentError(
            f"cannot prune graph {graph.name!r} to {sorted(missing)}: they are not among its outputs "
            f"({', '.join(o.name for o in graph.output)}); add them as graph outputs first"
        )
    kept, needed = ancestors(graph.node, keep_out)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    g = copy.graph
    del g.node[:]
    g.node.extend(topological_order([graph.node[k] for k in sorted(kept)]))
    del g.initializer[:]
    g.initializer.extend(i for i in graph.initializer if i.name in needed)
    del g.output[:]
    g.output.extend(o for o in graph.output if o.name in keep_out)
    del g.value_info[:]
    g.value_info.extend(v for v in graph.value_info if v.name in needed)
    return copy


__all__ = ["prune_to_outputs"]
