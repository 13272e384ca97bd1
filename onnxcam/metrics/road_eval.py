"""ROAD: RemOve And Debias (Rong, Leemann, Borisov, Kasneci, Kasneci, ICML 2022, arXiv:2202.00449).

A fraction of the pixels, most relevant first (MoRF) or least relevant first (LeRF), is removed
and filled by *noisy linear imputation*: each removed pixel equals the weighted mean of its
in-image 8 neighbours (weight 1/6 for the 4 direct neighbours, 1/12 for the 4 diagonal ones),
known neighbours entering as constants, plus Gaussian noise. Imputing from the surroundings
rather than a constant hides the shape of the removed region from the model, which would
otherwise leak class information through the mask itself (the paper's "class information
leakage").

Linear system. The unknowns are the removed pixels only. Row ``i`` reads
``sum_j w_ij x_j - (sum of in-image neighbour weights of i) x_i = -sum_k w_ik v_k``
(``j`` removed neighbours, ``k`` known neighbours with values ``v_k``), exactly the system of the
authors' ``NoisyLinearImputer`` (pytorch-grad-cam 1.5.7, ``metrics/road.py``). The matrix only
depends on the mask, so it is factorised once with SuperLU (``scipy.sparse.linalg.splu``) and
the C channels are solved as one ``(n, C)`` right-hand side. ``-A`` is symmetric and, when at
least one pixel is kept, irreducibly diagonally dominant on every connected removed region, so
the factorisation never meets a singular matrix. SciPy's default COLAMD ordering is kept:
MMD_AT_PLUS_A and SuperLU's symmetric mode were no faster within run-to-run noise on 224 x 224
blob masks, where one factorise-and-solve takes about 0.02 s (10 % removed) to 0.3 s (90 %).
Noise ``noise * N(0, 1)`` is added to the imputed values only.

Conventions:

* ``percentiles`` are the *percentage of pixels removed* (the paper's x axis). pytorch-grad-cam's
  ``ROADMostRelevantFirst(percentile=p)`` keeps the pixels below the ``p``-th percentile, i.e.
  removes ``100 - p`` %; over the symmetric default set 10..90 the averages coincide.
* Exactly ``round(p / 100 * H * W)`` pixels are removed, ranked by the map with ties broken by
  row-major pixel order (pytorch-grad-cam thresholds instead, so ties may move its count).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from onnxcam.errors import ArgumentError, InputError
from onnxcam.metrics._common import (
    Predict,
    check_batch_size,
    check_classes,
    check_images,
    check_layout,
    check_maps,
    class_scores,
    from_hwc,
    spatial_size,
    to_hwc,
)
from onnxcam.metrics.rise import pixel_ranks

Order = Literal["morf", "lerf"]

NEIGHBOUR_WEIGHTS: tuple[tuple[tuple[int, int], float], ...] = (
    ((1, 1), 1 / 12),
    ((0, 1), 1 / 6),
    ((-1, 1), 1 / 12),
    ((1, -1), 1 / 12),
    ((0, -1), 1 / 6),
    ((-1, -1), 1 / 12),
    ((1, 0), 1 / 6),
    ((-1, 0), 1 / 6),
)
"""``((d_row, d_col), weight)`` of the imputation stencil (the ROAD authors' values)."""

DEFAULT_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)


class RoadResult(NamedTuple):
    """Result of :func:`road`."""

    percentiles: NDArray[np.float64]
    """``(P,)`` percentage of pixels removed."""
    order: str
    """"morf" or "lerf"."""
    original: NDArray[np.float64]
    """``(N,)`` class score on the unmodified images."""
    scores: NDArray[np.float64]
    """``(N, P)`` class score after removing and imputing."""
    differences: NDArray[np.float64]
    """``(N, P)`` ``scores - original`` (pytorch-grad-cam's per-percentile value)."""
    mean_difference: NDArray[np.float64]
    """``(N,)`` mean of ``differences`` over percentiles (pytorch-grad-cam's ``*Average``)."""


