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
from onnxcam.gradients.finite_diff import ELEMENTWISE_EPS, directional_check
from onnxcam.gradients.straight_through import straight_through, straight_through_note
from onnxcam.graph.protos import make_model
from onnxcam.runtime import make_session
from onnxcam.targets import ClassTarget, SoftmaxTarget, Target

FD_TOL = 1e-2
FP32_MODELS = [n for n in DEFAULT if n != "efficientnet_lite0_int8"]


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


# Exactness is checked on a function that neither calibration nor int8 kernels can move: the clip
# surrogate (``straight_through``) with each clip frozen at the pattern it has at the activations,
# i.e. the affine map the surrogate is around that point. Its Jacobian there is what the gradient
# graph must compute; finite differences of an affine map have no truncation and no kink error, so
# large steps are exact up to float32 rounding. (Finite differences of the unfrozen surrogate cross
# its clips: their error depends on how many activations sit near a calibrated range, 2-7e-2 at
# "mid" and different on every CPU that calibrates.)
FROZEN_EPS = 1.0  # relative step: the map is affine, so the largest step has the least rounding
FROZEN_TOL = 1e-4  # measured 9e-7 (mid) and below at "last"; 1% noise on the gradient gives 1.1e-2


def _frozen_clips(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[tuple[str, float, float]]]:
    """``model`` with every ``Clip(x, lo, hi)`` replaced by ``x * mask + offset`` (mask and offset fed
    as inputs ``frozen_mask_k``/``frozen_offset_k``), and each clip's (input, lo, hi)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    clips: list[tuple[str, float, float]] = []
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type != "Clip":
            nodes.append(node)
            continue
        assert node.input[1] in inits and node.input[2] in inits, f"clip {node.name} has non-constant bounds"
        k = len(clips)
        clips.append((node.input[0], float(inits[node.input[1]]), float(inits[node.input[2]])))
        nodes += [
            helper.make_node("Mul", [node.input[0], f"frozen_mask_{k}"], [f"frozen_linear_{k}"]),
            helper.make_node("Add", [f"frozen_linear_{k}", f"frozen_offset_{k}"], [node.output[0]]),
        ]
        graph.input.extend(helper.make_tensor_value_info(f"frozen_{kind}_{k}", TensorProto.FLOAT, None)
                           for kind in ("mask", "offset"))
    del graph.node[:]
    graph.node.extend(nodes)
    return copy, clips


def _clip_patterns(model: onnx.ModelProto, clips: list[tuple[str, float, float]], feeds: dict[str, np.ndarray]
                   ) -> dict[str, np.ndarray]:
    """Mask (1 inside the range) and offset (the bound where clipped) of every clip at ``feeds``."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_empty_tensor_value_info(x) for x, _, _ in clips)
    values = make_session(probe).run([x for x, _, _ in clips], feeds)
    patterns: dict[str, np.ndarray] = {}
    for k, ((_, lo, hi), v) in enumerate(zip(clips, values)):
        patterns[f"frozen_mask_{k}"] = ((v > lo) & (v < hi)).astype(np.float32)
        patterns[f"frozen_offset_{k}"] = np.where(v <= lo, lo, np.where(v >= hi, hi, 0.0)).astype(np.float32)
    return patterns


@pytest.mark.parametrize("role", ["last", "mid"])
def test_int8_gets_straight_through_gradients(role: str) -> None:
    model = _model("efficientnet_lite0_int8")
    tensor = _int8_layer(role)
    x = _inputs("efficientnet_lite0_int8", 2)
    g = model.gradients(x, tensor, None, mode="graph")  # graph mode: no silent fallback
    assert g.source == "gradient graph"
    split = model.split((tensor,))
    note = straight_through_note(split.head)
    assert note is not None and "straight through" in note
    # straight-through gradients are exact for the head with its activation Q/DQ pairs replaced by clips
    plain, pairs = straight_through(split.head)
    assert pairs >= (3 if role == "last" else 20)
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] == tensor for n in plain.graph.node)
    a, grads = g.activations[tensor], g.gradients[tensor]
    frozen, clips = _frozen_clips(plain)
    patterns = _clip_patterns(plain, clips, {tensor: a})
    saturated = 1.0 - float(np.mean([m.mean() for k, m in patterns.items() if "mask" in k]))
    sess = make_session(frozen)
    output = split.model_outputs[0]
    # the frozen map is the surrogate at the activations themselves
    np.testing.assert_array_equal(sess.run([output], {tensor: a, **patterns})[0],
                                  make_session(plain).run([output], {tensor: a})[0])

    def score_fn(rows: np.ndarray, samples: np.ndarray) -> np.ndarray:
        feeds = {tensor: rows.astype(np.float32), **{k: v[samples] for k, v in patterns.items()}}
        outs = sess.run([output], feeds)[0]
        return np.array([g.targets[int(s)].score([outs[j]]) for j, s in enumerate(samples)])

    err = directional_check(score_fn, a, grads, 8, eps=FROZEN_EPS)
    noisy = grads * (1 + 0.01 * np.random.default_rng(0).standard_normal(grads.shape)).astype(np.float32)
    err_noisy = directional_check(score_fn, a, noisy, 8, eps=FROZEN_EPS)
    print(f"int8 {role}: {pairs} Q/DQ pairs, {len(clips)} clips ({saturated:.0%} of their inputs saturated); "
          f"straight-through vs FD of the frozen surrogate {err:.1e}, with 1% gradient noise {err_noisy:.1e}")
    # at "mid" the masks are really exercised (42% saturated here; none at "last", past the last clip's range)
    assert saturated > 0.1 if role == "mid" else len(clips) > 0
    assert err <= FROZEN_TOL
    assert err_noisy > 10 * FROZEN_TOL  # the check sees a 1% error in the gradient


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``a`` with the same row of ``b``: (N, ...) -> (N,)."""
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    b = b.reshape(b.shape[0], -1).astype(np.float64)
    a, b = a - a.mean(axis=1, keepdims=True), b - b.mean(axis=1, keepdims=True)
    return np.sum(a * b, axis=1) / np.sqrt(np.sum(a * a, axis=1) * np.sum(b * b, axis=1))


def _gradcam(acts: np.ndarray, grads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM channel weights (N, C) and raw maps ReLU(sum_c w_c A_c) (N, h, w)."""
    weights = grads.mean(axis=(2, 3))
    return weights, np.maximum(np.einsum("nc,nchw->nhw", weights, acts), 0)


