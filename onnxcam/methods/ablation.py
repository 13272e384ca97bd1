"""Ablation-CAM (Desai & Ramaswamy, WACV 2020) with pytorch-grad-cam 1.5.7 semantics.

Each channel of the layer is replaced in turn and the head re-run from the cached activations;
a channel's weight is the relative drop of the target score.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from onnxcam.errors import ArgumentError
from onnxcam.methods._checks import as_feature_map, positive_int, scores_vector

HeadScoreFn = Callable[[np.ndarray, int], np.ndarray]

# pytorch-grad-cam's AblationLayer offset below the minimum when activations can be negative.
ABLATION_OFFSET = 1e7


def ablation_value(sample_acts: np.ndarray) -> float:
    """The value an ablated channel is set to, for one sample ``(C, h, w)``.

    As pytorch-grad-cam's ``AblationLayer``: 0 when the sample's minimum activation is exactly 0
    (the usual post-ReLU case, the paper's zeroing); otherwise ``min - 1e7``, so the channel is
    "off" even for layers with negative values. The reference lowers that value by a further 1e7
    for each later channel in the same batch (it re-reads the minimum after writing); we use the
    same ``min - 1e7`` for every channel, which depends on neither batch size nor position.
    """
    lo = float(sample_acts.min())
    return 0.0 if lo == 0.0 else lo - ABLATION_OFFSET


def ablation_weights(
    acts: np.ndarray,
    head_score_fn: HeadScoreFn,
    original_scores: np.ndarray,
    batch_size: int = 32,
) -> np.ndarray:
    """Ablation-CAM channel weights ``(N, C)``.

    ``head_score_fn(ablated_acts (M, C, h, w), sample_index) -> (M,)`` runs the model from the
    layer to the target score; ``original_scores (N,)`` are the un-ablated target scores. Channels
    are ablated ``batch_size`` at a time (see :func:`ablation_value` for the value used).

    ``weight = (score - ablated) / |score|``. The reference divides by the raw score, which flips
    every weight's sign when the target score is negative (a channel whose removal lowers the
    score would count against the class). Dividing by the magnitude keeps "removal lowers the
    score" positive and equals the reference whenever the score is positive. A score of exactly 0
    divides by 1; the map is min-max normalised afterwards, so only the sign of the divisor matters.
    """
    a = as_feature_map(acts, "activations")
    bs = positive_int(batch_size, "batch_size")
    n, c = a.shape[:2]
    orig = np.asarray(original_scores, dtype=np.float32).reshape(-1)
    if orig.shape != (n,):
        raise ArgumentError(
            f"original_scores has {orig.size} values for a batch of {n} activations; pass one "
            "target score per sample"
        )
    ablated = np.empty((n, c), dtype=np.float32)
    # One (batch, C, h, w) buffer per sample, filled once: each chunk writes its ablated channels
    # and restores them after the head ran, instead of copying the whole sample batch-size times
    # per chunk (that copy cost as much as the head run itself). head_score_fn must not keep the
    # array it is given beyond the call (it is overwritten for the next chunk).
    buf = np.empty((min(bs, c), *a.shape[1:]), dtype=a.dtype)
    for i in range(n):
        sample = a[i]
        value = np.asarray(ablation_value(sample), dtype=a.dtype)
        buf[:] = sample
        for start in range(0, c, bs):
            stop = min(start + bs, c)
            rows, chans = np.arange(stop - start), np.arange(start, stop)
            batch = buf[: stop - start]
            batch[rows, chans] = value
            ablated[i, start:stop] = scores_vector(
                head_score_fn(batch, i), stop - start, "head_score_fn"
            )
            batch[rows, chans] = sample[chans]
    divisor = np.abs(orig)
    divisor[divisor == 0] = 1
    return ((orig[:, None] - ablated) / divisor[:, None]).astype(np.float32)