def noisy_linear_impute(
    image: ArrayLike,
    removed: ArrayLike,
    noise: float = 0.01,
    rng: np.random.Generator | int | None = None,
) -> NDArray[np.float32]:
    """Fill the ``removed`` pixels of one ``(H, W, C)`` image by noisy linear imputation.

    Args:
        image: ``(H, W, C)`` (or ``(H, W)``) values; removed pixels' values are ignored.
        removed: ``(H, W)`` bool, True where the pixel is to be imputed.
        noise: standard deviation of the Gaussian noise added to imputed values (absolute,
            in input units; 0 for none).
        rng: numpy Generator or seed for the noise.

    Returns:
        ``(H, W, C)`` float32 copy (``(H, W)`` if given 2-D) with the removed pixels imputed.
    """
    img = np.asarray(image, dtype=np.float64)
    two_d = img.ndim == 2
    if two_d:
        img = img[..., None]
    mask = np.asarray(removed, dtype=bool)
    if img.ndim != 3 or mask.shape != img.shape[:2]:
        raise InputError(f"image {img.shape} and removed {mask.shape} do not match; expected (H, W, C) and (H, W).")
    h, w, c = img.shape
    out = img.reshape(h * w, c).copy()
    unknown = np.flatnonzero(mask)
    n = unknown.size
    if n == 0:
        return _as_output(out, (h, w, c), two_d)
    if n == h * w:
        raise ArgumentError(
            "noisy_linear_impute needs at least one kept pixel; removing every pixel leaves the "
            "linear system singular. Use a percentage below 100."
        )
    var_of = np.full(h * w, -1, dtype=np.int64)
    var_of[unknown] = np.arange(n)
    rows_u, cols_u = np.divmod(unknown, w)
    diag = np.zeros(n)
    rhs = np.zeros((n, c))
    a_rows: list[NDArray[np.int64]] = []
    a_cols: list[NDArray[np.int64]] = []
    a_vals: list[NDArray[np.float64]] = []
    mask_flat = mask.ravel()
    for (dr, dc), weight in NEIGHBOUR_WEIGHTS:
        rr, cc = rows_u + dr, cols_u + dc
        inside = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        eq = np.flatnonzero(inside)
        nb = rr[inside] * w + cc[inside]
        # Neighbours outside the image drop out and the remaining weights are renormalised
        # through the diagonal, as in the authors' implementation.
        diag[eq] += weight
        nb_unknown = mask_flat[nb]
        a_rows.append(eq[nb_unknown])
        a_cols.append(var_of[nb[nb_unknown]])
        a_vals.append(np.full(int(nb_unknown.sum()), weight))
        # One offset touches each equation at most once, so fancy-index subtraction is safe.
        rhs[eq[~nb_unknown]] -= weight * out[nb[~nb_unknown]]
    a_rows.append(np.arange(n))
    a_cols.append(np.arange(n))
    a_vals.append(-diag)
    # scipy is imported here: it costs ~0.1 s, and only ROAD needs it.
    import scipy.sparse as sp
    from scipy.sparse.linalg import splu

    matrix = sp.csc_matrix((np.concatenate(a_vals), (np.concatenate(a_rows), np.concatenate(a_cols))), shape=(n, n))
    solution = splu(matrix).solve(rhs)
    if noise:
        solution = solution + float(noise) * np.random.default_rng(rng).standard_normal((n, c))
    out[unknown] = solution
    return _as_output(out, (h, w, c), two_d)


def _as_output(flat: NDArray[np.float64], shape: tuple[int, int, int], two_d: bool) -> NDArray[np.float32]:
    img = flat.reshape(shape).astype(np.float32)
    return img[..., 0] if two_d else img


def removal_masks(maps: NDArray[np.float32], percentiles: NDArray[np.float64], order: str) -> NDArray[np.bool_]:
    """``(N, P, H, W)`` True where a pixel is removed at each percentage."""
    n, h, w = maps.shape
    ranks = pixel_ranks(maps)
    if order == "lerf":
        ranks = h * w - 1 - ranks
    counts = np.rint(percentiles / 100.0 * h * w).astype(np.int64)
    return ranks[:, None] < counts[None, :, None, None]


