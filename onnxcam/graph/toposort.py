"""Node order and dependencies of ONNX graphs.

ONNX requires a graph's nodes in topological order: ``onnx.checker`` (full check) and onnxruntime
reject a node that reads a tensor produced further down. Passes that assemble nodes from several
places (split heads, pruned gradient graphs) sort them here instead of trusting concatenation order.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence

import onnx

from onnxcam.errors import ModelError


def subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    """Tensors a subgraph (an If/Loop/Scan body) reads from its enclosing scopes.

    ONNX lets a body use outer tensors without listing them as node inputs, so the node holding the
    body depends on them too.
    """
    local = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    reads: set[str] = set()
    for node in graph.node:
        reads.update(n for n in node_reads(node) if n not in local)
        local.update(o for o in node.output if o)
    return reads


def node_reads(node: onnx.NodeProto) -> set[str]:
    """Every tensor ``node`` depends on: its inputs and what its subgraph attributes read from outside."""
    reads = {n for n in node.input if n}
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            reads |= subgraph_reads(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            for sub in attr.graphs:
                reads |= subgraph_reads(sub)
    return reads


def topological_order(nodes: Sequence[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """``nodes`` reordered so every node comes after the producers of what it reads.

    Stable: among the nodes whose inputs are ready, the earliest in ``nodes`` goes first, so an
    already sorted list comes back unchanged. Tensors no node of the list produces (graph inputs,
    initializers, outer-scope names) count as available from the start.
    """
    producer = {o: k for k, node in enumerate(nodes) for o in node.output if o}
    waiting_on: list[int] = []
    consumers: dict[int, list[int]] = {}
    for k, node in enumerate(nodes):
        deps = {producer[n] for n in node_reads(node) if n in producer} - {k}
        waiting_on.append(len(deps))
        for d in deps:
            consumers.setdefault(d, []).append(k)
    ready = [k for k, count in enumerate(waiting_on) if count == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        k = heapq.heappop(ready)
        order.append(k)
        for c in consumers.get(k, ()):
            waiting_on[c] -= 1
            if waiting_on[c] == 0:
                heapq.heappush(ready, c)
    if len(order) < len(nodes):
        stuck = [nodes[k].name or nodes[k].op_type for k in range(len(nodes)) if waiting_on[k] > 0]
        raise ModelError(
            f"the graph has a cycle through node(s) {', '.join(stuck[:5])}: ONNX graphs must be acyclic; "
            "re-export the model"
        )
    return [nodes[k] for k in order]


def ancestors(nodes: Sequence[onnx.NodeProto], outputs: Iterable[str]) -> tuple[set[int], set[str]]:
    """Indices of the nodes ``outputs`` depend on, and every tensor name they read (whatever the order of ``nodes``)."""
    producer = {o: k for k, node in enumerate(nodes) for o in node.output if o}
    needed = set(outputs)
    stack = list(needed)
    kept: set[int] = set()
    while stack:
        k = producer.get(stack.pop())
        if k is None or k in kept:
            continue
        kept.add(k)
        for name in node_reads(nodes[k]):
            if name not in needed:
                needed.add(name)
                stack.append(name)
    return kept, needed


__all__ = ["ancestors", "node_reads", "subgraph_reads", "topological_order"]
