"""Reverse-mode rules for the less common ops of exported vision models.

Activations (Selu, Celu, ThresholdedRelu, Softsign, Sin, Cos), the norm-like reductions
(ReduceL1/L2/SumSquare/LogSumExp/LogSum/Prod), Einsum, GatherElements, DepthToSpace/SpaceToDepth,
GroupNormalization and LRN. Every rule emits nodes valid at the model's own opset (>= 11).
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxcam.gradients._emit import Emitter, NoRule, attr
from onnxcam.gradients._registry import rule
from onnxcam.gradients.rules_math import _expand_back, _gy, _only_x, _reduce_axes
from onnxcam.gradients.rules_nn import _channel_view, _normalize_grad


def _positive(e: Emitter, x: str, threshold: float = 0.0) -> str:
    return e.op("Greater", [x, e.scalar(threshold, x)])


# --- activations ----------------------------------------------------------------------------------
@rule("Selu")
def _selu(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    x, y, g = node.input[0], node.output[0], _gy(gys)
    alpha, gamma = attr(node, "alpha", 1.67326319217681884765625), attr(node, "gamma", 1.05070102214813232421875)
    # below zero y = gamma * alpha * (exp(x) - 1), whose slope is y + gamma * alpha
    neg = e.mul(g, e.op("Add", [y, e.scalar(gamma * alpha, x)]))
    return [e.op("Where", [_positive(e, x), e.mul(g, e.scalar(gamma, x)), neg])]


@rule("Celu")
def _celu(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    x, y, g = node.input[0], node.output[0], _gy(gys)
    alpha = attr(node, "alpha", 1.0)
    # below zero y = alpha * (exp(x / alpha) - 1), whose slope exp(x / alpha) is y / alpha + 1
    slope = e.op("Add", [e.mul(y, e.scalar(1.0 / alpha, x)), e.scalar(1.0, x)])
    return [e.op("Where", [_positive(e, x), g, e.mul(g, slope)])]


@rule("ThresholdedRelu")
def _thresholded_relu(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    x = node.input[0]
    return [e.op("Where", [_positive(e, x, attr(node, "alpha", 1.0)), _gy(gys), e.scalar(0.0, x)])]


@rule("Softsign")
def _softsign(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    x = node.input[0]
    d = e.op("Add", [e.scalar(1.0, x), e.op("Abs", [x])])
    return [e.op("Div", [_gy(gys), e.mul(d, d)])]


@rule("Sin")
def _sin(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    return [e.mul(_gy(gys), e.op("Cos", [node.input[0]]))]


@rule("Cos")
def _cos(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    return [e.op("Neg", [e.mul(_gy(gys), e.op("Sin", [node.input[0]]))])]


# --- norm-like reductions: dx = expand(dy) * dy/dx, with y kept where it makes the slope cheap -------
def _reduced(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> tuple[str, str, str, list[int]]:
    """(x, adjoint, output) with the adjoint and output shaped to broadcast against x, and the axes."""
    axes = _reduce_axes(e, node)
    return node.input[0], _expand_back(e, node, _gy(gys), axes), _expand_back(e, node, node.output[0], axes), axes


@rule("ReduceL1")
def _reduce_l1(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    x, g, _, _ = _reduced(e, node, gys)
    return _only_x(node, e.mul(g, e.op("Sign", [x])))


@rule("ReduceL2")
def _reduce_l2(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    x, g, y, _ = _reduced(e, node, gys)
    return _only_x(node, e.mul(x, e.op("Div", [g, y])))


@rule("ReduceSumSquare")
def _reduce_sum_square(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    x, g, _, _ = _reduced(e, node, gys)
    return _only_x(node, e.mul(e.mul(x, e.scalar(2.0, x)), g))


@rule("ReduceLogSumExp")
def _reduce_log_sum_exp(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    x, g, y, _ = _reduced(e, node, gys)
    # the softmax of x over the axes; exp(x - y) never overflows
    return _only_x(node, e.mul(g, e.op("Exp", [e.op("Sub", [x, y])])))


@rule("ReduceLogSum")
def _reduce_log_sum(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    x, g, y, _ = _reduced(e, node, gys)
    return _only_x(node, e.op("Expand", [e.op("Div", [g, e.op("Exp", [y])]), e.op("Shape", [x])]))


@rule("ReduceProd")
def _reduce_prod(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    x, g, y, _ = _reduced(e, node, gys)
    # y / x: exact away from zeros; a product with a zero factor has no useful CAM slope anyway
    return _only_x(node, e.op("Div", [e.mul(g, y), x]))


# --- Einsum: each operand's adjoint is the einsum of the output adjoint with the other operands ----
def _einsum_terms(equation: str) -> tuple[list[str], str]:
    eq = equation.replace(" ", "")
    lhs, _, rhs = eq.partition("->")
    terms = lhs.split(",")
    if "->" not in eq:  # implicit output: the letters used once, sorted, after any ellipsis
        letters = [c for c in lhs if c.isalpha()]
        rhs = ("..." if "..." in lhs else "") + "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    return terms, rhs


def _tokens(term: str) -> list[str]:
    return ["..." if i == term.find("...") else c for i, c in enumerate(term.replace("...", "."))]


def _ellipsis_dims(e: Emitter, names: list[str], terms: list[str]) -> list[int | None]:
    """The broadcast of the operands' ellipsis dims (right-aligned, as numpy.einsum broadcasts them)."""
    dims: list[int | None] = []
    for name, term in zip(names, terms, strict=True):
        tokens = _tokens(term)
        if "..." not in tokens:
            continue
        shape = e.shape(name)
        if shape is None:
            raise NoRule(f"Einsum with an ellipsis needs the rank of '{name}'")
        at = tokens.index("...")
        own = list(shape[at : at + len(shape) - len(tokens) + 1])
        if len(own) > len(dims):
            pad: list[int | None] = [None] * (len(own) - len(dims))
            dims = pad + dims
        for i, d in enumerate(own, start=len(dims) - len(own)):
            if dims[i] in (None, 1):
                dims[i] = d
    return dims


