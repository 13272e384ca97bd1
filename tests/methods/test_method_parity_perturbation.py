"""Parity of the re-running methods: Score-CAM and Ablation-CAM vs pytorch-grad-cam 1.5.7,
SS-CAM and Smooth Grad-CAM++ vs torchcam 0.5 fed the same seeded noise."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn


from models.torchvision_stub import install as _stub_torchvision  # noqa: E402

_stub_torchvision()
pgc = pytest.importorskip("pytorch_grad_cam")
tcm = pytest.importorskip("torchcam.methods")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

from onnxcam.methods import (  # noqa: E402
    ablation_weights,
    scorecam_weights,
    smooth_gradcam_plusplus,
    sscam_weights,
    weighted_sum,
)
from onnxcam.postprocess import fuse_layers, layer_to_image, normalize_maps, relu  # noqa: E402

SIZE = (24, 28)
CLASSES = [2, 0]
TARGET = 3  # index of the explained ReLU in the Sequential


def make_net() -> Any:
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 10, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(10, 4),
    )
    with torch.no_grad():
        # Two dead channels (all zero after ReLU) so the constant-mask path is exercised.
        net[2].bias[[1, 6]] = -100.0
        # Positive target scores, so pytorch-grad-cam's division by the raw score is sign-safe.
        net[6].bias += 5.0
    return net.eval()


@pytest.fixture(scope="module")
def net() -> Any:
    return make_net()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(5).standard_normal((2, 3, *SIZE)).astype(np.float32)


def layer_acts(net: Any, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net[: TARGET + 1](torch.from_numpy(images)).numpy()


def model_score_fn(net: Any) -> Any:
    def score(masked: np.ndarray, i: int) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(np.ascontiguousarray(masked)))[:, CLASSES[i]].numpy()

    return score


def test_scorecam_matches_pytorch_grad_cam(net: Any, images: np.ndarray) -> None:
    acts = layer_acts(net, images)
    assert np.all(acts[:, [1, 6]] == 0)
    cam = pgc.ScoreCAM(model=net, target_layers=[net[TARGET]])
    cam.batch_size = 4
    expected = cam(torch.from_numpy(images), [ClassifierOutputTarget(c) for c in CLASSES])
    w = scorecam_weights(acts, SIZE, images, model_score_fn(net), batch_size=3)
    got = fuse_layers([layer_to_image(weighted_sum(acts, w), SIZE)])
    assert np.abs(got - expected).max() <= 1e-5
    assert expected.max() > 0.5


def test_scorecam_nhwc_layout_and_counts_calls(net: Any, images: np.ndarray) -> None:
    acts = layer_acts(net, images)
    base = model_score_fn(net)
    calls: list[int] = []

    def nhwc_score(masked: np.ndarray, i: int) -> np.ndarray:
        calls.append(len(masked))
        return base(masked.transpose(0, 3, 1, 2), i)

    w_nhwc = scorecam_weights(
        acts, SIZE, images.transpose(0, 2, 3, 1), nhwc_score, batch_size=3, layout="NHWC"
    )
    w = scorecam_weights(acts, SIZE, images, base, batch_size=3)
    assert np.allclose(w_nhwc, w, atol=1e-6)
    # 8 live channels in chunks of <= 3 plus one shared zero-mask call per sample.
    assert max(calls) <= 3
    assert sum(calls) == 2 * (8 + 1)


def test_ablation_matches_pytorch_grad_cam(net: Any, images: np.ndarray) -> None:
    acts = layer_acts(net, images)
    assert acts.min() == 0
    cam = pgc.AblationCAM(model=net, target_layers=[net[TARGET]], batch_size=4)
    expected = cam(torch.from_numpy(images), [ClassifierOutputTarget(c) for c in CLASSES])
    head = net[TARGET + 1 :]

    def head_score(ablated: np.ndarray, i: int) -> np.ndarray:
        with torch.no_grad():
            return head(torch.from_numpy(ablated))[:, CLASSES[i]].numpy()

    with torch.no_grad():
        original = net(torch.from_numpy(images))[torch.arange(2), torch.tensor(CLASSES)].numpy()
    assert np.all(original > 0)
    w = ablation_weights(acts, head_score, original, batch_size=3)
    got = fuse_layers([layer_to_image(weighted_sum(acts, w), SIZE)])
    assert np.abs(got - expected).max() <= 1e-5


class _NumpyNormal:
    """Stands in for torch's Normal so torchcam draws the stream our functions draw."""

    def __init__(self, std: float, seed: int) -> None:
        self.std = std
        self.rng = np.random.default_rng(seed)

    def sample(self, size: Any) -> Any:
        return torch.from_numpy(self.rng.normal(0.0, self.std, size=tuple(size)).astype(np.float32))


