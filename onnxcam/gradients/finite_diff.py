"""Finite-difference gradients of a batched score function, in float64 arithmetic (pure numpy).

``score_fn(A_rows, samples)`` gets activations ``A_rows: (M, C, h, w)`` and ``samples: (M,)``, the
index of the original sample each row perturbs (so the caller can feed that sample's other head
inputs and target), and returns the ``(M,)`` target scores, typically by running an onnxruntime
session in chunks of ``batch_size`` rows.

Step size: ``eps`` is relative; the absolute step for sample n is ``eps * rms(A[n])`` so that it
scales with the activations (default ``1e-3``). Central differences have truncation error
O(step^2 * f''') and rounding error about ``u * |score| / step`` (u ~ 6e-8 for float32 heads), so
on a float32 head with activations of unit scale the result is typically accurate to 1e-3..1e-4
relative; kinks (ReLU, max) that fall inside the +-step window add error of the order of the
fraction of such elements. Channel gradients are exact sums of elementwise gradients along the
all-ones direction, so they need 2*C evaluations per sample instead of 2*C*h*w.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from onnxcam.errors import ArgumentError

ScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]

DEFAULT_EPS = 1e-3
# One element moves a float32 score by ~1/size of what a direction over all elements does, so
# rounding (u * |score| / step) swamps it at 1e-3: measured on the zoo heads, element-wise errors
# drop from 2-6e-2 at 1e-3 to <= 7e-3 at 1e-2 (smooth heads lose nothing to truncation there).
ELEMENTWISE_EPS = 1e-2


def _steps(a: np.ndarray, eps: float) -> np.ndarray:
    """Per-sample absolute step ``eps * rms(A[n])``: (N,) float64."""
    if eps <= 0:
        raise ArgumentError(f"finite-difference eps must be > 0, got {eps}")
    flat = a.reshape(a.shape[0], -1).astype(np.float64)
    rms = np.sqrt(np.mean(flat * flat, axis=1))
    return eps * np.where(rms > 0, rms, 1.0)


Directions = Callable[[np.ndarray], np.ndarray]


def _central(score_fn: ScoreFn, a: np.ndarray, directions: Directions | np.ndarray, samples: np.ndarray,
             steps: np.ndarray, batch_size: int) -> np.ndarray:
    """(score(A[s] + h d) - score(A[s] - h d)) / 2h for each row (direction d, sample s).

    ``directions`` is an ``(M, ...)`` array or a function of row indices returning those rows'
    directions: rows are perturbed and scored ``batch_size`` at a time, so memory holds one chunk
    of perturbed activations, never all ``M`` of them."""
    if batch_size < 1:
        raise ArgumentError(f"finite-difference batch_size must be >= 1, got {batch_size}")
    out = np.empty(samples.shape[0], dtype=np.float64)
    for start in range(0, samples.shape[0], batch_size):
        rows = np.arange(start, min(start + batch_size, samples.shape[0]))
        d = directions(rows) if callable(directions) else directions[rows]
        s = samples[rows]
        base = a[s].astype(np.float64)
        h = steps[s].reshape(-1, *([1] * (a.ndim - 1)))
        plus = np.asarray(score_fn((base + h * d).astype(a.dtype), s), dtype=np.float64).reshape(-1)
        minus = np.asarray(score_fn((base - h * d).astype(a.dtype), s), dtype=np.float64).reshape(-1)
        out[rows] = (plus - minus) / (2.0 * steps[s])
    return out


def channel_gradients(score_fn: ScoreFn, a: np.ndarray, eps: float = DEFAULT_EPS, batch_size: int = 64) -> np.ndarray:
    """Spatial sums of d score / d A per channel: ``A: (N, C, h, w)`` -> ``(N, C)`` float64.

    ``2 * N * C`` head runs of one row each, ``batch_size`` rows per run."""
    n, c = a.shape[:2]
    samples = np.repeat(np.arange(n), c)

    def directions(rows: np.ndarray) -> np.ndarray:
        d = np.zeros((rows.size, *a.shape[1:]), dtype=np.float64)
        d[np.arange(rows.size), rows % c] = 1.0
        return d

    return _central(score_fn, a, directions, samples, _steps(a, eps), batch_size).reshape(n, c)


def elementwise_gradients(
    score_fn: ScoreFn, a: np.ndarray, eps: float = ELEMENTWISE_EPS, batch_size: int = 64
) -> np.ndarray:
    """d score / d A for every element (2 * A.size evaluations: small heads only): ``(N, C, h, w)``."""
    n = a.shape[0]
    per_sample = int(np.prod(a.shape[1:]))
    samples = np.repeat(np.arange(n), per_sample)

    def directions(rows: np.ndarray) -> np.ndarray:
        d = np.zeros((rows.size, per_sample), dtype=np.float64)
        d[np.arange(rows.size), rows % per_sample] = 1.0
        return d.reshape(rows.size, *a.shape[1:])

    return _central(score_fn, a, directions, samples, _steps(a, eps), batch_size).reshape(a.shape)


def directional_check(
    score_fn: ScoreFn,
    a: np.ndarray,
    grads: np.ndarray,
    n_directions: int = 4,
    rng: np.random.Generator | None = None,
    eps: float = DEFAULT_EPS,
    per_channel: bool = False,
) -> float:
    """Relative error ``|FD - <grads, d>| / max(|FD|, |<grads, d>|)`` over random directions d.

    Directions are standard normal per element, or with ``per_channel`` one normal value per channel
    spread over its positions: that checks the channel sums of the gradients (what channel-weight
    methods consume) and is far less sensitive to kinks (clips) that element-wise directions cross.
    The error is the norm over all (sample, direction) pairs, so one badly wrong sample shows.
    Returns 0.0 when both sides vanish.
    """
    if grads.shape != a.shape:
        raise ArgumentError(f"gradient shape {grads.shape} does not match activation shape {a.shape}")
    rng = rng if rng is not None else np.random.default_rng(0)
    n = a.shape[0]
    if per_channel and a.ndim == 4:
        directions = np.broadcast_to(rng.standard_normal((n_directions * n, a.shape[1], 1, 1)),
                                     (n_directions * n, *a.shape[1:]))
    else:
        directions = rng.standard_normal((n_directions * n, *a.shape[1:]))
    samples = np.tile(np.arange(n), n_directions)
    fd = _central(score_fn, a, directions, samples, _steps(a, eps), max(2, 2 * n))
    flat_g = grads.reshape(n, -1).astype(np.float64)[samples]
    predicted = np.sum(flat_g * directions.reshape(directions.shape[0], -1), axis=1)
    scale = max(float(np.linalg.norm(fd)), float(np.linalg.norm(predicted)))
    return 0.0 if scale == 0.0 else float(np.linalg.norm(fd - predicted) / scale)
