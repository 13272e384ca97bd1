"""The outputs onnxcam explains: the model outputs, batch-first, and the logits behind their final activation.

A classifier exported with its Softmax (Keras, Paddle, many ONNX zoos) outputs probabilities; the
Grad-CAM paper and pytorch-grad-cam differentiate the score *before* the softmax, whose gradient does
not vanish on a confident prediction. ``final_activations`` walks back from each output through
shape-only nodes (Flatten, Reshape, Identity, Squeeze, Unsqueeze) to a Softmax / LogSoftmax / Sigmoid,
and ``explained_graph`` adds the tensor before it as an extra output - passed through copies of the
same shape-only nodes, so the logits have the output's own shape.

Every explained output is batch-first: a recognizer's ``(T, N, C)`` output gets a Transpose to
``(N, T, C)``, since every batched run, split and gradient graph concatenates and seeds along axis 0.

Passes never edit the caller's model: they return a new protobuf.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import onnx

from onnxcam.graph.shapes import Dim, TensorInfo, tensor_infos

ACTIVATIONS = frozenset({"Softmax", "LogSoftmax", "Sigmoid"})
# Nodes that only rearrange their first input; their other inputs are shapes or axes.
SHAPE_ONLY = frozenset({"Flatten", "Reshape", "Identity", "Squeeze", "Unsqueeze"})
PREFIX = "onnxcam_outputs"


@dataclass(frozen=True)
class FinalActivation:
    """Output ``output`` is ``activation(logits)`` followed by the shape-only ``chain`` (in order)."""

    output: str
    activation: str
    logits: str
    chain: tuple[onnx.NodeProto, ...]


@dataclass(frozen=True)
class ExplainedOutput:
    """One output of the explained graph.

    ``name``: its tensor in the explained graph; ``source``: the model output it stands for;
    ``logits_of``: for a pre-activation tensor, the index (among explained outputs) of the output it
    is the logits of, else None; ``activation``: for a model output, the final activation found
    before it (None if there is none); ``batch_axis``: where the batch axis was before it was moved
    to 0 (0 when nothing moved).
    """

    name: str
    source: str
    logits_of: int | None = None
    activation: str | None = None
    batch_axis: int = 0


@dataclass(frozen=True)
class ExplainedGraph:
    """The model with its explained outputs (``outputs``, in the order the graph returns them)."""

    proto: onnx.ModelProto
    outputs: tuple[ExplainedOutput, ...]
    infos: dict[str, TensorInfo]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs)

    def logits(self) -> dict[int, int]:
        """``{output index: index of its pre-activation logits}``."""
        return {o.logits_of: k for k, o in enumerate(self.outputs) if o.logits_of is not None}


def final_activations(graph: onnx.GraphProto) -> dict[str, FinalActivation]:
    """For each graph output produced by a final activation (possibly through shape-only nodes), that activation."""
    producers = {o: node for node in graph.node for o in node.output if o}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            if name:
                consumers[name] = consumers.get(name, 0) + 1
    outputs = {o.name for o in graph.output}
    found: dict[str, FinalActivation] = {}
    for out in graph.output:
        chain: list[onnx.NodeProto] = []
        name = out.name
        node = producers.get(name)
        while node is not None and node.op_type in SHAPE_ONLY and node.input:
            chain.append(node)
            name = node.input[0]
            node = producers.get(name)
        if node is None or node.op_type not in ACTIVATIONS or not node.input or not node.input[0]:
            continue
        # Logits feeding other nodes too are still the logits; a graph output in the chain is kept as is.
        if any(c.output[0] in outputs and c.output[0] != out.name for c in chain):
            continue
        found[out.name] = FinalActivation(out.name, node.op_type, node.input[0], tuple(reversed(chain)))
    return found


def batch_axis(shapes: Sequence[tuple[Dim, ...] | None], batch: Dim) -> int:
    """The axis that carries the batch in a tensor whose possible shapes are ``shapes`` (0 if unsure).

    A dynamic batch is found by the input's batch symbol (exporters name both alike, e.g. the
    declared ``(T, batch, C)`` of a CTC recognizer); a fixed batch by the one axis of that size when
    axis 0 is not.
    """
    for shape in shapes:
        if not shape:
            continue
        if shape[0] == batch:
            return 0
        hits = [k for k, d in enumerate(shape) if d == batch]
        if isinstance(batch, str) and len(hits) == 1:
            return hits[0]
        if isinstance(batch, int) and isinstance(shape[0], int) and hits:
            return hits[0]
    return 0


def explained_graph(model: onnx.ModelProto, infos: Mapping[str, TensorInfo], batch: Dim,
                    batch_axes: Mapping[str, int] | None = None) -> ExplainedGraph:
    """``model`` plus the logits behind each final activation, every explained output batch-first.

    ``infos``: element types and shapes (the logits' and any moved output's are added to the returned
    ``infos``); ``batch``: the input's batch dim (its symbol tells where the batch goes);
    ``batch_axes``: known batch axes of outputs, overriding what the symbols say.
    """
    graph = model.graph
    acts = final_activations(graph)
    proto = onnx.ModelProto()
    proto.CopyFrom(model)
    new_infos: dict[str, TensorInfo] = {}
    nodes: list[onnx.NodeProto] = []
    explained: list[ExplainedOutput] = []
    extras: list[tuple[str, str, int]] = []  # (tensor, source output, index of the output it is the logits of)
    h = onnx.helper

    for k, out in enumerate(graph.output):
        act = acts.get(out.name)
        explained.append(ExplainedOutput(out.name, out.name, activation=act.activation if act else None))
        if act is None:
            continue
        logits = act.logits
        for j, node in enumerate(act.chain):
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.name = f"{PREFIX}/logits/{out.name}/{j}"
            del copy.input[:]
            copy.input.extend([logits, *node.input[1:]])
            del copy.output[:]
            logits = f"{PREFIX}/logits/{out.name}/{j}"
            copy.output.append(logits)
            nodes.append(copy)
        if act.chain:
            src = infos.get(out.name)
            new_infos[logits] = TensorInfo(logits, src.elem_type if src else onnx.TensorProto.FLOAT,
                                           src.shape if src else None)
        extras.append((logits, out.name, k))

    names = [o.name for o in graph.output]
    for tensor, source, of in extras:
        if tensor in names:  # the model already outputs its logits: point at that output
            k = names.index(tensor)
            explained[k] = ExplainedOutput(tensor, explained[k].source, logits_of=of)
        else:
            explained.append(ExplainedOutput(tensor, source, logits_of=of))

    axes = dict(batch_axes or {})
    declared = tensor_infos(model)
    all_infos = {**infos, **new_infos}
    final: list[ExplainedOutput] = []
    for e in explained:
        shapes = [i.shape for i in (declared.get(e.source), all_infos.get(e.source)) if i is not None]
        axis = axes.get(e.source, batch_axis(shapes, batch))
        if axis == 0:
            final.append(e)
            continue
        info = all_infos.get(e.name)
        rank = len(info.shape) if info is not None and info.shape is not None else None
        if rank is None:
            final.append(e)
            continue
        perm = [axis] + [d for d in range(rank) if d != axis]
        moved = f"{PREFIX}/batch_first/{e.name}"
        nodes.append(h.make_node("Transpose", [e.name], [moved], perm=perm, name=moved))
        assert info is not None and info.shape is not None
        rest = tuple(info.shape[d] for d in perm[1:])
        new_infos[moved] = TensorInfo(moved, info.elem_type, (batch if isinstance(batch, str) else info.shape[axis],
                                                              *rest))
        final.append(ExplainedOutput(moved, e.source, e.logits_of, e.activation, axis))

    if not nodes and len(final) == len(graph.output):
        return ExplainedGraph(proto, tuple(final), dict(infos))
    proto.graph.node.extend(nodes)
    del proto.graph.output[:]
    proto.graph.output.extend(_value_info(e.name, all_infos, new_infos, graph.output) for e in final)
    return ExplainedGraph(proto, tuple(final), {**infos, **new_infos})


def _value_info(name: str, infos: Mapping[str, TensorInfo], new: Mapping[str, TensorInfo],
                originals: Sequence[onnx.ValueInfoProto]) -> onnx.ValueInfoProto:
    for o in originals:
        if o.name == name:
            return o
    info = new.get(name) or infos.get(name)
    if info is None:
        return onnx.helper.make_empty_tensor_value_info(name)
    elem = onnx.helper.make_tensor_type_proto(info.elem_type, None)
    return onnx.helper.make_value_info(name, elem)
