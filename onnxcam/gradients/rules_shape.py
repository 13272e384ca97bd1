"""Reverse-mode rules for data-movement ops (reshape, transpose, slicing, concatenation, ...)."""

from __future__ import annotations

import numpy as np
import onnx

from onnxcam.gradients._emit import Emitter, NoRule, attr
from onnxcam.gradients._registry import rule
from onnxcam.gradients.rules_math import _gy, _only_x
from onnxcam.gradients.straight_through import node_range


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _reshape(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    return _only_x(node, e.reshape_like(_gy(gys), node.input[0]))


@rule("QuantizeLinear", "DequantizeLinear")
def _straight_through(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    # Clipped straight-through estimator, as quantisation-aware training uses: the rounding step's
    # zero-almost-everywhere derivative is replaced by the identity inside the quantiser's range,
    # and by zero where it clips (a ReLU/ReLU6 folded into the range lives on there). Not at the
    # model's own output quantisers: a logit above the calibrated range would leave the explained
    # score with no gradient at all, and a CAM needs the score's slope, not the saturation's.
    g = _gy(gys)
    x = node.input[0]
    if e.dtype(x) in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE):
        g = e.op("Cast", [g], to=e.dtype(x))
    if node.op_type == "QuantizeLinear" and node.output[0] not in e.output_quantizers:
        values = {n: v for n in node.input[1:3] if n and (v := e.value(n)) is not None}
        bounds = node_range(node, values)
        if bounds is not None:
            inside = e.op("And", [e.compare("GreaterOrEqual", x, e.scalar(bounds[0], x)),
                                  e.compare("LessOrEqual", x, e.scalar(bounds[1], x))])
            g = e.mul(g, e.op("Cast", [inside], to=e.dtype(x)))
    return _only_x(node, g)


@rule("Transpose")
def _transpose(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    perm = attr(node, "perm") or list(reversed(range(e.rank(node.input[0]))))
    inverse = [0] * len(perm)
    for i, p in enumerate(perm):
        inverse[p] = i
    return [e.op("Transpose", [_gy(gys)], perm=inverse)]


@rule("Expand")
def _expand(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    return [e.unbroadcast(_gy(gys), node.input[0], e.shape(node.output[0])), None]


@rule("Concat")
def _concat(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    g = _gy(gys)
    rank = e.rank(node.output[0])
    axis = attr(node, "axis") % rank
    sizes = []
    for x in node.input:
        shape = e.shape(x)
        if shape is None or shape[axis] is None:
            raise NoRule(f"Concat needs the static size of '{x}' along axis {axis}")
        sizes.append(int(shape[axis]))
    if len(node.input) == 1:
        return [g]
    if e.opset >= 13:
        parts = e.op_n("Split", [g, e.ints(sizes)], len(sizes), axis=axis)
    else:
        parts = e.op_n("Split", [g], len(sizes), axis=axis, split=sizes)
    return [p if e.active(x) else None for p, x in zip(parts, node.input, strict=True)]


@rule("Split")
def _split(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    rank = e.rank(node.input[0])
    axis = attr(node, "axis", 0) % rank
    parts = [g if g is not None else e.zeros_like(out) for g, out in zip(gys, node.output, strict=True)]
    return _only_x(node, e.op("Concat", parts, axis=axis))


def _slice_params(e: Emitter, node: onnx.NodeProto, rank: int) -> tuple[list, list, list, list]:
    if e.opset >= 10:
        starts = e.need_value(node.input[1], "Slice starts").tolist()
        ends = e.need_value(node.input[2], "Slice ends").tolist()
        axes = (
            e.need_value(node.input[3], "Slice axes").tolist()
            if len(node.input) > 3 and node.input[3]
            else list(range(len(starts)))
        )
        steps = (
            e.need_value(node.input[4], "Slice steps").tolist()
            if len(node.input) > 4 and node.input[4]
            else [1] * len(starts)
        )
    else:
        starts, ends = list(attr(node, "starts")), list(attr(node, "ends"))
        axes = list(attr(node, "axes", None) or range(len(starts)))
        steps = [1] * len(starts)
    return starts, ends, [a % rank for a in axes], steps


@rule("Slice")
def _slice(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    x, g = node.input[0], _gy(gys)
    shape = e.shape(x)
    if shape is None:
        raise NoRule("Slice needs the rank of its input")
    starts, ends, axes, steps = _slice_params(e, node, len(shape))
    # ONNX clamps starts/ends exactly as Python slices do, so np.arange does the bookkeeping
    picked: dict[int, np.ndarray] = {}
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        dim = shape[axis]
        if dim is None:
            raise NoRule(f"Slice needs the static size of '{x}' along axis {axis}")
        picked[axis] = np.arange(dim)[slice(start, end, step)]
    out: list[str | None] = [None] * len(node.input)
    if all(s == 1 for s in steps):
        begin = [0] * len(shape)
        end_pad = [0] * len(shape)
        for axis, idx in picked.items():
            dim = int(shape[axis] or 0)
            begin[axis] = int(idx[0]) if idx.size else 0
            end_pad[axis] = dim - begin[axis] - idx.size
        out[0] = _pad(e, g, begin + end_pad)
        return out
    full = e.static_shape(x)
    grid = np.ix_(*[picked.get(a, np.arange(full[a])) for a in range(len(full))])
    index = np.arange(int(np.prod(full))).reshape(full)[grid]
    flat = e.op("Reshape", [e.zeros_like(x), e.ints([-1])])
    scattered = e.op(
        "ScatterElements", [flat, e.ints(index.reshape(-1).tolist()), e.op("Reshape", [g, e.ints([-1])])], axis=0
    )
    out[0] = e.reshape_like(scattered, x)
    return out


def _pad(e: Emitter, g: str, pads: list[int]) -> str:
    if not any(pads):
        return g
    if e.opset >= 11:
        return e.op("Pad", [g, e.ints(pads)])
    return e.op("Pad", [g], pads=pads)


_NP_PAD = {"edge": "edge", "reflect": "reflect", "wrap": "wrap"}


@rule("Pad")
def _pad_rule(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    mode = attr(node, "mode", "constant")
    if mode != "constant" and mode not in _NP_PAD:
        raise NoRule(f"Pad mode '{mode}' is not one of constant/edge/reflect/wrap")
    x, g = node.input[0], _gy(gys)
    rank = e.rank(x)
    if e.opset >= 11:
        pads = e.need_value(node.input[1], "Pad pads").astype(int).tolist()
    else:
        pads = list(attr(node, "pads"))
    axes = list(range(rank))
    if len(node.input) > 3 and node.input[3]:
        axes = [int(a) % rank for a in e.need_value(node.input[3], "Pad axes").reshape(-1)]
    n = len(axes)
    begin, end = [0] * rank, [0] * rank
    for i, a in enumerate(axes):
        begin[a], end[a] = pads[i], pads[n + i]
    if any(p < 0 for p in begin + end):
        raise NoRule("Pad with negative pads (a crop); export the crop as Slice")
    out: list[str | None] = [None] * len(node.input)
    mode = attr(node, "mode", "constant")
    if mode == "constant":
        # the adjoint of zero padding crops back to the unpadded region
        out[0] = e.crop(g, begin, end)
        return out
    # edge/reflect/wrap pads gather x through a fixed index map; np.pad of an arange computes it,
    # and its adjoint adds each output's adjoint back at the index it was read from
    shape = e.static_shape(x)
    where = np.arange(int(np.prod(shape))).reshape(shape)
    index = np.pad(where, list(zip(begin, end, strict=True)), mode=_NP_PAD[mode])  # type: ignore[call-overload]
    out[0] = e.reshape_like(e.scatter_add(x, index, g), x)
    return out


@rule("Gather")
def _gather(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    x, idx_name = node.input
    g = _gy(gys)
    shape = e.shape(x)
    if shape is None:
        raise NoRule("Gather needs the rank of its data")
    axis = attr(node, "axis", 0) % len(shape)
    dim = shape[axis]
    idx = e.need_value(idx_name, "Gather indices")
    if dim is None:
        raise NoRule(f"Gather needs the static size of '{x}' along axis {axis}")
    flat = idx.reshape(-1).astype(np.int64) % dim
    rest = shape[axis + 1 :]
    if any(d is None for d in rest):
        raise NoRule(f"Gather needs the static trailing dims of '{x}'")
    # a one-hot matrix sums repeated indices exactly and keeps a symbolic batch dim
    onehot = np.zeros((flat.size, dim))
    onehot[np.arange(flat.size), flat] = 1.0
    g = e.op("Reshape", [g, e.ints([0] * axis + [flat.size] + [int(d or 0) for d in rest])])
    rank = len(shape)
    to_last = [a for a in range(rank) if a != axis] + [axis]
    back = [0] * rank
    for i, p in enumerate(to_last):
        back[p] = i
    moved = e.op("Transpose", [g], perm=to_last)
    product = e.op("MatMul", [moved, e.array_like(onehot, x)])
    return [e.op("Transpose", [product], perm=back), None]


@rule("Tile")
def _tile(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    x, g = node.input[0], _gy(gys)
    shape = e.static_shape(x)
    repeats = e.need_value(node.input[1], "Tile repeats").astype(int).tolist()
    interleaved: list[int] = []
    for r, d in zip(repeats, shape, strict=True):
        interleaved += [r, d]
    g = e.op("Reshape", [g, e.ints(interleaved)])
    summed = e.reduce("ReduceSum", g, list(range(0, 2 * len(shape), 2)), keepdims=0)
    return [e.reshape_like(summed, x), None]
