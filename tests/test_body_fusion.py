"""Selections moved early (``onnxcam.graph.select_early``: a transformer's last ops run on the class
token only) and attention fused into one kernel for forward-only sessions (``onnxcam.graph.fuse``).
Hand-built graphs pin where a selection may go and where it must stop, against numpy, and the fused
attention against the graph it replaces; the timm models pin that forward, body, gradients and maps
match the graph run as exported."""

from __future__ import annotations

from functools import cache

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxcam
from onnxcam.graph.fuse import fuse_attention
from onnxcam.graph.protos import make_model
from onnxcam.graph.select_early import select_early
from onnxcam.graph.shapes import tensor_infos as _declared
from onnxcam.runtime import make_session

B, N, D = 2, 5, 4
RNG = np.random.default_rng(0)
W = RNG.normal(0, 0.5, (D, D)).astype(np.float32)
BIAS = RNG.normal(0, 0.1, D).astype(np.float32)
HEAD = RNG.normal(0, 0.5, (3, D)).astype(np.float32)


def _model(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], outputs: dict[str, list[int]],
           opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, N, D])],
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in outputs.items()],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return make_model(graph, [helper.make_opsetid("", opset)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    return list(make_session(model).run(None, {"x": x}))


def _block(select: list[onnx.NodeProto], outputs: dict[str, list[int]], opset: int = 17) -> onnx.ModelProto:
    """x -> LayerNorm -> MatMul + bias -> Relu -> + x (residual) -> ``select`` -> Gemm -> y."""
    nodes = [
        helper.make_node("LayerNormalization", ["x", "g", "beta"], ["n"], axis=-1),
        helper.make_node("MatMul", ["n", "w"], ["m"]),
        helper.make_node("Add", ["m", "bias"], ["a"]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Add", ["r", "x"], ["s"]),
        *select,
        helper.make_node("Gemm", ["t", "head"], ["y"], transB=1),
    ]
    inits = {"g": np.ones(D, np.float32), "beta": np.zeros(D, np.float32), "w": W, "bias": BIAS, "head": HEAD,
             "zero": np.array(0, np.int64)}
    return _model(nodes, inits, outputs, opset)


def _reference(x: np.ndarray) -> np.ndarray:
    n = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    s = np.maximum(n @ W + BIAS, 0) + x
    return s[:, 0] @ HEAD.T


def tensor_infos(model: onnx.ModelProto) -> dict[str, object]:
    return _declared(onnx.shape_inference.infer_shapes(model))  # type: ignore[return-value]


def _readers(model: onnx.ModelProto, name: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if name in n.input]


def test_class_token_selection_moves_to_the_graph_input() -> None:
    model = _block([helper.make_node("Gather", ["s", "zero"], ["t"], axis=1)], {"y": [B, 3]})
    new, moved = select_early(model, tensor_infos(model))
    assert moved == 5  # Add, Relu, Add, MatMul, LayerNorm
    x = RNG.normal(size=(B, N, D)).astype(np.float32)
    np.testing.assert_allclose(_run(new, x)[0], _reference(x), rtol=1e-5, atol=1e-6)
    # Every reader of x now selects first (a Slice: one run of rows): nothing runs on all N tokens.
    assert {n.op_type for n in _readers(new, "x")} == {"Slice"}
    assert len(model.graph.node) == 7  # the caller's model is untouched


def test_selection_stops_at_a_kept_tensor_and_at_graph_outputs() -> None:
    model = _block([helper.make_node("Gather", ["s", "zero"], ["t"], axis=1)], {"y": [B, 3], "r": [B, N, D]})
    x = RNG.normal(size=(B, N, D)).astype(np.float32)
    new, moved = select_early(model, tensor_infos(model))
    assert moved == 1  # past the residual Add only: r is an output
    y, r = _run(new, x)
    np.testing.assert_allclose(y, _reference(x), rtol=1e-5, atol=1e-6)
    assert r.shape == (B, N, D)
    kept, moved = select_early(model, tensor_infos(model), keep=["s"])
    assert moved == 0 and kept is model


def test_two_selections_of_one_tensor_move_as_their_union() -> None:
    """DeiT's class and distillation tokens: one selection of rows [0, 2] moves, each head picks its row."""
    select = [
        helper.make_node("Gather", ["s", "zero"], ["t0"], axis=1),
        helper.make_node("Gather", ["s", "two"], ["t2"], axis=1),
        helper.make_node("Add", ["t0", "t2"], ["t"]),
    ]
    model = _block(select, {"y": [B, 3]})
    model.graph.initializer.append(numpy_helper.from_array(np.array(2, np.int64), "two"))
    new, moved = select_early(model, tensor_infos(model))
    assert moved == 5
    x = RNG.normal(size=(B, N, D)).astype(np.float32)
    n = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    s = np.maximum(n @ W + BIAS, 0) + x
    np.testing.assert_allclose(_run(new, x)[0], (s[:, 0] + s[:, 2]) @ HEAD.T, rtol=1e-5, atol=1e-6)
    values = {i.name: numpy_helper.to_array(i) for i in new.graph.initializer}
    assert [values[n.input[1]].tolist() for n in _readers(new, "x")] == [[0, 2], [0, 2]]


def test_selection_along_a_softmax_axis_does_not_move() -> None:
    nodes = [helper.make_node("Softmax", ["x"], ["p"], axis=1),
             helper.make_node("Gather", ["p", "zero"], ["q"], axis=1),
             helper.make_node("Gemm", ["q", "head"], ["y"], transB=1)]
    model = _model(nodes, {"zero": np.array(0, np.int64), "head": HEAD}, {"y": [B, 3]})
    new, moved = select_early(model, tensor_infos(model))
    assert moved == 0 and new is model


def _attention(opset: int) -> onnx.ModelProto:
    """One head of self-attention with timm's export shapes: qkv -> Reshape -> Transpose -> Split ->
    Squeeze; softmax(q k^T) v -> Transpose -> Reshape -> + x -> class token -> y."""
    axes = {"axes": [0]} if opset < 13 else {}
    squeeze_in = [] if opset < 13 else ["axis0"]
    split = {"split": [1, 1, 1]} if opset < 13 else {}
    nodes = [
        helper.make_node("MatMul", ["x", "wqkv"], ["qkv"]),
        helper.make_node("Reshape", ["qkv", "shape5"], ["r5"]),
        helper.make_node("Transpose", ["r5"], ["t5"], perm=[2, 0, 3, 1, 4]),
        helper.make_node("Split", ["t5"], ["sq", "sk", "sv"], axis=0, **split),
        *[helper.make_node("Squeeze", [f"s{c}", *squeeze_in], [c], **axes) for c in "qkv"],
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["p"], axis=-1 if opset >= 13 else 3),
        helper.make_node("MatMul", ["p", "v"], ["o"]),
        helper.make_node("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["ot", "shape3"], ["o3"]),
        helper.make_node("Add", ["o3", "x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["t"], axis=1),
        helper.make_node("Gemm", ["t", "head"], ["y"], transB=1),
    ]
    inits = {"wqkv": RNG.normal(0, 0.5, (D, 3 * D)).astype(np.float32),
             "shape5": np.array([B, N, 3, 2, D // 2], np.int64), "shape3": np.array([0, -1, D], np.int64),
             "axis0": np.array([0], np.int64), "zero": np.array(0, np.int64), "head": HEAD}
    return _model(nodes, inits, {"y": [B, 3]}, opset)


@pytest.mark.parametrize("opset", [11, 17])
def test_attention_runs_one_query_row(opset: int) -> None:
    model = _attention(opset)
    new, moved = select_early(model, tensor_infos(model))
    assert moved == 7  # Add, Reshape, Transpose, MatMul (p v), Softmax, MatMul (q k^T), Squeeze; not Split
    x = RNG.normal(size=(B, N, D)).astype(np.float32)
    np.testing.assert_allclose(_run(new, x)[0], _run(model, x)[0], rtol=1e-5, atol=1e-6)
    # Keys and values still see every token; the query is one row.
    infos = tensor_infos(new)
    q = next(n.output[0] for n in new.graph.node if n.op_type == "Squeeze" and n.input[0].startswith("sq"))
    assert infos[q].shape == (B, 2, 1, D // 2) and infos["k"].shape == (B, 2, N, D // 2)


def _timm_attention(heads: int = 2) -> onnx.ModelProto:
    """timm's attention as exported: qkv Linear -> (B, T, 3, H, d) -> q, k, v; q * scale; softmax(q k^T) v."""
    size = D // heads
    nodes = [
        helper.make_node("MatMul", ["x", "wqkv"], ["m"]),
        helper.make_node("Add", ["bqkv", "m"], ["qkv"]),
        helper.make_node("Reshape", ["qkv", "shape5"], ["r5"]),
        helper.make_node("Transpose", ["r5"], ["t5"], perm=[2, 0, 3, 1, 4]),
        helper.make_node("Split", ["t5"], ["sq", "sk", "sv"], axis=0),
        *[helper.make_node("Squeeze", [f"s{c}", "axis0"], [c]) for c in "qkv"],
        helper.make_node("Mul", ["q", "scale"], ["qs"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["qs", "kt"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["o"]),
        helper.make_node("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["ot", "shape3"], ["y"]),
    ]
    inits = {"wqkv": RNG.normal(0, 0.5, (D, 3 * D)).astype(np.float32),
             "bqkv": RNG.normal(0, 0.1, 3 * D).astype(np.float32),
             "shape5": np.array([B, N, 3, heads, size], np.int64), "shape3": np.array([B, N, D], np.int64),
             "axis0": np.array([0], np.int64), "scale": np.array(size ** -0.5, np.float32)}
    return _model(nodes, inits, {"y": [B, N, D]})


def test_timm_attention_runs_as_one_kernel() -> None:
    model = _timm_attention()
    new, fused = fuse_attention(model, tensor_infos(model))
    assert fused == 1
    assert [n.op_type for n in new.graph.node if n.domain == "com.microsoft"] == ["MultiHeadAttention"]
    assert not any(n.op_type in ("Softmax", "Split", "Transpose") for n in new.graph.node)
    x = RNG.normal(size=(B, N, D)).astype(np.float32)
    np.testing.assert_allclose(_run(new, x)[0], _run(model, x)[0], rtol=1e-5, atol=1e-6)


def test_attention_whose_probabilities_are_read_is_left_alone() -> None:
    model = _timm_attention()
    kept, fused = fuse_attention(model, tensor_infos(model), keep=["p"])
    assert fused == 0 and kept is model


# -- the timm models: the pass on (the default) against the graph run as exported -------------------------

MODELS = ("vit_tiny", "deit_tiny_distilled", "vit_registers", "swin_tiny", "mobilevit_xxs")
RTOL = 1e-4


@cache
def _pair(name: str) -> tuple[onnxcam.Model, onnxcam.Model, np.ndarray]:
    from models.build import MODELS as SPECS
    from models.build import build

    path = build(name)
    plain = onnxcam.load(path, device="cpu")
    plain.select_rows = False
    x = np.random.default_rng(7).normal(size=SPECS[name].input_shape).astype(np.float32)[None].repeat(2, 0)
    x[1] = x[1, :, ::-1]
    return onnxcam.load(path, device="cpu"), plain, x


def _close(a: np.ndarray, b: np.ndarray, what: str) -> None:
    scale = float(np.abs(b).max()) or 1.0
    assert float(np.abs(a - b).max()) <= RTOL * scale, what


@pytest.mark.parametrize("name", MODELS)
def test_models_match_the_graph_as_exported(name: str) -> None:
    fast, plain, x = _pair(name)
    for a, b in zip(fast.forward(x), plain.forward(x)):  # predictions: the graph as exported
        np.testing.assert_array_equal(a, b)
    layer = fast.layer("auto").name
    cut = fast.frontier((layer,))
    (feeds, outs), (feeds0, outs0) = fast.run_body(x, cut), plain.run_body(x, cut)
    _close(feeds[layer], feeds0[layer], "layer activations")
    for a, b in zip(outs, outs0):
        _close(a, b, "body outputs")
    g, g0 = fast.gradients(x), plain.gradients(x)
    _close(g.gradients[layer], g0.gradients[layer], "gradients")
    maps, maps0 = onnxcam.GradCAM(fast)(x), onnxcam.GradCAM(plain)(x)
    assert float(np.abs(maps - maps0).max()) <= 1e-4


def test_a_layer_inside_the_selected_ops_keeps_its_tokens() -> None:
    """Gradients at the auto layer and at the last block's MLP output together: the pass must leave
    the inner layer whole (all tokens), its gradient zero off the class token."""
    fast, plain, x = _pair("vit_tiny")
    layer = fast.layer("auto").name
    inner = "/blocks/blocks.3/mlp/fc2/Add_output_0"
    g, g0 = fast.gradients_at(x, [layer, inner]), plain.gradients_at(x, [layer, inner])
    assert g.gradients[inner].shape == g0.gradients[inner].shape == (2, 50, 192)
    for name in (layer, inner):
        _close(g.activations[name], g0.activations[name], f"activations at {name}")
        _close(g.gradients[name], g0.gradients[name], f"gradients at {name}")
    assert np.all(g.gradients[inner][:, 1:] == 0) and np.any(g.gradients[inner][:, 0] != 0)


def test_the_vit_last_block_runs_on_the_class_token() -> None:
    from models.build import build

    fast = onnxcam.load(build("vit_tiny"), device="cpu")  # no inner layer asked for yet
    cut = fast.frontier((fast.layer("auto").name,))
    head = fast.static_head(cut, 2)
    infos = tensor_infos(head)
    fc1 = [n.output[0] for n in head.graph.node if n.op_type == "MatMul" and "fc1" in n.output[0]]
    assert [infos[t].shape for t in fc1] == [(2, 1, 768)]


@pytest.mark.parametrize(("name", "moved", "fused"), [
    ("vit_tiny", 22, 3), ("deit_tiny_distilled", 22, 3), ("vit_registers", 22, 3), ("swin_tiny", 0, 0),
    ("mobilevit_xxs", 0, 9),
])  # fmt: skip
def test_what_the_passes_change(name: str, moved: int, fused: int) -> None:
    """In the body: the last of four blocks past its keys and values runs on the selected tokens (Swin
    and MobileViT pool every token: nothing to select); every other timm attention is one kernel."""
    fast, _, _ = _pair(name)
    early, n_moved = select_early(fast.graph, fast._infos)
    assert n_moved == moved
    assert fuse_attention(early, fast._infos)[1] == fused


def test_a_fused_graph_onnxruntime_refuses_runs_unfused(monkeypatch: pytest.MonkeyPatch) -> None:
    """An onnxruntime build without the contrib kernel: the body falls back to the graph before fusion."""
    import onnxcam.model as model_module
    from models.build import build

    def refused(proto: onnx.ModelProto, infos: object, keep: object = ()) -> tuple[onnx.ModelProto, int]:
        broken = onnx.ModelProto()
        broken.CopyFrom(proto)
        broken.graph.node[0].op_type = "NoSuchKernel"
        broken.graph.node[0].domain = "com.microsoft"
        return broken, 1

    monkeypatch.setattr(model_module, "fuse_attention", refused)
    fast = onnxcam.load(build("vit_tiny"), device="cpu")
    _, plain, x = _pair("vit_tiny")
    layer = fast.layer("auto").name
    cut = fast.frontier((layer,))
    _close(fast.run_body(x, cut)[0][layer], plain.run_body(x, cut)[0][layer], "layer activations")
