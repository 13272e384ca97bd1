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

import numpy as np
import onnx

from onnxcam.errors import LayerError, LayerNotFoundError
from onnxcam.graph.fold import static_tensors
from onnxcam.graph.protos import make_model
from onnxcam.graph.shapes import Dim, TensorInfo, make_value_info
from onnxcam.graph.toposort import topological_order


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
    # Shape arithmetic crossing the cut (``x.view(x.size(0), -1)`` on an upstream tensor) must follow
    # the head's own batch size, so it is recomputed inside the head instead of being fed.
    shape_nodes, shape_outputs = _shape_subgraph(graph, kept, produced_in_head, cut, constants, infos, producers)
    produced_in_head |= shape_outputs
    crossing: list[str] = []
    constant_needed: set[str] = set()
    for node in shape_nodes + [graph.node[i] for i in kept]:
        for name in node.input:
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

    # The pieces come from different places (the rebuilt batch dim reads Constants emitted after it):
    # ONNX needs producers before consumers, and prune_to_outputs and onnxruntime rely on it.
    head_nodes_sorted = topological_order([graph.node[j] for j in sorted(const_nodes)] + shape_nodes
                                          + [graph.node[i] for i in kept])
    head_graph = onnx.helper.make_graph(
        nodes=head_nodes_sorted,
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


def _shape_subgraph(
    graph: onnx.GraphProto,
    kept: Sequence[int],
    produced_in_head: set[str],
    cut: tuple[str, ...],
    constants: set[str],
    infos: Mapping[str, TensorInfo],
    producers: Mapping[str, int],
) -> tuple[list[onnx.NodeProto], set[str]]:
    """Nodes that recompute, inside the head, shape tensors the head would otherwise receive.

    ``Shape(u)`` of a tensor ``u`` upstream of the cut becomes ``Concat(Shape(cut0)[0:1], u.shape[1:])``
    (non-batch dims are static); the arithmetic after it is copied. Returns ([], empty) when a
    shape tensor cannot be rebuilt that way, and the tensor is then fed like any other.
    """
    static, _ = static_tensors(graph)
    wanted = [n for i in kept for n in graph.node[i].input if n and n in static and n not in produced_in_head
              and n not in constants]
    if not wanted:
        return [], set()
    chosen: dict[int, None] = {}
    roots: list[int] = []
    stack = list(dict.fromkeys(wanted))
    while stack:
        name = stack.pop()
        j = producers.get(name)
        if j is None or j in chosen:
            continue
        node = graph.node[j]
        chosen[j] = None
        if node.op_type in ("Shape", "Size"):
            roots.append(j)
            continue
        stack.extend(n for n in node.input if n and n in static and n not in constants)
    batch_src = cut[0]
    out: list[onnx.NodeProto] = []
    h = onnx.helper
    batch_name = f"onnxcam_split/batch_of_{batch_src}"
    out.append(h.make_node("Constant", [], [batch_name + "_0"], value=onnx.numpy_helper.from_array(
        _np_i64([0]), batch_name + "_0"), name=batch_name + "_c0"))
    out.append(h.make_node("Constant", [], [batch_name + "_1"], value=onnx.numpy_helper.from_array(
        _np_i64([1]), batch_name + "_1"), name=batch_name + "_c1"))
    out.append(h.make_node("Shape", [batch_src], [batch_name + "_shape"], name=batch_name + "_shape_node"))
    out.append(h.make_node("Slice", [batch_name + "_shape", batch_name + "_0", batch_name + "_1"], [batch_name],
                           name=batch_name + "_slice"))
    rebuilt: dict[int, list[onnx.NodeProto]] = {}
    for j in roots:
        node = graph.node[j]
        src = node.input[0]
        if src in produced_in_head or src in cut:
            rebuilt[j] = [node]
            continue
        info = infos.get(src)
        if info is None or info.shape is None or not all(isinstance(d, int) for d in info.shape[1:]):
            return [], set()
        rest = [int(d) for d in info.shape[1:]]  # type: ignore[arg-type]
        tag = f"onnxcam_split/{node.output[0]}"
        const = h.make_node("Constant", [], [tag + "_rest"], value=onnx.numpy_helper.from_array(
            _np_i64(rest), tag + "_rest"), name=tag + "_rest_node")
        if node.op_type == "Size":
            prod = h.make_node("Constant", [], [tag + "_prod"], value=onnx.numpy_helper.from_array(
                _np_i64(int(_prod(rest))), tag + "_prod"), name=tag + "_prod_node")
            squeeze = h.make_node("ReduceSum", [batch_name], [tag + "_b"], keepdims=0, name=tag + "_b_node")
            mul = h.make_node("Mul", [tag + "_b", tag + "_prod"], [node.output[0]], name=tag + "_mul")
            rebuilt[j] = [prod, squeeze, mul]
            continue
        start = next((a.i for a in node.attribute if a.name == "start"), None)
        end = next((a.i for a in node.attribute if a.name == "end"), None)
        full = tag + "_full" if (start is not None or end is not None) else node.output[0]
        nodes = [const, h.make_node("Concat", [batch_name, tag + "_rest"], [full], axis=0, name=tag + "_concat")]
        if full != node.output[0]:
            rank = 1 + len(rest)
            s0 = 0 if start is None else (start + rank if start < 0 else start)
            e0 = rank if end is None else (end + rank if end < 0 else end)
            nodes += [
                h.make_node("Constant", [], [tag + "_s"], value=onnx.numpy_helper.from_array(_np_i64([s0]), tag + "_s"),
                            name=tag + "_s_node"),
                h.make_node("Constant", [], [tag + "_e"], value=onnx.numpy_helper.from_array(_np_i64([e0]), tag + "_e"),
                            name=tag + "_e_node"),
                h.make_node("Slice", [full, tag + "_s", tag + "_e"], [node.output[0]], name=tag + "_slice"),
            ]
        rebuilt[j] = nodes
    for j in sorted(chosen):
        out.extend(rebuilt.get(j, [graph.node[j]]))
    produced = {o for node in out for o in node.output if o}
    return out, produced


def _np_i64(values: object) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def _prod(values: Sequence[int]) -> int:
    result = 1
    for v in values:
        result *= v
    return result


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
