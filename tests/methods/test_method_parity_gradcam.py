"""Parity of the gradient / eigen / CAM / FullGrad methods with pytorch-grad-cam 1.5.7.

A small seeded torch CNN is explained by pytorch-grad-cam end to end; our functions get the same
activations and gradients, and the final (N, H, W) maps must agree to 1e-5.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn


from models.torchvision_stub import install as _stub_torchvision  # noqa: E402

_stub_torchvision()
pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

from onnxcam.methods import (  # noqa: E402
    cam_weights,
    eigencam,
    eigengradcam,
    elementwise_products,
    fullgrad,
    gradcam_elementwise,
    gradcam_plusplus_weights,
    gradcam_weights,
    hirescam,
    layercam,
    weighted_sum,
    xgradcam_weights,
)
from onnxcam.postprocess import eigen_smooth, fuse_layers, layer_to_image, normalize_maps  # noqa: E402

SIZE = (32, 40)
CLASSES = [1, 3, 0]


def make_net() -> Any:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 12, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(12, 5),
    )
    bn = net[1]
    bn.running_mean.copy_(torch.randn(8) * 0.1)
    bn.running_var.copy_(torch.rand(8) + 0.5)
    bn.weight.data.copy_(torch.rand(8) + 0.5)
    bn.bias.data.copy_(torch.randn(8) * 0.1)
    return net.eval()


@pytest.fixture(scope="module")
def net() -> Any:
    return make_net()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.standard_normal((3, 3, *SIZE)).astype(np.float32)


def capture(net: Any, images: np.ndarray, layer: Any) -> tuple[np.ndarray, np.ndarray]:
    """Activations and gradients of sum of target scores at ``layer``'s output."""
    store: dict[str, Any] = {}

    def hook(_m: Any, _i: Any, out: Any) -> None:
        out.retain_grad()
        store["a"] = out

    handle = layer.register_forward_hook(hook)
    try:
        out = net(torch.from_numpy(images))
        out[torch.arange(len(CLASSES)), torch.tensor(CLASSES)].sum().backward()
    finally:
        handle.remove()
    return store["a"].detach().numpy(), store["a"].grad.numpy()


def reference(cls: Any, net: Any, images: np.ndarray, layers: list[Any], **kw: Any) -> np.ndarray:
    cam = cls(model=net, target_layers=layers)
    targets = [ClassifierOutputTarget(c) for c in CLASSES]
    out = cam(input_tensor=torch.from_numpy(images), targets=targets, **kw)
    cam.activations_and_grads.release()
    return np.asarray(out)


def ours(raws: list[np.ndarray]) -> np.ndarray:
    return fuse_layers([layer_to_image(r, SIZE) for r in raws])


Method = Callable[[np.ndarray, np.ndarray], np.ndarray]

WEIGHT_METHODS: dict[str, tuple[str, Method]] = {
    "gradcam": ("GradCAM", lambda a, g: weighted_sum(a, gradcam_weights(g))),
    "gradcam++": ("GradCAMPlusPlus", lambda a, g: weighted_sum(a, gradcam_plusplus_weights(a, g))),
    "xgradcam": ("XGradCAM", lambda a, g: weighted_sum(a, xgradcam_weights(a, g))),
    "layercam": ("LayerCAM", layercam),
    "hirescam": ("HiResCAM", hirescam),
    "gradcam_elementwise": ("GradCAMElementWise", gradcam_elementwise),
    "eigengradcam": ("EigenGradCAM", lambda a, g: eigengradcam(a, g, sign="reference")),
}


@pytest.mark.parametrize("name", sorted(WEIGHT_METHODS))
@pytest.mark.parametrize("layer_ids", [(4,), (3,), (4, 6)])
def test_gradient_methods_match_pytorch_grad_cam(
    name: str, layer_ids: tuple[int, ...], net: Any, images: np.ndarray
) -> None:
    cls_name, method = WEIGHT_METHODS[name]
    layers = [net[i] for i in layer_ids]
    expected = reference(getattr(pgc, cls_name), net, images, layers)
    raws = [method(*capture(net, images, layer)) for layer in layers]
    got = ours(raws)
    assert got.shape == expected.shape == (3, *SIZE)
    assert np.abs(got - expected).max() <= 1e-5
    assert expected.max() > 0.5  # a real map, not two blanks agreeing


