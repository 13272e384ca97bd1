"""Finite differences agree with the gradient graph; int8 QDQ models get straight-through gradients;
``onnxcam check-gradients`` passes on real models and reports the finite-difference fallback.
"""

from __future__ import annotations

import re
import warnings
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import onnxcam
from cli.main import app
from models import efficientnet as effnet
from models.build import DEFAULT, MODELS, build
from models.weights import calibration_batch
from onnxcam.errors import OnnxCamWarning
from onnxcam.gradients import build_gradient_model, missing_rules
from onnxcam.gradients.finite_diff import ELEMENTWISE_EPS, channel_gradients, directional_check
from onnxcam.gradients.straight_through import straight_through, straight_through_note
from onnxcam.graph.protos import make_model
from onnxcam.runtime import make_session
from onnxcam.targets import ClassTarget, SoftmaxTarget, Target

FD_TOL = 1e-2
FP32_MODELS = [n for n in DEFAULT if not n.startswith("efficientnet_lite0_int8")]


@cache
def _model(name: str) -> onnxcam.Model:
    return onnxcam.load(build(name), device="cpu")


@cache
def _photo(name: str) -> np.ndarray:
    return effnet.preprocess(effnet.photo(name))


def _inputs(name: str, n: int) -> np.ndarray:
    if name.startswith("efficientnet"):
        return np.concatenate([_photo(p) for p in ("chelsea", "coffee")[:n]])
    spec = MODELS[name]
    return calibration_batch(spec.input_shape, spec.layout, seed=33, batch=n).numpy()


def _rel(a: np.ndarray, ref: np.ndarray) -> float:
    """max over images of max |a_i - ref_i| / max |ref_i|."""
    n = ref.shape[0]
    diff = np.abs(a - ref).reshape(n, -1).max(axis=1)
    return float((diff / np.abs(ref).reshape(n, -1).max(axis=1)).max())


# ------------------------------------------------------------------ finite differences vs graph


@pytest.mark.parametrize("name", FP32_MODELS)
def test_finite_differences_match_gradient_graph(name: str) -> None:
    model = _model(name)
    tensor = MODELS[name].layers["last"][1]
    x = _inputs(name, 2)
    k = MODELS[name].num_classes
    targets: list[Target] = [ClassTarget(1 % k), SoftmaxTarget(4 % k)]
    exact = model.gradients(x, tensor, targets, mode="graph")
    fd = model.gradients(x, tensor, targets, mode="finite")
    assert exact.source == "gradient graph" and fd.source == "finite differences"
    g, g_fd = exact.gradients[tensor], fd.gradients[tensor]
    assert g.shape == g_fd.shape
    if name == "vgg_maxpool":
        # ReLU -> MaxPool(2) leaves windows of exact zeros: tied maxima, where the graph (like torch)
        # routes to the first and central differences see half of the one-sided derivative
        tied = _tied_windows(model.gradients(x, tensor, targets, mode="graph").activations[tensor])
        assert 0 < tied.mean() < 0.8  # ~half: ReLU zeros fill whole windows
        g, g_fd = np.where(tied, 0.0, g), np.where(tied, 0.0, g_fd)
    if fd.notes[0].startswith("channel-wise"):
        # big heads: FD gives each channel's spatial sum (what Grad-CAM weights are made of)
        err = _rel(g_fd.sum(axis=(2, 3)), g.sum(axis=(2, 3)))
    else:
        err = _rel(g_fd, g)
    print(f"{name}: {fd.notes[0].split(':')[0]}, relative error {err:.2e}")
    assert err <= FD_TOL


def _tied_windows(a: np.ndarray) -> np.ndarray:
    """Mask of the elements of ``a`` (N, C, H, W) in 2x2 MaxPool windows whose two largest values
    are closer than the element-wise FD step (so the +-step probes swap the argmax)."""
    n, c, h, w = a.shape
    step = ELEMENTWISE_EPS * np.sqrt(np.mean(a.reshape(n, -1).astype(np.float64) ** 2, axis=1))
    win = a.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)
    top = np.sort(win, axis=-1)
    ties = (top[..., -1] - top[..., -2]) <= 2 * step[:, None, None, None]
    return np.repeat(np.repeat(ties, 2, axis=2), 2, axis=3)


# ------------------------------------------------------------------ int8 QDQ EfficientNet-Lite0


