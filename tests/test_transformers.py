"""Vision transformers (timm, random seeded weights): token and channels-last layers read from the
graph, the transformer auto layer, exact gradients through attention, parity with pytorch-grad-cam
(given the matching ``reshape_transform``), attention rollout and gradient-weighted attention
against references computed from the torch module's own attention matrices.

The ONNX file and the torch module carry the same weights (``models.transformers``); timm's
attention runs its explicit softmax path there, so a hook on ``attn_drop`` sees each block's
attention probabilities.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from models.torchvision_stub import install as _stub_torchvision  # noqa: E402

_stub_torchvision()
pytest.importorskip("timm")
pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.ablation_layer import AblationLayer, AblationLayerVit  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

import onnxcam  # noqa: E402
from models.build import MODELS, build  # noqa: E402
from models.weights import calibration_batch  # noqa: E402
from onnxcam.errors import LayerShapeError, OnnxCamWarning, UnsupportedModelError  # noqa: E402
from onnxcam.explainers.attention import AttentionRollout, GradientAttention  # noqa: E402
from onnxcam.registry import METHODS, methods_for  # noqa: E402

# name -> (prefix tokens, grid) of the auto layer; None: an NHWC / NCHW map.
TOKEN_MODELS = {"vit_tiny": (1, 7), "deit_tiny_distilled": (2, 7), "vit_registers": (5, 7)}
GLOBAL_MODELS = (*TOKEN_MODELS, "swin_tiny")
ALL_MODELS = (*GLOBAL_MODELS, "mobilevit_xxs")
N_IMAGES = 2
MIN_PEARSON = 0.999


@dataclass
class Case:
    name: str
    net: Any
    model: onnxcam.Model
    x: np.ndarray
    classes: list[int]


@cache
def case(name: str) -> Case:
    spec = MODELS[name]
    net = spec.factory()
    xt = calibration_batch(spec.input_shape, spec.layout, seed=2024, batch=N_IMAGES)
    with torch.no_grad():
        logits = net(xt)
    classes = [int(c) for c in logits.argmax(dim=1)]
    return Case(name, net, onnxcam.load(build(name), device="cpu"), xt.numpy(), classes)


def to_map(name: str, t: Any) -> Any:
    """pytorch-grad-cam's ``reshape_transform`` for the model's auto layer: tokens or NHWC -> NCHW."""
    if name in TOKEN_MODELS:
        prefix, side = TOKEN_MODELS[name]
        n, _, d = t.shape
        return t[:, prefix:, :].reshape(n, side, side, d).permute(0, 3, 1, 2)
    if name == "swin_tiny":
        return t.permute(0, 3, 1, 2)
    return t


def torch_layer(c: Case) -> Any:
    return c.net.get_submodule(MODELS[c.name].layers["last"][0])


def torch_grads(c: Case) -> tuple[np.ndarray, np.ndarray]:
    """Activations and d(logit of each image's class)/d(activations) at the auto layer, as maps."""
    store: dict[str, Any] = {}

    def hook(_m: Any, _i: Any, out: Any) -> None:
        out.retain_grad()
        store["a"] = out

    handle = torch_layer(c).register_forward_hook(hook)
    try:
        logits = c.net(torch.from_numpy(c.x))
        logits[torch.arange(N_IMAGES), torch.tensor(c.classes)].sum().backward()
    finally:
        handle.remove()
    a = store["a"]
    return to_map(c.name, a.detach()).numpy(), to_map(c.name, a.grad).numpy()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_auto_layer_is_the_last_block_input_with_its_view(name: str) -> None:
    c = case(name)
    layer = c.model.layer("auto")
    assert layer.name == MODELS[name].layers["last"][1]
    assert not layer.guessed
    if name in TOKEN_MODELS:
        prefix, side = TOKEN_MODELS[name]
        assert (layer.view.layout, layer.view.prefix, layer.view.grid) == ("NTD", prefix, (side, side))
        assert layer.block_input
    elif name == "swin_tiny":
        assert layer.view.layout == "NHWC" and layer.block_input
    else:  # MobileViT: its last convolutional stage follows the last transformer
        assert layer.view.is_identity and not layer.block_input
    # No tensor inside attention (4-D heads, scores, windows) is offered as a layer.
    inside = set().union(*(b.inside for b in c.model.layer_facts().blocks))
    assert all(not (lay.name in inside and lay.view.is_identity) for lay in c.model.layers())


@pytest.mark.parametrize("name", ALL_MODELS)
def test_gradients_match_autograd(name: str) -> None:
    c = case(name)
    g = c.model.gradients(c.x, "auto", targets=c.classes)
    layer = c.model.layer("auto").name
    acts, grads = g.activations[layer], g.gradients[layer]
    ref_a, ref_g = torch_grads(c)
    assert acts.shape == ref_a.shape
    np.testing.assert_allclose(acts, ref_a, rtol=1e-4, atol=1e-4 * float(np.abs(ref_a).max()))
    errs = [float(np.abs(grads[i] - ref_g[i]).max() / np.abs(ref_g[i]).max()) for i in range(N_IMAGES)]
    assert float(np.median(errs)) <= 1e-4, errs
    # Per-channel sums (Grad-CAM's weights) and activations x gradients, in float64.
    for i in range(N_IMAGES):
        w, w_ref = grads[i].astype(np.float64).sum((1, 2)), ref_g[i].astype(np.float64).sum((1, 2))
        assert np.abs(w - w_ref).max() <= 1e-4 * np.abs(w_ref).max()


class PatchAblationLayer(AblationLayerVit):  # type: ignore[misc]
    """Ablation of one channel of the patch tokens (the feature map), the class and other prefix
    tokens kept, with the value read once per sample from the map, as onnxcam ablates through the
    token view. pytorch-grad-cam's ``AblationLayerVit`` also overwrites the prefix tokens' channel and
    re-reads the minimum after each write (see ``onnxcam/methods/ablation.py``)."""

    def __init__(self, prefix: int) -> None:
        super().__init__()
        self.prefix = prefix

    def __call__(self, x: Any) -> Any:
        output = self.activations
        patches = output[:, self.prefix:, :]
        lo = torch.min(patches)
        value = 0.0 if lo == 0 else lo - 1e7
        for i in range(output.size(0)):
            output[i, self.prefix:, self.indices[i]] = value
        return output


class NHWCAblationLayer(AblationLayer):  # type: ignore[misc]
    channel_axis = 3

    def __call__(self, x: Any) -> Any:
        output = self.activations
        lo = torch.min(output)
        value = 0.0 if lo == 0 else lo - 1e7
        for i in range(output.size(0)):
            output.select(0, i).select(self.channel_axis - 1, int(self.indices[i])).fill_(value)
        return output


class NCHWAblationLayer(NHWCAblationLayer):
    channel_axis = 1


PGC_METHODS = {
    "gradcam": (onnxcam.GradCAM, "GradCAM"),
    "gradcam++": (onnxcam.GradCAMPlusPlus, "GradCAMPlusPlus"),
    "xgradcam": (onnxcam.XGradCAM, "XGradCAM"),
    "layercam": (onnxcam.LayerCAM, "LayerCAM"),
    "hirescam": (onnxcam.HiResCAM, "HiResCAM"),
    "eigencam": (onnxcam.EigenCAM, "EigenCAM"),
    "scorecam": (onnxcam.ScoreCAM, "ScoreCAM"),
    "ablationcam": (onnxcam.AblationCAM, "AblationCAM"),
}
PERTURBATION = ("scorecam", "ablationcam")
# pytorch-grad-cam's own ViT example explains ``blocks[-1].norm1``: the normalised input of the last
# block, a token layer inside the block that onnxcam offers too (``(torch module, ONNX tensor)``).
NORM1 = ("blocks.3.norm1", "/blocks/blocks.3/norm1/LayerNormalization_output_0")


def pgc_map(c: Case, method: str, images: int, module: str | None = None) -> np.ndarray:
    kw: dict[str, Any] = {"reshape_transform": lambda t: to_map(c.name, t)}
    if method == "AblationCAM":
        kw["batch_size"] = 64
        kw["ablation_layer"] = (PatchAblationLayer(TOKEN_MODELS[c.name][0]) if c.name in TOKEN_MODELS
                                else NHWCAblationLayer() if c.name == "swin_tiny" else NCHWAblationLayer())
    layer = torch_layer(c) if module is None else c.net.get_submodule(module)
    cam = getattr(pgc, method)(model=c.net, target_layers=[layer], **kw)
    if method == "ScoreCAM":
        cam.batch_size = 64
    try:
        out = cam(input_tensor=torch.from_numpy(c.x[:images]),
                  targets=[ClassifierOutputTarget(k) for k in c.classes[:images]])
    finally:
        cam.activations_and_grads.release()
    return np.asarray(out, dtype=np.float32)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


# HiResCAM at a token model's auto layer is held against float64 below (both libraries' float32 maps
# are noise there), and against pytorch-grad-cam at the norm1 layer.
PARITY_CASES = [(n, m) for n in ALL_MODELS for m in sorted(PGC_METHODS)
                if not (n in TOKEN_MODELS and m == "hirescam")]
NORM1_CASES = [(n, m) for n in TOKEN_MODELS for m in sorted(PGC_METHODS) if m not in PERTURBATION]


@pytest.mark.parametrize(("name", "method"), PARITY_CASES)
def test_maps_match_pytorch_grad_cam(name: str, method: str) -> None:
    c = case(name)
    images = 1 if method in PERTURBATION else N_IMAGES
    cls, ref = PGC_METHODS[method]
    kw: dict[str, Any] = {"eigen_sign": "reference"} if method == "eigencam" else {}
    if method == "scorecam":
        kw["batch_size"] = 64
    expected = pgc_map(c, ref, images)
    got = cls(c.model, **kw)(c.x[:images], targets=c.classes[:images])  # auto layer, auto view
    assert max(float(e.max() - e.min()) for e in expected) > 0.5
    r = [pearson(g, e) for g, e in zip(got, expected)]
    assert min(r) >= MIN_PEARSON, f"{method} on {name}: Pearson per image {r}"


@pytest.mark.parametrize(("name", "method"), NORM1_CASES)
def test_maps_match_pytorch_grad_cam_at_norm1(name: str, method: str) -> None:
    c = case(name)
    cls, ref = PGC_METHODS[method]
    kw: dict[str, Any] = {"eigen_sign": "reference"} if method == "eigencam" else {}
    expected = pgc_map(c, ref, N_IMAGES, NORM1[0])
    layer = c.model.layer(NORM1[1])
    assert (layer.view.layout, layer.view.prefix) == ("NTD", TOKEN_MODELS[name][0])
    got = cls(c.model, layer=NORM1[1], **kw)(c.x, targets=c.classes)
    assert max(float(e.max() - e.min()) for e in expected) > 0.5
    r = [pearson(g, e) for g, e in zip(got, expected)]
    assert min(r) >= MIN_PEARSON, f"{method} on {name} at norm1: Pearson per image {r}"


@pytest.mark.parametrize("name", TOKEN_MODELS)
def test_hirescam_is_within_float32_noise_of_a_float64_reference(name: str) -> None:
    # Why HiResCAM at a token model's auto layer is not compared with pytorch-grad-cam's float32 map:
    # the layer feeds a LayerNorm, and per token sum_c a_c dy/da_c is the derivative of y along the
    # token's own direction, which LayerNorm's scale invariance cancels on every path but the residual
    # ones: the map is ~5e5 times smaller than its terms (measured: max sum_c |a g| / max |sum_c a g|).
    # Gradients good to ~6e-7 (both libraries) leave each float32 map with ~1e-3 of noise: against
    # pytorch-grad-cam on a float64 copy of the module, onnxcam reaches Pearson 0.9991-0.9996 and
    # pytorch-grad-cam's own float32 map 0.9985-0.9997 (so the two float32 maps only 0.9987-0.9992 to
    # each other); at norm1, where no LayerNorm follows, they agree to 1.0 (test above). What can fail
    # here independently of summation order: each position's error is bounded by the float32 rounding
    # of its terms, sum_c |a g| (1e-4 of it).
    import copy

    c = case(name)
    net64 = copy.deepcopy(c.net).double()
    a64, g64 = torch_grads(Case(c.name, net64, c.model, c.x.astype(np.float64), c.classes))
    g = c.model.gradients(c.x, "auto", targets=c.classes)
    layer = c.model.layer("auto").name
    terms = np.abs(a64 * g64).sum(1)
    ref = (a64 * g64).sum(1)
    assert float(terms.max() / np.abs(ref).max()) > 1e4  # the cancellation described above
    ours = (g.activations[layer].astype(np.float64) * g.gradients[layer]).sum(1)
    assert np.all(np.abs(ours - ref) <= 1e-4 * terms)
    with pytest.warns(OnnxCamWarning, match=r"channel terms cancel \de\+0[5-7]-fold"):
        (raw,) = onnxcam.HiResCAM(c.model).explain(c.x, targets=c.classes).raw.values()
    assert np.abs(raw - ref).max() <= 1e-4 * terms.max()
    # At norm1 nothing cancels: no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error", OnnxCamWarning)
        onnxcam.HiResCAM(c.model, layer=NORM1[1])(c.x, targets=c.classes)


def torch_attentions(c: Case, grads: bool = False) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each global block's attention probabilities ``(N, heads, T, T)`` from the torch module (and the
    gradients of each image's class logit w.r.t. them)."""
    store: list[Any] = []
    if c.name == "swin_tiny":
        # The last stage attends over its whole 4x4 map (one window): the only global attention.
        mods = [m.attn_drop for m in c.net.layers[-1].modules() if hasattr(m, "attn_drop")]
    else:
        mods = [blk.attn.attn_drop for blk in c.net.blocks]

    def hook(_m: Any, inputs: Any) -> None:
        if grads:
            inputs[0].retain_grad()
        store.append(inputs[0])

    handles = [m.register_forward_pre_hook(hook) for m in mods]
    try:
        if grads:
            logits = c.net(torch.from_numpy(c.x))
            logits[torch.arange(N_IMAGES), torch.tensor(c.classes)].sum().backward()
        else:
            with torch.no_grad():
                c.net(torch.from_numpy(c.x))
    finally:
        for h in handles:
            h.remove()
    atts = [a.detach().numpy().astype(np.float64) for a in store]
    return atts, [a.grad.numpy().astype(np.float64) for a in store] if grads else []


def readout(r: np.ndarray, name: str) -> np.ndarray:
    prefix, side = TOKEN_MODELS.get(name, (0, 4))
    rows = r[:, 0] if prefix else r.mean(axis=1)
    return rows[:, prefix:].reshape(len(r), side, side)


@pytest.mark.parametrize("name", GLOBAL_MODELS)
def test_rollout_equals_numpy_reference(name: str) -> None:
    c = case(name)
    atts, _ = torch_attentions(c)
    n, _, t, _ = atts[0].shape
    ref = np.stack([np.eye(t)] * n)
    for a in atts:  # Abnar & Zuidema: heads averaged, 0.5 A + 0.5 I, rows renormalised, then rolled out
        m = 0.5 * a.mean(axis=1) + 0.5 * np.eye(t)
        ref = np.einsum("nij,njk->nik", m / m.sum(-1, keepdims=True), ref)
    e = AttentionRollout(c.model).explain(c.x)
    (raw,) = e.raw.values()
    assert np.abs(raw - readout(ref, name)).max() <= 1e-5


@pytest.mark.parametrize("name", GLOBAL_MODELS)
def test_gradient_attention_matches_autograd_reference(name: str) -> None:
    c = case(name)
    atts, grads = torch_attentions(c, grads=True)
    n, _, t, _ = atts[0].shape
    r = np.stack([np.eye(t)] * n)
    for a, g in zip(atts, grads):  # Chefer et al. 2021, eq. 5-6
        r = r + np.einsum("nij,njk->nik", np.maximum(a * g, 0).mean(axis=1), r)
    ref = readout(r, name)
    e = GradientAttention(c.model).explain(c.x, targets=c.classes)
    (raw,) = e.raw.values()
    assert np.abs(raw - ref).max() <= 1e-4 * np.abs(ref).max()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_method_runs_without_options(name: str) -> None:
    c = case(name)
    x = c.x[:1]
    # What applies is read from the specs: every method but the attention ones needs only a feature map;
    # those need global attention, which every one of these has (MobileViT's over unfolded patches).
    applicable = methods_for(c.model)
    assert {"rollout", "gradattention"} <= set(applicable)
    assert set(applicable) == set(METHODS)
    for method in applicable:
        kw: dict[str, Any] = {"num_samples": 2} if method == "sscam" else {}  # 35 x C forwards by default
        if method == "cam":  # needs a GAP -> linear head over a map: tested below
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("error", onnxcam.errors.OnnxCamWarning)  # no layout guess, no finite differences
            if method == "hirescam" and name in TOKEN_MODELS:
                # ... but the note that its channel sum cancels at the token models' auto layer (tested above)
                warnings.filterwarnings("ignore", r"hirescam at .* the channel terms cancel \de\+0[5-7]-fold",
                                        onnxcam.errors.OnnxCamWarning)
            maps = METHODS[method](c.model, **kw)(x)
        assert maps.shape == (1, *MODELS[name].spatial) and np.isfinite(maps).all()
        assert maps.max() - maps.min() > 0.1, f"{method} on {name} is flat"
    for method in set(METHODS) - set(applicable):
        with pytest.raises(UnsupportedModelError, match=r"needs self-attention over the image's tokens"):
            METHODS[method](c.model)


def test_cam_on_a_token_layer_names_the_alternative() -> None:
    with pytest.raises(onnxcam.errors.HeadStructureError, match="use GradCAM"):
        onnxcam.CAM(case("vit_tiny").model)(case("vit_tiny").x)


def test_layer_inside_attention_is_refused_with_a_layer_that_works() -> None:
    model = case("vit_tiny").model
    scores = "/blocks/blocks.3/attn/MatMul_output_0"
    with pytest.raises(LayerShapeError) as info:
        model.layer(scores)
    msg = str(info.value)
    assert "\n" not in msg
    assert "inside an attention block" in msg and "3, 50, 50)" in msg
    assert "'/blocks/blocks.2/Add_1_output_0'" in msg and "tokens NTD 1+7x7" in msg
    # Heads split off the tokens: 4-D, formerly taken for NCHW.
    with pytest.raises(LayerShapeError, match="inside an attention block"):
        onnxcam.GradCAM(model, layer="/blocks/blocks.3/attn/Transpose_2_output_0")


def test_token_count_without_a_square_grid_is_refused_with_a_layer_that_works() -> None:
    model = case("vit_tiny").model
    with pytest.raises(LayerShapeError) as info:
        model.layer("/blocks/blocks.3/Add_1_output_0", view="tokens:3")  # 50 - 3 = 47 patches
    msg = str(info.value)
    assert "\n" not in msg and "50 tokens" in msg and "(unk__1, 50, 192)" in msg.replace("'", "")
    assert "a layer that would work: '/blocks/blocks.2/Add_1_output_0'" in msg


def test_layers_listing_shows_token_grids() -> None:
    from onnxcam_cli.main import app
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["layers", str(build("deit_tiny_distilled"))], terminal_width=200)
    assert result.exit_code == 0, result.output
    line = next(row for row in result.output.splitlines() if "<- auto" in row)
    assert "2+7x7" in line and "/blocks/blocks.2/Add_1_output_0" in line


def test_fused_attention_export_names_the_unfused_export(tmp_path: Any) -> None:
    optimizer = pytest.importorskip("onnxruntime.transformers.optimizer")
    import onnx

    fused = optimizer.optimize_model(str(build("vit_tiny")), model_type="vit", num_heads=3, hidden_size=192,
                                     opt_level=1)
    proto = fused.model
    assert any(n.op_type == "SkipLayerNormalization" for n in proto.graph.node)
    proto.ir_version = 9
    path = tmp_path / "vit_fused.onnx"
    onnx.save(proto, str(path))
    model = onnxcam.load(path, device="cpu")
    with pytest.raises(onnxcam.errors.UnsupportedOpError, match=r"SkipLayerNormalization.*before that fusion"):
        onnxcam.GradCAM(model, gradient_mode="graph")(case("vit_tiny").x[:1])