def _unbroadcast_ellipsis(e: Emitter, grad: str, x: str, tokens: list[str], ellipsis: list[int | None]) -> str:
    """Sum ``grad`` (whose ellipsis dims are the broadcast ``ellipsis``) back to ``x``'s own."""
    x_shape = e.shape(x)
    if x_shape is None:
        raise NoRule(f"Einsum with an ellipsis needs the rank of '{x}'")
    at, x_ell = tokens.index("..."), len(x_shape) - len(tokens) + 1
    if x_ell != len(ellipsis) and at != 0:
        raise NoRule("Einsum broadcasting an ellipsis that is not the operand's leading dims")
    return e.unbroadcast(grad, x, x_shape[:at] + ellipsis + x_shape[at + x_ell :])


@rule("Einsum")
def _einsum(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    terms, rhs = _einsum_terms(attr(node, "equation"))
    g = _gy(gys)
    out: list[str | None] = [None] * len(node.input)
    for k, x in enumerate(node.input):
        if not e.active(x):
            continue
        tokens = _tokens(terms[k])
        letters = [t for t in tokens if t != "..."]
        if len(set(letters)) != len(letters):
            raise NoRule(f"Einsum '{attr(node, 'equation')}' takes a diagonal (repeated index in '{terms[k]}')")
        if "..." in tokens and "..." not in rhs:
            raise NoRule(f"Einsum '{attr(node, 'equation')}' sums over the ellipsis dims")
        others = [t for j, t in enumerate(terms) if j != k]
        seen = set(rhs) | set("".join(others))
        kept = "".join(t for t in tokens if t == "..." or t in seen)
        equation = ",".join([rhs, *others]) + "->" + kept
        grad = e.op("Einsum", [g] + [n for j, n in enumerate(node.input) if j != k], equation=equation)
        missing = [t for t in tokens if t != "..." and t not in seen]
        if missing and "..." in tokens:
            own = e.shape(x) or []
            at = tokens.index("...")
            if list(own[at : at + len(own) - len(letters)]) != _ellipsis_dims(e, list(node.input), terms):
                raise NoRule(f"Einsum '{attr(node, 'equation')}' both broadcasts an ellipsis and sums a letter away")
        if missing:
            # letters only this operand carries were summed away: their adjoint is a broadcast
            rank = e.rank(x)
            axis, axes = 0, []
            for t in tokens:
                if t in missing:
                    axes.append(axis)
                axis += rank - len(letters) if t == "..." else 1
            grad = e.op("Expand", [e.unsqueeze(grad, axes), e.op("Shape", [x])])
        elif "..." in tokens:
            grad = _unbroadcast_ellipsis(e, grad, x, tokens, _ellipsis_dims(e, list(node.input), terms))
        out[k] = grad
    return out


# --- GatherElements: scatter the adjoint back to where each element was read ----------------------
@rule("GatherElements")
def _gather_elements(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    x, idx = node.input
    g = _gy(gys)
    rank = e.rank(x)
    axis = attr(node, "axis", 0) % rank
    value = e.value(idx)
    if value is None:
        if e.opset < 16:
            raise NoRule(
                "GatherElements with computed indices needs ScatterElements(reduction='add'), "
                "i.e. opset >= 16; re-export with opset >= 16"
            )
        scattered = e.op("ScatterElements", [e.zeros_like(x), idx, g], axis=axis, reduction="add")
        return [scattered, None]
    shape = e.static_shape(x)
    value = value.astype(np.int64) % shape[axis]
    coords = list(np.indices(value.shape))
    coords[axis] = value
    flat = np.ravel_multi_index(tuple(coords), shape)
    return [e.reshape_like(e.scatter_add(x, flat, g), x), None]


# --- DepthToSpace / SpaceToDepth: fixed permutations, undone by the inverse reshape-transpose ------
def _unpermute(e: Emitter, x: str, g: str, split: list[int], perm: list[int]) -> str:
    """Adjoint of reshape(x, split) -> transpose(perm) -> reshape: the inverse steps on ``g``."""
    inverse = [0] * len(perm)
    for i, p in enumerate(perm):
        inverse[p] = i
    g = e.op("Reshape", [g, e.ints([split[p] for p in perm])])
    return e.reshape_like(e.op("Transpose", [g], perm=inverse), x)


def _blocked(e: Emitter, x: str) -> tuple[int, int, int, int]:
    """(N, C, H, W) of ``x``; a symbolic batch is -1, which the adjoint's Reshape infers."""
    shape = e.shape(x)
    if shape is None or len(shape) != 4 or any(d is None for d in shape[1:]):
        raise NoRule(f"needs a 4-D '{x}' with static C, H, W (got {shape})")
    c, h, w = (int(d or 0) for d in shape[1:])
    return (-1 if shape[0] is None else int(shape[0])), c, h, w


@rule("DepthToSpace")
def _depth_to_space(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    x, b = node.input[0], int(attr(node, "blocksize"))
    n, c, h, w = _blocked(e, x)
    if attr(node, "mode", "DCR") == "CRD":
        split, perm = [n, c // (b * b), b, b, h, w], [0, 1, 4, 2, 5, 3]
    else:
        split, perm = [n, b, b, c // (b * b), h, w], [0, 3, 4, 1, 5, 2]
    return [_unpermute(e, x, _gy(gys), split, perm)]


@rule("SpaceToDepth")
def _space_to_depth(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    x, b = node.input[0], int(attr(node, "blocksize"))
    n, c, h, w = _blocked(e, x)
    return [_unpermute(e, x, _gy(gys), [n, c, h // b, b, w // b, b], [0, 3, 5, 1, 2, 4])]


# --- normalisation --------------------------------------------------------------------------------
@rule("GroupNormalization")
def _groupnorm(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    x, scale = node.input[0], node.input[1]
    if any(e.active(t) for t in node.input[1:]):
        raise NoRule("GroupNormalization parameters depend on the differentiated tensor")
    groups = int(attr(node, "num_groups"))
    g = _gy(gys)
    if e.opset >= 21:  # a scale per channel
        g = e.mul(g, _channel_view(e, scale, e.rank(x), x))
        g = e.op("Reshape", [g, e.ints([0, groups, -1])])
    else:  # opset 18: a scale per group
        g = e.op("Reshape", [g, e.ints([0, groups, -1])])
        g = e.mul(g, e.op("Reshape", [e.op("Cast", [scale], to=e.dtype(x)), e.ints([groups, 1])]))
    grouped = e.op("Reshape", [x, e.ints([0, groups, -1])])
    return _only_x(node, e.reshape_like(_normalize_grad(e, grouped, g, [2], attr(node, "epsilon", 1e-5)), x))


def _channel_window_sum(e: Emitter, t: str, channels: int, size: int, before: int, after: int) -> str:
    """Sum of ``t`` over the channel window [c - before, c + after], as a Conv along channels."""
    column = e.op("Reshape", [t, e.ints([0, 1, channels, -1])])
    ones = e.array_like(np.ones((1, 1, size, 1)), t)
    summed = e.op("Conv", [column, ones], kernel_shape=[size, 1], pads=[before, 0, after, 0])
    return e.reshape_like(summed, t)


@rule("LRN")
def _lrn(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    x, g = node.input[0], _gy(gys)
    channels = (e.shape(x) or [None, None])[1]
    if channels is None:
        raise NoRule(f"LRN needs the static channel count of '{x}'")
    size = int(attr(node, "size"))
    alpha, beta, bias = attr(node, "alpha", 1e-4), attr(node, "beta", 0.75), attr(node, "bias", 1.0)
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    # y_c = x_c d_c^-beta with d_c = bias + alpha/size sum_{c' in [c-lo, c+hi]} x_c'^2, so x_c also
    # enters d_j of every j in [c-hi, c+lo]: the mirrored window
    square_sum = _channel_window_sum(e, e.mul(x, x), channels, size, lo, hi)
    d = e.op("Add", [e.scalar(bias, x), e.mul(e.scalar(alpha / size, x), square_sum)])
    d_pow = e.op("Pow", [d, e.scalar(-beta, x)])
    back = _channel_window_sum(e, e.op("Div", [e.mul(e.mul(g, x), d_pow), d]), channels, size, hi, lo)
    cross = e.mul(e.mul(x, e.scalar(2.0 * alpha * beta / size, x)), back)
    return [e.op("Sub", [e.mul(g, d_pow), cross])]
