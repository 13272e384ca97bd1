"""Deletion and insertion curves (RISE; Petsiuk, Das, Saenko, BMVC 2018, arXiv:1806.07421).

Pixels are visited in decreasing map order. *Deletion* replaces them by a baseline, step by
step, and records the class probability: a faithful map makes it fall fast (low AUC).
*Insertion* starts from a blurred copy and restores the original pixels in the same order: a
faithful map makes the probability rise fast (high AUC).

Conventions (documented because papers and libraries differ):

* ``steps`` steps give ``steps + 1`` points; after step ``k`` the top
  ``round(k * H * W / steps)`` pixels are changed, so the last point is the fully deleted
  (baseline) or fully restored (original) image. The x axis is that count divided by ``H * W``.
* AUC is the trapezoidal area under the curve on that [0, 1] x axis (RISE's ``auc`` with uniform
  steps is the same number).
* Ties in the map are broken by row-major pixel order (a stable sort), so results are
  deterministic.
* The blurred substrate is ``cv2.GaussianBlur(image, (11, 11), sigmaX=5)`` per channel with
  OpenCV's default reflect-101 border; RISE uses the same 11-tap, sigma-5 kernel but zero padding,
  so values differ slightly within 5 pixels of the border.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import cv2
import numpy as np
from numpy.typing import ArrayLike, NDArray

from onnxcam.errors import ArgumentError
from onnxcam.metrics._common import (
    BatchBuilder,
    Predict,
    check_batch_size,
    check_classes,
    check_images,
    check_layout,
    check_maps,
    class_scores,
    expand_spatial,
    from_hwc,
    spatial_size,
    to_hwc,
)

Baseline = Literal["zero", "blur"]

BLUR_KSIZE = 11
BLUR_SIGMA = 5.0


class DeletionInsertion(NamedTuple):
    """Result of :func:`deletion_insertion`."""

    fractions: NDArray[np.float64]
    """``(steps + 1,)`` fraction of pixels deleted / inserted at each point."""
    deletion_curves: NDArray[np.float64]
    """``(N, steps + 1)`` class probability while deleting."""
    insertion_curves: NDArray[np.float64]
    """``(N, steps + 1)`` class probability while inserting."""
    deletion_auc: NDArray[np.float64]
    """``(N,)`` area under the deletion curve (lower is better)."""
    insertion_auc: NDArray[np.float64]
    """``(N,)`` area under the insertion curve (higher is better)."""


def blur_images(
    images: NDArray[np.float32], layout: str, ksize: int = BLUR_KSIZE, sigma: float = BLUR_SIGMA
) -> NDArray[np.float32]:
    """Gaussian-blurred copy of a batch: ``cv2.GaussianBlur((ksize, ksize), sigma)`` per image."""
    if ksize < 1 or ksize % 2 == 0:
        raise ArgumentError(f"blur_ksize={ksize} must be a positive odd integer (RISE uses 11).")
    if sigma <= 0:
        raise ArgumentError(f"blur_sigma={sigma} must be > 0 (RISE uses 5).")
    out = np.empty_like(images)
    for i in range(images.shape[0]):
        hwc = np.ascontiguousarray(to_hwc(images[i], layout))
        blurred = cv2.GaussianBlur(hwc, (ksize, ksize), sigmaX=sigma, sigmaY=sigma)
        # OpenCV drops a trailing channel axis of length 1.
        out[i] = from_hwc(np.asarray(blurred, dtype=np.float32).reshape(hwc.shape), layout)
    return out


def pixel_ranks(maps: NDArray[np.float32]) -> NDArray[np.int64]:
    """``(N, H, W)`` rank of each pixel in decreasing map order (0 = most relevant)."""
    n = maps.shape[0]
    flat = maps.reshape(n, -1)
    order = np.argsort(-flat, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(flat.shape[1])[None, :].repeat(n, axis=0), axis=1)
    return ranks.reshape(maps.shape)


def _auc(curves: NDArray[np.float64], x: NDArray[np.float64]) -> NDArray[np.float64]:
    # Written out because numpy renamed trapz to trapezoid in 2.0 and the project supports 1.24+.
    return np.asarray(((curves[:, 1:] + curves[:, :-1]) / 2.0 * np.diff(x)[None, :]).sum(axis=1))


def _substrate(
    kind: str, images: NDArray[np.float32], layout: str, ksize: int, sigma: float, name: str
) -> NDArray[np.float32]:
    if kind == "zero":
        return np.zeros_like(images)
    if kind == "blur":
        return blur_images(images, layout, ksize, sigma)
    raise ArgumentError(f"{name}={kind!r} is not supported; pass 'zero' or 'blur'.")


def deletion_insertion(
    predict: Predict,
    images: ArrayLike,
    maps: ArrayLike,
    classes: int | Sequence[int] | ArrayLike,
    steps: int = 32,
    batch_size: int = 32,
    baseline: Baseline = "zero",
    insertion_baseline: Baseline = "blur",
    layout: str = "NCHW",
    blur_ksize: int = BLUR_KSIZE,
    blur_sigma: float = BLUR_SIGMA,
) -> DeletionInsertion:
    """RISE deletion and insertion curves and their AUCs for each image.

    Args:
        predict: ``(M, ...) float32 -> (M, K)`` softmax probabilities.
        images: ``(N, C, H, W)`` / ``(N, H, W, C)`` preprocessed model inputs.
        maps: ``(N, H, W)`` saliency at input resolution (only the order matters).
        classes: class index per image ``(N,)`` or one for all.
        steps: number of steps; each curve has ``steps + 1`` points (RISE used 224 pixels per
            step on 224 x 224 inputs, i.e. ``steps=224``).
        batch_size: images per ``predict`` call; steps of several images share a call.
        baseline: value deleted pixels take: ``"zero"`` (RISE; the dataset mean for
            mean-normalised inputs) or ``"blur"``.
        insertion_baseline: the image insertion starts from: ``"blur"`` (RISE) or ``"zero"``.
        layout: "NCHW" or "NHWC".
        blur_ksize, blur_sigma: Gaussian kernel of the blurred substrate.

    Returns:
        :class:`DeletionInsertion` with curves ``(N, steps + 1)`` and AUCs ``(N,)``.
    """
    layout = check_layout(layout)
    bs = check_batch_size(batch_size)
    if int(steps) != steps or steps < 1:
        raise ArgumentError(f"steps={steps!r} must be a positive integer (e.g. 32).")
    steps = int(steps)
    imgs = check_images(images, layout)
    n = imgs.shape[0]
    h, w = spatial_size(imgs, layout)
    ranks = pixel_ranks(check_maps(maps, n, (h, w)))
    cls = check_classes(classes, n)
    counts = np.rint(np.arange(steps + 1) * (h * w) / steps).astype(np.int64)
    fractions = counts / float(h * w)
    points = steps + 1

    deleted = _substrate(baseline, imgs, layout, blur_ksize, blur_sigma, "baseline")
    start_img = _substrate(insertion_baseline, imgs, layout, blur_ksize, blur_sigma, "insertion_baseline")

    def make_builder(changed: NDArray[np.float32], unchanged: NDArray[np.float32]) -> BatchBuilder:
        def build(start: int, stop: int) -> NDArray[np.float32]:
            # Job j is image j // points at step j % points; the mask is built for the whole
            # batch at once rather than image by image.
            idx = np.arange(start, stop)
            img_idx, step_idx = idx // points, idx % points
            top = ranks[img_idx] < counts[step_idx][:, None, None]
            return np.where(expand_spatial(top, layout), changed[img_idx], unchanged[img_idx])

        return build

    job_cls = np.repeat(cls, points)
    del_curves = class_scores(predict, make_builder(deleted, imgs), n * points, job_cls, bs)
    ins_curves = class_scores(predict, make_builder(imgs, start_img), n * points, job_cls, bs)
    del_curves = del_curves.reshape(n, points)
    ins_curves = ins_curves.reshape(n, points)
    return DeletionInsertion(
        fractions=fractions,
        deletion_curves=del_curves,
        insertion_curves=ins_curves,
        deletion_auc=_auc(del_curves, fractions),
        insertion_auc=_auc(ins_curves, fractions),
    )
