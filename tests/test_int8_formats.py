"""Every int8 format onnxruntime.quantization writes (QDQ, QOperator, dynamic) gets clipped
straight-through gradients, checked against float64 differences of the same surrogate; the
finite-difference fallback stays bounded and honest; ``check-gradients`` uses a float64 reference,
fails on a wrong rule and says when it cannot check.

Nothing here asserts what int8 calibration decides (top-1 classes, which channels clip): the
bounds are on functions of a model that hold whatever its ranges are.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import onnxcam
from cli.main import app
from models import efficientnet as effnet
from models.build import DEFAULT, MODELS, build
from models.weights import calibration_batch
from onnxcam.errors import GradientError, OnnxCamWarning
from onnxcam.gradients._registry import RULES
from onnxcam.gradients.finite_diff import channel_gradients, elementwise_gradients
from onnxcam.gradients.quant_ops import float_surrogate
from onnxcam.gradients.reference import Float64Runner
from onnxcam.gradients.straight_through import straight_through
from onnxcam.graph.protos import make_model
from onnxcam.graph.quant_taps import expose_int8_activations
from onnxcam.selfcheck import check_gradients

FORMATS = {"qdq": "efficientnet_lite0_int8", "qoperator": "efficientnet_lite0_int8_qop",
           "dynamic": "efficientnet_lite0_int8_dyn"}
LAYERS = {"qdq": MODELS["efficientnet_lite0_int8"].layers, "qoperator": MODELS["efficientnet_lite0_int8_qop"].layers,
          "dynamic": MODELS["efficientnet_lite0"].layers}
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


@cache
def _model(name: str) -> onnxcam.Model:
    return onnxcam.load(build(name), device="cpu")


@cache
def _photos(n: int) -> np.ndarray:
    return np.concatenate([effnet.preprocess(effnet.photo(p)) for p in PHOTOS[:n]])


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return list(sess.run(None, feeds))


# ------------------------------------------------------------------ the graph pass, on hand-built graphs


def _qlinear_conv_model() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x (1, 2, 5, 5) float -> QuantizeLinear -> QLinearConv (per-channel int8 weights, bias) ->
    DequantizeLinear -> y; the quantisation parameters as a dict for the numpy answer."""
    rng = np.random.default_rng(0)
    p = {"xs": np.float32(0.02), "xzp": np.uint8(128), "ys": np.float32(0.05), "yzp": np.uint8(10),
         "w": rng.integers(-60, 60, (3, 2, 3, 3)).astype(np.int8), "ws": np.array([0.01, 0.02, 0.005], np.float32),
         "wzp": np.zeros(3, np.int8), "b": rng.integers(-500, 500, 3).astype(np.int32)}
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in p.items()]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xzp"], ["xq"]),
        helper.make_node("QLinearConv", ["xq", "xs", "xzp", "w", "ws", "wzp", "ys", "yzp", "b"], ["yq"], pads=[1] * 4),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yzp"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "qconv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return make_model(graph, [helper.make_opsetid("", 17)]), p


def test_qlinearconv_becomes_the_dequantised_conv_with_clips() -> None:
    model, p = _qlinear_conv_model()
    surrogate, count = float_surrogate(model)
    assert count == 3  # Q, QLinearConv, DQ
    assert {n.op_type for n in surrogate.graph.node} <= {"Clip", "Conv", "Identity", "Mul"}
    x = np.random.default_rng(1).normal(0, 1.5, (1, 2, 5, 5)).astype(np.float32)
    # by hand: clip x to the input quantiser's range, float conv with dequantised weights and bias
    lo_x, hi_x = (0 - 128 - 0.5) * 0.02, (255 - 128 + 0.5) * 0.02
    xc = np.clip(x.astype(np.float64), lo_x, hi_x)
    w = p["w"].astype(np.float64) * p["ws"].astype(np.float64)[:, None, None, None]
    b = p["b"] * p["ws"].astype(np.float64) * float(p["xs"])
    xp = np.pad(xc, ((0, 0), (0, 0), (1, 1), (1, 1)))
    conv = np.einsum("nchwij,ocij->nohw", np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3)), w)
    conv += b[None, :, None, None]
    # the model's output quantiser is not clipped (a CAM needs the score's slope)
    got = _run(surrogate, {"x": x})[0]
    assert np.allclose(got, conv, rtol=1e-5, atol=1e-5)
    # and the int8 model itself rounds that function to its grid (within one output step plus the
    # input's rounding, carried through the weights)
    int8 = _run(model, {"x": x})[0]
    inside = np.clip(conv, (0 - 10) * 0.05, (255 - 10) * 0.05)
    assert np.abs(int8 - inside).max() <= 0.05 + np.abs(w).sum(axis=(1, 2, 3)).max() * 0.01


