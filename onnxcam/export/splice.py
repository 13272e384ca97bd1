"""Splicing a gradient graph into the model it differentiates, sharing what they have in common.

The gradient graph reads the head's inputs (tensors of the model) and its seeds, and carries its own
copy of the weights it reads and of the head's forward nodes its rules need. Splicing binds its
inputs to tensors of the exported graph, keeps one copy of every weight (an initializer equal to the
model's, name and bytes, is the model's), and reuses the model's own node wherever a forward node is
the same op on the same inputs with the same attributes; everything else is renamed under a prefix.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcam.export._graph import PREFIX

Signature = tuple[str, str, tuple[str, ...], bytes]


def _signature(node: onnx.NodeProto, inputs: Iterable[str]) -> Signature:
    attrs = b"".join(a.SerializeToString(deterministic=True) for a in node.attribute)
    return (node.domain, node.op_type, tuple(inputs), attrs)


@dataclass
class SpliceTarget:
    """The exported graph being assembled: the model's nodes and initializers, and what was added."""

    model: onnx.ModelProto
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)

    def __post_init__(self) -> None:
        g = self.model.graph
        self._inits = {t.name: t for t in g.initializer}
        self._names = {o for n in g.node for o in n.output} | {i.name for i in g.input} | set(self._inits)
        self._seen: dict[Signature, list[str]] = {}
        self._made: set[str] = set()
        for node in g.node:
            if not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
                self._seen.setdefault(_signature(node, node.input), list(node.output))

    def _same_weight(self, t: onnx.TensorProto) -> bool:
        mine = self._inits.get(t.name)
        return mine is not None and mine.SerializeToString() == t.SerializeToString()

    def _unshared(self, weight: str, source: str, prefix: str) -> str:
        """``weight`` times a run-time 1: the same values, but not the same constant.

        OpenVINO (2026.4, CPU) computes a ConvTranspose wrongly when its weight is the very constant a
        Conv of the model also reads (an in-place layout change of the shared constant, as far as
        measured: an Identity is folded away and fails too), and a MatMul whose weight is the Transpose
        of a constant another MatMul reads as is (the backward of a Swin block's linear layers: gradients
        off by 40 %, measured). A product with a value only known at run time cannot be folded into
        either; it costs one pass over the weight per run.
        """
        one = f"{prefix}runtime_one"
        if one not in self._made:
            shape, zero = f"{prefix}runtime_shape", f"{prefix}runtime_zero"
            positive, flags = f"{prefix}runtime_positive", f"{prefix}runtime_flags"
            self.initializers.append(numpy_helper.from_array(np.array(0, np.int64), zero))
            self.nodes += [
                helper.make_node("Shape", [source], [shape], name=shape),
                helper.make_node("Greater", [shape, zero], [positive], name=positive),
                helper.make_node("Cast", [positive], [flags], name=flags, to=onnx.TensorProto.FLOAT),
                # every dim of a tensor that exists is > 0: the minimum of the flags is 1
                helper.make_node("ReduceMin", [flags], [one], name=one, keepdims=0),
            ]
            self._made.add(one)
        out = f"{prefix}{weight}/unshared"
        if out not in self._made:
            self.nodes.append(helper.make_node("Mul", [weight, one], [out], name=out))
            self._made.add(out)
        return out

    def splice(self, graph: onnx.GraphProto, bind: Mapping[str, str], scope: str, reuse: bool = True) -> dict[str, str]:
        """Add ``graph``'s nodes with its inputs bound by ``bind``; returns every tensor's new name.

        ``reuse=False`` keeps the graph's own forward nodes rather than the model's equal ones.
        """
        prefix = f"{PREFIX}{scope}/"
        rename: dict[str, str] = dict(bind)
        for t in graph.initializer:
            if self._same_weight(t):
                rename[t.name] = t.name
                continue
            copy = onnx.TensorProto()
            copy.CopyFrom(t)
            copy.name = prefix + t.name
            rename[t.name] = copy.name
            self.initializers.append(copy)
        for node in graph.node:
            missing = [i for i in node.input if i and i not in rename]
            if missing:
                raise ValueError(f"splice: node {node.name!r} reads {missing}, which the spliced graph does not bind")
            inputs = [rename[i] if i else "" for i in node.input]
            if node.op_type == "ConvTranspose" and len(inputs) > 1 and inputs[1] in self._inits:
                inputs[1] = self._unshared(inputs[1], next(iter(bind.values())), prefix)
            if node.op_type == "Transpose" and inputs[0] in self._inits:
                inputs[0] = self._unshared(inputs[0], next(iter(bind.values())), prefix)
            has_graph = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
            sig = _signature(node, inputs)
            same = None if has_graph or not reuse else self._seen.get(sig)
            if same is not None and len(same) == len(node.output):
                rename.update({o: s for o, s in zip(node.output, same) if o})
                continue
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            del copy.input[:]
            copy.input.extend(inputs)
            del copy.output[:]
            outs = [prefix + o if o else "" for o in node.output]
            copy.output.extend(outs)
            copy.name = prefix + (node.name or (node.output[0] if node.output else node.op_type))
            rename.update({o: n for o, n in zip(node.output, outs) if o})
            self.nodes.append(copy)
            if not has_graph:
                self._seen[sig] = outs
        return rename
