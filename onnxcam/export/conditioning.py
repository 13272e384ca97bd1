"""Refuse to export a (method, layer) pair whose map float32 rounding decides.

An exported map is worth shipping only if another float32 runtime reproduces onnxcam's Python map.
Two pairs cannot be, whatever the arithmetic, and are refused with the fix (``IllConditionedError``):

- HiResCAM (``sum_c g * A``) at a layer whose tokens reach the output only through LayerNorms over
  channels (a ViT's last block input): a LayerNorm's input gradient is orthogonal to its input
  (``sum_c x_c g_c = eps / (var + eps) * ...``), so the channel terms cancel about a millionfold and
  the gradients' float32 rounding (1e-7 relative) is 0.1 of the map: the Python and exported maps are
  0.09-0.17 apart. At the LayerNorm's output the same pair is well conditioned (1e-6 apart).
- XGrad-CAM at such a layer: a normalised residual stream, signed, whose per-channel sum over
  positions (XGrad-CAM's denominator) falls to 6e-6 of the channel's magnitude, so the 1e-6 relative
  differences of two runtimes' activations move the map by up to 3.5e-3.

Both are detected on a seeded probe batch by the HiResCAM cancellation ``sum |g A| / sum |sum_c g A|``
(``onnxcam.methods.cancellation``); see ``CONDITIONING`` below for the measured margins.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from onnxcam import methods
from onnxcam.errors import IllConditionedError
from onnxcam.explainers.gradient import CANCELLATION_LIMIT
from onnxcam.model import LayerSpec, Model
from onnxcam.views import ViewSpec

# Measured on models/ at the auto layer (probe: PROBE_IMAGES seeded standard-normal images; test: the
# parity test's 16), the largest HiResCAM cancellation:
#   ViTs (vit_tiny, deit_tiny_distilled, vit_registers; vit_small_224): 3.9e6-4.5e6 (9.7e6)
#   Swin 46-88, Keras ResNet50 23, Keras MobileNetV2 11-15, ConvNeXt 5-9, every other convolutional model 1.1-10
# so the limit of 1e4 (also the Python path's warning) sits two decades from either side.
# XGrad-CAM is refused by the same test, not by its own denominator: the smallest |sum_s A_c| / sum_s |A_c|
# over channels does not separate (probe: ViTs 2.5e-4-1.4e-3, Swin 8e-5; test images: ViTs 6e-6-6e-5,
# MobileNet-SE 5.8e-6, whose map is 4.5e-5 from Python's in OpenVINO), nor does a first-order sensitivity
# bound of the normalised map to relative errors of A (probe: Swin 1.2e4, ViTs 1.1e3-3.6e3). The structure
# the cancellation detects does: exported XGrad-CAM against Python on the test images, onnxruntime / OpenVINO:
# ViTs 7.8e-5-1.8e-4 / 1.9e-4-3.8e-3 (OpenVINO's activations are 1.3e-6-1.5e-6 relative from onnxruntime's,
# the Python body's, with fused attention, 2e-7), Swin 4.3e-6 / 1.9e-4, MobileNet-SE 3.6e-5 / 4.5e-5, every
# other model <= 1.5e-6 / 5.7e-6. Left exported, and close to the bounds: XGrad-CAM at a ViT's other token
# layers (block inputs, LayerNorm outputs: 2.6e-5-1.1e-4 / 1.1e-4-6.5e-4), hence the fix it is offered is
# gradcam or layercam, not another layer.
CONDITIONING = ("hirescam", "xgradcam")
PROBE_SEED = 0
PROBE_IMAGES = 2
_NORMS = ("LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization")


def check_conditioning(m: Model, names: Sequence[str], layer: LayerSpec, view: ViewSpec) -> None:
    """Raise ``IllConditionedError`` if a method of ``names`` is ill-conditioned at a layer of ``layer``."""
    asked = [k for k in names if k in CONDITIONING]
    if not asked:
        return
    for name, (factor, acts) in probe_cancellation(m, layer, view).items():
        if factor >= CANCELLATION_LIMIT:
            raise IllConditionedError(_message(m, asked, name, factor, acts))


def probe_cancellation(m: Model, layer: LayerSpec, view: ViewSpec = None) -> dict[str, tuple[float, np.ndarray]]:
    """Per explained layer: the largest HiResCAM cancellation over the probe batch (PROBE_IMAGES seeded
    standard-normal images, each explained at its top class), and the layer's activations ``(N, C, h, w)``."""
    n = 1 if m.input.max_batch == 1 else PROBE_IMAGES
    rng = np.random.default_rng(PROBE_SEED)
    integer = onnx.helper.tensor_dtype_to_np_dtype(m.input.elem_type).kind in "iu"
    # an integer input takes pixel values (a standard normal would round to a nearly blank image)
    x = (rng.integers(0, 256, m.input.shape(n)) if integer else rng.normal(0, 1, m.input.shape(n))).astype(np.float32)
    g = m.gradients(x, layer, view=view, mode="graph")
    return {name: (float(np.max(methods.cancellation(g.gradients[name] * g.activations[name]))),
                   g.activations[name]) for name in g.layers}


