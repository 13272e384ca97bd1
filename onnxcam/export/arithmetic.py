"""The methods' arithmetic as ONNX nodes, term for term as ``onnxcam.methods`` and
``onnxcam.postprocess`` compute it in numpy (same formulas, epsilons and order of operations).

Every function takes tensor names and returns the name of the result; feature maps are
``(N, C, h, w)``, raw maps ``(N, h, w)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from onnxcam.export._graph import GraphWriter
from onnxcam.postprocess import NORMALIZE_EPS

_SPATIAL = (2, 3)


# -- channel weights (N, C) -----------------------------------------------------------------------
def gradcam_weights(w: GraphWriter, grads: str) -> str:
    """Spatial mean of the gradients (``methods.gradcam_weights``)."""
    return w.reduce("ReduceMean", grads, _SPATIAL, keepdims=0)


def gradcam_plusplus_weights(w: GraphWriter, acts: str, grads: str) -> str:
    """``sum(relu(g) g^2 / (g^2 (2 + sum(A) g) + 1e-6))`` over space (``methods.gradcam_plusplus_weights``)."""
    sum_a = w.reduce("ReduceSum", acts, _SPATIAL, keepdims=1)
    g2 = w.op("Mul", [grads, grads])
    denom = w.op("Add", [w.op("Mul", [grads, sum_a]), w.f32(2.0)])
    denom = w.op("Add", [w.op("Mul", [denom, g2]), w.f32(1e-6)])
    num = w.op("Mul", [w.op("Relu", [grads]), g2])
    return w.reduce("ReduceSum", w.op("Div", [num, denom]), _SPATIAL, keepdims=0)


def _in_double(w: GraphWriter, op_type: str, inputs: Sequence[str], axes: Sequence[int], keepdims: int) -> str:
    """``op_type`` of ``inputs`` (float32) then ReduceSum over ``axes``, in float64, rounded to float32.

    Where a sum cancels (``methods.gradient``: a ViT's HiResCAM ~1e6, XGrad-CAM's spatial sums of a
    LayerNorm'd stream ~1e5) float32 accumulation is a visible part of the map. A product of two
    float32 values is exact in float64, and the float64 sum is then within 1e-16 of its terms' size:
    any runtime that computes in double agrees with any other to the final float32 rounding.
    """
    wide = [w.op("Cast", [x], to=onnx.TensorProto.DOUBLE) for x in inputs]
    value = wide[0] if op_type == "Identity" else w.op(op_type, wide)
    return w.op("Cast", [w.reduce("ReduceSum", value, axes, keepdims=keepdims)], to=onnx.TensorProto.FLOAT)


def xgradcam_weights(w: GraphWriter, acts: str, grads: str) -> str:
    """``sum(g * A / (sum(A) + 1e-7))`` over space, ``sum(A)`` in float64 (``methods.xgradcam_weights``)."""
    sum_a = _in_double(w, "Identity", [acts], _SPATIAL, keepdims=1)
    scaled = w.op("Div", [w.op("Mul", [grads, acts]), w.op("Add", [sum_a, w.f32(1e-7)])])
    return w.reduce("ReduceSum", scaled, _SPATIAL, keepdims=0)


def weighted_sum(w: GraphWriter, acts: str, weights: str) -> str:
    """``sum_c w[n, c] * A[n, c]``: ``(N, C, h, w), (N, C) -> (N, h, w)``."""
    return w.reduce("ReduceSum", w.op("Mul", [acts, w.unsqueeze(weights, [2, 3])]), [1], keepdims=0)


# -- element-wise methods (N, h, w) ---------------------------------------------------------------
def layercam(w: GraphWriter, acts: str, grads: str) -> str:
    return w.reduce("ReduceSum", w.op("Mul", [w.op("Relu", [grads]), acts]), [1], keepdims=0)


def hirescam(w: GraphWriter, acts: str, grads: str) -> str:
    """``sum_c g * A`` in float64 (``methods.hirescam``)."""
    return _in_double(w, "Mul", [grads, acts], [1], keepdims=0)


def gradcam_elementwise(w: GraphWriter, acts: str, grads: str) -> str:
    return w.reduce("ReduceSum", w.op("Relu", [w.op("Mul", [grads, acts])]), [1], keepdims=0)


# -- post-processing ------------------------------------------------------------------------------
def normalize(w: GraphWriter, maps: str, axes: tuple[int, ...] = (1, 2)) -> str:
    """``(x - min) / (max - min + 1e-7)`` per map over ``axes`` (``postprocess.normalize_maps``)."""
    shifted = w.op("Sub", [maps, w.reduce("ReduceMin", maps, axes, keepdims=1)])
    scale = w.op("Add", [w.f32(NORMALIZE_EPS), w.reduce("ReduceMax", shifted, axes, keepdims=1)])
    return w.op("Div", [shifted, scale])


def resize(w: GraphWriter, maps: str, map_size: tuple[int, int], size: tuple[int, int]) -> str:
    """Bilinear ``(N, h, w) -> (N, H, W)`` with half-pixel centres, as ``cv2.resize`` (``postprocess.resize_maps``)."""
    if tuple(map_size) == tuple(size):
        return maps
    four = w.unsqueeze(maps, [1])
    sizes = w.op("Concat", [w.batch(maps), w.ints([1, int(size[0]), int(size[1])])], axis=0)
    # cv2 clamps source coordinates to the border and never extrapolates: ONNX's half_pixel linear
    # mode does the same on upsampling (the case here: maps come from a feature map below input size).
    # Before opset 13 roi and scales are required inputs (empty tensors when sizes are given).
    empty = ("", "") if w.opset >= 13 else (w.const(np.zeros(0, np.float32)), w.const(np.zeros(0, np.float32)))
    resized = w.op("Resize", [four, *empty, sizes], mode="linear", coordinate_transformation_mode="half_pixel")
    return w.squeeze(resized, [1])


def finish(w: GraphWriter, raws: Sequence[tuple[str, tuple[int, int]]], size: tuple[int, int], out: str) -> str:
    """Per layer ReLU -> normalise -> resize (``layer_to_image``), then into ``out``: one layer
    normalised once more (``finish_single``), several averaged and normalised (``fuse_layers``)."""
    layer_maps = [resize(w, normalize(w, w.op("Relu", [raw])), map_size, size) for raw, map_size in raws]
    if len(layer_maps) == 1:
        final = normalize(w, layer_maps[0])
    else:
        # numpy's mean over the layer axis: the sum in layer order, divided by the count
        total = layer_maps[0]
        for more in layer_maps[1:]:
            total = w.op("Add", [total, more])
        final = normalize(w, w.op("Div", [total, w.f32(float(len(layer_maps)))]))
    return w.op("Identity", [final], out=out)
