"""Smooth Grad-CAM++ (Omeiza et al. 2019) with torchcam 0.5 ``SmoothGradCAMpp`` formulas.

Gaussian noise is added to the input ``num_samples`` times; the squared and cubed gradients at
the layer are averaged over the noisy runs and plugged into the Grad-CAM++ alpha:
``alpha = mean(g^2) / (2 mean(g^2) + sum_ij(mean(g^3) * A) + 1e-8)`` (torchcam sums ``g^3 * A``
over space, unlike pytorch-grad-cam's Grad-CAM++ which uses ``sum(A) * g^3``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from onnxcam.errors import ArgumentError
from onnxcam.methods._checks import as_feature_map, positive_int, same_shape
from onnxcam.methods.score import per_sample_generators

GradsFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

_SPATIAL = (2, 3)


def smooth_gradcam_plusplus(
    acts: np.ndarray,
    images: np.ndarray,
    grads_fn: GradsFn,
    num_samples: int = 4,
    std: float = 0.3,
    rng: np.random.Generator | Sequence[np.random.Generator] | None = None,
    eps: float = 1e-8,
    torchcam_compat: bool = False,
) -> np.ndarray:
    """Raw Smooth Grad-CAM++ maps ``(N, h, w)`` (no ReLU).

    ``acts``: the clean image's activations ``(N, C, h, w)``; ``grads_fn(noisy_images) -> (acts,
    grads)`` runs the model on a noisy copy of ``images`` (any layout; noise is element-wise) and
    returns that run's activations and gradients. Noise ``N(0, std^2)`` is drawn from ``rng``
    (default ``np.random.default_rng(0)``) as one ``images``-shaped array per round, torchcam's order.
    With one generator per sample, sample i's noise comes from ``rng[i]`` alone (one image-shaped
    block per round), so its map does not depend on the rest of the batch.

    Two torchcam quirks, reproduced only with ``torchcam_compat=True``: the ReLU'd gradient in the
    weight is the *last* noisy run's, not the average, and the map sums the *last noisy run's*
    activations (its hook overwrites the clean ones). By default we use the mean gradient and the
    clean activations, which is the paper's SmoothGrad average and gives a map that does not
    depend on the last noise draw.
    """
    a = as_feature_map(acts, "activations")
    rounds = positive_int(num_samples, "num_samples")
    if not np.isfinite(std) or std < 0:
        raise ArgumentError(f"std must be a finite number >= 0, got {std!r}")
    imgs = np.asarray(images, dtype=np.float32)
    if imgs.shape[0] != a.shape[0]:
        raise ArgumentError(
            f"images hold {imgs.shape[0]} samples but activations {a.shape[0]}; they must be the same batch"
        )
    gens = None if rng is None or isinstance(rng, np.random.Generator) else per_sample_generators(rng, len(imgs))
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(0)
    g1 = np.zeros_like(a)
    g2 = np.zeros_like(a)
    g3 = np.zeros_like(a)
    last_a = a
    last_g = a
    for _ in range(rounds):
        if gens is None:
            noise = gen.normal(0.0, std, size=imgs.shape)
        else:
            noise = np.stack([g.normal(0.0, std, size=imgs.shape[1:]) for g in gens])
        noisy = imgs + noise.astype(np.float32)
        run_a, run_g = grads_fn(noisy)
        last_a = as_feature_map(run_a, "grads_fn activations")
        last_g = as_feature_map(run_g, "grads_fn gradients")
        same_shape(a, last_a, "activations", "grads_fn activations")
        same_shape(a, last_g, "activations", "grads_fn gradients")
        g1 += last_g
        g2 += last_g**2
        g3 += last_g**3
    g1 /= rounds
    g2 /= rounds
    g3 /= rounds
    denom = 2 * g2 + np.sum(g3 * a, axis=_SPATIAL)[:, :, None, None] + np.float32(eps)
    alpha = g2 / denom
    relu_grad = np.maximum(last_g if torchcam_compat else g1, 0)
    weights = np.sum(alpha * relu_grad, axis=_SPATIAL)
    map_acts = last_a if torchcam_compat else a
    return np.sum(weights[:, :, None, None] * map_acts, axis=1)
