"""The methods' arithmetic as ONNX nodes, term for term as ``onnxcam.methods`` and
``onnxcam.postprocess`` compute it in numpy (same formulas, epsilons and order of operations).

Every function takes tensor names and returns the name of the result; feature maps are
``(N, C, h, w)``, raw maps ``(N, h, w)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from onnxcam.errors import ArgumentError
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


def linear_weights(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` float32: cv2's bilinear resize along one axis as a matrix (half-pixel centres,
    source coordinates clamped to the border, never extrapolated; no antialiasing when shrinking)."""
    centres = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    lo = np.minimum(np.floor(centres).astype(np.int64), max(n_in - 2, 0))
    t = centres - lo
    weights = np.zeros((n_out, n_in))
    weights[np.arange(n_out), lo] += 1 - t
    if n_in > 1:
        weights[np.arange(n_out), lo + 1] += t
    return weights.astype(np.float32)


def _cell_ends(n_in: int, n_out: int) -> np.ndarray:
    """The output indices first and last among those interpolating between the same two source pixels."""
    weights = linear_weights(n_in, n_out)
    lo = np.argmax(weights > 0, axis=1)
    return np.flatnonzero((np.diff(lo, prepend=-1) != 0) | (np.diff(lo, append=n_in) != 0))


# Bilinear resizing as two matrix products with constant weights: measured 2.7-55x faster than the
# Resize op in OpenVINO 2026.4 and 1.6-9x in onnxruntime 1.31 (2 threads, maps of 7x7 to 112x112
# resized to 224x224, batch 1 and 16; on par in onnxruntime from 160x160). Above this many bytes of
# weights the Resize op is used instead, so that the file stays small.
_MATMUL_BYTES = 512 * 1024


def resize(w: GraphWriter, maps: str, map_size: tuple[int, int], size: tuple[int, int],
           rows: np.ndarray | None = None, cols: np.ndarray | None = None, out: str | None = None) -> str:
    """Bilinear ``(N, h, w) -> (N, H, W)`` with half-pixel centres, as ``cv2.resize`` (``postprocess.resize_maps``).

    ``rows`` / ``cols``: only those output rows / columns (the map at those points of the full
    resize); ``out``: the result's name."""
    (h, wd), (hh, ww) = map_size, size
    if (h, wd) == (hh, ww) and rows is None and cols is None:
        return maps if out is None else w.op("Identity", [maps], out=out)
    if 4 * (h * hh + wd * ww) <= _MATMUL_BYTES or rows is not None or cols is not None:
        along_h = linear_weights(h, hh) if rows is None else linear_weights(h, hh)[rows]
        along_w = linear_weights(wd, ww) if cols is None else linear_weights(wd, ww)[cols]
        # (H, h) @ (N, h, w) @ (w, W): the second product, over the larger tensor, has constant weights
        # (a fully connected layer to the runtimes)
        return w.op("MatMul", [w.op("MatMul", [w.const(along_h), maps]), w.const(np.ascontiguousarray(along_w.T))],
                    out=out)
    four = w.unsqueeze(maps, [1])
    sizes = w.op("Concat", [w.batch(maps), w.ints([1, int(hh), int(ww)])], axis=0)
    # cv2 clamps source coordinates to the border and never extrapolates: ONNX's half_pixel linear
    # mode does the same on upsampling (the case here: maps come from a feature map below input size).
    # Before opset 13 roi and scales are required inputs (empty tensors when sizes are given).
    empty = ("", "") if w.opset >= 13 else (w.const(np.zeros(0, np.float32)), w.const(np.zeros(0, np.float32)))
    resized = w.op("Resize", [four, *empty, sizes], mode="linear", coordinate_transformation_mode="half_pixel")
    return w.squeeze(resized, [1], out=out)


