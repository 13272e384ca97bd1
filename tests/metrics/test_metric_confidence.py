"""Average Drop / Increase in Confidence on a toy model whose answer is known in closed form."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcam.errors import InputError, TargetError
from onnxcam.metrics import average_drop_increase


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class ToyModel:
    """2 classes; p(class 1) = sigmoid(mean of the top-left 2x2 region of channel 0)."""

    def __init__(self, layout: str = "NCHW") -> None:
        self.layout = layout
        self.calls: list[int] = []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        assert x.dtype == np.float32
        self.calls.append(x.shape[0])
        region = x[:, 0, :2, :2] if self.layout == "NCHW" else x[:, :2, :2, 0]
        p = _sigmoid(region.reshape(x.shape[0], -1).mean(axis=1).astype(np.float64))
        return np.stack([1 - p, p], axis=1)


def _case() -> tuple[np.ndarray, np.ndarray]:
    images = np.ones((3, 1, 4, 4), np.float32)
    images[2, 0, :2, :2] = -1.0
    maps = np.zeros((3, 4, 4), np.float32)
    maps[0] = 0.5  # halves the region: O = sigmoid(0.5) < Y = sigmoid(1)
    maps[1, :2, :2] = 1.0  # keeps the region exactly: O = Y
    maps[2] = 0.5  # halves a negative region: O = sigmoid(-0.5) > Y = sigmoid(-1)
    return images, maps


def test_values_match_hand_computation() -> None:
    images, maps = _case()
    res = average_drop_increase(ToyModel(), images, maps, classes=1, batch_size=8)
    y = _sigmoid(np.array([1.0, 1.0, -1.0]))
    o = _sigmoid(np.array([0.5, 1.0, -0.5]))
    expected_drop = np.array([(y[0] - o[0]) / y[0] * 100, 0.0, 0.0])
    np.testing.assert_allclose(res.original, y, rtol=1e-6)
    np.testing.assert_allclose(res.masked, o, rtol=1e-6)
    np.testing.assert_allclose(res.drop, expected_drop, rtol=1e-5)
    assert res.increased.tolist() == [False, False, True]
    assert res.average_drop == pytest.approx(expected_drop.mean(), rel=1e-5)
    assert res.increase_in_confidence == pytest.approx(100 / 3)
    assert res[:2] == (res.average_drop, res.increase_in_confidence)


def test_class_zero_drop_is_complementary() -> None:
    images, maps = _case()
    res = average_drop_increase(ToyModel(), images, maps, classes=[0, 0, 0])
    y0 = 1 - _sigmoid(np.array([1.0, 1.0, -1.0]))
    o0 = 1 - _sigmoid(np.array([0.5, 1.0, -0.5]))
    np.testing.assert_allclose(res.drop, np.maximum(0, y0 - o0) / y0 * 100, rtol=1e-5, atol=1e-9)
    assert res.increased.tolist() == [True, False, False]


@pytest.mark.parametrize("batch_size", [1, 2, 4, 6, 100])
def test_batching_packs_originals_and_masked(batch_size: int) -> None:
    images, maps = _case()
    model = ToyModel()
    res = average_drop_increase(model, images, maps, classes=1, batch_size=batch_size)
    assert sum(model.calls) == 6
    assert len(model.calls) == -(-6 // batch_size)
    assert max(model.calls) <= batch_size
    ref = average_drop_increase(ToyModel(), images, maps, classes=1, batch_size=6)
    np.testing.assert_array_equal(res.drop, ref.drop)


def test_nhwc_matches_nchw() -> None:
    images, maps = _case()
    a = average_drop_increase(ToyModel("NCHW"), images, maps, 1)
    b = average_drop_increase(ToyModel("NHWC"), images.transpose(0, 2, 3, 1), maps, 1, layout="NHWC")
    np.testing.assert_allclose(a.drop, b.drop)


def test_errors_name_the_problem() -> None:
    images, maps = _case()
    with pytest.raises(TargetError, match="out of range"):
        average_drop_increase(ToyModel(), images, maps, classes=2)
    with pytest.raises(InputError, match="maps has shape"):
        average_drop_increase(ToyModel(), images, maps[:, :2], classes=1)