def _int8_layer(role: str) -> str:
    return MODELS["efficientnet_lite0_int8"].layers[role][1]


@pytest.mark.parametrize("role", ["last", "mid"])
def test_int8_gets_straight_through_gradients(role: str) -> None:
    model = _model("efficientnet_lite0_int8")
    tensor = _int8_layer(role)
    x = _inputs("efficientnet_lite0_int8", 2)
    g = model.gradients(x, tensor, None, mode="graph")  # graph mode: no silent fallback
    assert g.source == "gradient graph"
    head = model.split((tensor,)).head
    note = straight_through_note(head)
    assert note is not None and "straight through" in note
    # straight-through gradients are exact for the head with its activation Q/DQ pairs removed
    plain, pairs = straight_through(head)
    assert pairs >= (3 if role == "last" else 20)
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] == tensor for n in plain.graph.node)
    split = model.split((tensor,))
    sess = make_session(plain)
    feeds, _ = model.run_body(x, (tensor,))

    def score_fn(rows: np.ndarray, samples: np.ndarray) -> np.ndarray:
        outs = np.concatenate([
            sess.run([split.model_outputs[0]], {tensor: rows[i : i + 2].astype(np.float32)})[0]
            for i in range(0, len(rows), 2)
        ])  # fmt: skip
        return np.array([g.targets[int(s)].score([outs[j]]) for j, s in enumerate(samples)])

    a, grads = g.activations[tensor], g.gradients[tensor]
    if role == "last":
        err = directional_check(score_fn, a, grads, 8, eps=1e-3)
        print(f"int8 {role}: {pairs} Q/DQ pairs, straight-through vs FD {err:.2e}")
        assert err <= FD_TOL
        return
    # The mid head has the ReLU6 the quantiser folded into each of its 27 ranges back as clips:
    # element-wise random directions cross their kinks, and the error shrinks with the step (the
    # signature of kinks, not of a wrong rule). The bound is held on what the methods consume.
    coarse = directional_check(score_fn, a, grads, 8, eps=1e-2)
    fine = directional_check(score_fn, a, grads, 8, eps=1e-3)
    sums_fd = channel_gradients(score_fn, a, eps=1e-3)
    sums = grads.sum(axis=(2, 3), dtype=np.float64)
    err = float(np.linalg.norm(sums_fd - sums) / np.linalg.norm(sums))
    print(f"int8 {role}: {pairs} Q/DQ pairs; element-wise directions vs FD {coarse:.2e} (eps 1e-2), "
          f"{fine:.2e} (eps 1e-3); channel sums vs FD {err:.2e}")
    assert fine < coarse <= 5e-2
    assert err <= FD_TOL


@pytest.mark.parametrize(("role", "bound"), [("last", 0.99), ("mid", 0.85)])
def test_int8_channel_weights_correlate_with_fp32(role: str, bound: float) -> None:
    # The quantiser folded every ReLU6 into a QuantizeLinear range; the clipped straight-through
    # rule brings it back (a plain one gave Pearson ~0.2 at "mid"). The mid head is 16 quantised
    # convolutions deep, so its weights drift further from fp32 than the last layer's.
    x = _photo("chelsea")
    fp32, int8 = _model("efficientnet_lite0"), _model("efficientnet_lite0_int8")
    top = int(fp32.forward(x)[0].argmax())
    assert top in effnet.CAT_CLASSES
    weights = []
    for model, tensor in ((fp32, MODELS["efficientnet_lite0"].layers[role][1]), (int8, _int8_layer(role))):
        g = model.gradients(x, tensor, top)
        weights.append(g.gradients[tensor].mean(axis=(2, 3)).ravel())  # Grad-CAM channel weights
    r = float(np.corrcoef(weights[0], weights[1])[0, 1])
    print(f"int8 vs fp32 Grad-CAM weights at {role}, Pearson {r:.4f}")
    assert r >= bound


