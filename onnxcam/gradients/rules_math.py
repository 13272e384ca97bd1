"""Reverse-mode rules for elementwise math, activations, softmax, reductions and matrix products."""

from __future__ import annotations

import math

import onnx

from onnxcam.gradients._emit import Emitter, NoRule, attr
from onnxcam.gradients._registry import rule


def _gy(gys: list[str | None]) -> str:
    g = gys[0]
    if g is None:
        raise NoRule("the first output carries no adjoint")
    return g


def _only_x(node: onnx.NodeProto, g: str | None) -> list[str | None]:
    return [g] + [None] * (len(node.input) - 1)


# --- activations: dx = dy * f'(x), written with the forward x or y -------------------------------
@rule("Relu")
def _relu(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    x = node.input[0]
    zero = e.scalar(0.0, x)
    return [e.op("Where", [e.op("Greater", [x, zero]), _gy(gys), zero])]


@rule("LeakyRelu")
def _leaky(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    x, g = node.input[0], _gy(gys)
    alpha = e.scalar(attr(node, "alpha", 0.01), x)
    return [e.op("Where", [e.op("Greater", [x, e.scalar(0.0, x)]), g, e.mul(g, alpha)])]


@rule("PRelu")
def _prelu(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    x, slope = node.input[0], node.input[1]
    if e.active(slope):
        raise NoRule("PRelu slope depends on the differentiated tensor")
    g = _gy(gys)
    out = e.op("Where", [e.op("Greater", [x, e.scalar(0.0, x)]), g, e.mul(g, slope)])
    return [e.unbroadcast(out, x, e.shape(node.output[0])), None]


@rule("Elu")
def _elu(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    x, y, g = node.input[0], node.output[0], _gy(gys)
    alpha = e.scalar(attr(node, "alpha", 1.0), x)
    neg = e.mul(g, e.op("Add", [y, alpha]))
    return [e.op("Where", [e.op("Greater", [x, e.scalar(0.0, x)]), g, neg])]


@rule("Clip")
def _clip(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    x, g = node.input[0], _gy(gys)
    bounds: list[str | None] = [None, None]
    if e.opset >= 11:
        for i in (1, 2):
            if len(node.input) > i and node.input[i]:
                if e.active(node.input[i]):
                    raise NoRule("Clip bounds depend on the differentiated tensor")
                bounds[i - 1] = node.input[i]
    else:
        for i, name in enumerate(("min", "max")):
            value = attr(node, name)
            if value is not None:
                bounds[i] = e.scalar(value, x)
    mask = None
    # inclusive at the bounds, like torch.clamp
    for bound, op in zip(bounds, ("GreaterOrEqual", "LessOrEqual"), strict=True):
        if bound is not None:
            m = e.compare(op, x, bound)
            mask = m if mask is None else e.op("And", [mask, m])
    out = g if mask is None else e.op("Where", [mask, g, e.scalar(0.0, x)])
    return _only_x(node, out)


def _times(e: Emitter, node: onnx.NodeProto, g: str, factor: str) -> list[str | None]:
    return _only_x(node, e.mul(g, factor))


@rule("Sigmoid")
def _sigmoid(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    y = node.output[0]
    return _times(e, node, _gy(gys), e.mul(y, e.op("Sub", [e.scalar(1.0, y), y])))


@rule("HardSigmoid")
def _hardsigmoid(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    x, g = node.input[0], _gy(gys)
    alpha = attr(node, "alpha", 0.2)
    t = e.op("Add", [e.mul(x, e.scalar(alpha, x)), e.scalar(attr(node, "beta", 0.5), x)])
    inside = e.op("And", [e.op("Greater", [t, e.scalar(0.0, x)]), e.op("Less", [t, e.scalar(1.0, x)])])
    return [e.op("Where", [inside, e.mul(g, e.scalar(alpha, x)), e.scalar(0.0, x)])]


@rule("HardSwish")
def _hardswish(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    x, g = node.input[0], _gy(gys)
    # torch: 0 below -3, x/3 + 1/2 on [-3, 3], 1 above
    mid = e.op("Add", [e.mul(x, e.scalar(1.0 / 3.0, x)), e.scalar(0.5, x)])
    upper = e.op("Where", [e.compare("LessOrEqual", x, e.scalar(3.0, x)), mid, e.scalar(1.0, x)])
    d = e.op("Where", [e.op("Less", [x, e.scalar(-3.0, x)]), e.scalar(0.0, x), upper])
    return [e.mul(g, d)]


@rule("Tanh")
def _tanh(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    y = node.output[0]
    return _times(e, node, _gy(gys), e.op("Sub", [e.scalar(1.0, y), e.mul(y, y)]))


@rule("Exp")
def _exp(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    return _times(e, node, _gy(gys), node.output[0])


@rule("Log")
def _log(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    return [e.op("Div", [_gy(gys), node.input[0]])]


@rule("Sqrt")
def _sqrt(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    y = node.output[0]
    return [e.op("Div", [e.mul(_gy(gys), e.scalar(0.5, y)), y])]


@rule("Reciprocal")
def _reciprocal(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    y = node.output[0]
    return [e.op("Neg", [e.mul(_gy(gys), e.mul(y, y))])]


@rule("Neg")
def _neg(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    return [e.op("Neg", [_gy(gys)])]


@rule("Abs")
def _abs(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    return _times(e, node, _gy(gys), e.op("Sign", [node.input[0]]))


@rule("Erf")
def _erf(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    x = node.input[0]
    d = e.mul(e.op("Exp", [e.op("Neg", [e.mul(x, x)])]), e.scalar(2.0 / math.sqrt(math.pi), x))
    return _times(e, node, _gy(gys), d)


def _sigmoid_of(e: Emitter, x: str) -> str:
    return e.op("Sigmoid", [x])


@rule("Softplus")
def _softplus(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    return _times(e, node, _gy(gys), _sigmoid_of(e, node.input[0]))


@rule("Mish")
def _mish(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    x = node.input[0]
    t = e.op("Tanh", [e.op("Softplus", [x])])
    sech2 = e.op("Sub", [e.scalar(1.0, x), e.mul(t, t)])
    d = e.op("Add", [t, e.mul(e.mul(x, _sigmoid_of(e, x)), sech2)])
    return _times(e, node, _gy(gys), d)


@rule("Gelu")
def _gelu(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    x = node.input[0]
    half, one = e.scalar(0.5, x), e.scalar(1.0, x)
    if attr(node, "approximate", "none") == "tanh":
        c = math.sqrt(2.0 / math.pi)
        x2 = e.mul(x, x)
        inner = e.mul(x, e.op("Add", [one, e.mul(x2, e.scalar(0.044715, x))]))
        t = e.op("Tanh", [e.mul(inner, e.scalar(c, x))])
        du = e.mul(e.scalar(c, x), e.op("Add", [one, e.mul(x2, e.scalar(3 * 0.044715, x))]))
        sech2 = e.op("Sub", [one, e.mul(t, t)])
        d = e.op("Add", [e.mul(half, e.op("Add", [one, t])), e.mul(e.mul(half, x), e.mul(sech2, du))])
    else:
        cdf = e.mul(half, e.op("Add", [one, e.op("Erf", [e.mul(x, e.scalar(1 / math.sqrt(2), x))])]))
        pdf = e.mul(e.op("Exp", [e.mul(e.mul(x, x), e.scalar(-0.5, x))]), e.scalar(1 / math.sqrt(2 * math.pi), x))
        d = e.op("Add", [cdf, e.mul(x, pdf)])
    return _times(e, node, _gy(gys), d)


@rule("Identity", "Dropout")
def _identity(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    return _only_x(node, _gy(gys))


@rule("Cast", "CastLike")
def _cast(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    return _only_x(node, e.op("Cast", [_gy(gys)], to=e.dtype(node.input[0])))


@rule("Pow")
def _pow(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    x, p = node.input
    g, y, shape = _gy(gys), node.output[0], e.shape(node.output[0])
    out: list[str | None] = [None, None]
    if e.active(x):
        pc = e.op("Cast", [p], to=e.dtype(x))
        d = e.mul(pc, e.op("Pow", [x, e.op("Sub", [pc, e.scalar(1.0, x)])]))
        out[0] = e.unbroadcast(e.mul(g, d), x, shape)
    if e.active(p):  # d(x^p)/dp = x^p log x, defined for x > 0
        dp = e.op("Cast", [e.mul(g, e.mul(y, e.op("Log", [x])))], to=e.dtype(p))
        out[1] = e.unbroadcast(dp, p, shape)
    return out


# --- binary elementwise with broadcasting ---------------------------------------------------------
def _binary(e: Emitter, node: onnx.NodeProto, ga: str | None, gb: str | None) -> list[str | None]:
    out_shape = e.shape(node.output[0])
    a, b = node.input[0], node.input[1]
    return [
        e.unbroadcast(ga, a, out_shape) if ga is not None and e.active(a) else None,
        e.unbroadcast(gb, b, out_shape) if gb is not None and e.active(b) else None,
    ]


@rule("Add")
def _add(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    g = _gy(gys)
    return _binary(e, node, g, g)


@rule("Sub")
def _sub(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    g = _gy(gys)
    return _binary(e, node, g, e.op("Neg", [g]) if e.active(node.input[1]) else None)


@rule("Mul")
def _mulr(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    g, (a, b) = _gy(gys), node.input
    return _binary(e, node, e.mul(g, b) if e.active(a) else None, e.mul(g, a) if e.active(b) else None)


@rule("Div")
def _div(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    g, (a, b), y = _gy(gys), node.input, node.output[0]
    ga = e.op("Div", [g, b]) if e.active(a) else None
    gb = e.op("Neg", [e.op("Div", [e.mul(g, y), b])]) if e.active(b) else None
    return _binary(e, node, ga, gb)


@rule("Sum")
def _sum(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    g, shape = _gy(gys), e.shape(node.output[0])
    return [e.unbroadcast(g, x, shape) if e.active(x) else None for x in node.input]


@rule("Mean")
def _mean(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    g = e.mul(_gy(gys), e.scalar(1.0 / len(node.input), node.output[0]))
    shape = e.shape(node.output[0])
    return [e.unbroadcast(g, x, shape) if e.active(x) else None for x in node.input]


@rule("Max", "Min")
def _maxmin(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    g, y = _gy(gys), node.output[0]
    shape = e.shape(y)
    if len(node.input) == 1:
        return [g]
    # each input equal to the result gets the adjoint; ties share it evenly, as torch.maximum does
    masks = {x: e.op("Cast", [e.op("Equal", [x, y])], to=e.dtype(y)) for x in node.input}
    count = e.op("Sum", [masks[x] for x in node.input])  # once per listing: Max(a, a) splits a's adjoint
    share = e.op("Div", [g, count])
    return [e.unbroadcast(e.mul(share, masks[x]), x, shape) if e.active(x) else None for x in node.input]


@rule("Where")
def _where(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    g, (c, a, b) = _gy(gys), node.input
    zero = e.scalar(0.0, node.output[0])
    shape = e.shape(node.output[0])
    ga = e.unbroadcast(e.op("Where", [c, g, zero]), a, shape) if e.active(a) else None
    gb = e.unbroadcast(e.op("Where", [c, zero, g]), b, shape) if e.active(b) else None
    return [None, ga, gb]


# --- softmax family -------------------------------------------------------------------------------
def _softmax_axes(e: Emitter, node: onnx.NodeProto) -> list[int]:
    rank = e.rank(node.input[0])
    if e.opset >= 13:
        return [attr(node, "axis", -1) % rank]
    # before opset 13 the input was coerced to 2-D at `axis`
    return list(range(attr(node, "axis", 1) % rank, rank))


@rule("Softmax")
def _softmax(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    g, y = _gy(gys), node.output[0]
    s = e.reduce("ReduceSum", e.mul(g, y), _softmax_axes(e, node))
    return [e.mul(y, e.op("Sub", [g, s]))]


@rule("LogSoftmax")
def _logsoftmax(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    g, y = _gy(gys), node.output[0]
    s = e.reduce("ReduceSum", g, _softmax_axes(e, node))
    return [e.op("Sub", [g, e.mul(e.op("Exp", [y]), s)])]


# --- reductions -----------------------------------------------------------------------------------
def _reduce_axes(e: Emitter, node: onnx.NodeProto) -> list[int]:
    rank = e.rank(node.input[0])
    if len(node.input) > 1 and node.input[1]:
        axes = [int(a) for a in e.need_value(node.input[1], "axes").reshape(-1)]
    else:
        axes = list(attr(node, "axes", []) or [])
    if not axes:
        if attr(node, "noop_with_empty_axes", 0):
            return []
        axes = list(range(rank))
    return sorted(a % rank for a in axes)


def _expand_back(e: Emitter, node: onnx.NodeProto, g: str, axes: list[int]) -> str:
    if axes and not attr(node, "keepdims", 1):
        g = e.unsqueeze(g, axes)
    return g


@rule("ReduceSum", "ReduceMean")
def _reduce_sum(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    x = node.input[0]
    axes = _reduce_axes(e, node)
    g = _expand_back(e, node, _gy(gys), axes)
    if node.op_type == "ReduceMean" and axes:
        shape = e.shape(x) or []
        dims = [shape[a] if a < len(shape) else None for a in axes]
        if any(d is None for d in dims):
            raise NoRule(f"ReduceMean needs static sizes of '{x}' along axes {axes}")
        g = e.mul(g, e.scalar(1.0 / math.prod(int(d or 0) for d in dims), x))
    return _only_x(node, e.op("Expand", [g, e.op("Shape", [x])]))


@rule("ReduceMax", "ReduceMin")
def _reduce_max(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    x = node.input[0]
    axes = _reduce_axes(e, node)
    g = _expand_back(e, node, _gy(gys), axes)
    y = _expand_back(e, node, node.output[0], axes)
    # ties share the gradient evenly, as torch.amax does
    mask = e.op("Cast", [e.op("Equal", [x, y])], to=e.dtype(x))
    count = e.reduce("ReduceSum", mask, axes) if axes else mask
    return _only_x(node, e.mul(mask, e.op("Div", [g, count])))


# --- matrix products ------------------------------------------------------------------------------
def _swap_last(e: Emitter, x: str, rank: int) -> str:
    perm = list(range(rank))
    perm[-2], perm[-1] = perm[-1], perm[-2]
    return e.op("Transpose", [x], perm=perm)


@rule("MatMul")
def _matmul(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    a, b = node.input
    g = _gy(gys)
    ra, rb = e.rank(a), e.rank(b)
    a2, b2, g2 = a, b, g
    sa, sb = list(e.shape(a) or []), list(e.shape(b) or [])
    # 1-D operands are promoted to matrices as numpy.matmul does; the unbroadcast reshape undoes it
    if ra == 1:
        a2, g2, sa = e.unsqueeze(a, [0]), e.unsqueeze(g2, [-2]), [1, *sa]
    if rb == 1:
        b2, g2, sb = e.unsqueeze(b, [-1]), e.unsqueeze(g2, [-1]), [*sb, 1]
    batch_rank = max(len(sa), len(sb)) - 2
    sa_full = [1] * (batch_rank + 2 - len(sa)) + sa
    sb_full = [1] * (batch_rank + 2 - len(sb)) + sb
    batch = [x if x != 1 else y for x, y in zip(sa_full[:-2], sb_full[:-2], strict=True)]
    out: list[str | None] = [None, None]
    if e.active(a):
        ga = e.op("MatMul", [g2, _swap_last(e, b2, len(sb))])
        out[0] = _unbroadcast_to(e, ga, batch + [sa[-2], sa[-1]], sa, a)
    if e.active(b):
        gb = e.op("MatMul", [_swap_last(e, a2, len(sa)), g2])
        out[1] = _unbroadcast_to(e, gb, batch + [sb[-2], sb[-1]], sb, b)
    return out


def _unbroadcast_to(e: Emitter, g: str, g_shape: list, target: list, ref: str) -> str:
    lead = len(g_shape) - len(target)
    axes = list(range(lead)) + [lead + i for i, d in enumerate(target[:-2]) if d == 1 and g_shape[lead + i] != 1]
    if axes:
        g = e.reduce("ReduceSum", g, axes, keepdims=1)
    return e.reshape_like(g, ref)


@rule("Gemm")
def _gemm(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    a, b = node.input[0], node.input[1]
    c = node.input[2] if len(node.input) > 2 else ""
    g = _gy(gys)
    alpha, beta = attr(node, "alpha", 1.0), attr(node, "beta", 1.0)
    ta, tb = attr(node, "transA", 0), attr(node, "transB", 0)
    out: list[str | None] = [None] * len(node.input)
    if e.active(a):
        if ta:
            out[0] = e.op("Gemm", [b, g], alpha=alpha, transA=tb, transB=1)
        else:
            out[0] = e.op("Gemm", [g, b], alpha=alpha, transB=1 - tb)
    if e.active(b):
        if tb:
            out[1] = e.op("Gemm", [g, a], alpha=alpha, transA=1, transB=ta)
        else:
            out[1] = e.op("Gemm", [a, g], alpha=alpha, transA=1 - ta)
    if c and e.active(c):
        out[2] = e.unbroadcast(e.mul(g, e.scalar(beta, c)), c, e.shape(node.output[0]))
    return out
