"""Attention-based maps for vision transformers, as pure numpy functions.

Each block's attention is ``(N, heads, T, T)`` (rows: the attending token, columns: attended);
tokens are ``prefix`` tokens (class, distillation, registers) then an ``h x w`` grid of patches.

- Attention rollout (Abnar & Zuidema 2020): per block, heads fused, the residual added as
  ``0.5 A + 0.5 I`` (rows renormalised), multiplied from the first block to the last.
- Gradient-weighted attention (Chefer, Gur & Wolf 2021, "Generic attention-model explainability"):
  ``R = I``; per block ``R += mean_h((dS/dA * A)^+) @ R``.

A map is the readout token's row of the result over the patch columns (``token_map``).

Attention over unfolded patches (MobileViT) runs on ``rows = N x P`` sequences of an ``h x w`` map cut
into ``ph x pw`` patches: sequence ``(n, o)`` holds the ``T = (h / ph) (w / pw)`` places of image ``n`` at
offset ``o`` inside their patch. Each sequence is rolled out on its own, exactly as above (there is
no prefix token, so the readout is the mean of the query rows, as ``token_map`` reads a pooled
transformer); ``fold_tokens`` puts every token's value back at its place on the map. Which place each
token holds is read from the model (``token_places``), never assumed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

HeadFusion = Literal["mean", "max", "min"]


def _fuse(a: np.ndarray, how: HeadFusion) -> np.ndarray:
    """``(N, heads, T, T)`` -> ``(N, T, T)``."""
    if how == "mean":
        return a.mean(axis=1)
    if how == "max":
        return a.max(axis=1)
    if how == "min":
        return a.min(axis=1)
    raise ValueError(f"unknown head fusion {how!r}: use mean, max or min")


def attention_rollout(
    attentions: Sequence[np.ndarray], head_fusion: HeadFusion = "mean", discard_ratio: float = 0.0
) -> np.ndarray:
    """Rolled-out attention ``(N, T, T)`` from per-block attentions ``(N, heads, T, T)`` in block order.

    ``discard_ratio``: the fraction of each fused matrix's smallest entries set to zero before the
    residual is added (the class token's own column is kept), as in the ``vit-explain`` reference; 0
    is Abnar & Zuidema's original.
    """
    if not attentions:
        raise ValueError("attention rollout needs at least one attention matrix")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    n, _, t, _ = attentions[0].shape
    eye = np.eye(t, dtype=np.float64)
    result = np.broadcast_to(eye, (n, t, t)).copy()
    for att in attentions:
        a = _fuse(np.asarray(att, dtype=np.float64), head_fusion)
        if discard_ratio > 0:
            flat = a.reshape(n, -1).copy()
            k = int(flat.shape[1] * discard_ratio)
            drop = np.argsort(flat, axis=1)[:, :k]
            drop = np.where(drop == 0, 1, drop)  # keep the first token's attention to itself
            np.put_along_axis(flat, drop, 0.0, axis=1)
            a = flat.reshape(n, t, t)
        a = 0.5 * a + 0.5 * eye
        a = a / a.sum(axis=-1, keepdims=True)
        result = a @ result
    return result


def gradient_attention(attentions: Sequence[np.ndarray], gradients: Sequence[np.ndarray]) -> np.ndarray:
    """Chefer et al. 2021 relevance ``(N, T, T)`` from per-block attentions and the target's gradients
    w.r.t. them (both ``(N, heads, T, T)``, block order)."""
    if not attentions or len(attentions) != len(gradients):
        raise ValueError("gradient-weighted attention needs one gradient per attention matrix (and at least one)")
    n, _, t, _ = attentions[0].shape
    r = np.broadcast_to(np.eye(t, dtype=np.float64), (n, t, t)).copy()
    for att, grad in zip(attentions, gradients):
        cam = np.maximum(np.asarray(grad, dtype=np.float64) * np.asarray(att, dtype=np.float64), 0.0).mean(axis=1)
        r = r + cam @ r
    return r


def readout(relevance: np.ndarray, prefix: int) -> np.ndarray:
    """The readout row(s) of ``relevance`` ``(N, T, T)`` over the patch columns: ``(N, T - prefix)``.

    The readout is the first token (the class token) when there is a prefix; without one (pooled
    transformers, unfolded patches) every token reads out, so the rows are averaged.
    """
    rows = relevance[:, 0, :] if prefix > 0 else relevance.mean(axis=1)
    return rows[:, prefix:]


def token_map(relevance: np.ndarray, prefix: int, grid: tuple[int, int]) -> np.ndarray:
    """The patch columns of the readout row(s) of ``relevance`` ``(N, T, T)`` (see ``readout``) as maps
    ``(N, h, w)``."""
    n = relevance.shape[0]
    return readout(relevance, prefix).reshape(n, grid[0], grid[1]).astype(np.float32)


def token_places(coded: np.ndarray, places: int) -> np.ndarray:
    """Which place of the map each token holds: ``(rows, T)`` indices ``(n h + y) w + x``.

    ``coded`` ``(rows, T, D)``: the tokens made from a map whose every channel at each place held that
    place's index (the model's rearrangement run on index codes). Raises ValueError unless every token
    holds one place and every place ``0 .. places - 1`` is in exactly one token.
    """
    if coded.ndim != 3 or coded.shape[2] == 0:
        raise ValueError(f"tokens must be (rows, T, D), got {coded.shape}")
    held = coded[:, :, 0]
    if not np.array_equal(coded, np.broadcast_to(held[:, :, None], coded.shape)):
        raise ValueError("a token mixes several places of the map")
    if held.size != places or not np.array_equal(np.sort(held, axis=None), np.arange(places)):
        raise ValueError(f"the {held.size} tokens do not hold each of the map's {places} places once")
    return held.astype(np.int64)


def unfolded_patch(places: np.ndarray, shape: tuple[int, int, int]) -> tuple[int, int] | None:
    """The patch ``(ph, pw)`` when each row of ``places`` ``(rows, T)`` (see ``token_places``) is one
    image's places ``(oy + ph i, ox + pw j)`` for every ``i < h / ph``, ``j < w / pw``: a sequence that
    spans the whole ``(n, h, w)`` map, the same patch in every row. None otherwise, e.g. for windows
    (contiguous tiles that each cover a part of the map)."""
    _, h, w = shape
    image, y, x = places // (h * w), places // w % h, places % w
    if not np.array_equal(image, np.broadcast_to(image[:, :1], image.shape)):
        return None
    patch: tuple[int, int] | None = None
    for ys, xs in zip(y, x):
        steps = []
        for along, size in ((np.unique(ys), h), (np.unique(xs), w)):
            step = size // len(along)
            if len(along) * step != size or not np.array_equal(along, along[0] + step * np.arange(len(along))):
                return None
            steps.append(step)
        if len(np.unique(ys)) * len(np.unique(xs)) != len(ys) or (patch is not None and patch != tuple(steps)):
            return None
        patch = (steps[0], steps[1])
    return patch


def fold_tokens(values: np.ndarray, places: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Per-token ``values`` ``(rows, T)`` put back at their ``places`` (see ``token_places``): maps ``shape``
    ``(n, h, w)``."""
    out = np.empty(int(np.prod(shape)), dtype=np.float32)
    out[places.ravel()] = values.ravel()
    return out.reshape(shape)