def test_builder_infers_shapes_behind_constant_pads() -> None:
    # EfficientNet's "same" padding is Pad with pads computed by a chain of constant ops that shape
    # inference does not evaluate; the builder folds them, else GlobalAveragePool lacks its dims
    model = _model("efficientnet_lite0")
    tensor = MODELS["efficientnet_lite0"].layers["mid"][1]
    head = model.static_head((tensor,), 1)
    assert any(n.op_type == "Pad" for n in head.graph.node)
    assert missing_rules(head, [tensor]) == []
    built = build_gradient_model(head, [tensor])
    out = {o.name: o for o in built.model.graph.output}[built.grad_outputs[tensor]]
    assert [d.dim_value for d in out.type.tensor_type.shape.dim] == [1, 112, 14, 14]


# ------------------------------------------------------------------ check-gradients CLI

_ERROR = re.compile(r"relative error vs central differences of a float64 copy of the head \([^)]*\) ([0-9.e+-]+)")


def _cli(*args: str) -> tuple[int, str, float]:
    result = CliRunner().invoke(app, ["check-gradients", *args])
    match = _ERROR.search(result.output)
    assert match, result.output
    return result.exit_code, result.output, float(match.group(1))


def test_check_gradients_cli_passes_on_efficientnet_lite0() -> None:
    code, out, err = _cli(str(build("efficientnet_lite0")))
    print(out)
    assert code == 0 and "PASS:" in out, out
    assert "gradient graph" in out and err <= 1e-3


@pytest.mark.parametrize("role", ["last", "mid"])
def test_check_gradients_cli_passes_on_int8(role: str) -> None:
    code, out, err = _cli(str(build("efficientnet_lite0_int8")), "--layer", _int8_layer(role), "--directions", "2")
    print(out)
    assert code == 0 and "gradient graph" in out and err <= 1e-2, out
    assert "straight through" in out and "clipped straight-through surrogate" in out


def _sinh_head_model(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """input (N, 3, 6, 6) -> Conv -> Relu ("feat") -> Sinh -> GlobalAveragePool -> Flatten -> Gemm (N, 4).

    ``Sinh`` runs in onnxruntime but has no gradient rule. Returns the weights (conv, fc, fc bias).
    """
    rng = np.random.default_rng(5)
    wc = rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32)
    wf = rng.normal(0, 1.0, (4, 8)).astype(np.float32)
    bf = rng.normal(0, 0.1, (4,)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "wc"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["feat"]),
        helper.make_node("Sinh", ["feat"], ["sinh"]),
        helper.make_node("GlobalAveragePool", ["sinh"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "sinh_head",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 6, 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(wc, "wc"), numpy_helper.from_array(wf, "wf"), numpy_helper.from_array(bf, "bf")],
    )  # fmt: skip
    onnx.save(make_model(graph, [helper.make_opsetid("", 17)]), str(path))
    return wc, wf, bf


def test_fallback_for_an_op_without_rule(tmp_path: Path) -> None:
    path = tmp_path / "sinh_head.onnx"
    _, wf, _ = _sinh_head_model(path)
    model = onnxcam.load(path, device="cpu")
    assert missing_rules(model.static_head(("feat",), 2), ["feat"]) == ["Sinh"]
    x = np.random.default_rng(1).normal(size=(2, 3, 6, 6)).astype(np.float32)
    with pytest.warns(OnnxCamWarning, match=r"Sinh.*finite differences"):
        g = model.gradients(x, "feat", [0, 3])
    assert g.source == "finite differences" and "central differences" in g.notes[0]
    # the truth, by hand: d logit_c / d feat = wf[c, k] * cosh(feat) / (h * w)
    feat = g.activations["feat"]
    truth = wf[[0, 3]][:, :, None, None] * np.cosh(feat) / 36.0
    err = _rel(g.gradients["feat"], truth)
    print(f"Sinh head, FD fallback vs analytic: {err:.2e}")
    assert err <= 1e-3
    with warnings.catch_warnings():
        warnings.simplefilter("error", OnnxCamWarning)
        with pytest.raises(Exception, match="Sinh"):
            model.gradients(x, "feat", [0, 3], mode="graph")


def test_check_gradients_cli_reports_the_fallback(tmp_path: Path) -> None:
    path = tmp_path / "sinh_head.onnx"
    _sinh_head_model(path)
    code, out, err = _cli(str(path), "--layer", "feat")
    print(out)
    assert code == 0 and "PASS" in out, out
    assert "finite differences" in out.split("PASS")[1]  # the verdict line names the source
    assert re.search(r"note: .*no reverse-mode gradient rule for op\(s\) Sinh", out), out
    assert err <= 1e-2
