"""What each tensor of a graph holds: its layout read off the ops that made it, and attention blocks.

Layouts follow the data from the image input: convolution-family ops write NCHW; ``Transpose``
(0, 2, 3, 1) makes channels-last (NHWC, Swin and ConvNeXt internals); ``Flatten``/``Reshape`` of an
NCHW map to ``(N, C, h*w)`` then ``Transpose`` (0, 2, 1) makes patch tokens ``(N, T, D)``; a
``Concat`` of tokens on axis 1 (class, distillation, register tokens) keeps tokens; ops that keep
their input's shape keep its layout; a Linear (``MatMul`` by a constant matrix) or a
``LayerNormalization`` on the last axis keeps channels-last and tokens. A 4-D tensor no rule reaches
but that a ``LayerNormalization`` normalises over its last axis is channels-last (Swin's patch
merging). Everything else has no known layout: a 4-D one is an NCHW *guess*.

An attention block is found from its ``Softmax`` (scores ``(..., T, T)`` whose probabilities feed a
``MatMul``): the nearest normalisation upstream of it takes the block's input ``x``, and the
residual ``Add`` of ``x`` closes it. Tensors strictly between the two (heads split off, scores,
windows) mix heads, tokens and batch: they are *inside attention* and never a feature map.

A block's tokens may have been cut out of a 4-D feature map by rearranging ops alone (MobileViT's
unfolding of a map into patches): up the residual stream from ``x`` (through each ``Add`` whose
other input is computed from it), a chain of ``Reshape`` / ``Transpose`` / ``Flatten`` /
``Squeeze`` / ``Unsqueeze`` / ``Identity`` back to a 4-D tensor is that block's ``TokenSource``.
Which place of the map each token holds is not guessed from shapes: ``rearrangement_model`` is the
chain as a model of its own, which callers run on an index-coded map.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import onnx

from onnxcam.graph.protos import make_model
from onnxcam.graph.shapes import Dim, TensorInfo

Layout = Literal["NCHW", "NHWC", "NTD", "NCT"]

_NCHW_OPS = frozenset({
    "Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "MaxPool", "AveragePool", "LpPool", "BatchNormalization",
    "InstanceNormalization", "GroupNormalization", "LRN", "Resize", "Upsample", "DepthToSpace", "SpaceToDepth",
    "GlobalAveragePool", "GlobalMaxPool", "QLinearGlobalAveragePool", "QLinearAveragePool",
})
# Ops whose output can keep an input's layout only by accident of equal shapes.
_NO_LAYOUT_OPS = frozenset({"Softmax", "LogSoftmax", "Hardmax", "MatMul", "Gemm", "Einsum", "Shape", "Size",
                            "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ArgMax", "ArgMin", "TopK"})
_PASS_THROUGH = frozenset({"Identity", "Dropout", "Cast", "DequantizeLinear", "QuantizeLinear"})


@dataclass(frozen=True)
class TensorLayout:
    """A tensor's layout and whether it was inferred from the graph (``guessed`` False) or assumed."""

    layout: Layout
    guessed: bool = False


# Ops that only move elements: a chain of them from a map to tokens makes each token some place's values.
_REARRANGING = frozenset({"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity"})


@dataclass(frozen=True)
class TokenSource:
    """The 4-D tensor ``source`` whose elements the token tensor ``tokens`` ``(rows, T, D)`` holds,
    rearranged by the nodes producing ``steps`` (their outputs, from ``source`` to ``tokens``)."""

    source: str
    tokens: str
    steps: tuple[str, ...]


@dataclass(frozen=True)
class AttentionBlock:
    """One attention: its ``softmax`` node's output, the block input ``x`` (None when no normalisation
    precedes it) and the tensors between ``x`` and the residual ``Add`` (token tensors among them, such as
    the normalised input, are still feature maps: callers keep those whose layout is known).
    ``tokens_from``: the map its tokens were rearranged from, when they were (see the module docstring)."""

    softmax: str
    x: str | None
    inside: frozenset[str]
    tokens_from: TokenSource | None = None


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _shape(infos: Mapping[str, TensorInfo], name: str) -> tuple[Dim, ...] | None:
    info = infos.get(name)
    return info.shape if info is not None else None


