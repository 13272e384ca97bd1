"""Audit building blocks on hand-computed cases: border energy, near-ties, flags, probabilities,
box mapping, map similarity and ranking."""

from __future__ import annotations

import json

import numpy as np
import pytest

from onnxcam.audit.compare import map_similarity, rank_by_change
from onnxcam.audit.job import boxes_to_input, read_boxes
from onnxcam.audit.metrics_run import border_energy, near_tie, review_flags, to_probabilities, top_predictions
from onnxcam.errors import ArgumentError
from onnxcam.image import get_preset


def test_border_energy_exact():
    maps = np.zeros((4, 10, 10))
    maps[0] = 1.0  # uniform: band of 1 px on 10 px leaves an 8x8 inside -> 36/100 outside
    maps[1, 0, 0] = 1.0  # all mass in the corner
    maps[2, 5, 5] = 1.0  # all mass in the centre
    # maps[3] is blank
    out = border_energy(maps)
    assert out[:3].tolist() == [0.36, 1.0, 0.0]
    assert np.isnan(out[3])


def test_near_tie_and_top_predictions():
    probs = np.array([[0.50, 0.46, 0.04], [0.7, 0.2, 0.1], [0.3, 0.3, 0.4]])
    assert near_tie(probs).tolist() == [True, False, False]
    assert near_tie(np.array([[1.0]])).tolist() == [False]
    assert top_predictions(probs[1:2], 2) == [[(0, 0.7), (1, 0.2)]]


def test_review_flags_fire_on_constructed_values():
    good = {"insertion_auc": 0.6, "border_energy": 0.3, "pointing_game": 1.0}
    assert review_flags(good, 0.5) == []
    assert review_flags({**good, "insertion_auc": 0.45}, 0.5) == []  # below the baseline, within the margin
    assert review_flags({**good, "insertion_auc": 0.44}, 0.5) == ["low_insertion"]  # beyond the 0.05 margin
    assert review_flags({**good, "insertion_auc": 0.4}, 0.5, margin=0.2) == []  # a calibrated, wider margin
    assert review_flags({**good, "insertion_auc": 0.15}, None) == []  # no absolute floor (issue #17)
    assert review_flags({**good, "border_energy": 0.51}, 0.5) == ["border"]
    assert review_flags({**good, "border_energy": float("nan")}, 0.5) == ["blank_map"]
    assert review_flags({**good, "pointing_game": 0.0}, 0.5) == ["peak_outside_box"]
    assert review_flags({"insertion_auc": 0.6, "border_energy": 0.3}, 0.5) == []  # no box, no box flag


def test_to_probabilities_keeps_probabilities_and_softmaxes_logits():
    p = np.array([[0.2, 0.8], [0.5, 0.5]])
    assert to_probabilities(p) is not p and np.array_equal(to_probabilities(p), p)
    logits = np.array([[0.0, np.log(3.0)]])
    np.testing.assert_allclose(to_probabilities(logits), [[0.25, 0.75]])
    np.testing.assert_allclose(to_probabilities(np.array([[[[2.0]], [[2.0]]]])), [[0.5, 0.5]])


def test_boxes_to_input_stretch_and_center_crop():
    stretch = get_preset("unit", (10, 10))
    # 20 x 40 (h x w) image stretched to 10 x 10: x / 4, y / 2.
    assert boxes_to_input(np.array([[4.0, 2.0, 20.0, 12.0]]), (20, 40), stretch).tolist() == [[1, 1, 5, 6]]
    # Partial pixels grow the box; coordinates are clipped.
    assert boxes_to_input(np.array([[5.0, 3.0, 50.0, 30.0]]), (20, 40), stretch).tolist() == [[1, 1, 10, 10]]
    crop = get_preset("unit", (10, 10), resize_mode="center_crop", crop_fraction=1.0)
    # 20 x 40 image: scale 0.5 -> 10 x 20, central 10 columns = original x in [10, 30).
    assert boxes_to_input(np.array([[10.0, 0.0, 30.0, 20.0]]), (20, 40), crop).tolist() == [[0, 0, 10, 10]]
    assert boxes_to_input(np.array([[0.0, 0.0, 8.0, 20.0]]), (20, 40), crop) is None  # outside the crop


def test_read_boxes(tmp_path):
    f = tmp_path / "boxes.json"
    f.write_text(json.dumps({"a/cat.png": {"box": [1, 2, 3, 4], "label": "cat"},
                             "dog.png": {"boxes": [[0, 0, 5, 5], [1, 1, 2, 2]]}}))
    boxes = read_boxes(f)
    assert boxes["cat.png"].tolist() == [[1, 2, 3, 4]] and boxes["dog.png"].shape == (2, 4)
    with pytest.raises(ArgumentError, match="'bad.png'"):
        read_boxes({"bad.png": {"box": [5, 5, 1, 1]}})
    with pytest.raises(ArgumentError, match="cannot read boxes file"):
        read_boxes(tmp_path / "missing.json")


def test_map_similarity_and_ranking():
    rng = np.random.default_rng(0)
    a = rng.random((4, 6, 6))
    b = a.copy()
    b[1] = 1.0 - a[1]  # inverted: pearson -1
    b[2] = a[2] + 0.3 * rng.random((6, 6))  # slightly changed
    b[3] = 0.0  # went blank: pearson undefined
    r, iou, change = map_similarity(a, b)
    assert r[0] == pytest.approx(1.0) and iou[0] == 1.0 and change[0] == pytest.approx(0.0)
    assert r[1] == pytest.approx(-1.0) and change[1] == pytest.approx(2.0)
    assert 0 < change[2] < 0.5
    assert np.isnan(r[3]) and change[3] == 1.0
    assert rank_by_change(change, iou).tolist() == [1, 3, 2, 0]
