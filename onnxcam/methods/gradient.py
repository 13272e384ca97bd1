"""Gradient-based CAMs: Grad-CAM, Grad-CAM++, XGrad-CAM (channel weights) and the element-wise
family (LayerCAM, HiResCAM, Grad-CAM element-wise).

Formulas, epsilons and float32 arithmetic follow pytorch-grad-cam 1.5.7 so maps agree to rounding.
Inputs are ``(N, C, h, w)``; the gradients are those of the target score w.r.t. the activations.
"""

from __future__ import annotations

import numpy as np

from onnxcam.errors import ArgumentError, LayerShapeError
from onnxcam.methods._checks import as_feature_map, same_shape

_SPATIAL = (2, 3)


def _pair(acts: np.ndarray, grads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = as_feature_map(acts, "activations")
    g = as_feature_map(grads, "gradients")
    same_shape(a, g, "activations", "gradients")
    return a, g


def gradcam_weights(grads: np.ndarray) -> np.ndarray:
    """Grad-CAM: spatial mean of the gradients. ``(N, C, h, w) -> (N, C)``."""
    g = as_feature_map(grads, "gradients")
    if g.ndim == 4 and g.strides[2] == 0 and g.strides[3] == 0:
        # Channel means already, spread over the positions (``Gradients.kind == "channel-mean"``).
        return np.ascontiguousarray(g[:, :, 0, 0])
    return np.mean(g, axis=_SPATIAL)


def spatially_constant(grads: np.ndarray) -> np.ndarray | None:
    """``(N, C)`` per-channel values if every channel of ``(N, C, h, w)`` ``grads`` is constant over
    space, else None. True at a layer read only by global average pooling (the usual last layer of
    a classifier), where channel-wise formulas then cost ``(N, C)`` instead of ``(N, C, h, w)``."""
    first = grads[:, :, 0, 0]
    # The opposite corner first: a varying map almost always differs there, and that costs (N, C).
    if not np.array_equal(grads[:, :, -1, -1], first) or not np.all(grads == first[:, :, None, None]):
        return None
    return np.ascontiguousarray(first)


def gradcam_plusplus_weights(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """Grad-CAM++ (eq. 19 of arXiv:1710.11063, exponential-score closed form). ``-> (N, C)``.

    ``alpha = g^2 / (2 g^2 + sum(A) g^3 + 1e-6)`` where g != 0 else 0; weights = sum(relu(g) * alpha).
    ``sum(A)`` is the spatial sum of the activations, as in pytorch-grad-cam (not of A * g^3).
    """
    a, g = _pair(acts, grads)
    sum_a = np.sum(a, axis=_SPATIAL)[:, :, None, None]
    per_channel = spatially_constant(g)
    if per_channel is not None:
        # alpha is the same at every position: the spatial sum is h * w times one value.
        gc, s = per_channel, sum_a[:, :, 0, 0]
        gc2 = gc * gc
        alpha = gc2 / (gc2 * (np.float32(2) + s * gc) + np.float32(1e-6))
        return (np.maximum(gc, np.float32(0)) * alpha * np.float32(g.shape[2] * g.shape[3])).astype(np.float32)
    g2 = g * g
    # 2 g^2 + sum(A) g^3 = g^2 (2 + sum(A) g), computed in place, one temporary at a time: this runs on
    # (N, C, h, w) after every batch. The reference's where(g != 0, alpha, 0) is implied: relu(g) is
    # 0 wherever g is.
    denom = np.multiply(g, sum_a)
    denom += np.float32(2)
    denom *= g2
    denom += np.float32(1e-6)
    num = np.maximum(g, np.float32(0))
    num *= g2
    num /= denom
    return np.sum(num, axis=_SPATIAL)


def xgradcam_weights(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """XGrad-CAM: ``sum(g * A / (sum(A) + 1e-7))`` over space. ``-> (N, C)``.

    ``sum(A)`` is accumulated in float64: over a LayerNorm'd token stream (a ViT's last block) it
    cancels to 6e-6 of its terms' magnitude, where float32 accumulation moved the map by 7e-4
    (ViT with registers, measured), and the weight is divided by it. Rounded to float32 after.
    """
    a, g = _pair(acts, grads)
    sum_a = np.asarray(np.sum(a, axis=_SPATIAL, dtype=np.float64), np.float32)[:, :, None, None]
    return np.sum(g * a / (sum_a + np.float32(1e-7)), axis=_SPATIAL)


def weighted_sum(acts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Raw CAM ``sum_c w[n, c] * A[n, c]``: ``(N, C, h, w), (N, C) -> (N, h, w)`` (no ReLU)."""
    a = as_feature_map(acts, "activations")
    w = np.asarray(weights, dtype=np.float32)
    if w.shape != a.shape[:2]:
        raise LayerShapeError(
            f"weights have shape {tuple(w.shape)} but activations {tuple(a.shape)} need (N, C) = "
            f"{tuple(a.shape[:2])}"
        )
    n, c, h, wd = a.shape
    if n > 1 and a.strides[0] == 0:
        # One image's activations repeated (several detections of it): one product with every row's
        # weights, without copying the repeated rows into a batch first.
        return np.matmul(w, a[0].reshape(c, h * wd)).reshape(n, h, wd)
    # A batched matrix product (BLAS) instead of materialising w * A: same sum, other rounding order.
    return np.matmul(w[:, None, :], a.reshape(n, c, h * wd)).reshape(n, h, wd)


def layercam(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """LayerCAM: ``sum_c relu(g) * A``. ``-> (N, h, w)``."""
    a, g = _pair(acts, grads)
    per_channel = spatially_constant(g)
    if per_channel is not None:  # relu(g) is a channel weight: one matrix product
        return weighted_sum(a, np.maximum(per_channel, np.float32(0)))
    r = np.maximum(g, np.float32(0))
    r *= a
    return np.sum(r, axis=1)


def hirescam(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """HiResCAM: ``sum_c g * A``, in float64, rounded to float32. ``-> (N, h, w)``.

    At a ViT's last block the sum cancels ~1e6 (sum_c |g A| / |sum_c g A|): float32 accumulation
    is 4-5 % of the map there. The products of float32 values are exact in float64.
    """
    a, g = _pair(acts, grads)
    return np.sum(g.astype(np.float64) * a, axis=1).astype(np.float32)


def gradcam_elementwise(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """Grad-CAM element-wise: ``sum_c relu(g * A)``. ``-> (N, h, w)``."""
    a, g = _pair(acts, grads)
    return np.sum(np.maximum(g * a, 0), axis=1)


def cancellation(terms: np.ndarray) -> np.ndarray:
    """Per image, how many times smaller the channel-summed map is than its terms ``(N, C, h, w)``:
    ``sum |t| / sum |sum_c t|`` over positions (1: no cancellation, also where every term is zero; inf:
    terms that cancel exactly; float32 inputs lose about this many times their relative precision in
    the sum)."""
    t = np.asarray(terms, dtype=np.float64)
    whole = np.abs(t).sum(axis=(1, 2, 3))
    net = np.abs(t.sum(axis=1)).sum(axis=(1, 2))
    ratio = np.where(net > 0, whole / np.where(net > 0, net, 1.0), np.inf)
    return np.asarray(np.where(whole > 0, ratio, 1.0))


def elementwise_products(acts: np.ndarray, grads: np.ndarray, method: str) -> np.ndarray:
    """The per-channel terms ``(N, C, h, w)`` the element-wise methods sum, for ``eigen_smooth``.

    ``method`` is 'layercam', 'hirescam' or 'gradcam_elementwise'.
    """
    a, g = _pair(acts, grads)
    if method == "layercam":
        r = np.maximum(g, np.float32(0))
        r *= a
        return r
    if method == "hirescam":
        return g * a
    if method == "gradcam_elementwise":
        return np.maximum(g * a, 0)
    raise ArgumentError(
        f"unknown element-wise method {method!r}; use 'layercam', 'hirescam' or 'gradcam_elementwise'"
    )
