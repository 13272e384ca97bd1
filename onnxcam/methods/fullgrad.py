"""FullGrad (Srinivas & Fleuret 2019) with pytorch-grad-cam 1.5.7 semantics, from arrays.

The saliency is ``|input x input-gradient|`` plus, for every bias-carrying layer (Conv/BN, the
BN bias folded as ``beta - mean * gamma / sqrt(var + eps)``), ``|gradient at the layer output x
bias|``; each channel is min-max normalised (eps 1e-7) and resized to the input size, then all
are summed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from onnxcam.errors import ArgumentError
from onnxcam.methods._checks import as_feature_map, check_layout
from onnxcam.methods.maps import NORMALIZE_EPS, resize_maps


def _channel_scaled_sum(terms: np.ndarray) -> np.ndarray:
    """``(N, C, h, w)`` -> per-channel min-max normalised, summed over channels ``(N, h, w)``."""
    flat = terms.reshape(terms.shape[0], terms.shape[1], -1)
    shifted = terms - flat.min(axis=2)[:, :, None, None]
    scale = np.float32(NORMALIZE_EPS) + shifted.reshape(flat.shape).max(axis=2)
    return np.sum(shifted / scale[:, :, None, None], axis=1)


def fullgrad(
    input_grad_x_input: np.ndarray,
    bias_terms: Sequence[tuple[np.ndarray, np.ndarray]],
    input_size: tuple[int, int],
    layout: str = "NCHW",
) -> np.ndarray:
    """FullGrad raw map ``(N, H, W)`` at input size; finish with ``normalize_maps`` (no ReLU needed).

    ``input_grad_x_input``: input x d(score)/d(input), ``(N, Cin, H, W)`` or NHWC per ``layout``.
    ``bias_terms``: one ``(bias (C,), grad_at_output (N, C, h, w))`` pair per bias-carrying layer.

    The reference resizes every channel and then sums; bilinear resizing is linear, so we sum the
    normalised channels first and resize once per layer: same result up to float rounding, C times
    fewer resizes.
    """
    check_layout(layout)
    gxi = np.abs(np.asarray(input_grad_x_input, dtype=np.float32))
    if gxi.ndim != 4:
        raise ArgumentError(
            f"input_grad_x_input must be a 4-D batch in {layout} layout, got shape {tuple(gxi.shape)}"
        )
    if layout == "NHWC":
        gxi = gxi.transpose(0, 3, 1, 2)
    size = (int(input_size[0]), int(input_size[1]))
    total = resize_maps(_channel_scaled_sum(gxi), size)
    for k, (bias, grads) in enumerate(bias_terms):
        g = as_feature_map(grads, f"bias term {k} gradient")
        b = np.asarray(bias, dtype=np.float32).reshape(-1)
        if b.shape[0] != g.shape[1] or g.shape[0] != gxi.shape[0]:
            raise ArgumentError(
                f"bias term {k}: bias has {b.shape[0]} values and its gradient shape "
                f"{tuple(g.shape)}; expected ({gxi.shape[0]}, {b.shape[0]}, h, w)"
            )
        total = total + resize_maps(_channel_scaled_sum(np.abs(b[None, :, None, None] * g)), size)
    return total.astype(np.float32, copy=False)