def test_dynamic_quantisation_becomes_the_float_conv_with_dequantised_weights() -> None:
    rng = np.random.default_rng(2)
    wq = rng.integers(0, 256, (4, 3, 3, 3)).astype(np.uint8)
    wzp, ws = np.uint8(131), np.float32(0.004)
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xzp"]),
        helper.make_node("ConvInteger", ["xq", "w", "xzp", "wzp"], ["acc"], pads=[1] * 4),
        helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["xs", "ws"], ["scale"]),
        helper.make_node("Mul", ["accf", "scale"], ["y"]),
    ]
    inits = [numpy_helper.from_array(wq, "w"), numpy_helper.from_array(np.asarray(wzp), "wzp"),
             numpy_helper.from_array(np.asarray(ws), "ws")]
    graph = helper.make_graph(nodes, "dyn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = make_model(graph, [helper.make_opsetid("", 17)])
    surrogate, count = float_surrogate(model)
    assert count == 2
    x = rng.normal(0, 1, (2, 3, 6, 6)).astype(np.float32)
    w = (wq.astype(np.float64) - float(wzp)) * float(ws)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    want = np.einsum("nchwij,ocij->nohw", np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3)), w)
    assert np.allclose(_run(surrogate, {"x": x})[0], want, rtol=1e-5, atol=1e-5)
    # the int8 model: the same up to the input's rounding (half a step per value, through |w|)
    step = (max(x.max(), 0) - min(x.min(), 0)) / 255
    assert np.abs(_run(model, {"x": x})[0] - want).max() <= 0.5 * step * np.abs(w).sum(axis=(1, 2, 3)).max() + 1e-4


def test_int8_views_leave_a_qoperator_model_bit_for_bit_unchanged() -> None:
    proto = onnx.load(str(build("efficientnet_lite0_int8_qop")))
    viewed, count = expose_int8_activations(proto)
    assert count > 40
    x = _photos(2)
    assert np.array_equal(_run(proto, {"input": x})[0], _run(viewed, {"input": x})[0])
    names = {layer.name for layer in _model("efficientnet_lite0_int8_qop").layers()}
    assert {t for _, t in LAYERS["qoperator"].values()} <= names


def test_qoperator_surrogate_equals_qdq_surrogate() -> None:
    # Same calibration data, same MinMax ranges: the two formats' surrogates are the same function
    # (a check on every QLinear op's algebra: scales, zero points, per-channel weights, bias, clips).
    x = _photos(2)
    qdq = straight_through(onnx.load(str(build("efficientnet_lite0_int8"))))[0]
    qop = straight_through(onnx.load(str(build("efficientnet_lite0_int8_qop"))))[0]
    a, b = _run(qdq, {"input": x})[0], _run(qop, {"input": x})[0]
    err = np.abs(a - b).max() / np.abs(a).max()
    print(f"QOperator vs QDQ surrogate logits: relative {err:.1e}")
    assert err <= 1e-3


