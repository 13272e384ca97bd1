"""``check-gradients`` on the corpus of real-world exports (PyTorch opsets 11-20, Keras via tf2onnx,
the Paddle models inside rapidocr, the int8 copies): it passes at the auto layer and a middle layer
of every model, at real photos, and it fails when a rule is wrong on one of them.

The float64 reference it differentiates runs in onnx's reference evaluator wherever onnxruntime has
no double kernel (Conv): that evaluator's BatchNormalization at opsets 9-13 normalises with the
batch's statistics, which made each row of a difference batch depend on the others (Paddle exports
carry BatchNormalization-9 with ``momentum``); the reference replaces it with the inference op.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_corpus_gradients import CORPUS, auto_layer, middle_layer, photo_batch, photos
from typer.testing import CliRunner

import onnxcam
from cli.main import app
from onnxcam.gradients._registry import RULES
from onnxcam.gradients.reference import Float64Runner
from onnxcam.graph.protos import make_model
from onnxcam.selfcheck import check_gradients


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_check_gradients_passes_on_the_corpus(name: str, build_model) -> None:
    size, preset, _ = CORPUS[name]
    model = onnxcam.load(build_model(name), input_size=size)
    x = photo_batch(model, preset)[:2]
    auto = auto_layer(model)
    seen = {}
    for layer in (auto, middle_layer(model, auto)):
        result = check_gradients(model, x, layer, directions=2)
        seen[layer] = f"{result.status} {result.relative_error:.1e} (tol {result.tolerance:.0e})"
        assert result.source == "gradient graph"
        assert result.status == "pass", (name, layer, result.relative_error, result.tolerance, result.reason)
        if "int8" not in name:  # (int8 heads: random element directions cross the surrogate's clip limits)
            # what correct rules reach against the float64 reference, far below the tolerance
            assert result.relative_error <= 1e-4, (name, layer, result.relative_error)
    print(name, seen)


HARD_SIGMOID = RULES["HardSigmoid"]


def _bad_hard_sigmoid(e, node, gys):  # type: ignore[no-untyped-def]
    # a plausible bug: a slope off by half (e.g. HardSigmoid-6's default alpha taken for the node's)
    good = HARD_SIGMOID(e, node, gys)
    return [e.op("Mul", [good[0], e.scalar(1.5, node.input[0])])]


def test_check_gradients_fails_on_a_corrupted_rule_on_a_paddle_export(build_model,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = build_model("paddle_ocr_cls")
    layer = "batch_norm_20.tmp_2"  # its head holds 5 HardSigmoid (squeeze-excitation gates)
    model = onnxcam.load(path, input_size=(48, 192))
    x = photo_batch(model, "paddle")[:2]
    good = check_gradients(model, x, layer, directions=2)
    assert good.status == "pass", good
    monkeypatch.setitem(RULES, "HardSigmoid", _bad_hard_sigmoid)
    bad = check_gradients(onnxcam.load(path, input_size=(48, 192)), x, layer, directions=2)
    print(f"good rule {good.relative_error:.1e}; corrupted {bad.relative_error:.1e} (tol {bad.tolerance:.0e})")
    assert bad.status == "fail" and bad.relative_error > 10 * bad.tolerance


def test_check_gradients_cli_on_a_paddle_export_at_a_photo(build_model, tmp_path: Path) -> None:
    import cv2

    img = tmp_path / "cat.png"
    cv2.imwrite(str(img), cv2.cvtColor(photos()[1], cv2.COLOR_RGB2BGR))
    out = CliRunner().invoke(app, ["check-gradients", str(build_model("paddle_ocr_cls")), str(img), "--layer",
                                   "batch_norm_20.tmp_2", "--size", "48x192", "--preprocess", "unit", "--mean",
                                   "0.5,0.5,0.5", "--std", "0.5,0.5,0.5", "--directions", "2"])
    print(out.output)
    assert out.exit_code == 0 and "PASS" in out.output and "float64" in out.output, out.output


def test_float64_reference_batch_normalization_is_the_inference_op() -> None:
    # Conv has no double kernel in onnxruntime: the head runs in onnx's reference evaluator
    rng = np.random.default_rng(0)
    w = rng.normal(size=(2, 2, 1, 1)).astype(np.float32)
    scale, bias, mean = (rng.normal(size=2).astype(np.float32) for _ in range(3))
    var = rng.uniform(0.5, 2.0, size=2).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["y"], epsilon=1e-5, momentum=0.9)]
    inits = [numpy_helper.from_array(a, n) for a, n in zip((w, scale, bias, mean, var), "wsbmv")]
    graph = helper.make_graph(nodes, "bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2, 4, 4])], inits)
    runner = Float64Runner(make_model(graph, [helper.make_opsetid("", 11)]), ["y"])
    assert "reference evaluator" in runner.what
    x = rng.normal(size=(3, 2, 4, 4))
    got = runner({"x": x})[0]
    c = np.einsum("nchw,oc->nohw", x, w[:, :, 0, 0].astype(np.float64))
    def f(a: np.ndarray) -> np.ndarray:
        return a.astype(np.float64).reshape(1, -1, 1, 1)

    want = (c - f(mean)) / np.sqrt(f(var) + 1e-5) * f(scale) + f(bias)
    assert np.abs(got - want).max() <= 1e-12
    # one row alone gives the same numbers: nothing depends on the rest of the batch
    assert np.abs(runner({"x": x[:1]})[0] - got[:1]).max() <= 1e-12