# Medians over the seven sample photos of the Pearson correlation between int8 and fp32. At "last"
# the weights are the classifier row of the class over h*w whatever the activations (measured 1.000
# on every photo); at "mid" the head is 16 quantised convolutions deep and calibration moves every
# range: measured weights 0.70-0.95 (median 0.87), maps 0.68-0.96 (median 0.89). A straight-through
# rule without the clips' masks gives weights r -0.13..0.18 (median 0.09) at "mid".
INT8_VS_FP32 = {"last": (0.99, 0.9), "mid": (0.75, 0.75)}  # (weights, maps)


@pytest.mark.parametrize("role", ["last", "mid"])
def test_int8_gradcam_correlates_with_fp32(role: str) -> None:
    # One class per photo for both models, chosen by fp32: the int8 model's own top-1 is a
    # calibration outcome (two photos of seven change class here), and the maps of different
    # classes need not agree.
    x = np.concatenate([_photo(p) for p in effnet.PHOTOS])
    fp32, int8 = _model("efficientnet_lite0"), _model("efficientnet_lite0_int8")
    classes = [int(c) for c in fp32.forward(x)[0].argmax(axis=1)]
    found = []
    for model, tensor in ((fp32, MODELS["efficientnet_lite0"].layers[role][1]), (int8, _int8_layer(role))):
        g = model.gradients(x, tensor, classes)
        found.append(_gradcam(g.activations[tensor], g.gradients[tensor]))
    r_weights = _pearson_rows(found[0][0], found[1][0])
    r_maps = _pearson_rows(found[0][1], found[1][1])
    print(f"int8 vs fp32 Grad-CAM at {role} over {len(x)} photos: weights r {np.round(r_weights, 3)}, "
          f"maps r {np.round(r_maps, 3)}")
    bound_weights, bound_maps = INT8_VS_FP32[role]
    assert float(np.median(r_weights)) >= bound_weights
    assert float(np.median(r_maps)) >= bound_maps


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

_ERROR = re.compile(r"relative error vs central finite differences ([0-9.e+-]+)")


def _cli(*args: str) -> tuple[int, str, float]:
    result = CliRunner().invoke(app, ["check-gradients", *args])
    match = _ERROR.search(result.output)
    assert match, result.output
    return result.exit_code, result.output, float(match.group(1))


def test_check_gradients_cli_passes_on_efficientnet_lite0() -> None:
    code, out, err = _cli(str(build("efficientnet_lite0")))
    print(out)
    assert code == 0 and "PASS:" in out, out
    assert "gradient graph" in out and err <= 1e-2


@pytest.mark.parametrize("role", ["last", "mid"])
def test_check_gradients_cli_passes_on_int8(role: str) -> None:
    code, out, err = _cli(str(build("efficientnet_lite0_int8")), "--layer", _int8_layer(role))
    print(out)
    assert code == 0 and "gradient graph" in out and err <= 1e-2, out
    assert "straight through" in out and "per-channel directions" in out


def _sin_head_model(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
        helper.make_node("Sinh", ["feat"], ["sin"]),
        helper.make_node("GlobalAveragePool", ["sin"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "sin_head",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 6, 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(wc, "wc"), numpy_helper.from_array(wf, "wf"), numpy_helper.from_array(bf, "bf")],
    )  # fmt: skip
    onnx.save(make_model(graph, [helper.make_opsetid("", 17)]), str(path))
    return wc, wf, bf


def test_fallback_for_an_op_without_rule(tmp_path: Path) -> None:
    path = tmp_path / "sin_head.onnx"
    _, wf, _ = _sin_head_model(path)
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
    path = tmp_path / "sin_head.onnx"
    _sin_head_model(path)
    code, out, err = _cli(str(path), "--layer", "feat")
    print(out)
    assert code == 0 and "PASS" in out, out
    assert "finite differences" in out.split("PASS")[1]  # the verdict line names the source
    assert re.search(r"note: .*no reverse-mode gradient rule for op\(s\) Sinh", out), out
    assert err <= 1e-2
