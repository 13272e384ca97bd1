"""RISE deletion / insertion: exact curves on a linear toy model, monotone behaviour, batching."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from onnxcam.errors import ArgumentError
from onnxcam.metrics import blur_images, deletion_insertion


class RegionMean:
    """p(class 1) = mean of channel 0 over ``region`` (a bool mask); p(class 0) = 1 - p."""

    def __init__(self, region: np.ndarray, squash: bool = False) -> None:
        self.region = region
        self.squash = squash
        self.calls: list[int] = []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(x.shape[0])
        p = x[:, 0][:, self.region].mean(axis=1).astype(np.float64)
        if self.squash:
            p = 1 / (1 + np.exp(-8 * (p - 0.5)))
        return np.stack([1 - p, p], axis=1)


def _object_case() -> tuple[np.ndarray, np.ndarray]:
    region = np.zeros((4, 4), bool)
    region[:2, :2] = True
    # Distinct values so the order is unambiguous: the object first, in row-major order.
    order_map = np.linspace(1.0, 0.0, 16, dtype=np.float32).reshape(4, 4)
    obj_map = np.where(region, 1.0 + order_map, order_map).astype(np.float32)
    return region, obj_map


def test_exact_curves_one_pixel_per_step() -> None:
    region, obj_map = _object_case()
    images = np.ones((2, 1, 4, 4), np.float32)
    maps = np.stack([obj_map, 2.0 - obj_map])  # the object mask and its inverse
    res = deletion_insertion(RegionMean(region), images, maps, 1, steps=16, insertion_baseline="zero")
    np.testing.assert_allclose(res.fractions, np.arange(17) / 16)
    falling = np.array([1, 0.75, 0.5, 0.25] + [0.0] * 13)
    np.testing.assert_allclose(res.deletion_curves[0], falling)
    np.testing.assert_allclose(res.insertion_curves[0], 1 - falling)
    np.testing.assert_allclose(res.deletion_curves[1], np.r_[[1.0] * 13, 0.75, 0.5, 0.25, 0])
    np.testing.assert_allclose(res.insertion_curves[1], np.r_[[0.0] * 13, 0.25, 0.5, 0.75, 1.0])
    # Trapezoids, dx = 1/16, endpoints halved: (0.5 + 0.75 + 0.5 + 0.25) / 16 for the object
    # first, (0.5 + 12 + 0.75 + 0.5 + 0.25) / 16 for the inverse.
    np.testing.assert_allclose(res.deletion_auc, [2 / 16, 14 / 16])
    np.testing.assert_allclose(res.insertion_auc, [14 / 16, 2 / 16])


def test_monotone_object_mask_beats_inverse_with_blur() -> None:
    rng = np.random.default_rng(0)
    h = w = 24
    region = np.zeros((h, w), bool)
    region[6:14, 8:18] = True
    images = rng.uniform(0.0, 0.2, (3, 1, h, w)).astype(np.float32)
    images[:, 0][:, region] += 0.8
    mask = region.astype(np.float32)
    maps = np.stack([mask, 1 - mask, mask])
    model = RegionMean(region, squash=True)
    res = deletion_insertion(model, images, maps, 1, steps=12, batch_size=7, baseline="blur")
    assert res.deletion_auc[0] < res.deletion_auc[1]
    assert res.insertion_auc[0] > res.insertion_auc[1]
    # Deleting the object first only lowers the score; inserting it first only raises it.
    assert np.all(np.diff(res.deletion_curves[0]) <= 1e-9)
    assert np.all(np.diff(res.insertion_curves[0]) >= -1e-9)
    np.testing.assert_allclose(res.deletion_curves[:, 0], res.insertion_curves[:, -1])
    assert sum(model.calls) == 2 * 3 * 13 and max(model.calls) <= 7


def test_last_point_is_baseline_and_steps_need_not_divide() -> None:
    region, obj_map = _object_case()
    images = np.full((1, 1, 4, 4), 0.5, np.float32)
    res = deletion_insertion(RegionMean(region), images, obj_map[None], 1, steps=3)
    np.testing.assert_allclose(res.fractions, [0, 5 / 16, 11 / 16, 1])
    blurred = blur_images(images, "NCHW")
    expected_start = blurred[0, 0][region].mean()
    assert res.insertion_curves[0, 0] == pytest.approx(expected_start)
    assert res.deletion_curves[0, -1] == 0.0
    assert res.insertion_curves[0, -1] == pytest.approx(0.5)


def test_results_independent_of_batch_size_and_layout() -> None:
    rng = np.random.default_rng(1)
    images = rng.random((3, 3, 8, 8)).astype(np.float32)
    maps = rng.random((3, 8, 8)).astype(np.float32)
    region = np.zeros((8, 8), bool)
    region[2:5, 3:7] = True

    def nhwc(x: np.ndarray) -> np.ndarray:
        return RegionMean(region)(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))

    a = deletion_insertion(RegionMean(region), images, maps, [1, 0, 1], steps=5, batch_size=1)
    b = deletion_insertion(RegionMean(region), images, maps, [1, 0, 1], steps=5, batch_size=64)
    c = deletion_insertion(nhwc, images.transpose(0, 2, 3, 1), maps, [1, 0, 1], steps=5, layout="NHWC")
    np.testing.assert_allclose(a.deletion_curves, b.deletion_curves, rtol=1e-6)
    np.testing.assert_allclose(a.insertion_curves, c.insertion_curves, rtol=1e-6)


def test_blur_is_documented_cv2_kernel() -> None:
    rng = np.random.default_rng(2)
    img = rng.random((1, 3, 20, 20)).astype(np.float32)
    expected = cv2.GaussianBlur(img[0].transpose(1, 2, 0), (11, 11), 5.0).transpose(2, 0, 1)
    np.testing.assert_allclose(blur_images(img, "NCHW")[0], expected)
    np.testing.assert_allclose(blur_images(img.transpose(0, 2, 3, 1), "NHWC")[0].transpose(2, 0, 1), expected)


def test_bad_arguments() -> None:
    images = np.ones((1, 1, 4, 4), np.float32)
    maps = np.ones((1, 4, 4), np.float32)
    with pytest.raises(ArgumentError, match="steps"):
        deletion_insertion(RegionMean(np.ones((4, 4), bool)), images, maps, 1, steps=0)
    with pytest.raises(ArgumentError, match="baseline"):
        deletion_insertion(RegionMean(np.ones((4, 4), bool)), images, maps, 1, baseline="mean")  # type: ignore[arg-type]
