"""Reverse-mode rules for convolutions, pooling, normalisation layers and Resize."""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper

from onnxcam.gradients._emit import Emitter, NoRule, attr
from onnxcam.gradients._registry import rule
from onnxcam.gradients.rules_math import _gy, _only_x


def _window_pads(
    e: Emitter, node: onnx.NodeProto, spatial: list[int], kernel: list[int], strides: list[int], dilations: list[int]
) -> list[int]:
    """Explicit begin+end pads of a Conv/pool node, with auto_pad resolved on static sizes."""
    n = len(spatial)
    auto = attr(node, "auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for x, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
            total = max((math.ceil(x / s) - 1) * s + (k - 1) * d + 1 - x, 0)
            small = total // 2
            begin.append(small if auto == "SAME_UPPER" else total - small)
            end.append(total - begin[-1])
        return begin + end
    if auto == "VALID":
        return [0] * (2 * n)
    return list(attr(node, "pads", None) or [0] * (2 * n))


def _geometry(e: Emitter, node: onnx.NodeProto, x: str, kernel: list[int]) -> tuple[list[int], ...]:
    shape = e.shape(x)
    if shape is None or any(d is None for d in shape[2:]):
        raise NoRule(f"{node.op_type} needs static spatial dims of '{x}' (got {shape})")
    spatial = [int(d or 0) for d in shape[2:]]
    n = len(spatial)
    strides = list(attr(node, "strides", None) or [1] * n)
    dilations = list(attr(node, "dilations", None) or [1] * n)
    pads = _window_pads(e, node, spatial, kernel, strides, dilations)
    return spatial, strides, dilations, pads


def _transpose_fit(
    spatial: list[int], out: list[int], kernel: list[int], strides: list[int], dilations: list[int], pads: list[int]
) -> tuple[list[int], list[int]]:
    """Pads and output_padding that make a ConvTranspose of an ``out``-sized map ``spatial``-sized."""
    n = len(spatial)
    begin, end, extra = list(pads[:n]), [0] * n, [0] * n
    for i in range(n):
        keff = (kernel[i] - 1) * dilations[i] + 1
        natural = strides[i] * (out[i] - 1) + keff - begin[i]
        # rows the forward window never reached (floor division) come back as output_padding
        if natural >= spatial[i]:
            end[i] = natural - spatial[i]
        else:
            extra[i] = spatial[i] - natural
    return begin + end, extra


def _spatial(e: Emitter, name: str) -> list[int]:
    shape = e.shape(name)
    if shape is None or any(d is None for d in shape[2:]):
        raise NoRule(f"needs static spatial dims of '{name}' (got {shape})")
    return [int(d or 0) for d in shape[2:]]


@rule("Conv")
def _conv(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    x, w = node.input[0], node.input[1]
    if e.active(w) or (len(node.input) > 2 and e.active(node.input[2])):
        raise NoRule("Conv weights depend on the differentiated tensor")
    w_shape = e.static_shape(w)
    kernel = list(attr(node, "kernel_shape", None) or w_shape[2:])
    spatial, strides, dilations, pads = _geometry(e, node, x, kernel)
    out = _spatial(e, node.output[0])
    group = int(attr(node, "group", 1))
    # On a 1x1 map (an SE block's squeeze) the transposed form stays: OpenVINO's CPU plugin fuses the
    # broadcast that follows such a Conv into it with the wrong shape ("Can not clone with new dims"),
    # and the product is a matrix-vector one either way.
    flipped = None if all(d == 1 for d in spatial) else _stride_one_adjoint(
        e, _gy(gys), w, w_shape, kernel, strides, dilations, pads, group)
    if flipped is not None:
        return _only_x(node, flipped)
    t_pads, extra = _transpose_fit(spatial, out, kernel, strides, dilations, pads)
    g = e.op(
        "ConvTranspose",
        [_gy(gys), w],
        strides=strides,
        dilations=dilations,
        pads=t_pads,
        output_padding=extra,
        group=attr(node, "group", 1),
        kernel_shape=kernel,
    )
    return _only_x(node, g)


def _stride_one_adjoint(e: Emitter, gy: str, w: str, w_shape: list[int], kernel: list[int], strides: list[int],
                        dilations: list[int], pads: list[int], group: int) -> str | None:
    """A stride-1 Conv's input gradient as a Conv with the kernel flipped and its channel axes swapped
    (per group), or None where that does not apply. onnxruntime's Conv runs blocked (NCHWc) kernels
    and its ConvTranspose does not: YOLOv8n's crop gradient graph went from 6.9 to 5.4 ms with its
    stride-2 convolutions still transposed. The weight is rearranged
    in the graph from the model's own initializer (folded once by the runtime), so an exported
    explainer stores it once."""
    n = len(kernel)
    if any(s != 1 for s in strides) or e.value(w) is None or e.opset < 10 or len(w_shape) != n + 2:
        return None
    reach = [(k - 1) * d for k, d in zip(kernel, dilations, strict=True)]
    t_pads = [r - p for r, p in zip(reach + reach, pads, strict=True)]
    if any(p < 0 for p in t_pads):  # pads beyond the kernel's reach: the transposed form crops instead
        return None
    m, c_g = w_shape[0], w_shape[1]
    flip = w
    if any(k > 1 for k in kernel):
        axes = [2 + i for i in range(n) if kernel[i] > 1]
        big = np.iinfo(np.int64).min
        flip = e.op("Slice", [w, e.ints([-1] * len(axes)), e.ints([big] * len(axes)), e.ints(axes),
                              e.ints([-1] * len(axes))])
    if group == 1:
        flip = e.op("Transpose", [flip], perm=[1, 0] + [2 + i for i in range(n)])
    else:
        grouped = e.op("Reshape", [flip, e.ints([group, m // group, c_g] + kernel)])
        swapped = e.op("Transpose", [grouped], perm=[0, 2, 1] + [3 + i for i in range(n)])
        flip = e.op("Reshape", [swapped, e.ints([group * c_g, m // group] + kernel)])
    return e.op("Conv", [gy, flip], dilations=dilations, pads=t_pads, group=group, kernel_shape=kernel)


@rule("ConvTranspose")
def _conv_transpose(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    x, w = node.input[0], node.input[1]
    if e.active(w) or (len(node.input) > 2 and e.active(node.input[2])):
        raise NoRule("ConvTranspose weights depend on the differentiated tensor")
    if attr(node, "output_shape") is not None:
        raise NoRule("ConvTranspose with output_shape; re-export with explicit pads")
    kernel = list(attr(node, "kernel_shape", None) or e.static_shape(w)[2:])
    n = len(kernel)
    strides = list(attr(node, "strides", None) or [1] * n)
    dilations = list(attr(node, "dilations", None) or [1] * n)
    spatial, out = _spatial(e, x), _spatial(e, node.output[0])
    reach = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    auto = attr(node, "auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        # the spec's (and onnxruntime's) split of the padding that makes out == in * stride
        extra = list(attr(node, "output_padding", None) or [0] * n)
        total = [s * (i - 1) + p + r - o for s, i, p, r, o in zip(strides, spatial, extra, reach, out, strict=False)]
        begin = [t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in total]
    elif auto == "VALID":
        begin = [0] * n
    else:
        begin = list(attr(node, "pads", None) or [0] * (2 * n))[:n]
    # the adjoint is the Conv the transposed conv transposes; only the leading pads locate the
    # windows, the trailing ones (never negative: output_padding < stride) just make it in-sized
    end = [max((i - 1) * s + r - o - b, 0) for i, s, r, o, b in zip(spatial, strides, reach, out, begin, strict=True)]
    g = e.op(
        "Conv",
        [_gy(gys), w],
        strides=strides,
        dilations=dilations,
        pads=begin + end,
        group=attr(node, "group", 1),
        kernel_shape=kernel,
    )
    return _only_x(node, g)


def _max_pool_grad(e: Emitter, node: onnx.NodeProto, g: str, attrs: dict, reach: list[int], strides: list[int]) -> str:
    """Route ``g`` to each window's argmax, found by a second MaxPool's flat ``Indices`` output.

    ``reach`` is each window's extent ((kernel - 1) * dilation + 1). Windows overlap when
    stride < reach, and an input that is the max of two windows then gets two adjoints: from opset 16
    ScatterElements adds them (reduction="add"). Before it, output positions are split by phase
    (o mod ceil(reach / stride) along each axis): windows of one phase never overlap, so each phase
    is a plain scatter with unique indices, and the phases are summed. Non-overlapping pooling
    (kernel == stride, global) is a single phase.
    """
    x = node.input[0]
    # storage_order=0: the indices must be row-major to address the flattened x
    _, indices = e.op_n("MaxPool", [x], 2, **attrs, storage_order=0)
    flat = e.op("Reshape", [e.zeros_like(x), e.ints([-1])])
    periods = [-(-r // s) for r, s in zip(reach, strides, strict=True)]
    if e.opset >= 16 and any(p > 1 for p in periods):
        scattered = e.op(
            "ScatterElements",
            [flat, e.op("Reshape", [indices, e.ints([-1])]), e.op("Reshape", [g, e.ints([-1])])],
            axis=0,
            reduction="add",
        )
        return e.reshape_like(scattered, x)
    spatial_axes = list(range(2, 2 + len(periods)))
    parts = []
    for phase in np.ndindex(*periods):
        idx, val = indices, g
        if any(p > 1 for p in periods):
            starts, ends, steps = e.ints(list(phase)), e.ints([np.iinfo(np.int64).max] * len(periods)), e.ints(periods)
            idx = e.op("Slice", [indices, starts, ends, e.ints(spatial_axes), steps])
            val = e.op("Slice", [g, starts, ends, e.ints(spatial_axes), steps])
        flat_idx, flat_val = e.op("Reshape", [idx, e.ints([-1])]), e.op("Reshape", [val, e.ints([-1])])
        parts.append(e.op("ScatterElements", [flat, flat_idx, flat_val], axis=0))
    return e.reshape_like(parts[0] if len(parts) == 1 else e.op("Sum", parts), x)


@rule("MaxPool")
def _maxpool(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    kernel = list(attr(node, "kernel_shape"))
    spatial, strides, dilations, pads = _geometry(e, node, node.input[0], kernel)
    attrs = {
        "kernel_shape": kernel,
        "strides": strides,
        "pads": pads,
        "ceil_mode": attr(node, "ceil_mode", 0),
    }
    if any(d != 1 for d in dilations):  # an attribute only from opset 10: left out when trivial
        attrs["dilations"] = dilations
    reach = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    return _only_x(node, _max_pool_grad(e, node, _gy(gys), attrs, reach, strides))


@rule("GlobalMaxPool")
def _global_maxpool(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    kernel = _spatial(e, node.input[0])
    return [_max_pool_grad(e, node, _gy(gys), {"kernel_shape": kernel}, kernel, kernel)]


@rule("GlobalAveragePool")
def _gap(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    x = node.input[0]
    shape = e.shape(x)
    if shape is None or any(d is None for d in shape[2:]):
        raise NoRule(f"GlobalAveragePool needs static spatial dims of '{x}'")
    scale = e.scalar(1.0 / math.prod(int(d or 0) for d in shape[2:]), x)
    return [e.op("Expand", [e.mul(_gy(gys), scale), e.op("Shape", [x])])]


@rule("AveragePool")
def _avgpool(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    x, y = node.input[0], node.output[0]
    kernel = list(attr(node, "kernel_shape"))
    spatial, strides, dilations, pads = _geometry(e, node, x, kernel)
    channels = (e.shape(x) or [None, None])[1]
    if channels is None:
        raise NoRule(f"AveragePool needs the static channel count of '{x}'")
    out = _spatial(e, y)
    n = len(kernel)
    include_pad = attr(node, "count_include_pad", 0)
    # the divisor of each output cell: its window clipped to the (padded) input
    counts = np.ones((), dtype=np.float64)
    for i in range(n):
        # taps of each window (dilated from opset 19), counted where they land inside the input
        taps = (np.arange(out[i]) * strides[i] - pads[i])[:, None] + np.arange(kernel[i]) * dilations[i]
        lo, hi = (-pads[i], spatial[i] + pads[n + i]) if include_pad else (0, spatial[i])
        counts = np.multiply.outer(counts, ((taps >= lo) & (taps < hi)).sum(axis=1))
    counts = counts.reshape([1, 1, *out])
    t_pads, extra = _transpose_fit(spatial, out, kernel, strides, dilations, pads)
    weight = np.ones([channels, 1, *kernel])
    g = e.op("Div", [_gy(gys), e.array_like(counts, x)])
    g = e.op(
        "ConvTranspose",
        [g, e.array_like(weight, x)],
        strides=strides,
        dilations=dilations,
        pads=t_pads,
        output_padding=extra,
        group=channels,
        kernel_shape=kernel,
    )
    return [g]


def _channel_view(e: Emitter, v: str, rank: int, like: str) -> str:
    """Reshape a per-channel (C,) vector to (C, 1, ...) so it broadcasts over N, C, spatial."""
    return e.op("Reshape", [e.op("Cast", [v], to=e.dtype(like)), e.ints([-1] + [1] * (rank - 2))])


@rule("BatchNormalization")
def _batchnorm(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    x, scale, _, _, var = node.input[:5]
    if attr(node, "training_mode", 0):
        raise NoRule("BatchNormalization in training mode")
    if any(e.active(t) for t in node.input[1:]):
        raise NoRule("BatchNormalization parameters depend on the differentiated tensor")
    eps = e.scalar(attr(node, "epsilon", 1e-5), var)
    factor = e.op("Div", [scale, e.op("Sqrt", [e.op("Add", [var, eps])])])
    return _only_x(node, e.mul(_gy(gys), _channel_view(e, factor, e.rank(x), x)))


def _normalize_grad(e: Emitter, x: str, g: str, axes: list[int], eps: float) -> str:
    """Adjoint of (x - mean) / sqrt(var + eps) over ``axes``, given the adjoint ``g`` of its output."""
    mean = e.reduce("ReduceMean", x, axes)
    centred = e.op("Sub", [x, mean])
    var = e.reduce("ReduceMean", e.mul(centred, centred), axes)
    inv = e.op("Reciprocal", [e.op("Sqrt", [e.op("Add", [var, e.scalar(eps, x)])])])
    xhat = e.mul(centred, inv)
    inner = e.op("Sub", [g, e.reduce("ReduceMean", g, axes)])
    inner = e.op("Sub", [inner, e.mul(xhat, e.reduce("ReduceMean", e.mul(g, xhat), axes))])
    return e.mul(inv, inner)


@rule("LayerNormalization")
def _layernorm(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    x, scale = node.input[0], node.input[1]
    if any(e.active(t) for t in node.input[1:]):
        raise NoRule("LayerNormalization parameters depend on the differentiated tensor")
    rank = e.rank(x)
    axes = list(range(attr(node, "axis", -1) % rank, rank))
    g = e.mul(_gy(gys), scale)
    return _only_x(node, _normalize_grad(e, x, g, axes, attr(node, "epsilon", 1e-5)))


@rule("InstanceNormalization")
def _instancenorm(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    x, scale = node.input[0], node.input[1]
    if any(e.active(t) for t in node.input[1:]):
        raise NoRule("InstanceNormalization parameters depend on the differentiated tensor")
    rank = e.rank(x)
    g = e.mul(_gy(gys), _channel_view(e, scale, rank, x))
    return _only_x(node, _normalize_grad(e, x, g, list(range(2, rank)), attr(node, "epsilon", 1e-5)))


# --- Resize: separable and linear in x, so its adjoint is a product with transposed 1-D matrices --
def _resize_matrix(
    e: Emitter, node: onnx.NodeProto, axis: int, in_shape: list[int], out_shape: list[int]
) -> np.ndarray:
    """The (out, in) matrix that ``node`` applies along ``axis``, measured with onnxruntime.

    A probe of shape (1, n, ..) whose channel k is the k-th basis vector along ``axis`` and constant
    along the other axes goes through a copy of the node; interpolation weights sum to one, so
    reading one position of the other axes gives the 1-D matrix with onnxruntime's exact semantics.
    """
    import onnxruntime as ort

    from onnxcam.graph.protos import make_model

    n = in_shape[axis]
    probe_shape = [1, n] + in_shape[2:]
    basis = np.zeros(probe_shape, dtype=np.float32)
    for k in range(n):
        index: list[int | slice] = [0, k] + [slice(None)] * (len(in_shape) - 2)
        index[axis] = k
        basis[tuple(index)] = 1.0
    inputs = ["probe"] + [name if name else "" for name in node.input[1:]]
    inits = []
    for name in node.input[1:]:
        if not name:
            continue
        value = e.need_value(name, "Resize roi/scales/sizes")
        if name == (node.input[3] if len(node.input) > 3 else None) and value.size == len(in_shape):
            value = np.array([1, n, *value[2:]], dtype=value.dtype)
        inits.append(onnx.numpy_helper.from_array(value, name))
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    graph = helper.make_graph(
        [helper.make_node("Resize", inputs, ["out"], **attrs)],
        "resize_probe",
        [helper.make_tensor_value_info("probe", onnx.TensorProto.FLOAT, probe_shape)],
        [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, None)],
        inits,
    )
    model = make_model(graph, [helper.make_opsetid("", e.opset)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    result = session.run(None, {"probe": basis})[0]
    if list(result.shape[2:]) != out_shape[2:]:
        raise NoRule("Resize probe did not reproduce the output shape")
    pick: list[int | slice] = [0, slice(None)]
    pick += [0] * (len(in_shape) - 2)
    pick[axis] = slice(None)
    return np.asarray(result[tuple(pick)]).T  # (out, in)


@rule("Resize", "Upsample")
def _resize(e: Emitter, node: onnx.NodeProto, gys: list[str | None]) -> list[str | None]:
    x, y = node.input[0], node.output[0]
    if node.op_type == "Upsample":
        raise NoRule("Upsample (deprecated since opset 10); re-export with opset >= 11 to get Resize")
    if attr(node, "coordinate_transformation_mode") == "tf_crop_and_resize":
        # outside the crop box the output is extrapolation_value, which is not an interpolation of
        # x whose weights sum to one, so the probe below cannot measure the matrix
        raise NoRule(
            "Resize coordinate_transformation_mode='tf_crop_and_resize' (crop boxes are not "
            "differentiated); use Slice followed by Resize"
        )
    in_shape, out_shape = [1, *_spatial(e, x)], [1, *_spatial(e, y)]
    in_shape.insert(1, (e.shape(x) or [0, 0])[1] or 0)
    out_shape.insert(1, (e.shape(y) or [0, 0])[1] or 0)
    if in_shape[1] != out_shape[1] or (e.shape(x) or [0])[0] != (e.shape(y) or [0])[0]:
        raise NoRule("Resize along the batch or channel axis")
    if axes := attr(node, "axes"):
        if any(a % len(in_shape) < 2 for a in axes):
            raise NoRule("Resize along the batch or channel axis")
    g = _gy(gys)
    rank = len(in_shape)
    for axis in range(2, rank):
        matrix = _resize_matrix(e, node, axis, in_shape, out_shape)
        if matrix.shape[0] == matrix.shape[1] and np.array_equal(matrix, np.eye(matrix.shape[0])):
            continue
        # contract the adjoint's `axis` (length out) with matrix (out, in)
        perm = list(range(rank))
        perm[axis], perm[-1] = perm[-1], perm[axis]
        moved = e.op("Transpose", [g], perm=perm) if axis != rank - 1 else g
        moved = e.op("MatMul", [moved, e.array_like(matrix, x)])
        g = e.op("Transpose", [moved], perm=perm) if axis != rank - 1 else moved
    return [g] + [None] * (len(node.input) - 1)
