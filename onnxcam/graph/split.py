"""Split a model at feature tensors into a body and a head.

body: the whole model with the cut tensors (and every other tensor the head needs) as extra outputs,
      so one body run yields the activations and the model outputs together.
head: the nodes downstream of the cut, with every tensor that crosses the cut as a graph input
      (the cut tensors first, then e.g. skip connections that bypass the cut), producing the model
      outputs that depend on the cut.

Passes never edit the caller's model: they return new protobufs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import onnx

from onnxcam.errors import LayerError, LayerNotFoundError
from onnxcam.graph.protos import make_model
from onnxcam.graph.shapes import Dim, TensorInfo, make_value_info


@dataclass(frozen=True)
class Split:
    """A model cut at ``cut`` tensors.

    ``head_inputs`` starts with ``cut`` (in the order asked), then the other crossing tensors.
    ``body`` outputs: ``head_inputs`` then the model outputs. ``head`` outputs: ``head_outputs``,
    the model outputs that depend on the cut.
    """

    body: onnx.ModelProto
    head: onnx.ModelProto
    cut: tuple[str, ...]
    head_inputs: tuple[str, ...]
    head_outputs: tuple[str, ...]
    model_outputs: tuple[str, ...]


def _constant_tensors(graph: onnx.GraphProto) -> set[str]:
    """Tensors that do not depend on any graph input (initializers and constant subgraphs)."""
    inputs = {i.name for i in graph.input} - {init.name for init in graph.initializer}
    dynamic = set(inputs)
    for node in graph.node:
        if any(name in dynamic for name in node.input if name):
            dynamic.update(o for o in node.output if o)
    produced = {o for node in graph.node for o in node.output if o}
    return ({init.name for init in graph.initializer} | produced) - dynamic


def split_model(
    model: onnx.ModelProto,
    cut: Sequence[str],
    infos: Mapping[str, TensorInfo],
    batch_dim: Dim = "N",
) -> Split:
    """Cut ``model`` at the tensors named in ``cut``.

    ``infos`` gives the element type and shape of the crossing tensors (from shape inference or a
    probe run); their batch dim is replaced by ``batch_dim`` so heads accept any batch size.
    """
    graph = model.graph
    cut = tuple(dict.fromkeys(cut))
    producers = {o: i for i, node in enumerate(graph.node) for o in node.output if o}
    graph_inputs = {i.name for i in graph.input}
    for name in cut:
        if name not in producers and name not in graph_inputs:
            raise LayerNotFoundError(f"tensor {name!r} is not produced by any node of the model")
    constants = _constant_tensors(graph)
    cut_set = set(cut)

    # Forward sweep: nodes that read (transitively) from the cut. A node that produces a cut tensor is
    # replaced by the corresponding head input, so it never belongs to the head.
    downstream = set(cut_set)
    head_nodes: list[int] = []
    for i, node in enumerate(graph.node):
        if any(o in cut_set for o in node.output):
            continue
        if any(name in downstream for name in node.input if name):
            head_nodes.append(i)
            downstream.update(o for o in node.output if o)

    model_outputs = tuple(o.name for o in graph.output)
    head_outputs = tuple(o for o in model_outputs if o in downstream)
    if not head_outputs:
        raise LayerError(
            f"no model output depends on {', '.join(cut)}: pick a layer upstream of the outputs "
            "(see `onnxcam layers MODEL`)"
        )

    # Backward sweep: keep only head nodes that feed a head output.
    needed = set(head_outputs)
    kept: list[int] = []
    for i in reversed(head_nodes):
        node = graph.node[i]
        if any(o in needed for o in node.output):
            kept.append(i)
            needed.update(n for n in node.input if n)
    kept.reverse()

    produced_in_head = {o for i in kept for o in graph.node[i].output if o}
    crossing: list[str] = []
    constant_needed: set[str] = set()
    for i in kept:
        for name in graph.node[i].input:
            if not name or name in produced_in_head or name in cut_set:
                continue
            if name in constants:
                constant_needed.add(name)
            elif name not in crossing:
                crossing.append(name)
    head_inputs = cut + tuple(crossing)

    # Constant subgraphs feeding the head are copied into it rather than fed across the cut.
    const_nodes = _constant_closure(graph, constant_needed, producers)
    initializers = [init for init in graph.initializer if init.name in constant_needed or init.name in
                    {n for j in const_nodes for n in graph.node[j].input}]

    head_graph = onnx.helper.make_graph(
        nodes=[graph.node[j] for j in sorted(const_nodes)] + [graph.node[i] for i in kept],
        name=f"{graph.name or 'model'}_head",
        inputs=[_batch_free(infos, name, batch_dim) for name in head_inputs],
        outputs=[o for o in graph.output if o.name in head_outputs],
        initializer=initializers,
    )
    head_graph.value_info.extend(v for v in graph.value_info if v.name in produced_in_head)
    head = make_model(head_graph, model.opset_import, ir_version=model.ir_version)
    head.functions.extend(model.functions)

    body = onnx.ModelProto()
    body.CopyFrom(model)
    existing = set(model_outputs)
    # A graph input crossing the cut (FullGrad cuts at the image) is fed from the input itself.
    extra = [_value_info(infos, name) for name in head_inputs if name not in existing and name not in graph_inputs]
    outputs = extra + list(body.graph.output)
    del body.graph.output[:]
    body.graph.output.extend(outputs)
    # Outputs that are also head inputs keep their place among the model outputs.
    return Split(body=body, head=head, cut=cut, head_inputs=head_inputs, head_outputs=head_outputs,
                 model_outputs=model_outputs)


def _constant_closure(graph: onnx.GraphProto, names: set[str], producers: Mapping[str, int]) -> set[int]:
    nodes: set[int] = set()
    stack = [n for n in names if n in producers]
    while stack:
        j = producers[stack.pop()]
        if j in nodes:
            continue
        nodes.add(j)
        stack.extend(n for n in graph.node[j].input if n and n in producers)
    return nodes


def _value_info(infos: Mapping[str, TensorInfo], name: str) -> onnx.ValueInfoProto:
    info = infos.get(name)
    if info is None:
        raise LayerError(f"the type of tensor {name!r} is unknown; run onnx shape inference on the model first")
    return make_value_info(name, info.elem_type, info.shape)


def _batch_free(infos: Mapping[str, TensorInfo], name: str, batch_dim: Dim) -> onnx.ValueInfoProto:
    info = infos.get(name)
    if info is None:
        raise LayerError(f"the type of tensor {name!r} is unknown; run onnx shape inference on the model first")
    shape = info.shape
    if shape is not None and len(shape) > 0:
        shape = (batch_dim,) + tuple(shape[1:])
    return make_value_info(name, info.elem_type, shape)


def upstream_frontier(model: onnx.ModelProto, names: Sequence[str]) -> tuple[str, ...]:
    """The tensors of ``names`` that no other tensor of ``names`` feeds (order kept).

    Cutting there leaves the others inside the head, where gradients still reach them through
    every path; cutting at all of them would sever the paths between them.
    """
    wanted = list(dict.fromkeys(names))
    downstream_of: dict[str, set[str]] = {}
    for start in wanted:
        reach = {start}
        for node in model.graph.node:
            if any(i in reach for i in node.input if i):
                reach.update(o for o in node.output if o)
        downstream_of[start] = reach - {start}
    fed = {n for n in wanted for other in wanted if other != n and n in downstream_of[other]}
    return tuple(n for n in wanted if n not in fed)
