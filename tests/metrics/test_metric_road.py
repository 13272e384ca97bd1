"""ROAD: noisy linear imputation (exactness, parity with pytorch-grad-cam) and the ROAD scores."""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest

from onnxcam.errors import ArgumentError
from onnxcam.metrics import noisy_linear_impute, road, road_combined
from onnxcam.metrics.road_eval import removal_masks


@pytest.fixture()
def grad_cam_road(monkeypatch: pytest.MonkeyPatch) -> Any:
    """pytorch-grad-cam's metrics.road, imported without the package __init__ (which needs torchvision)."""
    torch = pytest.importorskip("torch")
    spec = importlib.util.find_spec("pytorch_grad_cam")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("grad-cam is a test dependency: pip install -e '.[test]'")
    root = Path(next(iter(spec.submodule_search_locations)))
    for name, path in (("pytorch_grad_cam", root), ("pytorch_grad_cam.metrics", root / "metrics")):
        stub = types.ModuleType(name)
        stub.__path__ = [str(path)]
        monkeypatch.setitem(sys.modules, name, stub)
    for name in ("pytorch_grad_cam.metrics.road", "pytorch_grad_cam.metrics.perturbation_confidence"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    module = importlib.import_module("pytorch_grad_cam.metrics.road")
    for name in ("pytorch_grad_cam.metrics.road", "pytorch_grad_cam.metrics.perturbation_confidence"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return module, torch


def _ramp(h: int, w: int) -> np.ndarray:
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    return np.stack([0.3 * rows - 0.2 * cols + 1.0, -0.1 * rows + 0.05 * cols, 2.0 * cols - rows], axis=-1)


def test_linear_ramp_reconstructed_exactly() -> None:
    img = _ramp(12, 10)
    removed = np.zeros((12, 10), bool)
    removed[2:9, 3:8] = True
    removed[5, 1] = True  # an isolated pixel and an irregular region, all off the border
    removed[9, 2:6] = True
    corrupted = img.copy()
    corrupted[removed] = 1e3  # imputation must not read the removed values
    out = noisy_linear_impute(corrupted, removed, noise=0.0)
    np.testing.assert_allclose(out, img, atol=1e-4)
    np.testing.assert_array_equal(out[~removed], corrupted[~removed].astype(np.float32))


def test_parity_with_pytorch_grad_cam_imputer(grad_cam_road: Any) -> None:
    module, torch = grad_cam_road
    rng = np.random.default_rng(3)
    img = rng.random((3, 7, 9))
    removed = rng.random((7, 9)) < 0.55  # touches the border and corners too
    removed[0, 0] = removed[6, 8] = True
    theirs = module.NoisyLinearImputer(noise=0.0)(
        torch.tensor(img, dtype=torch.float32), torch.tensor((~removed).astype(np.float32))
    )
    ours = noisy_linear_impute(img.transpose(1, 2, 0), removed, noise=0.0)
    np.testing.assert_allclose(ours.transpose(2, 0, 1), theirs.numpy(), atol=1e-5)
    # A pixel is the weighted mean of its in-image neighbours (here the (0, 0) corner).
    weights = {(0, 1): 1 / 6, (1, 0): 1 / 6, (1, 1): 1 / 12}
    filled = ours[..., 0]
    mean = sum(wt * filled[r, c] for (r, c), wt in weights.items()) / sum(weights.values())
    assert filled[0, 0] == pytest.approx(mean, abs=1e-5)


def test_noise_only_on_removed_pixels_and_seeded() -> None:
    img = _ramp(30, 30)
    removed = np.zeros((30, 30), bool)
    removed[5:25, 5:25] = True
    a = noisy_linear_impute(img, removed, noise=0.5, rng=7)
    b = noisy_linear_impute(img, removed, noise=0.5, rng=7)
    clean = noisy_linear_impute(img, removed, noise=0.0)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[~removed], clean[~removed])
    residual = (a - clean)[removed]
    assert 0.45 < residual.std() < 0.55 and abs(residual.mean()) < 0.05


def test_removal_counts_and_order() -> None:
    cam = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    morf = removal_masks(cam, np.array([25.0, 50.0]), "morf")
    lerf = removal_masks(cam, np.array([25.0]), "lerf")
    assert morf[0, 0].ravel().tolist() == [False] * 12 + [True] * 4
    assert morf[0, 1].sum() == 8
    assert lerf[0, 0].ravel().tolist() == [True] * 4 + [False] * 12


class TorchWrapped:
    """The same numpy toy as a torch module, for pytorch-grad-cam's metric classes."""

    def __init__(self, torch: Any, predict: Any) -> None:
        self.torch, self.predict = torch, predict

    def __call__(self, x: Any) -> Any:
        return self.torch.tensor(self.predict(x.numpy().astype(np.float32)))


def _toy_predict(x: np.ndarray) -> np.ndarray:
    p = 1 / (1 + np.exp(-3 * (x[:, 0, 1:5, 2:6].mean(axis=(1, 2)) - x[:, 1].mean(axis=(1, 2)))))
    return np.stack([1 - p, p], axis=1).astype(np.float64)


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_road_matches_pytorch_grad_cam_end_to_end(grad_cam_road: Any, order: Literal["morf", "lerf"]) -> None:
    module, torch = grad_cam_road
    rng = np.random.default_rng(4)
    images = rng.random((2, 2, 8, 8)).astype(np.float32)
    maps = rng.random((2, 8, 8)).astype(np.float32)  # distinct values: no ties at the cut
    # pytorch-grad-cam's ``percentile=p`` removes 100 - p %; on 64 pixels its threshold and our
    # rounding remove the same count at these values.
    theirs_p = [20, 50, 75, 80]
    cls = module.ROADMostRelevantFirst if order == "morf" else module.ROADLeastRelevantFirst
    expected = []
    for p in theirs_p:
        metric = cls(percentile=p)
        metric.perturbation.imputer.noise = 0.0
        targets = [lambda out: out[1]] * 2
        expected.append(metric(torch.tensor(images), maps, targets, TorchWrapped(torch, _toy_predict)))
    res = road(_toy_predict, images, maps, 1, [100 - p for p in theirs_p], order, noise=0.0, batch_size=3)
    np.testing.assert_allclose(res.differences, np.stack(expected, axis=1), atol=1e-5)
    np.testing.assert_allclose(res.mean_difference, res.differences.mean(axis=1))
    np.testing.assert_allclose(res.scores - res.differences, np.repeat(res.original[:, None], 4, axis=1))


def test_road_batches_and_combined_sign() -> None:
    h = w = 16
    region = np.zeros((h, w), bool)
    region[4:10, 5:11] = True
    calls: list[int] = []

    def predict(x: np.ndarray) -> np.ndarray:
        calls.append(x.shape[0])
        p = 1 / (1 + np.exp(-10 * (x[:, 0][:, region].mean(axis=1) - 0.5)))
        return np.stack([1 - p, p], axis=1)

    rng = np.random.default_rng(5)
    images = rng.uniform(0, 0.1, (2, 1, h, w)).astype(np.float32)
    images[:, 0][:, region] = 1.0
    good = np.stack([region.astype(np.float32)] * 2) + rng.uniform(0, 0.01, (2, h, w)).astype(np.float32)
    morf = road(predict, images, good, 1, (10, 30, 50), "morf", noise=0.0, batch_size=4)
    assert sum(calls) == 2 + 2 * 3 and max(calls) <= 4
    lerf = road(predict, images, good, 1, (10, 30, 50), "lerf", noise=0.0)
    # Removing the object hurts; removing background does not.
    assert np.all(morf.differences[:, 1:] < -0.3)
    assert np.all(np.abs(lerf.differences) < 1e-3)
    combined = road_combined(predict, images, good, 1, (10, 30, 50), noise=0.0)
    np.testing.assert_allclose(combined, (lerf.mean_difference - morf.mean_difference) / 2, atol=1e-9)
    assert np.all(road_combined(predict, images, 1 - good, 1, (10, 30, 50), noise=0.0) < combined)


def test_bad_arguments() -> None:
    images = np.ones((1, 1, 4, 4), np.float32)
    maps = np.ones((1, 4, 4), np.float32)
    with pytest.raises(ArgumentError, match="percentiles"):
        road(_toy_predict, images, maps, 1, (0, 50))
    with pytest.raises(ArgumentError, match="order"):
        road(_toy_predict, images, maps, 1, order="up")  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="at least one kept pixel"):
        noisy_linear_impute(np.ones((3, 3)), np.ones((3, 3), bool))