def test_eigencam_matches_with_reference_sign(net: Any, images: np.ndarray) -> None:
    expected = reference(pgc.EigenCAM, net, images, [net[4]])
    acts, _ = capture(net, images, net[4])
    assert np.abs(ours([eigencam(acts, sign="reference")]) - expected).max() <= 1e-5


def test_eigencam_activation_sign_is_reference_up_to_sign(net: Any, images: np.ndarray) -> None:
    acts, _ = capture(net, images, net[4])
    ref = eigencam(acts, sign="reference")
    got = eigencam(acts)
    channel_sum = acts.sum(axis=1)
    for r, g, s in zip(ref, got, channel_sum, strict=True):
        assert np.allclose(g, r, atol=1e-5) or np.allclose(g, -r, atol=1e-5)
        assert np.corrcoef(g.ravel(), s.ravel())[0, 1] >= 0


@pytest.mark.parametrize("name", ["GradCAM", "LayerCAM"])
def test_eigen_smooth_matches(name: str, net: Any, images: np.ndarray) -> None:
    layer = net[4]
    expected = reference(getattr(pgc, name), net, images, [layer], eigen_smooth=True)
    a, g = capture(net, images, layer)
    if name == "GradCAM":
        weighted = gradcam_weights(g)[:, :, None, None] * a
    else:
        weighted = elementwise_products(a, g, "layercam")
    got = ours([eigen_smooth(weighted, sign="reference")])
    assert np.abs(got - expected).max() <= 1e-5


def test_cam_weights_equal_gradcam_on_gap_linear_head(net: Any, images: np.ndarray) -> None:
    # With GAP -> Linear, Grad-CAM weights are fc_weight[class] / (h * w): same normalised map.
    acts, grads = capture(net, images, net[6])
    fc = net[9].weight.detach().numpy()
    w = cam_weights(fc, np.array(CLASSES))
    assert np.allclose(w, gradcam_weights(grads) * acts.shape[2] * acts.shape[3], atol=1e-6)
    expected = reference(pgc.GradCAM, net, images, [net[6]])
    assert np.abs(ours([weighted_sum(acts, w)]) - expected).max() <= 1e-5


def test_fullgrad_matches_pytorch_grad_cam(net: Any, images: np.ndarray) -> None:
    expected = reference(pgc.FullGrad, net, images, [])
    x = torch.from_numpy(images).requires_grad_(True)
    outputs: list[Any] = []
    biases: list[np.ndarray] = []
    handles = []

    def keep(_m: Any, _i: Any, o: Any) -> None:
        o.retain_grad()
        outputs.append(o)

    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) and m.bias is not None:
            if isinstance(m, nn.BatchNorm2d):
                b = m.bias - m.running_mean * m.weight / torch.sqrt(m.running_var + m.eps)
            else:
                b = m.bias
            biases.append(b.detach().numpy())
            handles.append(m.register_forward_hook(keep))
    out = net(x)
    out[torch.arange(3), torch.tensor(CLASSES)].sum().backward()
    for h in handles:
        h.remove()
    gxi = (x.grad * x).detach().numpy()
    terms = [(b, o.grad.numpy()) for b, o in zip(biases, outputs, strict=True)]
    got = normalize_maps(fullgrad(gxi, terms, SIZE))
    assert np.abs(got - expected).max() <= 1e-5
    # NHWC input layout gives the same map.
    got_nhwc = normalize_maps(fullgrad(gxi.transpose(0, 2, 3, 1), terms, SIZE, layout="NHWC"))
    assert np.abs(got_nhwc - got).max() <= 1e-6