def norm_output(proto: onnx.ModelProto, name: str) -> tuple[str, str] | None:
    """The LayerNorm over channels that reads tensor ``name``: ``(node name, output tensor)``, for a
    ``LayerNormalization`` or its decomposition ``(x - ReduceMean(x)) / sqrt(...) * gamma + beta``
    (output after the affine ``Mul`` / ``Add`` by constants); None if none reads it."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in proto.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    producers = {o: node for node in proto.graph.node for o in node.output}
    consts = {t.name for t in proto.graph.initializer} | {
        o for node in proto.graph.node if node.op_type == "Constant" for o in node.output}
    for node in consumers.get(name, []):
        if node.op_type in _NORMS and node.input[0] == name:
            return node.name or node.output[0], node.output[0]
    for node in consumers.get(name, []):
        mean = producers.get(node.input[1]) if node.op_type == "Sub" and len(node.input) == 2 else None
        if node.input[0] != name or mean is None or mean.op_type != "ReduceMean" or mean.input[0] != name:
            continue
        div = next((c for c in consumers.get(node.output[0], []) if c.op_type == "Div"
                    and c.input[0] == node.output[0]), None)
        if div is None:
            continue
        out = div.output[0]
        while len(consumers.get(out, [])) == 1:
            nxt = consumers[out][0]
            if nxt.op_type not in ("Mul", "Add") or not any(i in consts for i in nxt.input if i != out):
                break
            out = nxt.output[0]
        return node.name or node.output[0], out
    return None


def _message(m: Model, asked: Sequence[str], layer: str, factor: float, acts: np.ndarray) -> str:
    found = norm_output(m.proto, layer)
    norm = f"LayerNorm {found[0]!r}" if found else "a LayerNorm"
    where = (f"the LayerNorm's output: --layer '{found[1]}' (Python: layer={found[1]!r})" if found
             else "the output of the normalisation this layer feeds (--layer <name>, see `onnxcam layers`)")
    parts = [f"{m.name}: {' and '.join(asked)} cannot be exported at layer {layer!r}, whose features reach the "
             f"output only through {norm} over channels (on {len(acts)} seeded probe image(s) HiResCAM's channel "
             f"terms cancel {factor:.1e}-fold, limit {CANCELLATION_LIMIT:.0e}), so another float32 runtime "
             "cannot reproduce onnxcam's map"]
    if "hirescam" in asked:
        parts.append("hirescam: a LayerNorm's input gradient is orthogonal to its input, so the gradients' float32 "
                     "rounding decides the map (0.1 of it between runtimes); export gradcam, or hirescam at "
                     + where)
    if "xgradcam" in asked:
        a = acts.astype(np.float64)
        mass = np.abs(a).sum(axis=(2, 3))
        ratio = float(np.min(np.abs(a.sum(axis=(2, 3)))[mass > 0] / mass[mass > 0])) if np.any(mass > 0) else 1.0
        parts.append("xgradcam: on this signed, normalised residual stream it divides each channel's weight by the "
                     f"channel's sum over positions (as small as {ratio:.0e} of its magnitude on the probe), so "
                     "activations 1e-6 apart between runtimes move the map by up to 3.5e-3; export gradcam or "
                     "layercam at this layer")
    return "; ".join(parts)
