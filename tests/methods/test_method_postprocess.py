"""Post-processing: normalisation, cv2 resizing, multi-layer fusion, blank-map reasons."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from onnxcam.errors import ArgumentError
from onnxcam.postprocess import (
    eigen_smooth,
    finish_single,
    fuse_layers,
    fuse_to_image,
    layer_to_image,
    normalize_maps,
    relu,
    resize_maps,
    zero_map_reasons,
)


def test_normalize_hand_values_and_constant_maps() -> None:
    maps = np.array([[[1, 3], [5, 2]], [[4, 4], [4, 4]], [[0, 0], [0, 0]]], dtype=np.float32)
    out = normalize_maps(maps)
    assert np.allclose(out[0], [[0, 0.5], [1, 0.25]], rtol=1e-6)
    assert np.array_equal(out[1:], np.zeros((2, 2, 2)))
    nan_map = np.array([[[np.nan, 1], [2, np.inf]]], dtype=np.float32)
    assert np.all(np.isfinite(normalize_maps(nan_map)))


def test_resize_matches_cv2_and_takes_height_first() -> None:
    maps = np.random.default_rng(0).random((2, 3, 5), dtype=np.float32)
    out = resize_maps(maps, (7, 11))
    assert out.shape == (2, 7, 11)
    assert np.array_equal(out[1], cv2.resize(maps[1], (11, 7)))
    with pytest.raises(ArgumentError):
        resize_maps(maps, (0, 4))


def test_fuse_is_mean_of_relu_then_normalised() -> None:
    a = np.array([[[0, 1], [0.5, 0]]], dtype=np.float32)
    b = np.array([[[1, -1], [0.5, 0]]], dtype=np.float32)
    # mean(relu) = [[0.5, 0.5], [0.5, 0]] -> normalised [[1, 1], [1, 0]].
    assert np.allclose(fuse_layers([a, b]), [[[1, 1], [1, 0]]], rtol=1e-6)
    with pytest.raises(ArgumentError, match="share one shape"):
        fuse_layers([a, np.zeros((1, 3, 3), np.float32)])
    with pytest.raises(ArgumentError):
        fuse_layers([])


def test_layer_to_image_order() -> None:
    raw = np.array([[[-1, 2], [0, 4]]], dtype=np.float32)
    expected = cv2.resize(np.array([[0, 0.5], [0, 1]], dtype=np.float32) / (1 + 1e-7), (4, 4))
    assert np.allclose(layer_to_image(raw, (4, 4))[0], expected, atol=1e-7)
    assert np.array_equal(relu(raw), [[[0, 2], [0, 4]]])


def test_eigen_smooth_shape() -> None:
    w = np.random.default_rng(1).random((2, 4, 3, 3), dtype=np.float32)
    assert eigen_smooth(w).shape == (2, 3, 3)


def test_zero_map_reasons() -> None:
    ok = np.array([[0, 1], [2, 3]], dtype=np.float32)
    neg = -np.ones((2, 2), dtype=np.float32)
    maps = np.stack([ok, neg, neg, neg, neg, np.full((2, 2), 3, np.float32)])
    acts = np.arange(1, 6 * 8 + 1, dtype=np.float32).reshape(6, 2, 2, 2)  # live, not spatially flat
    acts[1] = 0
    grads = np.ones_like(acts)
    grads[2] = 0
    weights = np.ones((6, 2), dtype=np.float32)
    weights[3] = -1
    reasons = zero_map_reasons(maps, activations=acts, gradients=grads, weights=weights)
    assert reasons[0] is None
    assert "activations are all zero" in str(reasons[1])
    assert "gradients" in str(reasons[2])
    assert "weights" in str(reasons[3])
    assert "ReLU" in str(reasons[4])
    assert "constant" in str(reasons[5])
    flat = np.ones((1, 2, 2, 2), dtype=np.float32)
    assert "spatially constant" in str(zero_map_reasons(neg[None], activations=flat, gradients=flat[:, :, 0])[0])


def test_fuse_to_image_equals_fusing_full_size_layer_maps_bit_for_bit() -> None:
    """``fuse_to_image`` fuses row by row in one buffer and skips a layer's all-zero rows (a detection
    with no gradient at the coarser maps): the same bits as ``fuse_layers`` over ``layer_to_image``."""
    rng = np.random.default_rng(3)
    size = (48, 40)
    raws = [rng.normal(size=(4, 12, 10)).astype(np.float32), rng.normal(size=(4, 6, 5)).astype(np.float32),
            rng.normal(size=(4, 3, 3)).astype(np.float32)]
    raws[1][1] = 0.0   # blank at one layer
    raws[2][1] = -1.0  # and at another (ReLU leaves nothing)
    raws[0][2] = 0.0   # blank at the first layer only
    raws[0][3] = raws[1][3] = raws[2][3] = 0.0  # blank everywhere
    got = fuse_to_image(raws, size)
    want = fuse_layers([layer_to_image(r, size) for r in raws], clean=True)
    np.testing.assert_array_equal(got, want)
    assert np.all(got[3] == 0) and got[1].max() > 0.99
    np.testing.assert_array_equal(fuse_to_image(raws[:1], size), finish_single(layer_to_image(raws[0], size)))
