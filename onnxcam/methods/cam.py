"""Classic CAM (Zhou et al. 2016): the channel weights are the FC weights of a GAP -> linear head."""

from __future__ import annotations

import numpy as np

from onnxcam.errors import HeadStructureError, TargetError


def cam_weights(fc_weight: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Rows of the classifier weight for each sample's class: ``(K, C), (N,) -> (N, C)``.

    ``fc_weight`` is laid out as torch's ``nn.Linear.weight`` / ONNX Gemm with ``transB=1``
    (one row per class); the caller transposes a ``transB=0`` Gemm or MatMul weight.
    """
    w = np.asarray(fc_weight, dtype=np.float32)
    if w.ndim != 2:
        raise HeadStructureError(
            f"CAM needs a 2-D classifier weight (K classes, C channels), got shape {tuple(w.shape)}"
        )
    idx = np.asarray(classes).reshape(-1)
    if not np.issubdtype(idx.dtype, np.integer):
        raise TargetError(f"CAM classes must be integers, got dtype {idx.dtype}")
    bad = idx[(idx < 0) | (idx >= w.shape[0])]
    if bad.size:
        raise TargetError(
            f"class index {int(bad[0])} is out of range for a classifier with {w.shape[0]} classes "
            f"(valid: 0..{w.shape[0] - 1})"
        )
    return w[idx].copy()
