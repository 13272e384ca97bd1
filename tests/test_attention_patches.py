"""Attention rollout and gradient-weighted attention over unfolded patches (MobileViT).

MobileViT cuts a map ``(B, C, H, W)`` into ``ph x pw`` patches and runs attention over ``B ph pw``
sequences, each the ``(H / ph) (W / pw)`` places of one image at one offset inside their patch. The
references here read the attention matrices from the torch module (hooks on ``attn_drop``, as
tests/test_transformers.py does) and place tokens on the map by timm's own unfold, written out in
numpy below, not by onnxcam's trace. A hand-built graph of a few nodes, whose map has a closed form,
pins the method where the answer is obvious; another, whose tokens are windows, is refused.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from models.torchvision_stub import install as _stub_torchvision  # noqa: E402

_stub_torchvision()
pytest.importorskip("timm")

import onnxcam  # noqa: E402
from models.build import MODELS, build  # noqa: E402
from models.weights import calibration_batch  # noqa: E402
from onnxcam.errors import UnsupportedModelError  # noqa: E402
from onnxcam.explainers.attention import AttentionRollout, GradientAttention  # noqa: E402
from onnxcam.registry import METHODS, methods_for  # noqa: E402

NAME = "mobilevit_xxs"
N_IMAGES = 2
ATTENTION = {"rollout", "gradattention"}


class Case:
    def __init__(self) -> None:
        spec = MODELS[NAME]
        self.net = spec.factory()
        xt = calibration_batch(spec.input_shape, spec.layout, seed=2024, batch=N_IMAGES)
        with torch.no_grad():
            logits = self.net(xt)
        self.classes = [int(k) for k in logits.argmax(dim=1)]
        self.x = xt.numpy()
        self.model = onnxcam.load(build(NAME), device="cpu")


@pytest.fixture(scope="module")
def mvit() -> Case:
    return Case()


def timm_places(b: int, c: int, h: int, w: int, ph: int, pw: int) -> np.ndarray:
    """``(b ph pw, T)``: the place ``(i h + y) w + x`` of each token, by timm's ``MobileVitBlock.forward``
    unfold applied to a map whose every channel at each place holds that place's index."""
    nh, nw = h // ph, w // pw
    x = np.broadcast_to(np.arange(b * h * w).reshape(b, 1, h, w), (b, c, h, w))
    x = x.reshape(b * c * nh, ph, nw, pw).transpose(0, 2, 1, 3)  # .transpose(1, 2)
    x = x.reshape(b, c, nh * nw, ph * pw).transpose(0, 3, 2, 1)  # .transpose(1, 3)
    x = x.reshape(b * ph * pw, nh * nw, c)
    assert (x == x[:, :, :1]).all()
    return x[:, :, 0]