def _constants(model: onnx.ModelProto) -> set[str]:
    """Tensors that do not depend on a graph input."""
    graph = model.graph
    dynamic = {i.name for i in graph.input} - {init.name for init in graph.initializer}
    const = {init.name for init in graph.initializer}
    for node in graph.node:
        if any(name in dynamic for name in node.input if name):
            dynamic.update(o for o in node.output if o)
        else:
            const.update(o for o in node.output if o)
    return const


def _same(a: Sequence[Dim] | None, b: Sequence[Dim] | None) -> bool:
    """Equal shapes but for the batch axis, which shape inference names differently along the graph."""
    return a is not None and b is not None and len(a) == len(b) and tuple(a[1:]) == tuple(b[1:])


def _prod(dims: Sequence[Dim]) -> int | None:
    out = 1
    for d in dims:
        if not isinstance(d, int):
            return None
        out *= d
    return out


def _reshaped(src: Layout, before: tuple[Dim, ...], after: tuple[Dim, ...]) -> Layout | None:
    """The layout a Reshape/Flatten from ``before`` to ``after`` keeps, if any (batch axis kept)."""
    if len(before) == 4 and len(after) == 3 and after[1:] and before[3] == after[2] and src == "NHWC":
        hw = _prod(before[1:3])
        return "NTD" if hw is not None and hw == after[1] else None
    if len(before) == 4 and len(after) == 3 and src == "NCHW" and before[1] == after[1]:
        hw = _prod(before[2:4])
        return "NCT" if hw is not None and hw == after[2] else None
    if len(before) == 3 and len(after) == 4 and src == "NTD" and before[2] == after[3]:
        hw = _prod(after[1:3])
        return "NHWC" if hw is not None and hw == before[1] else None
    if len(before) == 3 and len(after) == 4 and src == "NCT" and before[1] == after[1]:
        hw = _prod(after[2:4])
        return "NCHW" if hw is not None and hw == before[2] else None
    return None


_TRANSPOSES: dict[tuple[Layout, tuple[int, ...]], Layout] = {
    ("NCHW", (0, 2, 3, 1)): "NHWC",
    ("NHWC", (0, 3, 1, 2)): "NCHW",
    ("NCT", (0, 2, 1)): "NTD",
    ("NTD", (0, 2, 1)): "NCT",
}


def tensor_layouts(
    model: onnx.ModelProto, infos: Mapping[str, TensorInfo], input_layout: str = "NCHW"
) -> dict[str, TensorLayout]:
    """The layout of every float tensor a rule reaches (see the module docstring), by tensor name."""
    graph = model.graph
    const = _constants(model)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    inits = {init.name for init in graph.initializer}
    out: dict[str, TensorLayout] = {}
    for i in graph.input:
        if i.name not in inits and i.name in infos and infos[i.name].rank == 4:
            out[i.name] = TensorLayout("NHWC" if input_layout == "NHWC" else "NCHW")

    def channels_last_by_use(name: str) -> bool:
        for c in consumers.get(name, []):
            if c.op_type == "LayerNormalization" and c.input[0] == name and _attr(c, "axis", -1) in (-1, 3):
                return True
        return False

    for node in graph.node:
        ins = [n for n in node.input if n and n not in const]
        if not ins or not node.output or not node.output[0]:
            continue
        y = node.output[0]
        ys = _shape(infos, y)
        src = out.get(ins[0]) if node.input and node.input[0] in out else None
        found: TensorLayout | None = None
        op = node.op_type
        if op in _NCHW_OPS and ys is not None and len(ys) == 4:
            found = TensorLayout("NCHW", src.guessed if src else False)
        elif op == "Transpose" and src is not None:
            perm = tuple(int(p) for p in _attr(node, "perm", ()))  # type: ignore[attr-defined]
            lay = _TRANSPOSES.get((src.layout, perm))
            found = TensorLayout(lay, src.guessed) if lay else None
        elif op in ("Reshape", "Flatten") and src is not None:
            xs = _shape(infos, node.input[0])
            lay = _reshaped(src.layout, tuple(xs), tuple(ys)) if xs is not None and ys is not None else None
            if lay is None and _same(xs, ys):
                lay = src.layout
            found = TensorLayout(lay, src.guessed) if lay else None
        elif op == "MatMul" and src is not None and len(node.input) > 1 and node.input[1] in const:
            ws = _shape(infos, node.input[1])
            if src.layout in ("NHWC", "NTD") and ws is not None and len(ws) == 2:
                found = src
        elif op == "Concat":
            tagged = [out[n] for n in ins if n in out]
            axis = int(_attr(node, "axis", 0))  # type: ignore[call-overload]
            rank = len(ys) if ys is not None else 0
            axis = axis + rank if axis < 0 else axis
            if tagged and all(t.layout == tagged[0].layout for t in tagged):
                lay = tagged[0].layout
                if axis != 0:
                    found = TensorLayout(lay, any(t.guessed for t in tagged))
        elif op in ("Split", "Slice") and src is not None:
            xs = _shape(infos, node.input[0])
            if xs is not None and ys is not None and len(xs) == len(ys):
                found = src
        elif op not in _NO_LAYOUT_OPS and ys is not None:
            for n in ins:
                if n in out and _same(_shape(infos, n), ys):
                    found = out[n]
                    break
        for o in node.output:
            if not o:
                continue
            os_ = _shape(infos, o)
            lay_o = found if (o == y or op in ("Split",)) else None
            if lay_o is None and os_ is not None and len(os_) == 4 and channels_last_by_use(o):
                lay_o = TensorLayout("NHWC", src.guessed if src else False)
            if lay_o is not None:
                out[o] = lay_o
    return out


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: node for node in model.graph.node for o in node.output if o}


