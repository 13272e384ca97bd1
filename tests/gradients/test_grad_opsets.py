"""Every gradient rule at its oldest supported opset (>= 11) and at opset 21.

Each case is a tiny graph around one op. Its gradient graph (built by onnxcam, run by onnxruntime
in float32) is compared with central differences of the forward graph evaluated in float64 by
onnx's reference evaluator: element-wise for small inputs, along random directions for larger ones.
Inputs are kept away from kinks (ties of Max/MaxPool, the zero of Abs) so differences are smooth.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import pytest
from gradients.grad_helpers import check_against_fd, run_gradient, tiny_model
from onnx import helper

from onnxcam.errors import UnsupportedOpError
from onnxcam.gradients import build_gradient_model, missing_rules

N = helper.make_node
R = np.random.default_rng(11)
Make = Callable[[int], tuple[list[onnx.NodeProto], dict[str, np.ndarray]]]


def _w(*shape: int) -> np.ndarray:
    return R.standard_normal(shape).astype(np.float32)


def _i(*values: int) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def _f(*values: float) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def op(op_type: str, ins: tuple[str, ...] = ("x",), inits: dict[str, np.ndarray] | None = None, **attrs: Any) -> Make:
    """One node ``op_type(ins) -> y``, the same at every opset."""
    return lambda _: ([N(op_type, list(ins), ["y"], **attrs)], dict(inits or {}))


def with_axes(op_type: str, since: int, axes: list[int], **attrs: Any) -> Make:
    """``op_type`` with ``axes`` as an attribute before opset ``since`` and as an input from it."""

    def make(opset: int) -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
        if opset >= since:
            return [N(op_type, ["x", "axes"], ["y"], **attrs)], {"axes": _i(*axes)}
        return [N(op_type, ["x"], ["y"], axes=axes, **attrs)], {}

    return make


def nodes(*made: onnx.NodeProto, inits: dict[str, np.ndarray] | None = None) -> Make:
    return lambda _: (list(made), dict(inits or {}))


def resize(
    mode: str, ctm: str, scales: list[float] | None = None, sizes: list[int] | None = None, **attrs: Any
) -> Make:
    def make(opset: int) -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
        inits: dict[str, np.ndarray] = {}
        # opset 11/12 take roi and scales as required inputs: empty tensors stand for "unused"
        roi = "roi" if opset < 13 else ""
        if roi:
            inits["roi"] = np.zeros(0, dtype=np.float32)
        if sizes is not None:
            inits["sizes"] = _i(*sizes)
            sc = "scales" if opset < 13 else ""
            if sc:
                inits["scales"] = np.zeros(0, dtype=np.float32)
            ins = ["x", roi, sc, "sizes"]
        else:
            inits["scales"] = _f(*(scales or []))
            ins = ["x", roi, "scales"]
        node = N("Resize", ins, ["y"], mode=mode, coordinate_transformation_mode=ctm, **attrs)
        return [node], inits

    return make


X3 = {"x": [2, 3, 4]}
X4 = {"x": [1, 2, 4, 5]}
BOTH = (11, 21)

# (id, graph maker, input shapes, opsets, input transform)
CASES: list[tuple[str, Make, dict[str, list[int]], tuple[int, ...], str | None]] = [
    # --- reductions, with axes as attribute and as input ---
    ("reduce_sum", with_axes("ReduceSum", 13, [1], keepdims=0), X3, (11, 13, 21), None),
    ("reduce_sum_all", op("ReduceSum"), X3, BOTH, None),
    ("reduce_mean", with_axes("ReduceMean", 18, [-1, 0], keepdims=0), X3, (11, 18, 21), None),
    ("reduce_max", with_axes("ReduceMax", 18, [2], keepdims=0), X3, (11, 18, 21), "distinct"),
    ("reduce_min", with_axes("ReduceMin", 18, [1]), X3, (11, 21), "distinct"),
    ("reduce_l1", with_axes("ReduceL1", 18, [2]), X3, (11, 21), "away"),
    ("reduce_l2", with_axes("ReduceL2", 18, [0, 2], keepdims=0), X3, (11, 21), None),
    ("reduce_sum_square", with_axes("ReduceSumSquare", 18, [1]), X3, (11, 21), None),
    ("reduce_log_sum_exp", with_axes("ReduceLogSumExp", 18, [2], keepdims=0), X3, (11, 21), None),
    ("reduce_log_sum", with_axes("ReduceLogSum", 18, [1]), X3, (11, 21), "pos"),
    ("reduce_prod", with_axes("ReduceProd", 18, [2], keepdims=0), X3, (11, 21), "pos"),
    # --- elementwise ---
    ("pow_const", op("Pow", ("x", "p"), {"p": _f(2.5)}), X3, BOTH, "pos"),
    ("pow_both", op("Pow", ("x", "z")), {"x": [2, 3], "z": [3]}, BOTH, "pos"),
    ("sqrt", op("Sqrt"), X3, BOTH, "pos"),
    ("reciprocal", op("Reciprocal"), X3, BOTH, "pos"),
    ("exp", op("Exp"), X3, BOTH, None),
    ("log", op("Log"), X3, BOTH, "pos"),
    ("abs", op("Abs"), X3, BOTH, "away"),
    ("neg", op("Neg"), X3, BOTH, None),
    ("erf", op("Erf"), X3, BOTH, None),
    ("tanh", op("Tanh"), X3, BOTH, None),
    ("sigmoid", op("Sigmoid"), X3, BOTH, None),
    ("identity_dropout", nodes(N("Identity", ["x"], ["t"]), N("Dropout", ["t"], ["y"])), X3, BOTH, None),
    ("sin_cos", nodes(N("Sin", ["x"], ["t"]), N("Cos", ["t"], ["y"])), X3, (11, 21), None),
    ("relu", op("Relu"), X3, BOTH, "away"),
    ("leaky_relu", op("LeakyRelu", alpha=0.2), X3, BOTH, "away"),
    ("prelu", op("PRelu", ("x", "s"), {"s": _w(3, 1)}), X3, BOTH, "away"),
    ("elu", op("Elu", alpha=0.7), X3, BOTH, "away"),
    ("selu", op("Selu"), X3, BOTH, "away"),
    ("celu", op("Celu", alpha=0.8), X3, (12, 21), "away"),
    ("thresholded_relu", op("ThresholdedRelu", alpha=0.1), X3, (11, 21), "away"),
    ("softsign", op("Softsign"), X3, BOTH, "away"),
    ("softplus", op("Softplus"), X3, BOTH, None),
    ("hard_sigmoid", op("HardSigmoid", alpha=0.3, beta=0.4), X3, BOTH, "scale3"),
    ("hard_swish", op("HardSwish"), X3, (14, 21), "scale3"),
    ("mish", op("Mish"), X3, (18, 21), None),
    ("gelu", op("Gelu", approximate="tanh"), X3, (20, 21), None),
    ("clip", op("Clip", ("x", "lo", "hi"), {"lo": _f(-0.5)[0], "hi": _f(0.7)[0]}), X3, BOTH, "away"),
    ("max3", op("Max", ("x", "z", "u")), {"x": [2, 3], "z": [3], "u": [2, 1]}, BOTH, "distinct"),
    ("min3", op("Min", ("x", "z", "u")), {"x": [2, 3], "z": [3], "u": [2, 1]}, BOTH, "distinct"),
    (
        "where",
        nodes(N("Greater", ["x", "z"], ["c"]), N("Where", ["c", "x", "z"], ["y"])),
        {"x": [2, 3], "z": [3]},
        BOTH,
        "distinct",
    ),
    (
        "sum_mean",
        nodes(N("Sum", ["x", "z", "x"], ["t"]), N("Mean", ["t", "z"], ["y"])),
        {"x": [2, 3], "z": [3]},
        BOTH,
        None,
    ),
    (
        "add_sub_mul_div",
        nodes(
            N("Add", ["x", "z"], ["a"]),
            N("Mul", ["a", "x"], ["b"]),
            N("Sub", ["b", "z"], ["c"]),
            N("Div", ["c", "z"], ["y"]),
        ),
        {"x": [2, 3], "z": [3]},
        BOTH,
        "pos",
    ),
    # a float64 round trip is checked against torch in test_grad_rules (the oracle's output is float32)
    ("cast", nodes(N("Cast", ["x"], ["t"], to=1), N("Mul", ["t", "t"], ["y"])), X3, BOTH, None),
    ("cast_like", nodes(N("CastLike", ["x", "x"], ["t"]), N("Mul", ["t", "t"], ["y"])), X3, (15, 21), None),
    # --- softmax: before opset 13 the input is coerced to 2-D at `axis` ---
    ("softmax", op("Softmax", axis=1), X3, BOTH, None),
    ("log_softmax", op("LogSoftmax", axis=1), X3, BOTH, None),
    # --- products ---
    ("matmul_batched", op("MatMul", ("x", "z")), {"x": [2, 1, 3, 4], "z": [3, 4, 2]}, BOTH, None),
    ("gemm", op("Gemm", ("x", "w", "b"), {"w": _w(5, 4), "b": _w(5)}, transB=1), {"x": [3, 4]}, BOTH, None),
    ("einsum_bmm", op("Einsum", ("x", "z"), equation="bij,bjk->bik"), {"x": [2, 3, 4], "z": [2, 4, 2]}, (12, 21), None),
    (
        "einsum_weight",
        op("Einsum", ("x", "w"), {"w": _w(3)}, equation="nchw,c->nhw"),
        X4 | {"x": [1, 3, 2, 2]},
        (12, 21),
        None,
    ),
    ("einsum_implicit", op("Einsum", ("x", "z"), equation="ij,jk"), {"x": [3, 4], "z": [4, 2]}, (12, 21), None),
    ("einsum_summed_letter", op("Einsum", ("x",), equation="bij->bi"), X3, (12, 21), None),
    (
        "einsum_ellipsis",
        op("Einsum", ("x", "z"), equation="...ij,...jk->...ik"),
        {"x": [2, 3, 4], "z": [1, 4, 2]},
        (12, 21),
        None,
    ),
    ("einsum_ellipsis_summed", op("Einsum", ("x",), equation="...ij->...i"), X3, (12, 21), None),
    ("einsum_outer", op("Einsum", ("x", "z"), equation="i,j->ij"), {"x": [3], "z": [4]}, (12, 21), None),
    # --- data movement ---
    ("tile", op("Tile", ("x", "r"), {"r": _i(2, 1, 3)}), X3, BOTH, None),
    ("expand", op("Expand", ("x", "s"), {"s": _i(2, 3, 4)}), {"x": [3, 1]}, BOTH, None),
    ("gather", op("Gather", ("x", "i"), {"i": np.asarray([[1, 3], [1, -1]])}, axis=2), X3, BOTH, None),
    (
        "gather_elements",
        op("GatherElements", ("x", "i"), {"i": np.asarray([[[0, 3], [1, 1], [3, 3]]] * 2)}, axis=2),
        X3,
        BOTH,
        None,
    ),
    (
        "squeeze_unsqueeze",
        lambda o: (
            (
                [N("Unsqueeze", ["x", "a"], ["t"]), N("Mul", ["t", "t"], ["u"]), N("Squeeze", ["u", "a"], ["y"])],
                {"a": _i(1)},
            )
            if o >= 13
            else (
                [
                    N("Unsqueeze", ["x"], ["t"], axes=[1]),
                    N("Mul", ["t", "t"], ["u"]),
                    N("Squeeze", ["u"], ["y"], axes=[1]),
                ],
                {},
            )
        ),
        X3,
        (11, 13, 21),
        None,
    ),
    (
        "split",
        lambda o: (
            [
                N("Split", ["x", "s"], ["a", "b", "c"], axis=2)
                if o >= 13
                else N("Split", ["x"], ["a", "b", "c"], axis=2, split=[1, 2, 1]),
                N("Mul", ["a", "c"], ["y"]),
            ],
            {"s": _i(1, 2, 1)} if o >= 13 else {},
        ),
        X3,
        (11, 13, 21),
        None,
    ),
    (
        "split_num_outputs",
        nodes(N("Split", ["x"], ["a", "b"], axis=2, num_outputs=2), N("Mul", ["a", "b"], ["y"])),
        X3,
        (18, 21),
        None,
    ),
    ("concat", op("Concat", ("x", "c", "z"), {"c": _w(2, 1)}, axis=1), {"x": [2, 2], "z": [2, 3]}, BOTH, None),
    (
        "slice_steps",
        op(
            "Slice",
            ("x", "st", "en", "ax", "sp"),
            {"st": _i(-1, 0), "en": _i(-100, 3), "ax": _i(1, 2), "sp": _i(-2, 2)},
        ),
        X3,
        BOTH,
        None,
    ),
    (
        "slice_crop",
        op("Slice", ("x", "st", "en", "ax"), {"st": _i(1, 1), "en": _i(3, 100), "ax": _i(1, 2)}),
        X3,
        BOTH,
        None,
    ),
    ("pad_constant", op("Pad", ("x", "p"), {"p": _i(0, 1, 2, 0, 0, 1)}), X3, BOTH, None),
    ("pad_reflect", op("Pad", ("x", "p"), {"p": _i(0, 0, 1, 2, 0, 0, 2, 1)}, mode="reflect"), X4, BOTH, None),
    ("pad_edge", op("Pad", ("x", "p"), {"p": _i(0, 0, 2, 1, 0, 0, 1, 3)}, mode="edge"), X4, BOTH, None),
    ("pad_wrap", op("Pad", ("x", "p"), {"p": _i(0, 0, 1, 2, 0, 0, 2, 1)}, mode="wrap"), X4, (19, 21), None),
    (
        "reshape_transpose_flatten",
        nodes(
            N("Reshape", ["x", "s"], ["t"]),
            N("Transpose", ["t"], ["u"], perm=[2, 0, 1]),
            N("Flatten", ["u"], ["y"], axis=2),
            inits={"s": _i(4, 3, 2)},
        ),
        X3,
        BOTH,
        None,
    ),
    ("depth_to_space_dcr", op("DepthToSpace", blocksize=2), {"x": [1, 8, 2, 3]}, BOTH, None),
    ("depth_to_space_crd", op("DepthToSpace", blocksize=2, mode="CRD"), {"x": [1, 8, 2, 3]}, BOTH, None),
    ("space_to_depth", op("SpaceToDepth", blocksize=2), {"x": [1, 2, 4, 6]}, BOTH, None),
    # --- normalisation ---
    (
        "batchnorm",
        op(
            "BatchNormalization",
            ("x", "s", "b", "m", "v"),
            {"s": _w(2), "b": _w(2), "m": _w(2), "v": np.abs(_w(2)) + 0.5},
        ),
        X4,
        BOTH,
        None,
    ),
    ("instancenorm", op("InstanceNormalization", ("x", "s", "b"), {"s": _w(2), "b": _w(2)}), X4, BOTH, None),
    ("layernorm", op("LayerNormalization", ("x", "s", "b"), {"s": _w(3, 4), "b": _w(4)}, axis=1), X3, (17, 21), None),
    (
        "groupnorm_18",
        op("GroupNormalization", ("x", "s", "b"), {"s": _w(2), "b": _w(2)}, num_groups=2),
        {"x": [2, 4, 2, 3]},
        (18,),
        None,
    ),
    (
        "groupnorm_21",
        op("GroupNormalization", ("x", "s", "b"), {"s": _w(4), "b": _w(4)}, num_groups=2),
        {"x": [2, 4, 2, 3]},
        (21,),
        None,
    ),
    ("lrn", op("LRN", size=3, alpha=0.5, beta=0.75, bias=1.5), {"x": [1, 5, 2, 3]}, BOTH, None),
    # --- convolution and pooling ---
    (
        "conv",
        op("Conv", ("x", "w", "b"), {"w": _w(3, 2, 3, 3), "b": _w(3)}, pads=[1, 1, 1, 1], strides=[2, 1]),
        X4,
        BOTH,
        None,
    ),
    (
        "conv_transpose",
        op(
            "ConvTranspose", ("x", "w"), {"w": _w(2, 3, 3, 3)}, strides=[2, 2], pads=[1, 0, 1, 1], output_padding=[1, 0]
        ),
        X4,
        BOTH,
        None,
    ),
    (
        "conv_transpose_same",
        op("ConvTranspose", ("x", "w"), {"w": _w(2, 1, 3, 2)}, strides=[2, 2], auto_pad="SAME_UPPER"),
        X4,
        BOTH,
        None,
    ),
    ("maxpool_overlap", op("MaxPool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), X4, BOTH, "distinct"),
    ("maxpool_2x2", op("MaxPool", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1), X4, BOTH, "distinct"),
    ("maxpool_dilated", op("MaxPool", kernel_shape=[2, 2], dilations=[2, 1]), X4, BOTH, "distinct"),
    ("maxpool_same", op("MaxPool", kernel_shape=[3, 2], strides=[1, 2], auto_pad="SAME_UPPER"), X4, BOTH, "distinct"),
    ("global_max_pool", op("GlobalMaxPool"), X4, BOTH, "distinct"),
    ("global_average_pool", op("GlobalAveragePool"), X4, BOTH, None),
    (
        "avgpool",
        op("AveragePool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1),
        X4,
        BOTH,
        None,
    ),
    (
        "avgpool_dilated",
        op("AveragePool", kernel_shape=[2, 2], dilations=[2, 2], pads=[1, 0, 1, 1]),
        X4,
        (19, 21),
        None,
    ),
    # --- Resize: every mode and coordinate transformation ---
    *[
        (
            f"resize_nearest_{nm}_{ctm}",
            resize("nearest", ctm, [1, 1, 2.0, 1.5], nearest_mode=nm),
            {"x": [1, 1, 3, 4]},
            BOTH,
            None,
        )
        for nm in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
        for ctm in ("half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel")
    ],
    *[
        (f"resize_linear_{ctm}", resize("linear", ctm, [1, 1, 2.0, 1.75]), {"x": [1, 2, 3, 4]}, BOTH, None)
        for ctm in ("half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel")
    ],
    ("resize_linear_sizes", resize("linear", "align_corners", sizes=[1, 2, 5, 7]), {"x": [1, 2, 3, 4]}, BOTH, None),
    ("resize_linear_down", resize("linear", "half_pixel", [1, 1, 0.5, 0.6]), {"x": [1, 1, 6, 5]}, BOTH, None),
    (
        "resize_linear_antialias",
        resize("linear", "half_pixel", [1, 1, 0.5, 0.5], antialias=1),
        {"x": [1, 1, 6, 6]},
        (18, 21),
        None,
    ),
    ("resize_cubic", resize("cubic", "half_pixel", [1, 1, 2.0, 1.5]), {"x": [1, 1, 4, 4]}, BOTH, None),
    (
        "resize_cubic_align_exclude",
        resize("cubic", "align_corners", [1, 1, 1.5, 2.0], cubic_coeff_a=-0.5, exclude_outside=1),
        {"x": [1, 1, 4, 3]},
        BOTH,
        None,
    ),
]

PARAMS = [pytest.param(c, o, id=f"{c[0]}@{o}") for c in CASES for o in c[3]]


def _feeds(inputs: dict[str, list[int]], transform: str | None, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feeds = {k: rng.standard_normal(v) for k, v in inputs.items()}
    if transform == "pos":
        feeds = {k: np.abs(v) + 0.5 for k, v in feeds.items()}
    elif transform == "away":  # at least 0.2 from the kinks at zero
        feeds = {k: np.sign(v) * (np.abs(v) + 0.2) for k, v in feeds.items()}
    elif transform == "scale3":
        feeds = {k: 3 * v for k, v in feeds.items()}
    elif transform == "distinct":  # values at least 0.1 apart across all inputs: no ties anywhere
        total = sum(int(np.prod(v)) for v in inputs.values())
        pool = rng.permutation(total) * 0.1 - 0.05 * total
        at = 0
        for k, shape in inputs.items():
            n = int(np.prod(shape))
            feeds[k] = pool[at : at + n].reshape(shape)
            at += n
    return {k: v.astype(np.float32) for k, v in feeds.items()}


@pytest.mark.parametrize(("case", "opset"), PARAMS)
def test_rule_at_opset(case: tuple, opset: int) -> None:
    _, make, inputs, _, transform = case
    graph_nodes, inits = make(opset)
    model = tiny_model(graph_nodes, inputs, ["y"], inits, opset)
    rng = np.random.default_rng(5)
    feeds = _feeds(inputs, transform, rng)
    big = sum(v.size for v in feeds.values()) > 48
    # distinct inputs sit 0.1 apart, so a small step never swaps an order
    check_against_fd(model, feeds, rng=rng, directions=4 if big else 0, tol=2e-4 if big else 1e-4)


@pytest.mark.parametrize("opset", [11, 13, 16, 18, 21])
def test_emitted_nodes_are_valid_at_the_model_opset(opset: int) -> None:
    # the gradient graph keeps the model's opset, so every node a rule emits must exist there
    ctx = onnx.checker.C.CheckerContext()
    ctx.ir_version, ctx.opset_imports = 9, {"": opset}
    for case in CASES:
        at = max([o for o in case[3] if o <= opset], default=None)
        if at is None:
            continue
        graph_nodes, inits = case[1](at)
        model = tiny_model(graph_nodes, case[2], ["y"], inits, opset)
        emitted = build_gradient_model(model, list(case[2])).model.graph.node[len(graph_nodes) :]
        for node in emitted:
            try:
                onnx.checker.check_node(node, ctx)
            except onnx.checker.ValidationError as exc:
                raise AssertionError(f"{case[0]} at opset {opset}: {node.op_type} {exc}") from exc


@pytest.mark.parametrize("opset", [11, 21])
def test_qdq_pair_passes_the_gradient_straight_through(opset: int) -> None:
    scale, zero = np.asarray(0.05, dtype=np.float32), np.asarray(0, dtype=np.int8)
    square = N("Mul", ["x", "x"], ["t"])
    qdq = [N("QuantizeLinear", ["t", "sc", "zp"], ["q"]), N("DequantizeLinear", ["q", "sc", "zp"], ["y"])]
    plain = tiny_model([square, N("Identity", ["t"], ["y"])], X3, ["y"], {}, opset)
    quantised = tiny_model([square, *qdq], X3, ["y"], {"sc": scale, "zp": zero}, opset)
    x = np.random.default_rng(2).uniform(-2, 2, (2, 3, 4)).astype(np.float32)  # x*x inside [0, 6.35]
    seeds = {"y": np.ones((2, 3, 4))}
    got = run_gradient(build_gradient_model(quantised, ["x"]), {"x": x}, seeds)["x"]
    np.testing.assert_allclose(got, run_gradient(build_gradient_model(plain, ["x"]), {"x": x}, seeds)["x"])


@pytest.mark.parametrize(
    ("node", "inputs", "inits", "opset", "needle"),
    [
        (
            N("Resize", ["x", "roi", "scales"], ["y"], coordinate_transformation_mode="tf_crop_and_resize"),
            {"x": [1, 1, 3, 3]},
            {"roi": _f(0, 0, 0.1, 0.1, 1, 1, 0.9, 0.9), "scales": _f(1, 1, 2, 2)},
            13,
            "tf_crop_and_resize",
        ),
        (
            N("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2], output_shape=[8, 9]),
            {"x": [1, 2, 4, 4]},
            {"w": _w(2, 3, 3, 3)},
            17,
            "output_shape",
        ),
        (N("GatherElements", ["x", "i"], ["y"]), {"x": [3, 2], "i": [3, 2]}, {}, 13, "opset >= 16"),
    ],
)
def test_unsupported_forms_name_the_op_and_the_fix(
    node: onnx.NodeProto, inputs: dict, inits: dict, opset: int, needle: str
) -> None:
    if "i" in inputs:  # computed indices: a Cast of a graph input
        node.input[1] = "ii"
    graph = helper.make_graph(
        [N("Cast", ["i"], ["ii"], to=onnx.TensorProto.INT64), node] if "i" in inputs else [node],
        "t",
        [helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, v) for k, v in inputs.items()],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    from onnxcam.graph.protos import make_model

    model = make_model(graph, [helper.make_opsetid("", opset)])
    with pytest.raises(UnsupportedOpError, match=needle) as info:
        build_gradient_model(model, ["x"])
    assert node.op_type in str(info.value)


def test_paddle_style_opset11_head_has_exact_gradients() -> None:
    # the shape of a Paddle/old-exporter classifier at opset 11: MaxPool (no scatter-add yet),
    # axes as attributes, Resize with roi/scales inputs, Softmax coercing to 2-D
    graph_nodes = [
        N("Conv", ["A", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        N("Relu", ["c1"], ["r1"]),
        N("MaxPool", ["r1"], ["m"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        N("Resize", ["m", "roi", "sc"], ["up"], mode="linear", coordinate_transformation_mode="half_pixel"),
        N("BatchNormalization", ["up", "s", "b", "mu", "v"], ["bn"]),
        N("ReduceMean", ["bn"], ["pooled"], axes=[2, 3], keepdims=1),
        N("Squeeze", ["pooled"], ["flat"], axes=[2, 3]),
        N("Gemm", ["flat", "fc"], ["logits"], transB=1),
        N("Softmax", ["logits"], ["y"], axis=1),
    ]
    inits = {
        "w1": _w(4, 3, 3, 3),
        "roi": np.zeros(0, dtype=np.float32),
        "sc": _f(1, 1, 2, 2),
        "s": _w(4),
        "b": _w(4),
        "mu": _w(4),
        "v": np.abs(_w(4)) + 0.5,
        "fc": _w(5, 4),
    }
    model = tiny_model(graph_nodes, {"A": [2, 3, 6, 6]}, ["y"], inits, 11)
    assert missing_rules(model, ["A"]) == []
    a = _feeds({"A": [2, 3, 6, 6]}, "distinct", np.random.default_rng(3))["A"] / 10.0
    check_against_fd(model, {"A": a}, directions=4, tol=2e-4)


@pytest.mark.parametrize(
    ("mode", "ctm", "opset"),
    [("nearest", "tf_half_pixel_for_nn", 11), ("linear", "align_corners", 11), ("linear", "align_corners", 21)],
)
def test_resize_adjoint_matches_onnxruntime(mode: str, ctm: str, opset: int) -> None:
    # modes where onnx's reference evaluator lacks the mode or disagrees with onnxruntime (align_corners
    # at a scale whose output size is rounded): Resize is linear, so <grad, d> = <seed, Resize(d)> exactly
    import onnxruntime as ort

    graph_nodes, inits = resize(mode, ctm, [1, 1, 2.0, 1.7])(opset)
    model = tiny_model(graph_nodes, {"x": [1, 2, 3, 4]}, ["y"], inits, opset)
    rng = np.random.default_rng(4)
    x, d = rng.standard_normal((2, 1, 2, 3, 4)).astype(np.float32)
    forward = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    seed = rng.standard_normal(forward.run(None, {"x": x})[0].shape)
    grad = run_gradient(build_gradient_model(model, ["x"]), {"x": x}, {"y": seed})["x"]
    expected = float(np.sum(seed * forward.run(None, {"x": d})[0]))
    assert abs(float(np.sum(grad * d)) - expected) <= 1e-5 * max(1.0, abs(expected))
