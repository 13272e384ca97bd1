"""Average Drop and Increase in Confidence (Chattopadhyay et al., Grad-CAM++, WACV 2018).

Chattopadhay, Sarkar, Howlader, Balasubramanian: "Grad-CAM++: Generalized Gradient-based
Visual Explanations for Deep Convolutional Networks", WACV 2018, section 5.1 (arXiv:1710.11063).
The image is multiplied by its map; a faithful map keeps the class probability (small drop) and
sometimes raises it (increase). pytorch-grad-cam's ``DropInConfidence`` / ``IncreaseInConfidence``
compute the same per-image quantities, un-normalised by ``Y`` for the drop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from onnxcam.metrics._common import (
    Predict,
    check_batch_size,
    check_classes,
    check_images,
    check_layout,
    check_maps,
    class_scores,
    expand_spatial,
    spatial_size,
)


class AverageDropIncrease(NamedTuple):
    """Result of :func:`average_drop_increase`."""

    average_drop: float
    """Mean of ``max(0, Y - O) / Y`` over images, in percent (lower is better)."""
    increase_in_confidence: float
    """Percentage of images with ``O > Y`` (higher is better)."""
    drop: NDArray[np.float64]
    """``(N,)`` per-image ``max(0, Y - O) / Y * 100``."""
    increased: NDArray[np.bool_]
    """``(N,)`` per-image ``O > Y``."""
    original: NDArray[np.float64]
    """``(N,)`` ``Y``: class score on the image."""
    masked: NDArray[np.float64]
    """``(N,)`` ``O``: class score on ``image * map``."""


def average_drop_increase(
    predict: Predict,
    images: ArrayLike,
    maps: ArrayLike,
    classes: int | Sequence[int] | ArrayLike,
    batch_size: int = 32,
    layout: str = "NCHW",
) -> AverageDropIncrease:
    """Average Drop % and Increase in Confidence % of ``maps`` (Grad-CAM++, eq. 19-20).

    ``Y`` is the class probability on the image, ``O`` on ``image * map`` (map broadcast over
    channels). ``drop = mean(max(0, Y - O) / Y) * 100``; ``increase = mean(O > Y) * 100``.
    An image with ``Y == 0`` contributes a drop of 0 (``O`` cannot be lower).

    Args:
        predict: ``(M, ...) float32 -> (M, K)`` softmax probabilities.
        images: ``(N, C, H, W)`` or ``(N, H, W, C)`` preprocessed model inputs.
        maps: ``(N, H, W)`` in [0, 1] at input resolution.
        classes: class index per image ``(N,)`` or one for all.
        batch_size: images per ``predict`` call; the 2N forwards are packed together.
        layout: "NCHW" or "NHWC".

    Returns:
        :class:`AverageDropIncrease`; ``result[:2]`` is ``(average_drop, increase_in_confidence)``.
    """
    layout = check_layout(layout)
    bs = check_batch_size(batch_size)
    imgs = check_images(images, layout)
    n = imgs.shape[0]
    cams = check_maps(maps, n, spatial_size(imgs, layout))
    cls = check_classes(classes, n)
    weights = expand_spatial(cams, layout)

    def build(start: int, stop: int) -> NDArray[np.float32]:
        # Jobs 0..N-1 are the originals, N..2N-1 the masked copies, so one batch may mix both.
        idx = np.arange(start, stop)
        src = idx % n
        out = imgs[src].copy()
        masked = idx >= n
        out[masked] *= weights[src[masked]]
        return out

    scores = class_scores(predict, build, 2 * n, np.concatenate([cls, cls]), bs)
    y, o = scores[:n], scores[n:]
    drop = np.divide(np.maximum(0.0, y - o), y, out=np.zeros(n), where=y > 0) * 100.0
    increased = o > y
    return AverageDropIncrease(
        average_drop=float(drop.mean()),
        increase_in_confidence=float(increased.mean() * 100.0),
        drop=drop,
        increased=increased,
        original=y,
        masked=o,
    )