def _is_norm(node: onnx.NodeProto, producers: Mapping[str, onnx.NodeProto]) -> str | None:
    """The normalised input of a LayerNormalization, or of its decomposition ``x - ReduceMean(x)``."""
    if node.op_type in ("LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization"):
        return node.input[0]
    if node.op_type == "Sub" and len(node.input) == 2:
        mean = producers.get(node.input[1])
        if mean is not None and mean.op_type == "ReduceMean" and mean.input and mean.input[0] == node.input[0]:
            return node.input[0]
    return None


def attention_softmaxes(model: onnx.ModelProto, infos: Mapping[str, TensorInfo]) -> list[onnx.NodeProto]:
    """``Softmax`` nodes of attention (square ``(..., T, T)`` scores feeding a ``MatMul``), in graph order."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found = []
    for node in model.graph.node:
        if node.op_type != "Softmax":
            continue
        shape = _shape(infos, node.output[0])
        if shape is None or len(shape) < 3 or shape[-1] != shape[-2]:
            continue
        frontier, seen = [node.output[0]], 0
        while frontier and seen < 8:
            name = frontier.pop()
            seen += 1
            for c in consumers.get(name, []):
                if c.op_type in ("MatMul", "Einsum"):
                    found.append(node)
                    frontier = []
                    break
                if c.op_type in _PASS_THROUGH:
                    frontier.extend(o for o in c.output if o)
    return found


def attention_blocks(model: onnx.ModelProto, infos: Mapping[str, TensorInfo]) -> list[AttentionBlock]:
    """Every attention block of the graph (see the module docstring), in graph order."""
    producers = _producers(model)
    order = {id(node): i for i, node in enumerate(model.graph.node)}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    blocks = []
    for sm in attention_softmaxes(model, infos):
        x = _block_input(sm, producers)
        inside: set[str] = set()
        if x is not None:
            residual = _residual_add(x, sm, consumers, order)
            if residual is not None:
                inside = _between(x, residual, producers)
        inside.add(sm.output[0])
        inside.discard(x or "")
        source = _token_source(x, producers, infos) if x is not None else None
        blocks.append(AttentionBlock(sm.output[0], x, frozenset(inside), source))
    return blocks


def _feeds(a: str, b: str, producers: Mapping[str, onnx.NodeProto], limit: int = 4096) -> bool:
    """Whether tensor ``a`` is upstream of ``b`` (a bounded search)."""
    frontier, seen = [b], set[str]()
    while frontier and len(seen) < limit:
        name = frontier.pop()
        if name == a:
            return True
        if name in seen:
            continue
        seen.add(name)
        node = producers.get(name)
        if node is not None:
            frontier.extend(n for n in node.input if n)
    return False


def _token_source(x: str, producers: Mapping[str, onnx.NodeProto],
                  infos: Mapping[str, TensorInfo]) -> TokenSource | None:
    """The map ``x``'s tokens were rearranged from (see the module docstring), if any."""
    stream = x
    for _ in range(256):  # up the residual stream: Add(s, f(s)) carries s's tokens
        node = producers.get(stream)
        if node is None or node.op_type != "Add" or len(node.input) != 2:
            break
        a, b = node.input
        if _feeds(a, b, producers):
            stream = a
        elif _feeds(b, a, producers):
            stream = b
        else:
            break
    steps: list[str] = []
    name = stream
    while (node := producers.get(name)) is not None and node.op_type in _REARRANGING and node.input:
        steps.append(name)
        name = node.input[0]
    src, tokens = _shape(infos, name), _shape(infos, stream)
    if not steps or src is None or tokens is None or len(src) != 4 or len(tokens) != 3:
        return None
    return TokenSource(name, stream, tuple(reversed(steps)))