def road(
    predict: Predict,
    images: ArrayLike,
    maps: ArrayLike,
    classes: int | Sequence[int] | ArrayLike,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    order: Order = "morf",
    noise: float = 0.01,
    rng: np.random.Generator | int | None = None,
    batch_size: int = 32,
    layout: str = "NCHW",
) -> RoadResult:
    """ROAD scores: class score after removing ``percentiles`` % of pixels in ``order``.

    MoRF: a faithful map makes the score fall fast (more negative differences). LeRF: it makes
    the score stay high. :func:`road_combined` gives the authors' single number.

    Args:
        predict: ``(M, ...) float32 -> (M, K)`` probabilities (or scores).
        images: ``(N, C, H, W)`` / ``(N, H, W, C)`` preprocessed model inputs.
        maps: ``(N, H, W)`` saliency at input resolution.
        classes: class index per image ``(N,)`` or one for all.
        percentiles: percentages of pixels removed, each in (0, 100).
        order: "morf" (most relevant first) or "lerf" (least relevant first).
        noise: standard deviation of the imputation noise, in input units.
        rng: numpy Generator or seed; images are imputed in order, so a seed reproduces a run.
        batch_size: images per ``predict`` call (imputed images of several percentiles and
            images share a call).
        layout: "NCHW" or "NHWC".
    """
    layout = check_layout(layout)
    bs = check_batch_size(batch_size)
    if order not in ("morf", "lerf"):
        raise ArgumentError(f"order={order!r} is not supported; pass 'morf' or 'lerf'.")
    pct = np.asarray(percentiles, dtype=np.float64).reshape(-1)
    if pct.size == 0 or np.any(pct <= 0) or np.any(pct >= 100):
        raise ArgumentError(f"percentiles={list(percentiles)!r} must be non-empty, each in (0, 100).")
    imgs = check_images(images, layout)
    n = imgs.shape[0]
    cams = check_maps(maps, n, spatial_size(imgs, layout))
    cls = check_classes(classes, n)
    generator = np.random.default_rng(rng)
    masks = removal_masks(cams, pct, order)
    p = pct.size

    def build(start: int, stop: int) -> NDArray[np.float32]:
        # Jobs 0..N-1 are the originals; job N + i*P + j is image i with percentage j removed.
        out = np.empty((stop - start, *imgs.shape[1:]), dtype=np.float32)
        for slot, job in enumerate(range(start, stop)):
            if job < n:
                out[slot] = imgs[job]
                continue
            i, j = divmod(job - n, p)
            filled = noisy_linear_impute(to_hwc(imgs[i], layout), masks[i, j], noise, generator)
            out[slot] = from_hwc(filled, layout)
        return out

    job_cls = np.concatenate([cls, np.repeat(cls, p)])
    scores = class_scores(predict, build, n + n * p, job_cls, bs)
    original = scores[:n]
    after = scores[n:].reshape(n, p)
    diff = after - original[:, None]
    return RoadResult(
        percentiles=pct,
        order=order,
        original=original,
        scores=after,
        differences=diff,
        mean_difference=diff.mean(axis=1),
    )


def road_combined(
    predict: Predict,
    images: ArrayLike,
    maps: ArrayLike,
    classes: int | Sequence[int] | ArrayLike,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    noise: float = 0.01,
    rng: np.random.Generator | int | None = None,
    batch_size: int = 32,
    layout: str = "NCHW",
) -> NDArray[np.float64]:
    """``(N,)`` ``(mean LeRF difference - mean MoRF difference) / 2`` (pytorch-grad-cam ``ROADCombined``).

    Higher is better: removing unimportant pixels should hurt less than removing important ones.
    """
    generator = np.random.default_rng(rng)
    lerf = road(predict, images, maps, classes, percentiles, "lerf", noise, generator, batch_size, layout)
    morf = road(predict, images, maps, classes, percentiles, "morf", noise, generator, batch_size, layout)
    return np.asarray((lerf.mean_difference - morf.mean_difference) / 2.0)
