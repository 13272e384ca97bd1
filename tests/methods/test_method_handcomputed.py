"""Exact maps on hand-built 2-channel 3x3 arrays, degenerate inputs, Score-CAM dedup, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from onnxcam.errors import ArgumentError, HeadStructureError, LayerShapeError, TargetError
from onnxcam.methods import (
    ablation_value,
    ablation_weights,
    cam_weights,
    eigencam,
    eigengradcam,
    fullgrad,
    gradcam_elementwise,
    gradcam_plusplus_weights,
    gradcam_weights,
    hirescam,
    layercam,
    resize_bilinear,
    scorecam_weights,
    smooth_gradcam_plusplus,
    sscam_weights,
    weighted_sum,
    xgradcam_weights,
)

A0 = [[1, 2, 0], [0, 1, 0], [0, 0, 1]]
A1 = [[0, 0, 0], [1, 1, 1], [0, 0, 0]]
ACTS = np.array([[A0, A1]], dtype=np.float32)  # (1, 2, 3, 3)
GRADS = np.stack([np.ones((3, 3)), -2 * np.ones((3, 3))])[None].astype(np.float32)
A0_ = np.array(A0, dtype=np.float32)
A1_ = np.array(A1, dtype=np.float32)


def test_gradcam_hand_values() -> None:
    w = gradcam_weights(GRADS)
    assert np.array_equal(w, [[1.0, -2.0]])
    assert np.array_equal(weighted_sum(ACTS, w)[0], A0_ - 2 * A1_)


def test_elementwise_hand_values() -> None:
    assert np.array_equal(hirescam(ACTS, GRADS)[0], A0_ - 2 * A1_)
    assert np.array_equal(layercam(ACTS, GRADS)[0], A0_)
    assert np.array_equal(gradcam_elementwise(ACTS, GRADS)[0], A0_)


def test_xgradcam_hand_values() -> None:
    # c0: sum(g * A) / sum(A) = 5 / 5; c1: -2 * 3 / 3.
    assert np.allclose(xgradcam_weights(ACTS, GRADS), [[1.0, -2.0]], rtol=1e-6)


def test_gradcam_plusplus_hand_values() -> None:
    # c0: g = 1, sum(A) = 5 -> alpha = 1 / (2 + 5 + 1e-6), weight = 9 alpha; c1: relu(g) = 0.
    w = gradcam_plusplus_weights(ACTS, GRADS)
    assert np.allclose(w, [[9 / (7 + 1e-6), 0.0]], rtol=1e-6)
    # Zero gradients give alpha 0 (not 0/eps noise) and weight 0.
    assert np.array_equal(gradcam_plusplus_weights(ACTS, np.zeros_like(GRADS)), [[0.0, 0.0]])


def test_cam_weights_rows_and_errors() -> None:
    fc = np.array([[1, 2], [3, -1]], dtype=np.float32)
    assert np.array_equal(cam_weights(fc, np.array([1, 0])), [[3, -1], [1, 2]])
    with pytest.raises(TargetError, match="out of range"):
        cam_weights(fc, np.array([2]))
    with pytest.raises(HeadStructureError):
        cam_weights(fc[0], np.array([0]))


def test_eigencam_rank_one_hand_value() -> None:
    # A_c = u_c * P: centred pixels are (P - mean P) u^T, so the projection is |u| (P - mean P),
    # oriented like the channel sum (sum(u) P, sum(u) > 0).
    pattern = np.array([[0, 1, 2], [3, 4, 5], [6, 7, 9]], dtype=np.float32)
    acts = np.stack([3 * pattern, 4 * pattern])[None]
    expected = 5 * (pattern - pattern.mean())
    assert np.allclose(eigencam(acts)[0], expected, atol=1e-4)
    # Negating the input flips the channel sum, and so the orientation.
    assert np.allclose(eigencam(-acts)[0], -expected, atol=1e-4)
    # EigenGradCAM is EigenCAM of g * A.
    assert np.allclose(eigengradcam(acts, np.ones_like(acts))[0], expected, atol=1e-4)


def test_scorecam_hand_values() -> None:
    images = np.ones((1, 1, 3, 3), dtype=np.float32)

    def score_sum(masked: np.ndarray, _i: int) -> np.ndarray:
        return masked.reshape(len(masked), -1).sum(axis=1)

    # Same resolution: upsampling is the identity; masks are A0 / 2 and A1 (sums 2.5 and 3).
    w = scorecam_weights(ACTS, (3, 3), images, score_sum, batch_size=1)
    e = math.exp(0.5)
    assert np.allclose(w, [[1 / (1 + e), e / (1 + e)]], rtol=1e-5)
    # Faster-Score-CAM keeps the higher-variance channel (A0: 38/81 > A1: 2/9) alone.
    assert np.array_equal(scorecam_weights(ACTS, (3, 3), images, score_sum, max_channels=1), [[1, 0]])


def _naive_scorecam(acts: np.ndarray, images: np.ndarray, score_fn, size) -> np.ndarray:  # type: ignore[no-untyped-def]
    """One score call per channel, no dedup; constant channels get the all-zero mask."""
    out = []
    for i in range(len(acts)):
        scores = []
        for ch in acts[i]:
            m = resize_bilinear(ch[None], size, align_corners=True)[0]
            m = np.zeros_like(m) if ch.max() == ch.min() else (m - m.min()) / (m.max() - m.min() + 1e-8)
            scores.append(score_fn(images[i][None] * m[None, None], i)[0])
        s = np.array(scores, dtype=np.float64)
        out.append(np.exp(s - s.max()) / np.exp(s - s.max()).sum())
    return np.array(out, dtype=np.float32)


def test_scorecam_constant_channel_dedup_is_exact() -> None:
    rng = np.random.default_rng(0)
    acts = rng.random((2, 6, 4, 5), dtype=np.float32)
    acts[:, 1] = 0
    acts[0, 3] = 0.3  # constant, non-zero
    acts[1, 4] = 0
    images = rng.standard_normal((2, 3, 9, 11)).astype(np.float32)
    proj = rng.standard_normal((3 * 9 * 11,)).astype(np.float32)
    calls: list[int] = []

    def score(masked: np.ndarray, i: int) -> np.ndarray:
        calls.append(len(masked))
        return masked.reshape(len(masked), -1) @ proj + i

    got = scorecam_weights(acts, (9, 11), images, score, batch_size=2)
    n_calls = sum(calls)
    expected = _naive_scorecam(acts, images, score, (9, 11))
    assert np.allclose(got, expected, rtol=1e-5, atol=1e-7)
    # Sample 0: 4 varying channels + 1 shared; sample 1: 4 varying + 1 shared.
    assert n_calls == 10
    # The two constant channels of sample 0 share one weight.
    assert got[0, 1] == got[0, 3]


def test_ablation_hand_values_and_negative_score() -> None:
    # Head: score = sum of channel means with coefficients (1, -1).
    coef = np.array([1.0, -1.0], dtype=np.float32)

    def head(batch: np.ndarray, _i: int) -> np.ndarray:
        return batch.mean(axis=(2, 3)) @ coef

    orig = head(ACTS, 0)  # 5/9 - 3/9 = 2/9
    w = ablation_weights(ACTS, head, orig, batch_size=1)
    # Zeroing c0 leaves -3/9: drop 5/9 over 2/9; zeroing c1 leaves 5/9: drop -3/9 over 2/9.
    assert np.allclose(w, [[2.5, -1.5]], rtol=1e-5)
    # Negative target score: dividing by |score| keeps the signs (the reference would flip them).
    w_neg = ablation_weights(ACTS, lambda b, i: head(b, i) - 1.0, orig - 1.0, batch_size=2)
    drop = np.array([5 / 9, -3 / 9])
    assert np.allclose(w_neg[0], drop / abs(2 / 9 - 1), rtol=1e-5)


def test_ablation_value_rule() -> None:
    assert ablation_value(np.array([[[0.0, 1.0]]])) == 0.0
    assert ablation_value(np.array([[[-2.0, 1.0]]])) == -2.0 - 1e7
    assert ablation_value(np.array([[[0.5, 1.0]]])) == 0.5 - 1e7


def test_fullgrad_hand_value() -> None:
    # Input term: |g x| per channel normalised; bias term: |b g| normalised, summed over channels.
    gxi = np.array([[[[0, -2], [1, 0]]]], dtype=np.float32)  # one input channel, 2x2
    bias = np.array([2.0, 0.0], dtype=np.float32)
    grads = np.array([[[[1, 3], [0, 1]], [[5, 5], [5, 5]]]], dtype=np.float32)
    got = fullgrad(gxi, [(bias, grads)], (2, 2))
    eps = 1e-7
    expected = np.array([[0, 2], [1, 0]]) / (2 + eps) + np.array([[2, 6], [0, 2]]) / (6 + eps)
    assert np.allclose(got[0], expected, rtol=1e-6)


def test_smooth_gradcampp_default_averages_gradients() -> None:
    # grads_fn returns gradients +1, -1, +1: the default ReLUs the mean gradient (1/3), torchcam
    # compat mode the last one (+1) and sums the last run's activations (here the same).
    flips = iter([1.0, -1.0, 1.0] * 2)

    def grads_fn(_noisy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return ACTS, np.full_like(ACTS, next(flips))

    images = np.zeros((1, 1, 3, 3), dtype=np.float32)
    out = smooth_gradcam_plusplus(ACTS, images, grads_fn, num_samples=3, std=0.1)
    # mean g = 1/3, g2 = 1, g3 = 1/3 -> alpha_c = 1 / (2 + sum(A_c)/3 + 1e-8), w_c = 9 alpha_c / 3.
    w = np.array([3 / (2 + 5 / 3), 3 / (2 + 3 / 3)])
    assert np.allclose(out[0], w[0] * A0_ + w[1] * A1_, rtol=1e-5)
    compat = smooth_gradcam_plusplus(ACTS, images, grads_fn, num_samples=3, std=0.1, torchcam_compat=True)
    assert np.allclose(compat[0], 3 * (w[0] * A0_ + w[1] * A1_), rtol=1e-5)


@pytest.mark.parametrize("fill", [0.0, 2.5])
def test_degenerate_inputs_give_finite_results(fill: float) -> None:
    acts = np.full((2, 3, 4, 4), fill, dtype=np.float32)
    zeros = np.zeros_like(acts)
    for raw in (
        weighted_sum(acts, gradcam_weights(zeros)),
        weighted_sum(acts, gradcam_plusplus_weights(acts, zeros)),
        weighted_sum(acts, xgradcam_weights(acts, zeros)),
        layercam(acts, zeros),
        hirescam(acts, zeros),
        gradcam_elementwise(acts, zeros),
        eigencam(acts),
        eigengradcam(acts, zeros),
    ):
        assert raw.shape == (2, 4, 4)
        assert np.all(np.isfinite(raw)) and np.all(raw == 0)
    images = np.ones((2, 3, 8, 8), dtype=np.float32)
    w = scorecam_weights(acts, (8, 8), images, lambda m, i: m.sum(axis=(1, 2, 3)))
    assert np.allclose(w, 1 / 3)
    w = sscam_weights(acts, images, lambda m, i: m.sum(axis=(1, 2, 3)) * 0, num_samples=2)
    assert np.allclose(w, 1 / 3)
    fg = fullgrad(np.zeros((2, 3, 8, 8), np.float32), [(np.zeros(3), zeros)], (8, 8))
    assert np.all(fg == 0)


def test_errors_name_the_problem() -> None:
    with pytest.raises(LayerShapeError, match=r"4-D feature map"):
        gradcam_weights(np.zeros((2, 3, 4)))
    with pytest.raises(LayerShapeError, match=r"gradients has shape"):
        layercam(ACTS, GRADS[:, :1])
    with pytest.raises(LayerShapeError, match=r"weights have shape"):
        weighted_sum(ACTS, np.ones((1, 3)))
    images = np.ones((1, 1, 3, 3), dtype=np.float32)
    with pytest.raises(ArgumentError, match="batch_size"):
        scorecam_weights(ACTS, (3, 3), images, lambda m, i: np.zeros(len(m)), batch_size=0)
    with pytest.raises(ArgumentError, match="input_size"):
        scorecam_weights(ACTS, (4, 4), images, lambda m, i: np.zeros(len(m)))
    with pytest.raises(ArgumentError, match="layout"):
        scorecam_weights(ACTS, (3, 3), images, lambda m, i: np.zeros(len(m)), layout="CHW")
    with pytest.raises(ArgumentError, match="score_fn returned 1 scores"):
        scorecam_weights(ACTS, (3, 3), images, lambda m, i: np.zeros(1), batch_size=2)
    with pytest.raises(ArgumentError, match="original_scores"):
        ablation_weights(ACTS, lambda b, i: np.zeros(len(b)), np.zeros(3))


def test_spatially_constant_gradients_use_per_channel_formulas_with_the_same_result() -> None:
    """A GAP head's gradients are constant over space; Grad-CAM++ and LayerCAM then compute per
    channel. Both paths must give the element-wise formula's value (float64 reference here)."""
    from onnxcam.methods.gradient import spatially_constant

    rng = np.random.default_rng(3)
    a = (rng.random((3, 40, 5, 6)) * 4).astype(np.float32)
    gc = (rng.normal(size=(3, 40)) * 2e-3).astype(np.float32)
    gc[:, :4] = 0.0
    g = np.broadcast_to(gc[:, :, None, None], a.shape).copy()
    assert spatially_constant(g) is not None
    varied = g.copy()
    varied[1, 7, 2, 3] *= 1.5
    assert spatially_constant(varied) is None

    a64, g64 = a.astype(np.float64), g.astype(np.float64)
    s = a64.sum(axis=(2, 3), keepdims=True)
    alpha = g64**2 / (2 * g64**2 + s * g64**3 + 1e-6)
    expected_pp = (np.maximum(g64, 0) * alpha).sum(axis=(2, 3))
    np.testing.assert_allclose(gradcam_plusplus_weights(a, g), expected_pp, rtol=2e-6, atol=1e-12)
    expected_layer = (np.maximum(g64, 0) * a64).sum(axis=1)
    np.testing.assert_allclose(layercam(a, g), expected_layer, rtol=2e-6, atol=1e-9)
    # The general path on the varied copy agrees with the same reference where nothing changed.
    general = gradcam_plusplus_weights(a, varied)
    mask = np.ones_like(general, dtype=bool)
    mask[1, 7] = False
    np.testing.assert_allclose(general[mask], expected_pp[mask], rtol=2e-6, atol=1e-12)