def _finish_single(w: GraphWriter, raw: str, map_size: tuple[int, int], size: tuple[int, int], scale: float,
                   out: str) -> str:
    """``finish_single(layer_to_image(raw / scale))``: ReLU, normalise, resize, normalise, with every
    step but the resize on the small map.

    Resizing is linear with weights summing to 1, so it commutes with the per-image affine maps of
    both normalisations, given the resized map's min and max. Those lie at the ends of the
    interpolation cells: within a cell the value is bilinear in the two fractional offsets, so over
    the cell's output pixels it is extreme at its corner pixels, and the map resized to those rows
    and columns only (at most 2h x 2w) holds the full resize's min and max. With ``r = relu(raw)``
    shifted by its min (as the first normalisation shifts it, so a flat map stays exactly 0), ``b``
    its max and ``lo, hi`` its resize's min and max, the normalisations
    ``n = (r / s) / (b / s + eps)`` then ``(R(n) - min) / (max - min + eps)`` are, exactly,
    ``R(r - lo) / (hi - lo + eps (b + s eps))``.
    """
    relu = w.op("Relu", [raw])
    r = w.op("Sub", [relu, w.reduce("ReduceMin", relu, (1, 2))])
    b = w.reduce("ReduceMax", r, (1, 2))
    eps = w.op("Mul", [w.op("Add", [b, w.f32(scale * NORMALIZE_EPS)]), w.f32(NORMALIZE_EPS)])
    if tuple(map_size) == tuple(size):
        return w.op("Div", [r, w.op("Add", [b, eps])], out=out)
    corners = resize(w, r, map_size, size, rows=_cell_ends(map_size[0], size[0]), cols=_cell_ends(map_size[1], size[1]))
    lo, hi = w.reduce("ReduceMin", corners, (1, 2)), w.reduce("ReduceMax", corners, (1, 2))
    denominator = w.op("Add", [w.op("Sub", [hi, lo]), eps])
    resized = resize(w, w.op("Div", [w.op("Sub", [r, lo]), denominator]), map_size, size)
    # rounding in the resize leaves values ~1e-7 outside [0, 1] where the exact ones are at its ends
    return w.clip(resized, 0.0, 1.0, out=out)


def finish(w: GraphWriter, raws: Sequence[tuple[str, tuple[int, int]]], size: tuple[int, int], out: str,
           scale: float = 1.0) -> str:
    """Per layer ReLU -> normalise -> resize (``layer_to_image``), then into ``out``: one layer
    normalised once more (``finish_single``), several averaged and normalised (``fuse_layers``).

    ``scale``: each ``raw`` is ``scale`` times the method's map (the normalisations remove the
    factor but for the epsilon, which is scaled to match)."""
    if len(raws) == 1:
        (raw, map_size), = raws
        return _finish_single(w, raw, map_size, size, scale, out)
    if scale != 1.0:
        raws = [(w.op("Mul", [raw, w.f32(1.0 / scale)]), map_size) for raw, map_size in raws]
    layer_maps = [resize(w, normalize(w, w.op("Relu", [raw])), map_size, size) for raw, map_size in raws]
    # numpy's mean over the layer axis: the sum in layer order, divided by the count
    total = layer_maps[0]
    for more in layer_maps[1:]:
        total = w.op("Add", [total, more])
    final = normalize(w, w.op("Div", [total, w.f32(float(len(layer_maps)))]))
    return w.op("Identity", [final], out=out)


GRADIENT_MAPS = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "gradcam-elementwise")


def gradient_map(w: GraphWriter, k: str, acts: str, grads: str) -> str:
    """Gradient method ``k``'s raw map ``(N, h, w)`` from one layer's ``acts`` and ``grads`` ``(N, C, h, w)``."""
    if k == "gradcam":
        return weighted_sum(w, acts, gradcam_weights(w, grads))
    if k == "gradcam++":
        return weighted_sum(w, acts, gradcam_plusplus_weights(w, acts, grads))
    if k == "xgradcam":
        return weighted_sum(w, acts, xgradcam_weights(w, acts, grads))
    if k == "layercam":
        return layercam(w, acts, grads)
    if k == "hirescam":
        return hirescam(w, acts, grads)
    if k == "gradcam-elementwise":
        return gradcam_elementwise(w, acts, grads)
    raise ArgumentError(f"{k!r} is not a gradient method with an exported map: use one of {', '.join(GRADIENT_MAPS)}")

