"""One tiny graph per gradient rule, checked against float64 central differences."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from gradients.grad_helpers import check_against_fd, run_gradient, tiny_model
from onnx import helper

from onnxcam.gradients import build_gradient_model

R = np.random.default_rng(42)


def _w(*shape: int) -> np.ndarray:
    return R.standard_normal(shape).astype(np.float32)


def _i(*values: int) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def _f(*values: float) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


N = helper.make_node
X4 = {"x": [2, 3, 5, 5]}

# (id, nodes, inputs, inits, opset, input transform)
CASES: list[tuple[str, list, dict, dict, int, Any]] = [
    (
        "conv_basic",
        [N("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])],
        X4,
        {"w": _w(4, 3, 3, 3), "b": _w(4)},
        17,
        None,
    ),
    # Stride-1 Convs take the flipped-kernel Conv adjoint (rules_nn._stride_one_adjoint): groups with
    # several channels per group both ways, dilations, asymmetric and SAME pads, depthwise, 1-D, and
    # pads beyond the kernel's reach (the ConvTranspose form).
    (
        "conv_s1_groups_dil_asym",
        [N("Conv", ["x", "w"], ["y"], group=2, dilations=[2, 1], pads=[2, 0, 1, 2])],
        {"x": [2, 4, 7, 6]},
        {"w": _w(6, 2, 3, 3)},
        17,
        None,
    ),
    (
        "conv_s1_depthwise_same",
        [N("Conv", ["x", "w"], ["y"], group=3, auto_pad="SAME_UPPER", kernel_shape=[2, 3])],
        {"x": [1, 3, 5, 6]},
        {"w": _w(3, 1, 2, 3)},
        17,
        None,
    ),
    (
        "conv_s1_1d_groups_expand",
        [N("Conv", ["x", "w"], ["y"], group=2, pads=[2, 1])],
        {"x": [2, 2, 9]},
        {"w": _w(6, 1, 4)},
        13,
        None,
    ),
    (
        "conv_s1_pads_beyond_reach",
        [N("Conv", ["x", "w"], ["y"], pads=[3, 0, 0, 2])],
        {"x": [1, 2, 5, 5]},
        {"w": _w(3, 2, 2, 2)},
        17,
        None,
    ),
    (
        "conv_stride2_dil",
        [N("Conv", ["x", "w"], ["y"], strides=[2, 2], dilations=[2, 1], pads=[1, 0, 2, 1])],
        {"x": [2, 3, 7, 6]},
        {"w": _w(4, 3, 2, 3)},
        17,
        None,
    ),
    (
        "conv_depthwise_same_upper",
        [N("Conv", ["x", "w"], ["y"], group=3, auto_pad="SAME_UPPER", strides=[2, 2], kernel_shape=[3, 3])],
        {"x": [1, 3, 6, 6]},
        {"w": _w(3, 1, 3, 3)},
        13,
        None,
    ),
    (
        "conv_groups_same_lower",
        [N("Conv", ["x", "w"], ["y"], group=2, auto_pad="SAME_LOWER", strides=[2, 1])],
        {"x": [2, 4, 6, 5]},
        {"w": _w(6, 2, 2, 2)},
        17,
        None,
    ),
    (
        "conv_valid",
        [N("Conv", ["x", "w"], ["y"], auto_pad="VALID", strides=[2, 2])],
        {"x": [1, 2, 7, 7]},
        {"w": _w(3, 2, 3, 3)},
        17,
        None,
    ),
    ("conv1d", [N("Conv", ["x", "w"], ["y"], pads=[1, 1])], {"x": [2, 3, 8]}, {"w": _w(2, 3, 3)}, 17, None),
    (
        "conv_transpose",
        [N("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])],
        {"x": [1, 3, 4, 4]},
        {"w": _w(3, 2, 3, 3)},
        17,
        None,
    ),
    ("gemm_plain", [N("Gemm", ["x", "w", "b"], ["y"])], {"x": [3, 4]}, {"w": _w(4, 5), "b": _w(5)}, 17, None),
    (
        "gemm_trans_alpha",
        [N("Gemm", ["x", "w", "b"], ["y"], transA=1, transB=1, alpha=0.7, beta=1.3)],
        {"x": [4, 3]},
        {"w": _w(5, 4), "b": _w(1, 5)},
        17,
        None,
    ),
    ("gemm_both_active", [N("Gemm", ["x", "z"], ["y"], transB=1)], {"x": [3, 4], "z": [2, 4]}, {}, 17, None),
    ("matmul_batched_broadcast", [N("MatMul", ["x", "z"], ["y"])], {"x": [2, 1, 3, 4], "z": [3, 4, 2]}, {}, 17, None),
    ("matmul_1d", [N("MatMul", ["x", "z"], ["y"])], {"x": [4], "z": [2, 4, 3]}, {}, 17, None),
    ("matmul_weight", [N("MatMul", ["x", "w"], ["y"])], {"x": [2, 3, 4]}, {"w": _w(4, 5)}, 17, None),
    ("add_broadcast", [N("Add", ["x", "z"], ["y"])], {"x": [2, 3, 4], "z": [3, 1]}, {}, 17, None),
    ("sub_broadcast", [N("Sub", ["z", "x"], ["y"])], {"x": [2, 3, 4], "z": [1, 4]}, {}, 17, None),
    ("mul_broadcast", [N("Mul", ["x", "z"], ["y"])], {"x": [2, 3, 4], "z": [2, 1, 4]}, {}, 17, None),
    ("div", [N("Div", ["x", "z"], ["y"])], {"x": [2, 3], "z": [3]}, {}, 17, "pos_z"),
    ("neg", [N("Neg", ["x"], ["y"])], {"x": [2, 3]}, {}, 17, None),
    ("relu", [N("Relu", ["x"], ["y"])], {"x": [2, 3, 4]}, {}, 17, None),
    ("leaky_relu", [N("LeakyRelu", ["x"], ["y"], alpha=0.2)], {"x": [2, 3, 4]}, {}, 17, None),
    ("prelu", [N("PRelu", ["x", "s"], ["y"])], {"x": [2, 3, 2, 2]}, {"s": _w(3, 1, 1)}, 17, None),
    (
        "clip_inputs",
        [N("Clip", ["x", "lo", "hi"], ["y"])],
        {"x": [2, 3, 4]},
        {"lo": _f(-0.5)[0], "hi": _f(0.7)[0]},
        17,
        None,
    ),
    ("clip_attrs_opset10", [N("Clip", ["x"], ["y"], min=-0.5, max=0.6)], {"x": [2, 5]}, {}, 10, None),
    ("sigmoid", [N("Sigmoid", ["x"], ["y"])], {"x": [2, 3]}, {}, 17, None),
    ("hard_sigmoid", [N("HardSigmoid", ["x"], ["y"], alpha=0.3, beta=0.4)], {"x": [3, 4]}, {}, 17, "scale3"),
    ("hard_swish", [N("HardSwish", ["x"], ["y"])], {"x": [3, 5]}, {}, 17, "scale3"),
    ("tanh", [N("Tanh", ["x"], ["y"])], {"x": [2, 3]}, {}, 17, None),
    ("softmax_13", [N("Softmax", ["x"], ["y"], axis=1)], {"x": [2, 4, 3]}, {}, 13, None),
    ("log_softmax", [N("LogSoftmax", ["x"], ["y"])], {"x": [2, 5]}, {}, 17, None),
    ("exp", [N("Exp", ["x"], ["y"])], {"x": [2, 3]}, {}, 17, None),
    ("log", [N("Log", ["x"], ["y"])], {"x": [2, 3]}, {}, 17, "pos"),
    ("sqrt", [N("Sqrt", ["x"], ["y"])], {"x": [2, 3]}, {}, 17, "pos"),
    ("pow_const", [N("Pow", ["x", "p"], ["y"])], {"x": [2, 3]}, {"p": _f(2.5)[0]}, 17, "pos"),
    ("reciprocal", [N("Reciprocal", ["x"], ["y"])], {"x": [2, 3]}, {}, 17, "pos"),
    ("mish", [N("Mish", ["x"], ["y"])], {"x": [2, 5]}, {}, 18, None),
    ("softplus", [N("Softplus", ["x"], ["y"])], {"x": [2, 5]}, {}, 17, None),
    ("elu", [N("Elu", ["x"], ["y"], alpha=0.8)], {"x": [2, 5]}, {}, 17, None),
    ("abs", [N("Abs", ["x"], ["y"])], {"x": [2, 5]}, {}, 17, None),
    ("identity_dropout", [N("Identity", ["x"], ["t"]), N("Dropout", ["t"], ["y"])], {"x": [2, 5]}, {}, 17, None),
    (
        "flatten",
        [N("Flatten", ["x"], ["t"], axis=2), N("MatMul", ["t", "w"], ["y"])],
        {"x": [2, 3, 2, 2]},
        {"w": _w(4, 3)},
        17,
        None,
    ),
    (
        "reshape_transpose",
        [N("Reshape", ["x", "s"], ["t"]), N("Transpose", ["t"], ["u"], perm=[2, 0, 1]), N("Mul", ["u", "u"], ["y"])],
        {"x": [2, 6]},
        {"s": _i(2, 3, 2)},
        17,
        None,
    ),
    (
        "squeeze_unsqueeze_13",
        [N("Unsqueeze", ["x", "a"], ["t"]), N("Mul", ["t", "t"], ["u"]), N("Squeeze", ["u", "a"], ["y"])],
        {"x": [2, 3]},
        {"a": _i(1)},
        13,
        None,
    ),
    (
        "squeeze_unsqueeze_11",
        [N("Unsqueeze", ["x"], ["t"], axes=[0]), N("Mul", ["t", "t"], ["u"]), N("Squeeze", ["u"], ["y"], axes=[0])],
        {"x": [2, 3]},
        {},
        11,
        None,
    ),
    ("concat", [N("Concat", ["x", "c", "z"], ["y"], axis=1)], {"x": [2, 2], "z": [2, 3]}, {"c": _w(2, 1)}, 17, None),
    (
        "split_partial",
        [N("Split", ["x", "s"], ["a", "b", "c"], axis=1), N("Mul", ["a", "c"], ["y"])],
        {"x": [2, 5]},
        {"s": _i(2, 1, 2)},
        17,
        None,
    ),
    (
        "split_attr_11",
        [N("Split", ["x"], ["a", "b"], axis=0, split=[1, 2]), N("Add", ["a", "b"], ["y"])],
        {"x": [3, 4]},
        {},
        11,
        None,
    ),
    (
        "slice_steps1",
        [N("Slice", ["x", "st", "en", "ax"], ["y"])],
        {"x": [2, 5, 4]},
        {"st": _i(1, -3), "en": _i(4, 100), "ax": _i(1, 2)},
        17,
        None,
    ),
    (
        "slice_negative_step",
        [N("Slice", ["x", "st", "en", "ax", "sp"], ["y"])],
        {"x": [2, 6, 3]},
        {"st": _i(-1, 0), "en": _i(-100, 3), "ax": _i(1, 2), "sp": _i(-2, 2)},
        17,
        None,
    ),
    ("gather_scalar", [N("Gather", ["x", "i"], ["y"], axis=1)], {"x": [2, 4, 3]}, {"i": np.asarray(0)}, 17, None),
    (
        "gather_repeated",
        [N("Gather", ["x", "i"], ["y"], axis=1)],
        {"x": [2, 4, 3]},
        {"i": np.asarray([[1, 3], [1, -1]])},
        17,
        None,
    ),
    (
        "pad_constant",
        [N("Pad", ["x", "p"], ["t"]), N("Mul", ["t", "t"], ["y"])],
        {"x": [1, 2, 3, 3]},
        {"p": _i(0, 0, 1, 2, 0, 1, 0, 1)},
        17,
        None,
    ),
    (
        "pad_axes_18",
        [N("Pad", ["x", "p", "", "a"], ["t"]), N("Mul", ["t", "t"], ["y"])],
        {"x": [1, 2, 3, 3]},
        {"p": _i(1, 2, 0, 1), "a": _i(2, 3)},
        18,
        None,
    ),
    ("expand", [N("Expand", ["x", "s"], ["y"])], {"x": [3, 1]}, {"s": _i(2, 3, 4)}, 17, None),
    ("tile", [N("Tile", ["x", "r"], ["y"])], {"x": [2, 3]}, {"r": _i(2, 3)}, 17, None),
    ("gap", [N("GlobalAveragePool", ["x"], ["y"])], X4, {}, 17, None),
    ("global_max_pool", [N("GlobalMaxPool", ["x"], ["y"])], X4, {}, 17, None),
    (
        "avgpool_include_pad",
        [N("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)],
        X4,
        {},
        17,
        None,
    ),
    (
        "avgpool_exclude_pad_ceil",
        [N("AveragePool", ["x"], ["y"], kernel_shape=[2, 3], strides=[2, 2], pads=[0, 1, 0, 1], ceil_mode=1)],
        {"x": [1, 2, 5, 6]},
        {},
        17,
        None,
    ),
    (
        "maxpool_overlap",
        [N("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
        X4,
        {},
        17,
        None,
    ),
    (
        "maxpool_same_upper",
        [N("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_UPPER")],
        X4,
        {},
        16,
        None,
    ),
    ("reduce_mean_18", [N("ReduceMean", ["x", "a"], ["y"], keepdims=0)], {"x": [2, 3, 4]}, {"a": _i(-1, 0)}, 18, None),
    ("reduce_mean_13_attr", [N("ReduceMean", ["x"], ["y"], axes=[1])], {"x": [2, 3, 4]}, {}, 13, None),
    ("reduce_sum_13", [N("ReduceSum", ["x", "a"], ["y"], keepdims=0)], {"x": [2, 3, 4]}, {"a": _i(1)}, 13, None),
    ("reduce_sum_all", [N("ReduceSum", ["x"], ["y"])], {"x": [2, 3]}, {}, 17, None),
    ("reduce_max", [N("ReduceMax", ["x"], ["y"], axes=[2], keepdims=0)], {"x": [2, 3, 4]}, {}, 17, None),
    (
        "batchnorm",
        [N("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3)],
        X4,
        {"s": _w(3), "b": _w(3), "m": _w(3), "v": np.abs(_w(3)) + 0.5},
        17,
        None,
    ),
    (
        "layernorm",
        [N("LayerNormalization", ["x", "s", "b"], ["y"], axis=-1)],
        {"x": [2, 3, 6]},
        {"s": _w(6), "b": _w(6)},
        17,
        None,
    ),
    (
        "layernorm_2axes",
        [N("LayerNormalization", ["x", "s"], ["y"], axis=1)],
        {"x": [2, 3, 4]},
        {"s": _w(3, 4)},
        17,
        None,
    ),
    (
        "instancenorm",
        [N("InstanceNormalization", ["x", "s", "b"], ["y"])],
        {"x": [2, 3, 3, 4]},
        {"s": _w(3), "b": _w(3)},
        17,
        None,
    ),
    (
        "resize_nearest",
        [N("Resize", ["x", "", "sc"], ["y"], mode="nearest")],
        {"x": [1, 2, 3, 4]},
        {"sc": _f(1, 1, 2, 2)},
        13,
        None,
    ),
    (
        "resize_linear_half_pixel",
        [N("Resize", ["x", "", "sc"], ["y"], mode="linear")],
        {"x": [2, 2, 3, 4]},
        {"sc": _f(1, 1, 2, 1.5)},
        17,
        None,
    ),
    (
        "resize_linear_align_sizes",
        [N("Resize", ["x", "", "", "sz"], ["y"], mode="linear", coordinate_transformation_mode="align_corners")],
        {"x": [1, 2, 4, 3]},
        {"sz": _i(1, 2, 7, 5)},
        13,
        None,
    ),
    (
        "resize_downsample",
        [N("Resize", ["x", "", "sc"], ["y"], mode="linear")],
        {"x": [1, 1, 6, 6]},
        {"sc": _f(1, 1, 0.5, 0.5)},
        17,
        None,
    ),
    (
        "qdq_straight_through",
        [
            N("Mul", ["x", "x"], ["t"]),
            N("QuantizeLinear", ["t", "sc", "zp"], ["q"]),
            N("DequantizeLinear", ["q", "sc", "zp"], ["y"]),
        ],
        {"x": [2, 3]},
        {"sc": _f(1e-4)[0], "zp": np.asarray(0, dtype=np.int8)},
        17,
        "small",
    ),
    (
        "where_max_min",
        [
            N("Greater", ["x", "z"], ["c"]),
            N("Where", ["c", "x", "z"], ["t"]),
            N("Max", ["t", "x"], ["u"]),
            N("Min", ["u", "z"], ["y"]),
        ],
        {"x": [2, 3], "z": [3]},
        {},
        17,
        None,
    ),
    (
        "sum_mean",
        [N("Sum", ["x", "z", "x"], ["t"]), N("Mean", ["t", "x"], ["y"])],
        {"x": [2, 3], "z": [3]},
        {},
        17,
        None,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_rule_matches_central_differences(case: tuple) -> None:
    _, nodes, inputs, inits, opset, transform = case
    model = tiny_model(nodes, inputs, ["y"], inits, opset)
    rng = np.random.default_rng(7)
    feeds = {k: rng.standard_normal(v).astype(np.float32) for k, v in inputs.items()}
    if transform == "pos":
        feeds = {k: np.abs(v) + 0.5 for k, v in feeds.items()}
    elif transform == "pos_z":
        feeds["z"] = np.abs(feeds["z"]) + 0.5
    elif transform == "scale3":
        feeds = {k: v * 3 for k, v in feeds.items()}
    if transform == "small":
        # keep inputs on the quantisation grid's interior; the oracle differentiates the Q->DQ
        # staircase's straight-through surrogate, i.e. the graph without the Q/DQ pair
        model = tiny_model([nodes[0], N("Identity", ["t"], ["y"])], inputs, ["y"], {}, opset)
        got = check_against_fd(model, feeds)
        qdq = tiny_model(nodes, inputs, ["y"], inits, opset)
        seeds = {"y": np.ones((2, 3))}
        gm = build_gradient_model(qdq, ["x"])
        plain = build_gradient_model(model, ["x"])
        np.testing.assert_allclose(run_gradient(gm, feeds, seeds)["x"], run_gradient(plain, feeds, seeds)["x"])
        assert got["x"].shape == (2, 3)
        return
    check_against_fd(model, feeds)


# onnx's reference evaluator computes Erf in float32 and Softmax-11 per axis, so these cases are
# checked against torch autograd instead of float64 central differences.
TORCH_CASES = [
    ("erf", [N("Erf", ["x"], ["y"])], 17, lambda t: torch.erf(t)),
    ("gelu", [N("Gelu", ["x"], ["y"])], 20, lambda t: torch.nn.functional.gelu(t)),
    (
        "gelu_tanh",
        [N("Gelu", ["x"], ["y"], approximate="tanh")],
        20,
        lambda t: torch.nn.functional.gelu(t, approximate="tanh"),
    ),
    (
        "softmax_11_flatten",
        [N("Softmax", ["x"], ["y"], axis=1)],
        11,
        lambda t: torch.softmax(t.reshape(2, -1), dim=1).reshape(t.shape),
    ),
    (
        "log_softmax_11_flatten",
        [N("LogSoftmax", ["x"], ["y"], axis=1)],
        11,
        lambda t: torch.log_softmax(t.reshape(2, -1), dim=1).reshape(t.shape),
    ),
    (
        "cast_float",
        [N("Cast", ["x"], ["t"], to=11), N("Mul", ["t", "t"], ["u"]), N("Cast", ["u"], ["y"], to=1)],
        17,
        lambda t: t.double() * t.double(),
    ),
]


@pytest.mark.parametrize("case", TORCH_CASES, ids=[c[0] for c in TORCH_CASES])
def test_rule_matches_torch(case: tuple) -> None:
    _, nodes, opset, fn = case
    model = tiny_model(nodes, {"x": [2, 3, 4]}, ["y"], {}, opset)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    seed = rng.standard_normal((2, 3, 4))
    got = run_gradient(build_gradient_model(model, ["x"]), {"x": x}, {"y": seed})["x"]
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    (fn(xt) * torch.tensor(seed)).sum().backward()
    assert xt.grad is not None
    np.testing.assert_allclose(got, xt.grad.numpy(), rtol=1e-4, atol=1e-5)
