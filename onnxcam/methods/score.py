"""Score-CAM (pytorch-grad-cam semantics), Faster-Score-CAM and SS-CAM (torchcam semantics).

The model is re-run on the input multiplied by each channel's upsampled, min-max normalised
activation. The caller supplies ``score_fn(masked_images, sample_index) -> (M,)`` target scores,
so these functions never see a model. Work is chunked by ``batch_size`` masked images, so memory
is ``O(batch_size * image)`` whatever the channel count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np

from onnxcam.errors import ArgumentError
from onnxcam.methods._checks import (
    as_feature_map,
    check_layout,
    positive_int,
    scores_vector,
    spatial_size,
)
from onnxcam.methods.interpolate import resize_bilinear

ScoreFn = Callable[[np.ndarray, int], np.ndarray]

# Both references use 1e-8 in the per-channel min-max normalisation of the masks.
MASK_EPS = 1e-8


def per_sample_generators(
    rng: np.random.Generator | Sequence[np.random.Generator] | None, n: int
) -> list[np.random.Generator]:
    """``n`` generators: one shared (the same object n times, so draws interleave across samples in
    order) or the ``n`` given; ``None`` is a shared ``default_rng(0)``."""
    if rng is None or isinstance(rng, np.random.Generator):
        shared = rng if rng is not None else np.random.default_rng(0)
        return [shared] * n
    gens = list(rng)
    if len(gens) != n:
        raise ArgumentError(f"got {len(gens)} random generators for a batch of {n}: pass one per sample or one shared")
    return gens


def _softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max()
    e = np.exp(shifted)
    return e / e.sum()


def _mask_images(image: np.ndarray, masks: np.ndarray, layout: str) -> np.ndarray:
    """``image`` (one sample, layout without N) times each mask ``(M, H, W)`` -> ``(M, ...)``."""
    if layout == "NCHW":
        return image[None, :, :, :] * masks[:, None, :, :]
    return image[None, :, :, :] * masks[:, :, :, None]


def _chunks(indices: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(indices), size):
        yield indices[start : start + size]


def _min_max(masks: np.ndarray) -> np.ndarray:
    lo = masks.min(axis=(1, 2), keepdims=True)
    hi = masks.max(axis=(1, 2), keepdims=True)
    return (masks - lo) / (hi - lo + np.float32(MASK_EPS))


def _check_images(
    acts: np.ndarray, images: np.ndarray, layout: str, input_size: tuple[int, int] | None
) -> tuple[np.ndarray, tuple[int, int]]:
    check_layout(layout)
    imgs = np.asarray(images, dtype=np.float32)
    size = spatial_size(imgs, layout)
    if input_size is not None and tuple(int(s) for s in input_size) != size:
        raise ArgumentError(
            f"input_size {tuple(input_size)} does not match the images' spatial size {size} "
            f"(images {tuple(imgs.shape)}, layout {layout}); pass the images the model was run on"
        )
    if imgs.shape[0] != acts.shape[0]:
        raise ArgumentError(
            f"images hold {imgs.shape[0]} samples but activations {acts.shape[0]}; they must be "
            "the same batch"
        )
    return imgs, size


def select_channels_by_variance(acts: np.ndarray, max_channels: int) -> np.ndarray:
    """Faster-Score-CAM: indices of the ``max_channels`` channels of highest spatial variance.

    ``acts`` is one sample ``(C, h, w)``; ties keep the lower channel index. Sorted ascending.
    """
    var = acts.reshape(acts.shape[0], -1).astype(np.float64).var(axis=1)
    order = np.argsort(-var, kind="stable")
    return np.sort(order[:max_channels])


def scorecam_weights(
    acts: np.ndarray,
    input_size: tuple[int, int] | None,
    images: np.ndarray,
    score_fn: ScoreFn,
    batch_size: int = 16,
    max_channels: int | None = None,
    layout: str = "NCHW",
    align_corners: bool = True,
) -> np.ndarray:
    """Score-CAM channel weights ``(N, C)`` (pytorch-grad-cam ``ScoreCAM.get_cam_weights``).

    Per channel: upsample the activation to the input size (torch bilinear; ``align_corners=True``
    is ``UpsamplingBilinear2d``, the reference's choice), min-max normalise it with eps 1e-8,
    multiply the image's spatial axes by it (``layout`` 'NCHW' or 'NHWC'), score it; the weights
    are the softmax of the scores over channels.

    Channels that are constant at feature resolution normalise to an all-zero mask, so every one
    of them masks the image to zeros: that score is computed once per sample and reused. (The
    reference computes the same zero mask for all-zero channels; for a constant *non-zero*
    channel torch's float rounding can leave noise that the 1e-8 eps amplifies, and we use the
    exact zero mask instead.)

    ``max_channels=k`` is Faster-Score-CAM: only the k channels of highest spatial variance are
    scored, the softmax runs over those k, and every other channel gets weight 0.
    """
    a = as_feature_map(acts, "activations")
    imgs, size = _check_images(a, images, layout, input_size)
    bs = positive_int(batch_size, "batch_size")
    n, c = a.shape[:2]
    if max_channels is not None:
        positive_int(max_channels, "max_channels")
    weights = np.zeros((n, c), dtype=np.float32)
    for i in range(n):
        sample = a[i]
        kept = (
            np.arange(c)
            if max_channels is None or max_channels >= c
            else select_channels_by_variance(sample, max_channels)
        )
        flat = sample.reshape(c, -1)
        constant = flat.max(axis=1) == flat.min(axis=1)
        scores = np.empty(c, dtype=np.float64)
        const_kept = kept[constant[kept]]
        if const_kept.size:
            zero_image = np.zeros((1, *imgs.shape[1:]), dtype=np.float32)
            scores[const_kept] = scores_vector(score_fn(zero_image, i), 1, "score_fn")[0]
        varying = kept[~constant[kept]]
        for chunk in _chunks(varying, bs):
            masks = _min_max(resize_bilinear(sample[chunk], size, align_corners))
            masked = _mask_images(imgs[i], masks, layout)
            scores[chunk] = scores_vector(score_fn(masked, i), len(chunk), "score_fn")
        weights[i, kept] = _softmax(scores[kept])
    return weights


def sscam_weights(
    acts: np.ndarray,
    images: np.ndarray,
    score_fn: ScoreFn,
    batch_size: int = 32,
    num_samples: int = 35,
    std: float = 2.0,
    rng: np.random.Generator | Sequence[np.random.Generator] | None = None,
    layout: str = "NCHW",
    max_channels: int | None = None,
) -> np.ndarray:
    """SS-CAM channel weights ``(N, C)`` (torchcam 0.5 ``SSCAM``).

    Masks: each channel min-max normalised at feature resolution (eps 1e-8), upsampled with torch
    bilinear ``align_corners=False``; for each of ``num_samples`` rounds, Gaussian noise
    ``N(0, std^2)`` at input resolution is added to the mask (not re-normalised), the image is
    multiplied by it and scored. Weights = softmax over channels of the mean score. torchcam also
    subtracts the clean image's score, a per-sample constant that softmax ignores, so we skip it.

    Noise is drawn from ``rng`` (default ``np.random.default_rng(0)``, so runs repeat) in
    torchcam's order: round, then sample, then channel, each a ``(H, W)`` block. Drawing the same
    stream as one ``(N, C, H, W)`` array per round gives identical noise. ``rng`` may also be one
    generator per sample: sample i then draws only from ``rng[i]`` (rounds, then channels), so its
    weights do not depend on the other samples of the batch.

    ``max_channels=k`` (not in torchcam; as Faster-Score-CAM): per sample only the k channels of
    highest spatial variance are scored (noise is drawn for those only), the softmax runs over
    them, and every other channel gets weight 0.
    """
    a = as_feature_map(acts, "activations")
    imgs, size = _check_images(a, images, layout, None)
    bs = positive_int(batch_size, "batch_size")
    rounds = positive_int(num_samples, "num_samples")
    if not np.isfinite(std) or std < 0:
        raise ArgumentError(f"std must be a finite number >= 0, got {std!r}")
    n, c = a.shape[:2]
    if max_channels is not None:
        positive_int(max_channels, "max_channels")
    gens = per_sample_generators(rng, n)
    flat = a.reshape(n, c, -1)
    lo = flat.min(axis=2)[:, :, None, None]
    shifted = a - lo
    normed = shifted / (shifted.reshape(n, c, -1).max(axis=2)[:, :, None, None] + np.float32(MASK_EPS))
    totals = np.zeros((n, c), dtype=np.float64)
    kept = [
        np.arange(c) if max_channels is None or max_channels >= c else select_channels_by_variance(a[i], max_channels)
        for i in range(n)
    ]
    for _ in range(rounds):
        for i in range(n):
            for chunk in _chunks(kept[i], bs):
                masks = resize_bilinear(normed[i, chunk], size, align_corners=False)
                noise = gens[i].normal(0.0, std, size=masks.shape).astype(np.float32)
                masked = _mask_images(imgs[i], masks + noise, layout)
                totals[i, chunk] += scores_vector(score_fn(masked, i), len(chunk), "score_fn")
    means = totals / rounds
    weights = np.zeros((n, c), dtype=np.float32)
    for i in range(n):
        weights[i, kept[i]] = _softmax(means[i, kept[i]])
    return weights
