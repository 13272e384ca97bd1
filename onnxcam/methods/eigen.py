"""EigenCAM and EigenGradCAM: the first principal component of the layer's activations (or of
gradients x activations), as pytorch-grad-cam's ``get_2d_projection``.

Sign. An SVD's singular vectors are defined up to sign; pytorch-grad-cam keeps whatever LAPACK
returns, then applies ReLU, so the same activations can give a map or its negative (blank after
ReLU) depending on the LAPACK build. On post-ReLU activations of small seeded CNNs we measured
LAPACK's sign to agree with "correlates with the mean activation" in only ~73% of images (~50% for
gradients x activations): no fixed rule reproduces the reference everywhere. So two rules:

* ``sign="activation"`` (default, deterministic, independent of LAPACK): flip the projection so it
  correlates non-negatively with the channel sum of the input tensor, i.e. with the map the method
  would give without eigen decomposition (mean activation for EigenCAM, HiResCAM for EigenGradCAM,
  the plain CAM for eigen smoothing). Exact ties (zero correlation) fall back to making the larger
  extreme positive (Seg-Eigen-CAM, Eq. 13), then to LAPACK's sign.
* ``sign="reference"``: keep numpy's LAPACK sign, exactly as pytorch-grad-cam (for parity tests
  run on the same numpy build).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from onnxcam.errors import ArgumentError
from onnxcam.methods._checks import as_feature_map, same_shape

SignRule = Literal["activation", "reference"]


def _orient(projection: np.ndarray, channel_sum: np.ndarray) -> np.ndarray:
    corr = float(
        np.dot(
            (projection - projection.mean()).astype(np.float64),
            (channel_sum - channel_sum.mean()).astype(np.float64),
        )
    )
    if corr < 0:
        return -projection
    if corr == 0 and abs(float(projection.min())) > abs(float(projection.max())):
        return -projection
    return projection


def principal_projection(tensor: np.ndarray, sign: SignRule = "activation") -> np.ndarray:
    """Project each ``(C, h, w)`` onto its first principal component: ``(N, C, h, w) -> (N, h, w)``.

    Pixels are the samples and channels the features; columns are centred before the (economical,
    float32) SVD, as the reference does. NaNs count as 0. See the module docstring for ``sign``.
    """
    if sign not in ("activation", "reference"):
        raise ArgumentError(f"sign must be 'activation' or 'reference', got {sign!r}")
    batch = as_feature_map(tensor, "activations").copy()
    batch[np.isnan(batch)] = 0
    n, c, h, w = batch.shape
    out = np.empty((n, h, w), dtype=np.float32)
    for i, acts in enumerate(batch):
        pixels = acts.reshape(c, -1).T
        centred = pixels - pixels.mean(axis=0)
        # The economical SVD gives the same first right-singular vector as full_matrices=True
        # (which the reference uses) without an (hw, hw) U.
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        projection = centred @ vt[0, :]
        if sign == "activation":
            projection = _orient(projection, pixels.sum(axis=1))
        out[i] = projection.reshape(h, w)
    return out


def eigencam(acts: np.ndarray, sign: SignRule = "activation") -> np.ndarray:
    """EigenCAM: first principal component of the activations. ``(N, C, h, w) -> (N, h, w)``."""
    return principal_projection(acts, sign)


def eigengradcam(acts: np.ndarray, grads: np.ndarray, sign: SignRule = "activation") -> np.ndarray:
    """EigenGradCAM: first principal component of gradients x activations. ``-> (N, h, w)``."""
    a = as_feature_map(acts, "activations")
    g = as_feature_map(grads, "gradients")
    same_shape(a, g, "activations", "gradients")
    return principal_projection(g * a, sign)