def fold(values: np.ndarray, places: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    out = np.full(int(np.prod(shape)), np.nan)
    out[places.ravel()] = values.ravel()
    return out.reshape(shape)


def last_block(net: Any) -> Any:
    """timm's last MobileViT block (the deepest attention stage)."""
    blocks = [m for m in net.modules() if type(m).__name__ == "MobileVitBlock"]
    return blocks[-1]


def torch_attentions(net: Any, x: np.ndarray, classes: list[int] | None = None) -> tuple[list[Any], list[Any]]:
    """The last MobileViT block's attention probabilities ``(B ph pw, heads, T, T)`` per transformer layer
    (and, with ``classes``, the gradients of each image's class logit w.r.t. them)."""
    store: list[Any] = []
    mods = [m.attn.attn_drop for m in last_block(net).transformer]

    def hook(_m: Any, inputs: Any) -> None:
        if classes is not None:
            inputs[0].retain_grad()
        store.append(inputs[0])

    handles = [m.register_forward_pre_hook(hook) for m in mods]
    try:
        xt = torch.from_numpy(x)
        if classes is not None:
            logits = net(xt)
            logits[torch.arange(len(x)), torch.tensor(classes)].sum().backward()
        else:
            with torch.no_grad():
                net(xt)
    finally:
        for handle in handles:
            handle.remove()
    atts = [a.detach().numpy().astype(np.float64) for a in store]
    return atts, [a.grad.numpy().astype(np.float64) for a in store] if classes is not None else []


def map_geometry(net: Any, x: np.ndarray) -> tuple[int, int, int, int, int]:
    """``(C, H, W, ph, pw)`` of the map the last block unfolds (read off the torch module)."""
    block = last_block(net)
    seen: dict[str, Any] = {}
    handle = block.conv_1x1.register_forward_hook(lambda _m, _i, out: seen.setdefault("map", out))
    try:
        with torch.no_grad():
            net(torch.from_numpy(x[:1]))
    finally:
        handle.remove()
    _, c, h, w = seen["map"].shape
    ph, pw = block.patch_size
    return int(c), int(h), int(w), int(ph), int(pw)


def test_rollout_equals_a_numpy_reference_from_the_attention_matrices(mvit: Case) -> None:
    atts, _ = torch_attentions(mvit.net, mvit.x)
    c, h, w, ph, pw = map_geometry(mvit.net, mvit.x)
    rows, _, t, _ = atts[0].shape
    assert len(atts) == 3 and rows == N_IMAGES * ph * pw and atts[0].shape[2:] == ((h // ph) * (w // pw),) * 2
    ref = np.stack([np.eye(t)] * rows)
    for a in atts:  # Abnar & Zuidema: heads averaged, 0.5 A + 0.5 I, rows renormalised, then rolled out
        m = 0.5 * a.mean(axis=1) + 0.5 * np.eye(t)
        ref = np.einsum("nij,njk->nik", m / m.sum(-1, keepdims=True), ref)
    # No class token: each sequence's relevance is the mean of its query rows, placed back on the map.
    expected = fold(ref.mean(axis=1), timm_places(N_IMAGES, c, h, w, ph, pw), (N_IMAGES, h, w))
    e = AttentionRollout(mvit.model).explain(mvit.x)  # no options: auto layer, auto view
    (raw,) = e.raw.values()
    assert raw.shape == (N_IMAGES, h, w) and np.isfinite(expected).all()
    assert np.abs(raw - expected).max() <= 1e-5
    # Not a map so flat that any placement would match: tokens laid out row-major miss it by far.
    row_major = fold(ref.mean(axis=1), np.arange(raw.size).reshape(rows, t), (N_IMAGES, h, w))
    assert np.abs(raw - row_major).max() > 1e-4
    assert "2x2 patches unfolded from 4x4" in " ".join(e.notes)


def test_gradient_attention_matches_a_float64_autograd_reference(mvit: Case) -> None:
    net64 = copy.deepcopy(mvit.net).double()
    atts, grads = torch_attentions(net64, mvit.x.astype(np.float64), mvit.classes)
    c, h, w, ph, pw = map_geometry(mvit.net, mvit.x)
    cam = GradientAttention(mvit.model)
    # What the method consumes: the probabilities and their gradients, against float64 autograd.
    ((m, ours_a, ours_g),), _, _ = cam.unfolded_gradients(mvit.x, mvit.classes)
    assert m == N_IMAGES and len(ours_a) == len(atts) == 3
    for a, g, a64, g64 in zip(ours_a, ours_g, atts, grads):
        assert a.shape == a64.shape == g.shape
        assert np.abs(a - a64).max() <= 1e-5
        assert np.abs(g - g64).max() <= 1e-4 * np.abs(g64).max()
        prod, prod64 = (a.astype(np.float64) * g).mean(axis=1), (a64 * g64).mean(axis=1)
        assert np.abs(prod - prod64).max() <= 1e-4 * np.abs(prod64).max()
    rows, _, t, _ = atts[0].shape
    r = np.stack([np.eye(t)] * rows)
    for a, g in zip(atts, grads):  # Chefer et al. 2021, eq. 5-6
        r = r + np.einsum("nij,njk->nik", np.maximum(a * g, 0).mean(axis=1), r)
    ref = fold(r.mean(axis=1), timm_places(N_IMAGES, c, h, w, ph, pw), (N_IMAGES, h, w))
    (raw,) = cam.explain(mvit.x, targets=mvit.classes).raw.values()
    assert np.abs(raw - ref).max() <= 1e-5 * np.abs(ref).max()
    row_major = fold(r.mean(axis=1), np.arange(raw.size).reshape(rows, t), (N_IMAGES, h, w))
    assert np.abs(raw - row_major).max() > 1e-4 * np.abs(ref).max()


def test_batches_are_read_one_model_run_at_a_time(mvit: Case) -> None:
    # batch_size 1: each image's P sequences come from a run of its own, and land on its own map.
    for cls in (AttentionRollout, GradientAttention):
        whole = cls(mvit.model).explain(mvit.x, targets=mvit.classes)
        one = cls(mvit.model, batch_size=1).explain(mvit.x, targets=mvit.classes)
        (a,), (b,) = whole.raw.values(), one.raw.values()
        assert np.abs(a - b).max() <= 1e-6 * np.abs(a).max()


def test_mobilevit_meets_the_requirement_and_a_cnn_is_refused_in_one_line(mvit: Case) -> None:
    assert ATTENTION <= set(methods_for(mvit.model))
    cnn = onnxcam.load(build("resnet_small"), device="cpu")
    assert not ATTENTION & set(methods_for(cnn))
    for method in sorted(ATTENTION):
        with pytest.raises(UnsupportedModelError) as info:
            METHODS[method](cnn)
        msg = str(info.value)
        assert "\n" not in msg
        assert msg.startswith(f"{method} needs self-attention over the image's tokens")
        assert "MobileViT" in msg and "has none; methods that work on it: gradcam" in msg


# -- hand-built graphs --------------------------------------------------------------------------------

H = W = 8
PH = PW = 2
T = (H // PH) * (W // PW)
SHARP = 3.0  # every query's score of token j is SHARP * v_j


def _tiny(tmp_path: Path, windows: bool) -> onnxcam.Model:
    """image (N, 3, 8, 8) -> 1x1 conv: map channels (v, 0) with v the image's first channel -> tokens
    (unfolded 2x2 patches as timm does, or 2x2 windows) -> centred tokens (x - mean, the block's
    normalisation) -> scores q k^T with a constant query SHARP and key 2 * centred channel 0 = v ->
    Softmax -> A x added to x -> the map again -> GAP -> linear logits."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxcam.graph.protos import make_model

    c = 2
    nh, nw = H // PH, W // PW
    weight = np.zeros((c, 3, 1, 1), np.float32)
    weight[0, 0] = 1.0
    consts = {
        "w": weight,
        "wk": np.array([[2.0], [0.0]], np.float32),
        "q": np.full((PH * PW if windows else T, 1), SHARP, np.float32),
        "fc": np.arange(c * 3, dtype=np.float32).reshape(c, 3) / 4,
        "ax1": np.array([1], np.int64),
        "axm": np.array([-1], np.int64),
    }
    if windows:  # (N, C, nh, ph, nw, pw) -> (N, nh, nw, ph, pw, C) -> (N nh nw, ph pw, C)
        shapes = {"s1": [-1, c, nh, PH, nw, PW], "s2": [-1, PH * PW, c]}
        unfold = [helper.make_node("Reshape", ["map", "s1"], ["u1"]),
                  helper.make_node("Transpose", ["u1"], ["u2"], perm=[0, 2, 4, 3, 5, 1]),
                  helper.make_node("Reshape", ["u2", "s2"], ["tokens"])]
        fold = [helper.make_node("Reshape", ["out", "s3"], ["f1"]),
                helper.make_node("Transpose", ["f1"], ["f2"], perm=[0, 5, 1, 3, 2, 4]),
                helper.make_node("Reshape", ["f2", "s4"], ["folded"])]
        shapes.update({"s3": [-1, nh, nw, PH, PW, c], "s4": [-1, c, H, W]})
    else:  # timm: (B C nh, ph, nw, pw) -> (B C nh, nw, ph, pw) -> (B, C, T, P) -> (B, P, T, C) -> (B P, T, C)
        shapes = {"s1": [-1, PH, nw, PW], "s2": [-1, c, T, PH * PW], "s3": [-1, T, c],
                  "s4": [-1, PH * PW, T, c], "s5": [-1, nw, PH, PW], "s6": [-1, c, H, W]}
        unfold = [helper.make_node("Reshape", ["map", "s1"], ["u1"]),
                  helper.make_node("Transpose", ["u1"], ["u2"], perm=[0, 2, 1, 3]),
                  helper.make_node("Reshape", ["u2", "s2"], ["u3"]),
                  helper.make_node("Transpose", ["u3"], ["u4"], perm=[0, 3, 2, 1]),
                  helper.make_node("Reshape", ["u4", "s3"], ["tokens"])]
        fold = [helper.make_node("Reshape", ["out", "s4"], ["f1"]),
                helper.make_node("Transpose", ["f1"], ["f2"], perm=[0, 3, 2, 1]),
                helper.make_node("Reshape", ["f2", "s5"], ["f3"]),
                helper.make_node("Transpose", ["f3"], ["f4"], perm=[0, 2, 1, 3]),
                helper.make_node("Reshape", ["f4", "s6"], ["folded"])]
    consts.update({k: np.array(v, np.int64) for k, v in shapes.items()})
    attention = [
        helper.make_node("ReduceMean", ["tokens"], ["mean"], axes=[-1], keepdims=1),
        helper.make_node("Sub", ["tokens", "mean"], ["centred"]),
        helper.make_node("MatMul", ["centred", "wk"], ["k"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores3"]),
        helper.make_node("Unsqueeze", ["scores3", "ax1"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["attn"], axis=-1),
        helper.make_node("Unsqueeze", ["tokens", "ax1"], ["v"]),
        helper.make_node("MatMul", ["attn", "v"], ["mixed"]),
        helper.make_node("Squeeze", ["mixed", "ax1"], ["mixed3"]),
        helper.make_node("Add", ["tokens", "mixed3"], ["out"]),
    ]
    nodes = [helper.make_node("Conv", ["input", "w"], ["map"]), *unfold, *attention, *fold,
             helper.make_node("GlobalAveragePool", ["folded"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["flat"]),
             helper.make_node("MatMul", ["flat", "fc"], ["logits"])]
    graph = helper.make_graph(
        nodes, "windows" if windows else "unfold",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, H, W])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(v, k) for k, v in consts.items()])
    path = tmp_path / f"{graph.name}.onnx"
    path.write_bytes(make_model(graph, [helper.make_opsetid("", 17)]).SerializeToString())
    return onnxcam.load(path, device="cpu")


def test_hand_built_unfolded_attention_has_its_closed_form_map(tmp_path: Path) -> None:
    model = _tiny(tmp_path, windows=False)
    assert ATTENTION <= set(methods_for(model))
    x = np.random.default_rng(7).normal(size=(3, 3, H, W)).astype(np.float32)
    # Sequence (n, oy, ox) holds image n's places (oy + 2i, ox + 2j). Every query attends to them
    # alike, p = softmax(SHARP v); rollout of the one block, 0.5 (1 p^T) + 0.5 I, has column means
    # 0.5 p_j + 0.5 / T: that is each place's value on the map.
    v = x[:, 0].astype(np.float64)
    p = np.empty_like(v)
    for oy in range(PH):
        for ox in range(PW):
            e = np.exp(SHARP * v[:, oy::PH, ox::PW])
            p[:, oy::PH, ox::PW] = e / e.sum(axis=(1, 2), keepdims=True)
    expected = 0.5 * p + 0.5 / T
    for batch_size in (16, 2):
        (raw,) = AttentionRollout(model, batch_size=batch_size).explain(x).raw.values()
        assert raw.shape == (3, H, W)
        assert np.abs(raw - expected).max() <= 1e-6
    # Gradient-weighted attention: logit k = sum_c fc[c, k] mean(tokens + A tokens), so its gradient
    # w.r.t. A[i, j] is fc[0, k] v_j / (H W) (channel 1 is 0); R = I + relu(A * dA) has column means
    # 1 / T + relu(p_j fc[0, k] v_j / (H W)).
    targets = [1, 2, 2]
    fc0 = np.array([k / 4 for k in targets])[:, None, None]  # fc[0, k]
    expected = 1 / T + np.maximum(p * fc0 * v / (H * W), 0)
    (raw,) = GradientAttention(model, batch_size=2).explain(x, targets=targets).raw.values()
    assert np.abs(raw - expected).max() <= 1e-6
    assert float(expected.max() - expected.min()) > 1e-3


def test_hand_built_windowed_attention_is_refused_in_one_line(tmp_path: Path) -> None:
    model = _tiny(tmp_path, windows=True)
    assert not ATTENTION & set(methods_for(model))
    with pytest.raises(UnsupportedModelError) as info:
        AttentionRollout(model)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("rollout needs self-attention over the image's tokens")
