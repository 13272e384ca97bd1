"""Rank correlation, Pearson, top-region IoU and the cascading-randomisation sanity check."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcam.errors import ArgumentError, InputError, OnnxCamWarning
from onnxcam.metrics import average_ranks, pearson, rank_correlation, sanity_check, top_region_iou


def test_average_ranks_with_ties() -> None:
    np.testing.assert_array_equal(average_ranks([10, 20, 20, 30, 20]), [1, 3, 3, 5, 3])
    np.testing.assert_array_equal(average_ranks([[2.0, 2.0], [1.0, 1.0]]), [3.5, 3.5, 1.5, 1.5])


def test_spearman_hand_computed_with_ties() -> None:
    # Ranks a = [1, 2.5, 2.5, 4], b = [1, 3, 2, 4]: sum of products of deviations 4.5,
    # squared deviations 4.5 and 5, so rho = 4.5 / sqrt(22.5) = sqrt(0.9).
    a = np.array([[1.0, 2.0], [2.0, 3.0]])
    b = np.array([[0.1, 0.7], [0.5, 0.9]])
    assert rank_correlation(a, b) == pytest.approx(np.sqrt(0.9), abs=1e-12)
    assert rank_correlation(a, -b) == pytest.approx(-np.sqrt(0.9), abs=1e-12)
    # Invariant to monotone transforms, unlike Pearson.
    assert rank_correlation(b, np.exp(10 * b)) == pytest.approx(1.0)


def test_spearman_matches_scipy_on_tied_maps() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(6)
    a = np.round(rng.random((12, 12)), 1)  # many ties
    b = np.round(a + rng.normal(0, 0.3, a.shape), 1)
    assert rank_correlation(a, b) == pytest.approx(stats.spearmanr(a.ravel(), b.ravel())[0], abs=1e-12)


def test_pearson_hand_computed() -> None:
    # Deviations [-1, 0, 1] and [-2, -1, 3]: 5 / sqrt(2 * 14).
    assert pearson([1, 2, 3], [0, 1, 5]) == pytest.approx(5 / np.sqrt(28))
    with pytest.warns(OnnxCamWarning, match="constant"):
        assert np.isnan(pearson([1, 1, 1], [0, 1, 5]))
    with pytest.raises(InputError, match="same shape"):
        pearson([1, 2], [1, 2, 3])


def test_top_region_iou_hand_computed() -> None:
    a = np.array([9, 8, 1, 2, 3, 4, 5, 0, 0, 0], float)
    b = np.array([1, 9, 8, 2, 3, 4, 5, 0, 0, 0], float)
    assert top_region_iou(a, b, fraction=0.2) == pytest.approx(1 / 3)  # {0, 1} vs {1, 2}
    assert top_region_iou(a, b, fraction=0.5) == pytest.approx(4 / 6)  # {0,1,5,6,4} vs {1,2,5,6,4}
    assert top_region_iou(a, a) == 1.0
    with pytest.raises(ArgumentError, match="fraction"):
        top_region_iou(a, b, fraction=0)


def test_sanity_check_scores_each_step() -> None:
    rng = np.random.default_rng(7)
    images = rng.random((3, 1, 5, 5)).astype(np.float32)
    maps = rng.random((3, 5, 5))
    seen: list[int] = []

    def explain(x: np.ndarray) -> np.ndarray:
        seen.append(x.shape[0])
        return maps

    flat = maps.copy()
    flat[1] = 0.5
    steps = [lambda x: maps * 2 + 1, lambda x: -maps, lambda x: flat]
    with pytest.warns(OnnxCamWarning, match="1 of 3"):
        out = sanity_check(explain, steps, images)
    assert out[0] == pytest.approx(1.0)
    assert out[1] == pytest.approx(-1.0)
    assert out[2] == pytest.approx(1.0)  # the constant map is left out of the mean
    assert seen == [3]
    assert sanity_check(explain, [lambda x: -maps], images, absolute=True) == [pytest.approx(1.0)]
    expected = np.mean([rank_correlation(m, r) for m, r in zip(maps, maps[::-1], strict=True)])
    assert sanity_check(explain, [lambda x: maps[::-1]], images) == [pytest.approx(expected)]
    with pytest.raises(ArgumentError, match="randomized_explain_fns"):
        sanity_check(explain, [lambda x: maps[:, :3]], images)