# ------------------------------------------------------------------ gradients of each format


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("role", ["last", "mid"])
def test_int8_gradients_match_float64_differences_of_the_surrogate(fmt: str, role: str) -> None:
    model = _model(FORMATS[fmt])
    layer = LAYERS[fmt][role][1]
    result = check_gradients(model, _photos(1), layer, directions=2)
    print(f"{fmt} {role}: {result.status}, channel {result.channel_error:.1e}, element {result.element_error:.1e}, "
          f"noise {result.noise:.1e}, {result.reference}")
    assert result.source == "gradient graph"
    assert result.status == "pass", result.reason
    assert result.channel_error <= 1e-2 and result.element_error <= 3e-2
    assert any("straight" in note for note in result.notes)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_int8_gradcam_maps_are_not_blank(fmt: str) -> None:
    model = _model(FORMATS[fmt])
    cam = onnxcam.GradCAM(model, layer="auto")
    maps = cam(_photos(2))
    assert maps.shape[0] == 2
    for m in maps:
        assert np.isfinite(m).all() and m.max() > 0 and m.std() > 1e-3


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize(("role", "low", "median"), [("last", 0.8, 0.9), ("mid", 0.6, 0.75)])
def test_int8_gradcam_weights_correlate_with_fp32(fmt: str, role: str, low: float, median: float) -> None:
    # At the last layer the head is pool + linear: Grad-CAM weights are the class's dequantised
    # fc row, masked by the clip, so they measure weight quantisation, not calibration (measured
    # 1.00). The middle layer's head is 16 quantised convolutions deep: measured 0.80-0.96 over the
    # photos and formats (dynamic lowest: per-tensor uint8 weights); the bounds leave room for
    # another CPU's calibration.
    fp32 = _model("efficientnet_lite0")
    int8 = _model(FORMATS[fmt])
    x = _photos(4)
    classes = fp32.forward(x)[0].argmax(axis=1).tolist()
    layer32, layer8 = LAYERS["dynamic"][role][1], LAYERS[fmt][role][1]
    w32 = fp32.gradients(x, layer32, classes).gradients[layer32].mean(axis=(2, 3))
    w8 = int8.gradients(x, layer8, classes).gradients[layer8].mean(axis=(2, 3))
    rs = [float(np.corrcoef(w32[i], w8[i])[0, 1]) for i in range(len(x))]
    print(f"{fmt} {role}: Pearson of Grad-CAM weights per photo {np.round(rs, 3)}")
    assert min(rs) >= low and float(np.median(rs)) >= median


# ------------------------------------------------------------------ finite differences


def test_finite_differences_never_score_more_rows_than_the_batch() -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(size=(3, 4, 5, 5))
    w = rng.normal(size=(4, 5, 5))
    seen: list[int] = []

    def score(rows: np.ndarray, samples: np.ndarray) -> np.ndarray:
        seen.append(rows.shape[0])
        return np.sum(rows * w, axis=(1, 2, 3)) ** 2 / 10 + samples

    sums = channel_gradients(score, a, batch_size=5)
    full = elementwise_gradients(score, a, batch_size=7)
    assert max(seen) <= 7
    truth = 2 * np.sum(a * w, axis=(1, 2, 3))[:, None, None, None] * w / 10
    assert np.allclose(full, truth, rtol=1e-4, atol=1e-6)
    assert np.allclose(sums, truth.sum(axis=(2, 3)), rtol=1e-5, atol=1e-7)


def test_finite_differences_on_a_quantised_head_use_the_surrogate() -> None:
    # The QDQ head is piecewise constant: differences of it are zero almost everywhere. Those of
    # its clipped straight-through surrogate match the gradient graph's channel sums.
    model = _model("efficientnet_lite0_int8")
    layer = LAYERS["qdq"]["last"][1]
    x = _photos(1)
    exact = model.gradients(x, layer, None, mode="graph").gradients[layer]
    fd = model.gradients(x, layer, None, mode="finite")
    assert fd.kind == "channel-mean" and any("surrogate" in n for n in fd.notes)
    sums, sums_fd = exact.sum(axis=(2, 3)), fd.gradients[layer].sum(axis=(2, 3))
    err = float(np.linalg.norm(sums_fd - sums) / np.linalg.norm(sums))
    print(f"FD of the QDQ surrogate vs graph channel sums {err:.1e}")
    assert err <= 1e-2