def rearrangement_model(model: onnx.ModelProto, source: TokenSource) -> onnx.ModelProto | None:
    """``source.steps`` as a model of their own: input ``source.source``, output ``source.tokens``, both
    int64 (the rearranging ops take any element type, so an index-coded map comes out as the tokens'
    indices, exactly). The shape arithmetic the steps read is copied in; None when it reads anything
    but the source's shape and constants (a shape taken elsewhere in the model)."""
    producers = _producers(model)
    inits = {init.name: init for init in model.graph.initializer}
    inputs = {i.name for i in model.graph.input} - set(inits)
    nodes: dict[int, onnx.NodeProto] = {}
    needed: list[str] = []
    for step in source.steps:
        made_by = producers[step]
        nodes[id(made_by)] = made_by
        needed.extend(n for n in made_by.input[1:] if n)
    made = {source.source, *source.steps}
    used_inits: set[str] = set()
    seen: set[str] = set()
    while needed:
        name = needed.pop()
        if name in seen or name == source.source:
            continue
        seen.add(name)
        if name in inits:
            used_inits.add(name)
            continue
        node = producers.get(name)
        if node is None or name in inputs:
            return None
        if node.op_type in ("Shape", "Size"):
            if node.input[0] not in made:
                return None
        else:
            needed.extend(n for n in node.input if n)
        nodes[id(node)] = node
    order = {id(node): k for k, node in enumerate(model.graph.node)}
    graph = onnx.helper.make_graph(
        sorted(nodes.values(), key=lambda node: order[id(node)]), "token_rearrangement",
        [onnx.helper.make_tensor_value_info(source.source, onnx.TensorProto.INT64, ["n", "a", "b", "c"])],
        [onnx.helper.make_tensor_value_info(source.tokens, onnx.TensorProto.INT64, ["rows", "t", "d"])],
        [inits[name] for name in sorted(used_inits)])
    return make_model(graph, model.opset_import, ir_version=model.ir_version)


def _block_input(sm: onnx.NodeProto, producers: Mapping[str, onnx.NodeProto]) -> str | None:
    """The input of the nearest normalisation upstream of ``sm`` (breadth first, a bounded search)."""
    frontier, seen = list(sm.input), set()
    for _ in range(2048):
        if not frontier:
            return None
        name = frontier.pop(0)
        if name in seen:
            continue
        seen.add(name)
        node = producers.get(name)
        if node is None:
            continue
        x = _is_norm(node, producers)
        if x is not None:
            return x
        frontier.extend(n for n in node.input if n)
    return None


def _residual_add(x: str, sm: onnx.NodeProto, consumers: Mapping[str, list[onnx.NodeProto]],
                  order: Mapping[int, int]) -> onnx.NodeProto | None:
    after = order[id(sm)]
    adds = [c for c in consumers.get(x, []) if c.op_type == "Add" and order[id(c)] > after]
    return min(adds, key=lambda n: order[id(n)]) if adds else None


def _between(x: str, residual: onnx.NodeProto, producers: Mapping[str, onnx.NodeProto]) -> set[str]:
    """Tensors upstream of ``residual``'s branch input and downstream of ``x`` (``x`` excluded)."""
    branch = [n for n in residual.input if n and n != x]
    found: set[str] = set()
    frontier = list(branch)
    memo: dict[str, bool] = {}

    def reaches_x(name: str, depth: int = 0) -> bool:
        if name == x:
            return True
        if name in memo:
            return memo[name]
        node = producers.get(name)
        memo[name] = False
        if node is None or depth > 400:
            return False
        memo[name] = any(reaches_x(n, depth + 1) for n in node.input if n)
        return memo[name]

    while frontier:
        name = frontier.pop()
        if name in found or name == x or not reaches_x(name):
            continue
        found.add(name)
        node = producers.get(name)
        if node is not None:
            frontier.extend(n for n in node.input if n)
            frontier.extend(o for o in node.output if o)
    return found
