"""Comparing two explanations: rank correlation, Pearson, top-region IoU, and the sanity check.

* Sanity check by cascading model randomisation: Adebayo, Gilmer, Muelly, Goodfellow, Hardt,
  Kim, "Sanity Checks for Saliency Maps", NeurIPS 2018 (arXiv:1810.03292). Layers are
  re-initialised from the top down; a method that depends on the model must produce maps whose
  Spearman rank correlation with the original falls towards 0. The caller supplies one explain
  function per randomisation step; this module only scores them.
* Spearman's rho with average ranks for ties (Spearman 1904; the convention of
  ``scipy.stats.spearmanr``) is computed here in numpy: Pearson's r of the average ranks.

A correlation with a constant map is undefined: it is NaN, with an
:class:`~onnxcam.errors.OnnxCamWarning`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from onnxcam.errors import ArgumentError, InputError, OnnxCamWarning

ExplainFn = Callable[[NDArray[np.float32]], ArrayLike]
"""``explain(images) -> (N, H, W)`` maps."""


def _pair(map_a: ArrayLike, map_b: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    a = np.asarray(map_a, dtype=np.float64)
    b = np.asarray(map_b, dtype=np.float64)
    if a.shape != b.shape or a.size == 0:
        raise InputError(f"maps have shapes {a.shape} and {b.shape}; compare two non-empty maps of the same shape.")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise InputError("a map contains NaN or Inf; compare finite maps.")
    return a.ravel(), b.ravel()


def average_ranks(values: ArrayLike) -> NDArray[np.float64]:
    """1-based ranks of the flattened ``values``, ties given the mean of their ranks."""
    x = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], x.size]
    # A tie group occupying sorted positions s..e-1 has 1-based ranks s+1..e; their mean.
    group_rank = (starts + 1 + ends) / 2.0
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat(group_rank, ends - starts)
    return ranks


def _pearson_flat(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    da, db = a - a.mean(), b - b.mean()
    denom = np.sqrt((da * da).sum() * (db * db).sum())
    if denom == 0:
        warnings.warn("correlation with a constant map is undefined; returning NaN.", OnnxCamWarning, stacklevel=3)
        return float("nan")
    return float(np.clip((da * db).sum() / denom, -1.0, 1.0))


def pearson(map_a: ArrayLike, map_b: ArrayLike) -> float:
    """Pearson correlation of two maps of the same shape (flattened)."""
    a, b = _pair(map_a, map_b)
    return _pearson_flat(a, b)


def rank_correlation(map_a: ArrayLike, map_b: ArrayLike) -> float:
    """Spearman's rank correlation of two maps of the same shape, ties averaged."""
    a, b = _pair(map_a, map_b)
    return _pearson_flat(average_ranks(a), average_ranks(b))


def top_region_iou(map_a: ArrayLike, map_b: ArrayLike, fraction: float = 0.2) -> float:
    """IoU of the top ``fraction`` pixels of each map.

    Exactly ``round(fraction * size)`` pixels (at least one) are taken per map; ties at the
    cut are broken by row-major order, so two identical maps always give 1.
    """
    if not 0 < fraction <= 1:
        raise ArgumentError(f"fraction={fraction} must be in (0, 1] (e.g. 0.2 for the top 20 % of pixels).")
    a, b = _pair(map_a, map_b)
    k = max(1, int(np.rint(fraction * a.size)))
    top_a = np.zeros(a.size, dtype=bool)
    top_b = np.zeros(b.size, dtype=bool)
    top_a[np.argsort(-a, kind="stable")[:k]] = True
    top_b[np.argsort(-b, kind="stable")[:k]] = True
    return float((top_a & top_b).sum() / (top_a | top_b).sum())


def _maps_of(fn: ExplainFn, images: NDArray[np.float32], name: str) -> NDArray[np.float64]:
    maps = np.asarray(fn(images), dtype=np.float64)
    if maps.ndim != 3 or maps.shape[0] != images.shape[0]:
        raise ArgumentError(f"{name} returned shape {maps.shape}; expected (N, H, W) with N={images.shape[0]}.")
    return maps


def sanity_check(
    explain_fn: ExplainFn,
    randomized_explain_fns: Sequence[ExplainFn],
    images: ArrayLike,
    absolute: bool = False,
) -> list[float]:
    """Mean Spearman correlation with the original maps at each cascading-randomisation step.

    Args:
        explain_fn: ``images -> (N, H, W)`` maps of the trained model.
        randomized_explain_fns: one such function per step, the model randomised from the top
            layer down to the step's layer.
        images: the batch to explain, passed unchanged to every function.
        absolute: correlate ``|map|`` (Adebayo et al. report both; CAM maps are usually >= 0).

    Returns:
        One mean correlation per step; images whose correlation is undefined (a constant
        map) are left out of the mean, with a warning. A sound method goes towards 0.
    """
    imgs = np.asarray(images, dtype=np.float32)
    original = _maps_of(explain_fn, imgs, "explain_fn")
    if absolute:
        original = np.abs(original)
    out: list[float] = []
    for step, fn in enumerate(randomized_explain_fns):
        randomized = _maps_of(fn, imgs, f"randomized_explain_fns[{step}]")
        if randomized.shape != original.shape:
            raise ArgumentError(
                f"randomized_explain_fns[{step}] returned shape {randomized.shape}, the original maps "
                f"have {original.shape}; every step must explain the same images at the same size."
            )
        if absolute:
            randomized = np.abs(randomized)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OnnxCamWarning)
            corr = np.array([rank_correlation(o, r) for o, r in zip(original, randomized, strict=True)])
        undefined = int(np.isnan(corr).sum())
        if undefined == corr.size:
            warnings.warn(
                f"step {step}: every map pair is constant; its correlation is NaN.", OnnxCamWarning, stacklevel=2
            )
            out.append(float("nan"))
            continue
        if undefined:
            warnings.warn(
                f"step {step}: {undefined} of {corr.size} map pairs involve a constant map and are left out.",
                OnnxCamWarning,
                stacklevel=2,
            )
        out.append(float(np.nanmean(corr)))
    return out