def test_sscam_matches_torchcam_with_same_noise(net: Any, images: np.ndarray) -> None:
    acts = layer_acts(net, images)
    with tcm.SSCAM(net, str(TARGET), batch_size=7, num_samples=3, std=2.0, input_shape=(3, *SIZE)) as ext:
        ext._distrib = _NumpyNormal(2.0, seed=11)
        with torch.no_grad():
            net(torch.from_numpy(images))
        expected = ext(class_idx=CLASSES)[0].numpy()
    w = sscam_weights(
        acts, images, model_score_fn(net), batch_size=4, num_samples=3, std=2.0,
        rng=np.random.default_rng(11),
    )
    got = normalize_maps(relu(weighted_sum(acts, w)))
    assert np.abs(got - expected).max() <= 1e-5
    assert expected.max() > 0.5


def grads_fn_for(net: Any) -> Any:
    def grads_fn(noisy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        store: dict[str, Any] = {}

        def hook(_m: Any, _i: Any, out: Any) -> None:
            out.retain_grad()
            store["a"] = out

        handle = net[TARGET].register_forward_hook(hook)
        try:
            out = net(torch.from_numpy(noisy))
            out[torch.arange(len(CLASSES)), torch.tensor(CLASSES)].sum().backward()
        finally:
            handle.remove()
        return store["a"].detach().numpy(), store["a"].grad.numpy()

    return grads_fn


def test_smooth_gradcampp_matches_torchcam_in_compat_mode(net: Any, images: np.ndarray) -> None:
    acts = layer_acts(net, images)
    with tcm.SmoothGradCAMpp(net, str(TARGET), num_samples=3, std=0.3, input_shape=(3, *SIZE)) as ext:
        ext._distrib = _NumpyNormal(0.3, seed=7)
        net(torch.from_numpy(images))
        expected = ext(class_idx=CLASSES)[0].detach().numpy()
    raw = smooth_gradcam_plusplus(
        acts, images, grads_fn_for(net), num_samples=3, std=0.3, rng=np.random.default_rng(7),
        torchcam_compat=True,
    )
    got = normalize_maps(relu(raw))
    assert np.abs(got - expected).max() <= 1e-5
    assert expected.max() > 0.5


def test_smooth_gradcampp_zero_noise_is_gradcampp_torchcam_formula(net: Any, images: np.ndarray) -> None:
    # With std=0 every run is the clean one: mean and last gradients coincide, so both modes agree
    # and equal the closed form written out here.
    fn = grads_fn_for(net)
    acts, grads = fn(images)
    default = smooth_gradcam_plusplus(acts, images, fn, num_samples=2, std=0.0)
    compat = smooth_gradcam_plusplus(acts, images, fn, num_samples=2, std=0.0, torchcam_compat=True)
    g2, g3 = grads**2, grads**3
    alpha = g2 / (2 * g2 + (g3 * acts).sum(axis=(2, 3), keepdims=True) + 1e-8)
    w = (alpha * np.maximum(grads, 0)).sum(axis=(2, 3))
    assert np.allclose(default, weighted_sum(acts, w), atol=1e-6)
    assert np.allclose(compat, default, atol=1e-6)