def _tiny_model(path: Path, zero: bool = False) -> None:
    """input (N, 3, 8, 8) -> Conv -> Relu ("feat", 8x8x8) -> [Mul 0] -> Sinh -> GAP -> Flatten -> Gemm (N, 4)."""
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Conv", ["input", "wc"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["feat"]),
             helper.make_node("Mul", ["feat", "k"], ["scaled"]),
             helper.make_node("Sinh", ["scaled"], ["s"]),
             helper.make_node("GlobalAveragePool", ["s"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["flat"]),
             helper.make_node("Gemm", ["flat", "wf"], ["logits"], transB=1)]
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32), "wc"),
             numpy_helper.from_array(np.float32(0.0 if zero else 0.7), "k"),
             numpy_helper.from_array(rng.normal(0, 1, (4, 8)).astype(np.float32), "wf")]
    graph = helper.make_graph(nodes, "tiny",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], inits)
    onnx.save(make_model(graph, [helper.make_opsetid("", 17)]), str(path))


def test_elementwise_methods_refuse_channel_mean_gradients(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxcam.engine

    path = tmp_path / "tiny.onnx"
    _tiny_model(path)
    x = np.random.default_rng(1).normal(size=(2, 3, 8, 8)).astype(np.float32)
    monkeypatch.setattr(onnxcam.engine, "ELEMENTWISE_LIMIT", 100)  # feat has 512 values per image
    model = onnxcam.load(path, device="cpu")
    with pytest.warns(OnnxCamWarning, match="Sinh"):
        g = model.gradients(x, "feat", [0, 1])
    assert g.kind == "channel-mean"
    with pytest.warns(OnnxCamWarning):
        maps = onnxcam.GradCAM(model, layer="feat")(x, [0, 1])  # exact with channel means
    assert np.isfinite(maps).all()
    for method in (onnxcam.LayerCAM, onnxcam.HiResCAM, onnxcam.GradCAMPlusPlus, onnxcam.XGradCAM):
        with pytest.warns(OnnxCamWarning), pytest.raises(GradientError, match="every position.*gradcam"):
            method(model, layer="feat")(x, [0, 1])
    monkeypatch.setattr(onnxcam.engine, "ELEMENTWISE_LIMIT", 16384)
    model = onnxcam.load(path, device="cpu")
    with pytest.warns(OnnxCamWarning):
        g = model.gradients(x, "feat", [0, 1])
    assert g.kind == "elementwise"


# ------------------------------------------------------------------ check-gradients


def test_check_gradients_fails_on_a_corrupted_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    name = "resnet_small"
    layer = MODELS[name].layers["mid"][1]
    x = calibration_batch(MODELS[name].input_shape, "NCHW", seed=3, batch=2).numpy()
    good = check_gradients(onnxcam.load(build(name), device="cpu"), x, layer, directions=2)
    assert good.status == "pass", good
    relu = RULES["Relu"]

    def leaky(e, node, gys):  # type: ignore[no-untyped-def]
        # a plausible bug: the ReLU mask forgets the negative side for half the gradient
        g = relu(e, node, gys)[0]
        return [e.op("Add", [g, e.op("Mul", [gys[0], e.scalar(0.5, node.input[0])])])]

    monkeypatch.setitem(RULES, "Relu", leaky)
    bad = check_gradients(onnxcam.load(build(name), device="cpu"), x, layer, directions=2)
    print(f"good rule {good.relative_error:.1e} (tol {good.tolerance:.0e}); corrupted {bad.relative_error:.1e}")
    assert bad.status == "fail" and bad.relative_error > 10 * bad.tolerance


def test_check_gradients_says_when_it_cannot_check(tmp_path: Path) -> None:
    path = tmp_path / "zero.onnx"
    _tiny_model(path, zero=True)  # feat is multiplied by 0: no path to the score
    x = np.random.default_rng(1).normal(size=(2, 3, 8, 8)).astype(np.float32)
    model = onnxcam.load(path, device="cpu")
    result = check_gradients(model, x, "feat", directions=2)
    assert result.status == "unchecked" and "zero" in result.reason
    out = CliRunner().invoke(app, ["check-gradients", str(path), "--layer", "feat"])
    assert out.exit_code == 2 and "UNCHECKED" in out.output and "could not check" in out.output, out.output


ZOO = [n for n in DEFAULT if not n.startswith("efficientnet")]


@pytest.mark.parametrize("role", ["last", "mid"])
@pytest.mark.parametrize("name", ZOO)
def test_check_gradients_passes_on_the_zoo(name: str, role: str) -> None:
    spec = MODELS[name]
    x = calibration_batch(spec.input_shape, spec.layout, seed=7, batch=2).numpy()
    result = check_gradients(_model(name), x, spec.layers[role][1], directions=2)
    print(f"{name} {role}: {result.status} {result.relative_error:.1e} (tol {result.tolerance:.0e}, noise "
          f"{result.noise:.0e}) {result.reference}")
    assert result.status == "pass", (result.relative_error, result.tolerance, result.reason)


def test_check_gradients_cli_at_a_real_image_with_explain_preprocessing(tmp_path: Path) -> None:
    # the issue's false FAIL: EfficientNet-Lite0's middle layer, whose gradients match autograd
    import cv2

    img = tmp_path / "cat.png"
    cv2.imwrite(str(img), cv2.cvtColor(effnet.photo("chelsea"), cv2.COLOR_RGB2BGR))
    out = CliRunner().invoke(app, ["check-gradients", str(build("efficientnet_lite0")), str(img), "--layer",
                                   "/blocks.8/_project_conv/Conv_output_0", "--preprocess", "imagenet",
                                   "--center-crop", "--directions", "2"])
    print(out.output)
    assert out.exit_code == 0 and "PASS" in out.output and "float64" in out.output, out.output


def test_float64_reference_runs_a_qdq_head_in_float64() -> None:
    model = _model("efficientnet_lite0_int8")
    layer = LAYERS["qdq"]["last"][1]
    split = model.split((layer,))
    runner = Float64Runner(straight_through(split.head)[0], split.head_outputs)
    feeds, outputs = model.run_body(_photos(1), (layer,))
    got = runner({k: v for k, v in feeds.items() if k in split.head_inputs})[0]
    assert got.dtype == np.float64
    assert np.abs(got - outputs[0]).max() <= 1e-3 * np.abs(outputs[0]).max() + 0.1  # the output quantiser rounds


def test_float64_reference_computes_every_op_in_float64() -> None:
    # onnx 1.23's reference Erf rounds to float32 (a 1e-2 noise floor on ConvNeXt's GELU heads);
    # the reference replaces it, and Conv (no double kernel in onnxruntime) sends the head there
    import math

    w = np.random.default_rng(0).normal(size=(2, 2, 1, 1))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Erf", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "erf", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 3])],
                              [numpy_helper.from_array(w.astype(np.float32), "w")])
    runner = Float64Runner(make_model(graph, [helper.make_opsetid("", 17)]), ["y"])
    assert "reference evaluator" in runner.what
    x = np.random.default_rng(1).normal(size=(1, 2, 3, 3))
    got = runner({"x": x})[0]
    conv = np.einsum("nchw,oc->nohw", x, w[:, :, 0, 0].astype(np.float32).astype(np.float64))
    want = np.vectorize(math.erf)(conv)
    assert got.dtype == np.float64 and np.abs(got - want).max() <= 1e-12
