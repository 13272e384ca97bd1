"""Forward-only sessions run a transformer's self-attention as one onnxruntime kernel.

timm exports attention as ``qkv = x W + b`` -> Reshape (B, T, 3, H, d) -> Transpose -> Split -> Squeeze
(q, k, v) -> ``q * scale`` -> ``q k^T`` -> Softmax -> ``p v`` -> Transpose -> Reshape (B, T, H d). On the
CPU the copies (the 5-D transpose, the split, the output transpose) and the (B, H, T, T) probabilities in
memory cost about as much as the attention products themselves. onnxruntime's ``MultiHeadAttention``
(com.microsoft) takes q, k, v as (B, T, H d), adds their biases and computes the same function in one
kernel; onnxruntime's own transformer optimizer does not recognise timm's pattern (it fuses LayerNorm
and GELU, which ORT_ENABLE_ALL fuses already).

Only for sessions that run forward (forward, body, head): a gradient graph keeps plain ONNX ops, the
gradient rules have none for contrib ops. Exact up to float summation order (the scale applied to
``q k^T`` instead of ``q``). Numbers of heads and head sizes are read from the reshape, never asked. An
attention whose probabilities, q, k or v are read elsewhere (a layer, an attention explainer's Softmax
output) is left as it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcam.graph.const_fold import constant_value
from onnxcam.graph.protos import opset_version
from onnxcam.graph.tensor_info import TensorInfo
from onnxcam.graph.toposort import ancestors, topological_order

CONTRIB = "com.microsoft"


@dataclass
class _Match:
    nodes: list[onnx.NodeProto]  # every node the fused kernel replaces
    x: str
    weight: np.ndarray  # (D, 3 H d)
    bias: np.ndarray  # (3 H d,)
    heads: int
    scale: float
    output: str


class _Graph:
    def __init__(self, model: onnx.ModelProto, infos: Mapping[str, TensorInfo], keep: Iterable[str]) -> None:
        g = model.graph
        self.opset = opset_version(model)
        self.nodes = list(g.node)
        self.initializers = {i.name: i for i in g.initializer}
        self.infos = infos
        self.protected = {o.name for o in g.output} | set(keep)
        self.constants = {n.output[0]: v for n in self.nodes if n.op_type == "Constant"
                          for v in [constant_value(n)] if v is not None}
        self.producer = {o: n for n in self.nodes for o in n.output if o}
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.nodes:
            for name in set(n.input):
                if name:
                    self.readers.setdefault(name, []).append(n)

    def value(self, name: str) -> np.ndarray | None:
        if name in self.constants:
            return self.constants[name]
        init = self.initializers.get(name)
        if init is not None:
            return numpy_helper.to_array(init)
        node = self.producer.get(name)  # exporters share equal weights through Identity nodes
        return self.value(node.input[0]) if node is not None and node.op_type == "Identity" else None

    def only(self, name: str, op: str) -> onnx.NodeProto | None:
        """The producer of ``name`` if it is an ``op`` whose output nothing else reads."""
        node = self.producer.get(name)
        if (node is None or node.op_type != op or node.domain not in ("", "ai.onnx") or name in self.protected
                or len(self.readers.get(name, [])) != 1):
            return None
        return node


    def reader(self, name: str, op: str) -> onnx.NodeProto | None:
        """The one node reading ``name`` if it is an ``op`` (and ``name`` is not kept)."""
        users = self.readers.get(name, [])
        if name in self.protected or len(users) != 1 or users[0].op_type != op or users[0].input[0] != name:
            return None
        return users[0]


def _attr(node: onnx.NodeProto, name: str) -> onnx.AttributeProto | None:
    return next((a for a in node.attribute if a.name == name), None)


def _perm(node: onnx.NodeProto) -> list[int] | None:
    a = _attr(node, "perm")
    return None if a is None else list(a.ints)


def _match(g: _Graph, softmax: onnx.NodeProto) -> _Match | None:
    axis = _attr(softmax, "axis")
    if g.opset < 13 or (axis is not None and axis.i not in (-1, 3)):
        return None
    probs = softmax.output[0]
    pv = g.reader(probs, "MatMul")
    if pv is None:
        return None
    logits = g.only(softmax.input[0], "MatMul")
    if logits is None:
        return None
    scaled, kt = logits.input
    mul = g.only(scaled, "Mul")
    transpose_k = g.only(kt, "Transpose")
    if mul is None or transpose_k is None or _perm(transpose_k) != [0, 1, 3, 2]:
        return None
    scalars = [g.value(i) for i in mul.input]
    k_scale = next((j for j, v in enumerate(scalars) if v is not None and v.size == 1), None)
    if k_scale is None:
        return None
    scale = float(scalars[k_scale].reshape(()))  # type: ignore[union-attr]
    q_name, k_name, v_name = mul.input[1 - k_scale], transpose_k.input[0], pv.input[1]
    squeezes = [g.only(n, "Squeeze") for n in (q_name, k_name, v_name)]
    if any(s is None for s in squeezes):
        return None
    parts = [s.input[0] for s in squeezes]  # type: ignore[union-attr]
    split = g.producer.get(parts[0])
    if (split is None or split.op_type != "Split" or list(split.output) != parts or _attr(split, "axis") is None
            or _attr(split, "axis").i != 0 or any(p in g.protected or len(g.readers.get(p, [])) != 1 for p in parts)):  # type: ignore[union-attr]
        return None
    to_heads = g.only(split.input[0], "Transpose")
    if to_heads is None or _perm(to_heads) != [2, 0, 3, 1, 4]:
        return None
    reshape = g.only(to_heads.input[0], "Reshape")
    if reshape is None:
        return None
    five = g.infos.get(reshape.output[0])
    if five is None or five.shape is None or len(five.shape) != 5 or five.shape[2] != 3:
        return None
    heads, size = five.shape[3], five.shape[4]
    if not isinstance(heads, int) or not isinstance(size, int):
        return None
    add = g.only(reshape.input[0], "Add")
    if add is None:
        return None
    biases = [g.value(i) for i in add.input]
    k_bias = next((j for j, v in enumerate(biases) if v is not None and v.shape == (3 * heads * size,)), None)
    if k_bias is None:
        return None
    project = g.only(add.input[1 - k_bias], "MatMul")
    weight = g.value(project.input[1]) if project is not None else None
    if project is None or weight is None or weight.shape[1:] != (3 * heads * size,) or weight.ndim != 2:
        return None
    x = g.infos.get(project.input[0])
    if x is None or x.shape is None or len(x.shape) != 3 or x.shape[1] != five.shape[1]:
        return None
    # The output side: (B, H, T, d) -> (B, T, H, d) -> (B, T, H d).
    merge = g.reader(pv.output[0], "Transpose")
    if merge is None or _perm(merge) != [0, 2, 1, 3]:
        return None
    flat = g.reader(merge.output[0], "Reshape")
    out = g.infos.get(flat.output[0]) if flat is not None else None
    if flat is None or out is None or out.shape is None or len(out.shape) != 3 or out.shape[2] != heads * size:
        return None
    nodes = [project, add, reshape, to_heads, split, *squeezes, mul, transpose_k, logits, softmax, pv, merge, flat]
    return _Match(nodes, project.input[0], weight, biases[k_bias], heads, scale, flat.output[0])  # type: ignore[arg-type]


def fuse_attention(
    model: onnx.ModelProto, infos: Mapping[str, TensorInfo], keep: Iterable[str] = ()
) -> tuple[onnx.ModelProto, int]:
    """``model`` with each timm-style self-attention as one ``com.microsoft.MultiHeadAttention``, and how
    many were fused (0: ``model`` itself comes back). ``keep``: tensors that must stay in the graph."""
    g = _Graph(model, infos, keep)
    matches = [m for m in (_match(g, n) for n in g.nodes if n.op_type == "Softmax") if m is not None]
    if not matches:
        return model, 0
    replaced = {id(n) for m in matches for n in m.nodes}
    added: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = [n for n in g.nodes if id(n) not in replaced]
    for m in matches:
        base = f"{m.output}/mha"
        qkv = []
        for j, part in enumerate("qkv"):
            w = f"{base}/W{part}"
            cols = m.weight.shape[1] // 3
            added.append(numpy_helper.from_array(np.ascontiguousarray(m.weight[:, j * cols:(j + 1) * cols]), w))
            nodes.append(helper.make_node("MatMul", [m.x, w], [f"{base}/{part}"], name=f"{base}/{part}"))
            qkv.append(f"{base}/{part}")
        added.append(numpy_helper.from_array(m.bias.astype(m.weight.dtype), f"{base}/bias"))
        nodes.append(helper.make_node("MultiHeadAttention", [*qkv, f"{base}/bias"], [m.output], name=base,
                                      domain=CONTRIB, num_heads=m.heads, scale=m.scale))
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    outputs = [o.name for o in graph.output]
    kept, needed = ancestors(nodes, outputs)
    del graph.node[:]
    graph.node.extend(topological_order([nodes[k] for k in sorted(kept)]))
    for field in (graph.initializer, graph.value_info):
        for k in reversed(range(len(field))):
            if field[k].name not in needed:
                del field[k]
    graph.initializer.extend(t for t in added if t.name in needed)
    if not any(o.domain == CONTRIB for o in copy.opset_import):
        copy.opset_import.append(helper.make_opsetid(CONTRIB, 1))
    return copy, len(matches)


__all__ = ["fuse_attention"]
