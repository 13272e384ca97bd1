"""Pointing game, energy pointing game and CAM-box IoU on hand-made maps."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from onnxcam.errors import ArgumentError, InputError, OnnxCamWarning
from onnxcam.metrics import box_iou, cam_box_iou, cam_boxes, energy_pointing_game, pointing_game


def _peak_map() -> np.ndarray:
    m = np.zeros((10, 10), np.float32)
    m[2, 7] = 1.0  # peak at x=7, y=2
    m[5, 5] = 0.5
    return m


@pytest.mark.parametrize(
    ("box", "tolerance", "hit"),
    [
        ((6, 1, 9, 4), 0, True),
        ((0, 0, 7, 3), 0, False),  # x1 = 7 is exclusive
        ((0, 0, 8, 3), 0, True),
        ((8, 1, 10, 4), 0, False),
        ((8, 1, 10, 4), 1, True),  # one pixel to the right
        ((8, 4, 10, 6), 2, False),  # diagonal distance sqrt(1 + 4) = 2.236
        ((8, 4, 10, 6), 2.25, True),
        ((0, 3, 10, 10), 0, False),
        ((-5, -5, 100, 100), 0, True),  # clipped to the image
    ],
)
def test_pointing_game_single_box(box: tuple[int, int, int, int], tolerance: float, hit: bool) -> None:
    assert pointing_game(_peak_map()[None], [box], tolerance=tolerance).tolist() == [hit]


def test_pointing_game_batch_union_and_ties() -> None:
    maps = np.stack([_peak_map(), np.ones((10, 10), np.float32), np.ones((10, 10), np.float32)])
    boxes: list[Any] = [np.array([[0, 0, 2, 2], [7, 2, 8, 3]]), [[0, 0, 5, 5]], [[0, 0, 10, 10]]]
    # Union of two boxes hits; a flat map only hits when the box covers the whole image.
    assert pointing_game(maps, boxes).tolist() == [True, False, True]
    regular = np.array([[6, 1, 9, 4], [0, 0, 10, 10], [0, 0, 1, 1]])
    assert pointing_game(maps, regular).tolist() == [True, True, False]


def test_energy_pointing_game_exact() -> None:
    m = np.zeros((6, 6), np.float32)
    m[1:3, 1:3] = 1.0
    m[5, 5] = 0.5
    m[0, 5] = 0.5
    m2 = np.zeros((6, 6), np.float32)
    m2[4, 0] = 0.25
    m2[0, 0] = 0.75
    res = energy_pointing_game(np.stack([m, m2]), [[1, 1, 3, 3], [0, 0, 1, 1]])
    np.testing.assert_allclose(res, [4 / 5, 0.75])
    # Boxes of several objects count once where they overlap.
    assert energy_pointing_game(m[None], [[[1, 1, 3, 3], [1, 1, 2, 6]]])[0] == pytest.approx(0.8)


def test_energy_pointing_game_degenerate() -> None:
    with pytest.warns(OnnxCamWarning, match="all zero"):
        assert np.isnan(energy_pointing_game(np.zeros((1, 4, 4)), [[0, 0, 2, 2]])[0])
    with pytest.raises(InputError, match="negative"):
        energy_pointing_game(-np.ones((1, 4, 4)), [[0, 0, 2, 2]])


def test_cam_box_largest_component_is_8_connected() -> None:
    m = np.full((10, 12), 0.1, np.float32)  # below 20 % of the maximum
    for k in range(4):
        m[1 + k, 1 + k] = 1.0  # diagonal chain: one 8-connected component of 4 pixels
    m[8, 6:9] = 0.9  # a straight run of 3 pixels
    assert cam_boxes(m[None]).tolist() == [[1, 1, 5, 5]]
    # Raising the bar drops the low blob; lowering it below 0.1 merges everything.
    m[8, 6:9] = 0.15
    assert cam_boxes(m[None], threshold=0.2).tolist() == [[1, 1, 5, 5]]
    assert cam_boxes(m[None], threshold=0.05).tolist() == [[0, 0, 12, 10]]


def test_cam_box_iou_exact() -> None:
    m = np.zeros((8, 10), np.float32)
    m[1:4, 2:6] = np.linspace(0.5, 1.0, 12).reshape(3, 4)  # box (2, 1, 6, 4)
    m[6, 8] = 0.9
    np.testing.assert_array_equal(cam_boxes(m[None]), [[2, 1, 6, 4]])
    # Overlap 2 x 3 = 6, union 12 + 12 - 6 = 18.
    np.testing.assert_allclose(cam_box_iou(m[None], [[4, 1, 8, 4]]), [1 / 3])
    np.testing.assert_allclose(cam_box_iou(m[None], [[[0, 5, 2, 7], [2, 1, 6, 4]]]), [1.0])
    np.testing.assert_allclose(cam_box_iou(m[None], [[7, 5, 9, 8]]), [0.0])
    np.testing.assert_allclose(box_iou(np.array([0, 0, 2, 2]), np.array([1, 1, 3, 3])), 1 / 7)


def test_box_and_threshold_errors() -> None:
    m = np.ones((1, 4, 4), np.float32)
    with pytest.raises(ArgumentError, match="empty"):
        pointing_game(m, [[3, 0, 3, 2]])
    with pytest.raises(ArgumentError, match="one box"):
        pointing_game(m, [[0, 0, 1, 1], [0, 0, 2, 2]])
    with pytest.raises(ArgumentError, match="threshold"):
        cam_box_iou(m, [[0, 0, 1, 1]], threshold=1.5)
    with pytest.warns(OnnxCamWarning, match="flat"):
        assert cam_boxes(m).tolist() == [[0, 0, 4, 4]]
