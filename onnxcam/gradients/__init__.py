"""Exact gradients of ONNX graphs as plain ONNX ops (reverse mode), plus finite differences.

``build_gradient_model(model, wrt, outputs)`` keeps the forward graph and appends adjoint nodes that
compute the vector-Jacobian product ``d/dt sum_o sum(seed_o * o)`` for every tensor ``t`` in ``wrt``
(graph inputs or intermediate tensors). The caller feeds one seed per seeded output -- a one-hot
class per sample gives every sample's target-logit gradient in one run. The result runs in the
regular onnxruntime: ORT's own ``*Grad`` ops exist only in its training build.

Only nodes that are both forward-reachable from ``wrt`` and backward-reachable from the seeded
outputs get adjoints, so weights and constants never do; the builder is linear in graph size.
A stride-1 Conv's adjoint is a Conv with the kernel flipped and its channel axes swapped per group
(the weight rearranged by Slice/Transpose nodes the runtime folds once, so an exported explainer
stores it once): onnxruntime runs Conv with blocked kernels and ConvTranspose without. Strided
convolutions are transposed with ConvTranspose on the same weights (SAME/VALID auto_pad resolved
on static shapes). MaxPool routes to its argmax via its ``Indices`` output and
ScatterElements(reduction="add") (opset >= 16; below it overlapping windows are split into
non-overlapping phases, each a plain scatter), Resize is applied transposed with per-axis
interpolation matrices that onnxruntime itself measures at build time, and ties in ReduceMax share
the gradient evenly as in torch. QuantizeLinear/DequantizeLinear pass the gradient straight
through (the straight-through estimator of quantisation-aware training), so a Q->DQ pair is
differentiated as the identity. Ops without a rule raise ``UnsupportedOpError``; ``finite_diff``
then stands in.

The gradient graph keeps the model's opset (11 to 21): rules read both the attribute and the
input form of what moved (axes, split, pads, Clip bounds, Resize scales) and emit each op in the
form valid at that opset (``Emitter.reduce``/``unsqueeze``/``compare``/``crop``/``scatter_add``).
Raising the opset instead is not safe: a model imports one version per domain, and forward nodes
change meaning or validity across versions (Softmax < 13 coerces to 2-D, Squeeze/Unsqueeze/Split
and the Reduce ops move attributes to inputs), so the forward graph would have to be rewritten.

Why not ``onnx-ad`` (PyPI, 0.3.0, evaluated for this package): it is correct on a graph with
explicit pads (depthwise Conv -> ConvTranspose, MaxPool via ScatterND, no weight gradients, runs in
plain onnxruntime), but it rejects Conv with ``auto_pad=SAME_*`` (common in TF/EfficientNet
exports), differentiates only graph inputs (an intermediate feature tensor raises "is not a graph
input"), and appends a trailing seed axis that wraps every op in extra Transpose/Expand nodes. So
the rules here are our own.
"""

from onnxcam.gradients._emit import Emitter
from onnxcam.gradients._registry import RULES, Rule, rule
from onnxcam.gradients.builder import GradientModel, build_gradient_model, missing_rules

__all__ = ["RULES", "Emitter", "GradientModel", "Rule", "build_gradient_model", "missing_rules", "rule"]
