"""Composite heads (the shapes Grad-CAM heads take) and builder-level behaviour."""

from __future__ import annotations

import time

import numpy as np
import onnx
import pytest
from gradients.grad_helpers import check_against_fd, run_gradient, tiny_model
from onnx import TensorProto, helper, numpy_helper

from onnxcam.errors import LayerNotFoundError, UnsupportedOpError
from onnxcam.gradients import build_gradient_model, missing_rules

N = helper.make_node
R = np.random.default_rng(5)
C, K = 4, 5  # channels of A, classes


def _w(*shape: int, scale: float = 0.5) -> np.ndarray:
    return (scale * R.standard_normal(shape)).astype(np.float32)


def _i(*values: int) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def _classifier(src: str) -> tuple[list, dict]:
    nodes = [
        N("GlobalAveragePool", [src], ["gap"]),
        N("Flatten", ["gap"], ["flat"]),
        N("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    return nodes, {"fc_w": _w(K, C), "fc_b": _w(K)}


def residual() -> tuple[list, dict]:
    nodes = [
        N("Conv", ["A", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        N("Relu", ["c1"], ["r1"]),
        N("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        N("Add", ["c2", "A"], ["s"]),
        N("Relu", ["s"], ["r"]),
    ]
    head, inits = _classifier("r")
    return nodes + head, inits | {"w1": _w(C, C, 3, 3), "w2": _w(C, C, 3, 3)}


def depthwise_se_hardswish() -> tuple[list, dict]:
    nodes = [
        N("Conv", ["A", "dw"], ["d"], group=C, auto_pad="SAME_UPPER", strides=[2, 2]),
        N("HardSwish", ["d"], ["h"]),
        N("GlobalAveragePool", ["h"], ["sq"]),
        N("Conv", ["sq", "se1"], ["e1"]),
        N("Relu", ["e1"], ["e1r"]),
        N("Conv", ["e1r", "se2"], ["e2"]),
        N("HardSigmoid", ["e2"], ["gate"]),
        N("Mul", ["h", "gate"], ["z"]),
    ]
    head, inits = _classifier("z")
    return nodes + head, inits | {"dw": _w(C, 1, 3, 3), "se1": _w(2, C, 1, 1), "se2": _w(C, 2, 1, 1)}


def concat_maxpool() -> tuple[list, dict]:
    nodes = [
        N("Conv", ["A", "w1"], ["c1"]),
        N("Relu", ["c1"], ["r1"]),
        N("MaxPool", ["r1"], ["m"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
        N("Concat", ["m", "A"], ["cat"], axis=1),
        N("Conv", ["cat", "w2"], ["c2"]),
        N("MaxPool", ["c2"], ["m2"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    ]
    head, inits = _classifier("m2")
    return nodes + head, inits | {"w1": _w(2, C, 1, 1), "w2": _w(C, C + 2, 1, 1)}


def layernorm_gelu() -> tuple[list, dict]:
    nodes = [
        N("Reshape", ["A", "tok_shape"], ["t"]),
        N("Transpose", ["t"], ["tt"], perm=[0, 2, 1]),
        N("LayerNormalization", ["tt", "ln_s", "ln_b"], ["ln"], axis=-1),
        N("MatMul", ["ln", "mw"], ["mm"]),
        N("Gelu", ["mm"], ["g"]),
        N("ReduceMean", ["g", "ax1"], ["pooled"], keepdims=0),
        N("MatMul", ["pooled", "cls"], ["pre"]),
        N("Softmax", ["pre"], ["logits"], axis=-1),
    ]
    return nodes, {
        "tok_shape": _i(0, C, -1),
        "ln_s": _w(C),
        "ln_b": _w(C),
        "mw": _w(C, 6),
        "ax1": _i(1),
        "cls": _w(6, K),
    }


def split_shuffle_silu() -> tuple[list, dict]:
    half = C // 2
    nodes = [
        N("Split", ["A", "sp"], ["a", "b"], axis=1),
        N("Conv", ["b", "w"], ["bc"], pads=[1, 1, 1, 1]),
        N("Sigmoid", ["bc"], ["sg"]),
        N("Mul", ["bc", "sg"], ["silu"]),
        N("Concat", ["a", "silu"], ["cat"], axis=1),
        N("Reshape", ["cat", "s5"], ["r5"]),
        N("Transpose", ["r5"], ["t5"], perm=[0, 2, 1, 3, 4]),
        N("Reshape", ["t5", "s4"], ["shuf"]),
    ]
    head, inits = _classifier("shuf")
    return nodes + head, inits | {
        "sp": _i(half, half),
        "w": _w(half, half, 3, 3),
        "s5": _i(0, 2, half, 6, 6),
        "s4": _i(0, C, 6, 6),
    }


def resize_head() -> tuple[list, dict]:
    nodes = [
        N("Conv", ["A", "w1"], ["c1"]),
        N("Resize", ["c1", "", "sc"], ["up"], mode="linear"),
        N("Conv", ["up", "w2"], ["c2"], strides=[2, 2], pads=[1, 1, 1, 1]),
        N("Tanh", ["c2"], ["th"]),
        N("Resize", ["th", "", "sc"], ["up2"], mode="nearest"),
    ]
    head, inits = _classifier("up2")
    return nodes + head, inits | {
        "w1": _w(C, C, 1, 1),
        "w2": _w(C, C, 3, 3),
        "sc": np.asarray([1, 1, 2, 2], dtype=np.float32),
    }


HEADS = {
    f.__name__: f
    for f in (residual, depthwise_se_hardswish, concat_maxpool, layernorm_gelu, split_shuffle_silu, resize_head)
}


_BUILT: dict[str, tuple[list, dict]] = {}


def _head_model(name: str, batch: int | str) -> onnx.ModelProto:
    if name not in _BUILT:  # same weights for every batch size
        _BUILT[name] = HEADS[name]()
    nodes, inits = _BUILT[name]
    return tiny_model(nodes, {"A": [batch, C, 6, 6]}, ["logits"], inits, opset=20)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", list(HEADS))
def test_composite_head_per_sample_one_hot(name: str, batch: int) -> None:
    model = _head_model(name, batch)
    rng = np.random.default_rng(batch)
    a = rng.standard_normal((batch, C, 6, 6)).astype(np.float32)
    seeds = {"logits": np.eye(K)[rng.integers(0, K, batch)]}  # one target class per sample
    if name == "layernorm_gelu":
        # onnx's reference Gelu/Softmax bodies run in float32: torch autograd is the oracle here
        got = run_gradient(build_gradient_model(model, ["A"]), {"A": a}, seeds)["A"]
        np.testing.assert_allclose(got, _torch_layernorm_gelu(model, a, seeds["logits"]), rtol=1e-4, atol=1e-7)
        return
    check_against_fd(model, {"A": a}, seeds=seeds, directions=3, rng=rng)


def _torch_layernorm_gelu(model: onnx.ModelProto, a: np.ndarray, seed: np.ndarray) -> np.ndarray:
    import torch

    p = {i.name: torch.tensor(numpy_helper.to_array(i)).double() for i in model.graph.initializer}
    x = torch.tensor(a, dtype=torch.float64, requires_grad=True)
    tokens = x.reshape(a.shape[0], C, -1).transpose(1, 2)
    ln = torch.nn.functional.layer_norm(tokens, (C,), p["ln_s"], p["ln_b"])
    pooled = torch.nn.functional.gelu(ln @ p["mw"]).mean(1)
    (torch.softmax(pooled @ p["cls"], -1) * torch.tensor(seed)).sum().backward()
    assert x.grad is not None
    return x.grad.numpy()


def test_per_sample_gradients_equal_single_sample_runs() -> None:
    model = _head_model("residual", 3)
    single = _head_model("residual", 1)
    rng = np.random.default_rng(11)
    a = rng.standard_normal((3, C, 6, 6)).astype(np.float32)
    targets = [0, 3, 1]
    batched = run_gradient(build_gradient_model(model, ["A"]), {"A": a}, {"logits": np.eye(K)[targets]})["A"]
    gm1 = build_gradient_model(single, ["A"])
    for n, t in enumerate(targets):
        alone = run_gradient(gm1, {"A": a[n : n + 1]}, {"logits": np.eye(K)[[t]]})["A"]
        np.testing.assert_allclose(batched[n : n + 1], alone, rtol=1e-5, atol=1e-6)


def test_symbolic_batch_dim() -> None:
    model = _head_model("residual", "N")
    gm = build_gradient_model(model, ["A"])
    fixed = build_gradient_model(_head_model("residual", 2), ["A"])
    a = np.random.default_rng(2).standard_normal((2, C, 6, 6)).astype(np.float32)
    seeds = {"logits": np.eye(K)[[1, 4]]}
    np.testing.assert_allclose(
        run_gradient(gm, {"A": a}, seeds)["A"], run_gradient(fixed, {"A": a}, seeds)["A"], rtol=1e-6
    )


def test_intermediate_and_input_wrt_match_split_models() -> None:
    # body: x -> Conv -> A ; head: residual. Gradient at intermediate A must equal the head's input gradient.
    head_nodes, inits = residual()
    body = [N("Conv", ["x", "stem"], ["A"], pads=[1, 1, 1, 1])]
    inits = inits | {"stem": _w(C, 2, 3, 3)}
    full = tiny_model(body + head_nodes, {"x": [2, 2, 6, 6]}, ["logits"], inits, opset=17)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    seeds = {"logits": rng.standard_normal((2, K))}
    gm = build_gradient_model(full, ["A", "x", "c1"])
    got = run_gradient(gm, {"x": x}, seeds)
    a_value = got["__outputs__"]["A"] if "A" in got["__outputs__"] else None
    if a_value is None:
        import onnxruntime as ort

        probe = onnx.ModelProto()
        probe.CopyFrom(full)
        probe.graph.output.append(helper.make_tensor_value_info("A", TensorProto.FLOAT, None))
        a_value = ort.InferenceSession(probe.SerializeToString()).run(["A"], {"x": x})[0]
    head = tiny_model(head_nodes, {"A": [2, C, 6, 6]}, ["logits"], inits, opset=17)
    expected = run_gradient(build_gradient_model(head, ["A"]), {"A": a_value}, seeds)["A"]
    np.testing.assert_allclose(got["A"], expected, rtol=1e-5, atol=1e-6)
    check_against_fd(full, {"x": x}, seeds=seeds)  # the input gradient flows through A as well
    assert got["c1"].shape == (2, C, 6, 6) and np.abs(got["c1"]).sum() > 0


def test_weights_get_no_gradient_nodes() -> None:
    gm = build_gradient_model(_head_model("residual", 1), ["A"])
    grad_nodes = [n for n in gm.model.graph.node if n.name.startswith("onnxcam_grad/")]
    # One adjoint per Conv, on the activations only: a stride-1 Conv's is a Conv with the kernel
    # flipped and transposed (a Slice and a Transpose of the weight, folded by the runtime).
    adjoints = [n for n in grad_nodes if n.op_type in ("Conv", "ConvTranspose")]
    assert len(adjoints) == 2
    weights = {"w1", "w2", "fc_w", "fc_b"}
    assert not any(n.input[0] in weights for n in adjoints)
    assert not any(o in weights for n in grad_nodes for o in n.output)
    weight_side = [n.op_type for n in grad_nodes if n.op_type in ("Slice", "Transpose")]
    assert len(weight_side) <= 4


def test_unconnected_wrt_gets_zero_gradient() -> None:
    model = tiny_model([N("Relu", ["x"], ["y"])], {"x": [2, 3], "z": [2, 3]}, ["y"])
    got = run_gradient(
        build_gradient_model(model, ["z"]),
        {"x": np.ones((2, 3), np.float32), "z": np.ones((2, 3), np.float32)},
        {"y": np.ones((2, 3))},
    )
    np.testing.assert_array_equal(got["z"], np.zeros((2, 3)))


def _custom_op_model() -> onnx.ModelProto:
    nodes = [
        N("Relu", ["x"], ["r"]),
        N("MyOp", ["r"], ["m"], domain="com.example", name="custom_1"),
        N("Add", ["m", "x"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    graph.value_info.append(helper.make_tensor_value_info("m", TensorProto.FLOAT, [1, 3]))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])


def test_custom_domain_op_raises_unsupported() -> None:
    model = _custom_op_model()
    assert missing_rules(model, ["x"]) == ["MyOp"]
    with pytest.raises(UnsupportedOpError) as info:
        build_gradient_model(model, ["x"])
    assert info.value.op_types == ["MyOp"]
    assert "custom_1" in str(info.value) and "finite differences" in str(info.value)


def test_qlinearconv_raises_unsupported() -> None:
    node = N("QLinearConv", ["xq", "xs", "xz", "wq", "ws", "wz", "ys", "yz"], ["yq"], name="qconv")
    nodes = [N("QuantizeLinear", ["x", "xs", "xz"], ["xq"]), node, N("DequantizeLinear", ["yq", "ys", "yz"], ["y"])]
    inits = {
        "xs": np.float32(0.1),
        "xz": np.uint8(128),
        "wq": np.ones((2, 3, 1, 1), np.uint8),
        "ws": np.float32(0.1),
        "wz": np.uint8(0),
        "ys": np.float32(0.1),
        "yz": np.uint8(128),
    }
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert missing_rules(model, ["x"]) == ["QLinearConv"]
    with pytest.raises(UnsupportedOpError):
        build_gradient_model(model, ["x"])


def test_unrelated_unsupported_op_is_ignored() -> None:
    # the custom op only feeds an output that is not seeded
    model = _custom_op_model()
    model.graph.output.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 3]))
    assert missing_rules(model, ["x"], outputs=["r"]) == []


def test_unknown_wrt_name() -> None:
    with pytest.raises(LayerNotFoundError, match="nope"):
        build_gradient_model(_head_model("residual", 1), ["nope"])


def test_build_is_fast_and_linear_for_deep_graphs() -> None:
    depth = 100
    nodes, inits = [], {}
    src = "A"
    for i in range(depth // 2):
        inits[f"w{i}"] = _w(C, C, 3, 3, scale=0.2)
        nodes += [N("Conv", [src, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]), N("Relu", [f"c{i}"], [f"r{i}"])]
        src = f"r{i}"
    head, head_inits = _classifier(src)
    model = tiny_model(nodes + head, {"A": [1, C, 6, 6]}, ["logits"], inits | head_inits)
    start = time.perf_counter()
    gm = build_gradient_model(model, ["A"] + [f"c{i}" for i in range(0, depth // 2, 5)])
    elapsed = time.perf_counter() - start
    print(f"built gradient model for {len(model.graph.node)} nodes in {elapsed * 1000:.1f} ms")
    a = np.random.default_rng(0).standard_normal((1, C, 6, 6)).astype(np.float32)
    got = run_gradient(gm, {"A": a}, {"logits": np.eye(K)[[2]]})
    assert got["A"].shape == a.shape and np.isfinite(got["A"]).all()


@pytest.mark.parametrize(("zp", "dtype"), [(0, np.int8), (128, np.uint8), (0, np.uint8)])
def test_quantiser_passes_gradient_only_inside_its_range(zp: int, dtype: type) -> None:
    """Clipped straight-through: d/dx of 2 * DQ(Q(x * x)) is 4x where x * x rounds into the integer
    range and 0 where the quantiser clips it (the model's own output quantiser excepted)."""
    from onnxcam.gradients.straight_through import quantiser_range

    scale = np.float32(0.01)
    nodes = [
        helper.make_node("Mul", ["x", "x"], ["t"]),
        helper.make_node("QuantizeLinear", ["t", "sc", "zp"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "sc", "zp"], ["u"]),
        helper.make_node("Mul", ["u", "two"], ["y"]),
    ]
    inits = {"sc": np.asarray(scale), "zp": np.asarray(zp, dtype=dtype), "two": np.asarray(2.0, np.float32)}
    model = tiny_model(nodes, {"x": [2, 6]}, ["y"], inits, 17)
    x = np.linspace(-2.2, 2.2, 12, dtype=np.float32).reshape(2, 6)
    got = run_gradient(build_gradient_model(model, ["x"]), {"x": x}, {"y": np.ones((2, 6), np.float32)})["x"]
    lo, hi = quantiser_range(np.asarray(scale), np.asarray(zp, dtype=dtype))
    info = np.iinfo(dtype)
    assert (lo, hi) == pytest.approx(((info.min - zp - 0.5) * 0.01, (info.max - zp + 0.5) * 0.01))
    t = x.astype(np.float64) ** 2
    expected = np.where((t >= lo) & (t <= hi), 4 * x, 0.0)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert 0 < np.count_nonzero(expected) < expected.size  # some values clipped, some not
