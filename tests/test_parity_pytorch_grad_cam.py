"""End-to-end parity of onnxcam's CAM classes with pytorch-grad-cam 1.5.7 (and torchcam 0.5 for
SS-CAM and Smooth Grad-CAM++) on the zoo models: the ONNX file and the torch module carry the same
seeded weights, so both libraries explain the same function.

For every (model, layer role, method) the per-image Pearson correlation between onnxcam's final
``(N, H, W)`` map and the reference's must be >= 0.999. References run the torch module as
exported; for the NHWC model pytorch-grad-cam gets the NHWC tensor (the module permutes inside)
and is told the image size, except where its code indexes the input as NCHW (Score-CAM masks,
FullGrad's input term, torchcam's SS-CAM): there it runs an NCHW wrapper that permutes first.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from models.torchvision_stub import install as _stub_torchvision  # noqa: E402

_stub_torchvision()
pgc = pytest.importorskip("pytorch_grad_cam")
tcm = pytest.importorskip("torchcam.methods")
from pytorch_grad_cam.ablation_layer import AblationLayer  # noqa: E402
from pytorch_grad_cam.utils.image import scale_cam_image  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

import onnxcam  # noqa: E402
from models.build import MODELS, build  # noqa: E402
from models.weights import calibration_batch  # noqa: E402

PARITY_MODELS = (
    "resnet_small", "mobilenet_se", "densenet_small", "convnext_small", "nhwc_net", "silu_net", "shufflenet_small",
)  # fmt: skip
ROLES = ("last", "mid")
N_IMAGES = 2
# Methods that re-run the model per channel explain one image, to keep the suite fast.
PERTURBATION_IMAGES = 1
MIN_PEARSON = 0.999

# onnxcam class -> pytorch-grad-cam class of the same name and semantics.
PGC_METHODS: dict[str, tuple[type[onnxcam.BaseCAM], str]] = {
    "gradcam": (onnxcam.GradCAM, "GradCAM"),
    "gradcam++": (onnxcam.GradCAMPlusPlus, "GradCAMPlusPlus"),
    "xgradcam": (onnxcam.XGradCAM, "XGradCAM"),
    "layercam": (onnxcam.LayerCAM, "LayerCAM"),
    "hirescam": (onnxcam.HiResCAM, "HiResCAM"),
    "gradcam-elementwise": (onnxcam.GradCAMElementWise, "GradCAMElementWise"),
    "eigencam": (onnxcam.EigenCAM, "EigenCAM"),
    "eigengradcam": (onnxcam.EigenGradCAM, "EigenGradCAM"),
    "scorecam": (onnxcam.ScoreCAM, "ScoreCAM"),
    "ablationcam": (onnxcam.AblationCAM, "AblationCAM"),
}
# pytorch-grad-cam indexes the input as (N, C, H, W) in these: NHWC models get the NCHW wrapper.
NCHW_ONLY = {"ScoreCAM", "FullGrad"}


@dataclass
class Case:
    name: str
    torch_model: Any
    model: onnxcam.Model
    x: np.ndarray  # (N, C, H, W) or (N, H, W, C), as the ONNX input
    classes: list[int]
    nhwc: bool

    @property
    def size(self) -> tuple[int, int]:
        return MODELS[self.name].spatial


class NCHWFront(nn.Module):
    """Takes NCHW and feeds the NHWC model, for reference code that assumes NCHW inputs."""

    def __init__(self, net: Any) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Any) -> Any:
        return self.net(x.permute(0, 2, 3, 1))


class FixedAblationLayer(AblationLayer):  # type: ignore[misc]
    """pytorch-grad-cam's AblationLayer with the ablation value read once per sample.

    The original re-reads ``min(output)`` after each write, so on layers with negative values the
    k-th channel of a batch is set to ``min - k * 1e7`` (see ``onnxcam/methods/ablation.py``). On
    post-ReLU layers (min exactly 0) the two are identical, which a test below checks as well.
    """

    def __call__(self, x: Any) -> Any:
        output = self.activations
        lo = torch.min(output)
        value = 0.0 if lo == 0 else lo - 1e7
        for i in range(output.size(0)):
            output[i, self.indices[i], :] = value
        return output


@cache
def case(name: str, images: int = N_IMAGES) -> Case:
    if images < N_IMAGES:
        full = case(name)
        return Case(name, full.torch_model, full.model, full.x[:images], full.classes[:images], full.nhwc)
    spec = MODELS[name]
    net = spec.factory()
    xt = calibration_batch(spec.input_shape, spec.layout, seed=2024, batch=N_IMAGES)
    with torch.no_grad():
        logits = net(xt)
    classes = [int(c) for c in logits.argmax(dim=1)]
    # pytorch-grad-cam's Ablation-CAM divides by the raw score: keep it positive so both agree.
    assert all(float(logits[i, c]) > 0 for i, c in enumerate(classes))
    model = onnxcam.load(build(name), device="cpu")
    return Case(name, net, model, xt.numpy(), classes, spec.layout == "NHWC")


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


RESULTS: dict[tuple[str, str, str], float] = {}


def per_image_pearson(got: np.ndarray, expected: np.ndarray, key: tuple[str, str, str] | None = None) -> list[float]:
    """Pearson per image; a blank reference map (both libraries' ReLU left nothing) must be blank
    in ours too and counts as 1. At least one reference map must be a real map."""
    assert got.shape == expected.shape, (got.shape, expected.shape)
    out = []
    for g, e in zip(got, expected, strict=True):
        if e.max() - e.min() == 0:
            assert g.max() - g.min() <= 1e-6, "reference map is blank but ours is not"
            out.append(1.0)
        else:
            out.append(pearson(g, e))
    assert max(e.max() - e.min() for e in expected) > 0.5, "every reference map is blank: nothing compared"
    if key is not None:
        RESULTS[key] = min(out)
    return out


def _reference_module(c: Case, method: str, role: str) -> tuple[Any, Any, np.ndarray]:
    path = MODELS[c.name].layers[role][0]
    if c.nhwc and method in NCHW_ONLY:
        front = NCHWFront(c.torch_model)
        return front, front.get_submodule("net." + path), c.x.transpose(0, 3, 1, 2).copy()
    return c.torch_model, c.torch_model.get_submodule(path), c.x


def pgc_map(c: Case, method: str, role: str, ablation_layer: Any = None) -> np.ndarray:
    """pytorch-grad-cam's final maps ``(N, H, W)`` for ``c``'s images and classes."""
    module, layer, x = _reference_module(c, method, role)
    kw: dict[str, Any] = {}
    if method == "AblationCAM":
        kw = {"batch_size": 64, "ablation_layer": ablation_layer or FixedAblationLayer()}
    cam = getattr(pgc, method)(model=module, target_layers=[layer], **kw)
    if method == "ScoreCAM":
        cam.batch_size = 64
    if c.nhwc and method not in NCHW_ONLY:
        # Its default reads (W, H) from the last two axes, which are (W, C) for NHWC.
        cam.get_target_width_height = lambda t: (t.shape[2], t.shape[1])
    try:
        out = cam(input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(k) for k in c.classes])
    finally:
        cam.activations_and_grads.release()
    return np.asarray(out, dtype=np.float32)


def onnxcam_map(c: Case, cls: type[onnxcam.BaseCAM], role: str, **kw: Any) -> np.ndarray:
    layer = MODELS[c.name].layers[role][1]
    return cls(c.model, layer=layer, **kw)(c.x, targets=c.classes)


def _onnx_kwargs(name: str) -> dict[str, Any]:
    if name in ("eigencam", "eigengradcam"):
        return {"eigen_sign": "reference"}  # pytorch-grad-cam keeps LAPACK's sign
    if name == "scorecam":
        return {"batch_size": 64}
    return {}


CASES = [(m, r) for m in PARITY_MODELS for r in ROLES]


@pytest.mark.parametrize("method", sorted(PGC_METHODS))
@pytest.mark.parametrize(("name", "role"), CASES)
def test_method_matches_pytorch_grad_cam(name: str, role: str, method: str) -> None:
    c = case(name, PERTURBATION_IMAGES if method in ("scorecam", "ablationcam") else N_IMAGES)
    cls, ref = PGC_METHODS[method]
    expected = pgc_map(c, ref, role)
    got = onnxcam_map(c, cls, role, **_onnx_kwargs(method))
    r = per_image_pearson(got, expected, (method, name, role))
    assert min(r) >= MIN_PEARSON, f"{method} on {name}/{role}: Pearson per image {r}"


@pytest.mark.parametrize("name", PARITY_MODELS)
def test_fullgrad_matches_pytorch_grad_cam(name: str) -> None:
    # pytorch-grad-cam sums |grad x bias| over every Conv2d/BatchNorm2d with a bias; the export
    # folds each BN into its conv, so the ONNX conv output is the BN output and its bias the BN's
    # folded bias: the same terms.
    c = case(name)
    expected = pgc_map(c, "FullGrad", "last")
    got = onnxcam.FullGrad(c.model)(c.x, targets=c.classes)
    r = per_image_pearson(got, expected, ("fullgrad", name, "all"))
    assert min(r) >= MIN_PEARSON, f"fullgrad on {name}: Pearson per image {r}"


def torch_cam_definition(c: Case, role: str) -> np.ndarray:
    """CAM by its definition on the torch module: sum_c fc_weight[class, c] * A_c, with
    pytorch-grad-cam's post-processing (ReLU, min-max, resize, min-max)."""
    spec = MODELS[c.name]
    store: dict[str, Any] = {}
    layer = c.torch_model.get_submodule(spec.layers[role][0])
    handle = layer.register_forward_hook(lambda _m, _i, out: store.__setitem__("a", out.detach()))
    try:
        with torch.no_grad():
            c.torch_model(torch.from_numpy(c.x))
    finally:
        handle.remove()
    acts = store["a"].numpy()
    head = c.torch_model.fc  # every GAP_FC_MODELS model ends in GAP -> flatten -> fc
    assert isinstance(head, nn.Linear)
    fc = head.weight.detach().numpy()
    raw = np.einsum("nc,nchw->nhw", fc[c.classes], acts)
    h, w = c.size
    return scale_cam_image(scale_cam_image(np.maximum(raw, 0), (w, h)))  # type: ignore[no-any-return]


GAP_FC_MODELS = (
    "resnet_small", "silu_net", "nhwc_net", "shufflenet_small",
    # densenet's head also reads the layer through a Shape node (torch's ``.view(x.shape[0], -1)``).
    "densenet_small",
)  # fmt: skip


@pytest.mark.parametrize("name", GAP_FC_MODELS)
def test_cam_matches_its_definition_and_gradcam(name: str) -> None:
    c = case(name)
    expected = torch_cam_definition(c, "last")
    got = onnxcam_map(c, onnxcam.CAM, "last")
    assert min(per_image_pearson(got, expected, ("cam", name, "last"))) >= MIN_PEARSON
    # The Grad-CAM paper's identity: on GAP -> Linear, Grad-CAM weights are fc_weight / (h w).
    gradcam = onnxcam_map(c, onnxcam.GradCAM, "last")
    assert np.abs(gradcam - got).max() <= 1e-4


@pytest.mark.parametrize(("name", "role"), [("resnet_small", "last"), ("nhwc_net", "mid")])
def test_original_ablation_layer_agrees_on_relu_layers(name: str, role: str) -> None:
    # The unpatched AblationLayer ablates with exactly 0 on post-ReLU layers, like onnxcam.
    c = case(name, PERTURBATION_IMAGES)
    expected = pgc_map(c, "AblationCAM", role, ablation_layer=AblationLayer())
    got = onnxcam_map(c, onnxcam.AblationCAM, role)
    assert min(per_image_pearson(got, expected)) >= MIN_PEARSON


class _NumpyNormal:
    """Stands in for torch's Normal in torchcam so it draws the stream onnxcam draws."""

    def __init__(self, std: float, seed: int) -> None:
        self.std = std
        self.rng = np.random.default_rng(seed)

    def sample(self, size: Any) -> Any:
        return torch.from_numpy(self.rng.normal(0.0, self.std, size=tuple(size)).astype(np.float32))


def _upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.stack([cv2.resize(m.astype(np.float32), (size[1], size[0])) for m in maps])


@pytest.mark.parametrize(("name", "role"), CASES)
def test_sscam_matches_torchcam_with_same_noise(name: str, role: str) -> None:
    c = case(name, PERTURBATION_IMAGES)
    module, layer, x = _reference_module(c, "ScoreCAM", role)  # torchcam masks NCHW inputs too
    seed, std, samples = 5, 2.0, 1
    with tcm.SSCAM(module, layer, batch_size=64, num_samples=samples, std=std, input_shape=x.shape[1:]) as ext:
        ext._distrib = _NumpyNormal(std, seed)
        with torch.no_grad():
            module(torch.from_numpy(x))
        expected = _upsample(ext(class_idx=c.classes)[0].numpy(), c.size)
    got = onnxcam_map(c, onnxcam.SSCAM, role, num_samples=samples, std=std, seed=seed, batch_size=64)
    r = per_image_pearson(got, expected, ("sscam", name, role))
    assert min(r) >= MIN_PEARSON, f"sscam on {name}/{role}: Pearson per image {r}"


@pytest.mark.parametrize(("name", "role"), CASES)
def test_smooth_gradcampp_matches_torchcam_with_same_noise(name: str, role: str) -> None:
    # One image: onnxcam gives each image its own noise stream, torchcam one stream per batch.
    c = case(name, PERTURBATION_IMAGES)
    path = MODELS[name].layers[role][0]
    seed, std, samples = 3, 0.3, 3
    module = c.torch_model
    # Noise is element-wise on the input, so torchcam can run on the NHWC tensor directly.
    with tcm.SmoothGradCAMpp(module, path, num_samples=samples, std=std, input_shape=c.x.shape[1:]) as ext:
        ext._distrib = _NumpyNormal(std, seed)
        module(torch.from_numpy(c.x))
        expected = _upsample(ext(class_idx=c.classes)[0].detach().numpy(), c.size)
    got = onnxcam_map(c, onnxcam.SmoothGradCAMPlusPlus, role, num_samples=samples, std=std, seed=seed,
                      torchcam_compat=True)
    r = per_image_pearson(got, expected, ("smoothgradcam++", name, role))
    assert min(r) >= MIN_PEARSON, f"smoothgradcam++ on {name}/{role}: Pearson per image {r}"


@pytest.fixture(scope="module", autouse=True)
def _write_table() -> Any:
    """With ONNXCAM_PARITY_TABLE=path, write the min Pearson per (method, model, layer) as JSON."""
    yield
    import json
    import os

    path = os.environ.get("ONNXCAM_PARITY_TABLE")
    if path:
        rows = [{"method": m, "model": n, "layer": r, "min_pearson": v} for (m, n, r), v in sorted(RESULTS.items())]
        with open(path, "w") as f:
            json.dump(rows, f, indent=1)
