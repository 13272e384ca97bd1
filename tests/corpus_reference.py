"""Independent float64 references for onnxcam's gradients on exported models (corpus tests).

At the same activations onnxcam's body produced, the head of the split is differentiated by
- torch autograd on an onnx2torch conversion of the head (of an int8 head's clipped straight-through
  surrogate), in float64, where it converts;
- otherwise float64 central differences along per-channel directions, with onnx's reference
  evaluator running a float64 copy of the head (its BatchNormalization replaced by the inference op:
  see ``inference_ops``).
Which of the two a model gets is the caller's fixed choice; neither depends on test order.

What is compared is what CAM methods consume: per channel, the sum of the gradients (Grad-CAM's
weights up to a constant) and the sum of activations x gradients. Both are directional derivatives
of the score (along "1 on channel c" and along "A on channel c"), so the finite-difference
reference needs 4 head runs per channel, not one per element.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from onnxcam.model import Model
from onnxcam.targets import Target, output_seeds
from onnxcam.views import FeatureView


def _torchvision_stub() -> None:
    """onnx2torch imports ``torchvision`` (for its NMS and RoiAlign converters only): always the
    same stand-in, whatever an earlier test left in ``sys.modules``, so what converts does not
    depend on test order."""
    from models import torchvision_stub

    torchvision_stub.install()


def channel_sums(acts: np.ndarray, grads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(N, C)`` channel sums of gradients and of activations x gradients (NCHW tensors)."""
    a = np.asarray(acts, dtype=np.float64)
    g = np.asarray(grads, dtype=np.float64)
    axes = tuple(range(2, a.ndim))
    return g.sum(axis=axes), (a * g).sum(axis=axes)


def rel_errors(ours: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``(N,)`` per-image relative errors ``|ours - ref| / |ref|`` (max norms)."""
    n = ours.shape[0]
    o = ours.reshape(n, -1)
    r = ref.reshape(n, -1)
    scale = np.maximum(np.abs(r).max(axis=1), 1e-30)
    return np.asarray(np.abs(o - r).max(axis=1) / scale)


def _seed_weights(model: Model, layer: str, x: np.ndarray, targets: Sequence[Target]) -> tuple[
        dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Head input feeds and ``{head output: d score / d output}`` at ``x``."""
    cut = (layer,)
    split = model.split(cut)
    feeds, outputs = model.run_body(x, cut)
    seeds = output_seeds(list(targets), outputs)
    by_name = {split.model_outputs[k]: v for k, v in seeds.items() if split.model_outputs[k] in split.head_outputs}
    return feeds, by_name


def constants_as_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with ``Constant(value=...)`` nodes turned into initializers (onnx2torch reads weights
    from initializers only, and has no converter for Constant at opsets >= 19)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    keep = []
    for node in out.graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None:
            arr = onnx.numpy_helper.to_array(value.t)
            out.graph.initializer.append(onnx.numpy_helper.from_array(arr, node.output[0]))
        else:
            keep.append(node)
    del out.graph.node[:]
    out.graph.node.extend(keep)
    return out


def surrogate(head: onnx.ModelProto) -> onnx.ModelProto:
    """The function an int8 head's gradients are exact for: its quantisers replaced by clips to
    their range and integer ops by float ops on the dequantised weights (onnxcam's graph pass, tested
    node by node on hand-built graphs in test_int8_formats), with the weights' DequantizeLinear
    folded into float weights. A float head comes back unchanged."""
    from onnxcam.gradients.reference import float64_model
    from onnxcam.gradients.straight_through import straight_through

    copy, replaced = straight_through(head)
    if not replaced:
        return head
    folded = float64_model(copy)  # folds constant DequantizeLinear; torch runs it in float64 anyway
    for v in list(folded.graph.input) + list(folded.graph.output):
        if v.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE:
            v.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    return folded


def torch_reference(model: Model, layer: str, x: np.ndarray, targets: Sequence[Target]) -> np.ndarray:
    """``(N, C, ...)`` float64 gradient of the targets' scores w.r.t. ``layer``, by torch autograd
    on onnx2torch's conversion of the head. Raises whatever onnx2torch raises when it cannot convert."""
    _torchvision_stub()
    import onnx2torch
    import torch

    cut = (layer,)
    split = model.split(cut)
    feeds, seeds = _seed_weights(model, layer, x, targets)
    head = constants_as_initializers(surrogate(model.static_head(cut, x.shape[0])))
    module = onnx2torch.convert(head).double().eval()
    inputs = [torch.tensor(np.asarray(feeds[n], dtype=np.float64), requires_grad=(n == layer))
              for n in split.head_inputs]
    outs = module(*inputs)
    outs = [outs] if isinstance(outs, torch.Tensor) else list(outs)
    total = sum((o * torch.tensor(seeds[name], dtype=torch.float64)).sum()
                for name, o in zip(split.head_outputs, outs) if name in seeds)
    assert isinstance(total, torch.Tensor)
    total.backward()
    grad = inputs[0].grad
    assert grad is not None
    return np.asarray(grad.numpy())


def float64_head(head: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``head`` computing in float64 (initializers, constants, casts and declared types)."""
    f32, f64 = onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE
    out = onnx.ModelProto()
    out.CopyFrom(head)
    g = out.graph
    for i, init in enumerate(g.initializer):
        if init.data_type == f32:
            arr = onnx.numpy_helper.to_array(init).astype(np.float64)
            g.initializer[i].CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    for node in g.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == f32:
                attr.i = f64
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == f32:
                attr.t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(attr.t).astype(np.float64),
                                                             attr.t.name))
    for v in list(g.input) + list(g.output) + list(g.value_info):
        if v.type.tensor_type.elem_type == f32:
            v.type.tensor_type.elem_type = f64
    return out


def inference_ops() -> list[type]:
    """Reference-evaluator ops with inference semantics where onnx's stock ones differ.

    onnx's BatchNormalization-9 normalises with the *batch's* statistics whenever ``momentum`` is
    set, and fills an absent ``momentum`` with the schema's default 0.9, so it always does at
    opsets 9-13 (PyTorch and Paddle exports carry BN-9): in a finite-difference batch each row then
    depends on the others. onnxruntime and every exporter mean the running statistics."""
    from onnx.reference.op_run import OpRun

    class BatchNormalization(OpRun):  # the class name is the op it replaces, at every version
        op_domain = ""

        def _run(self, x: np.ndarray, scale: np.ndarray, bias: np.ndarray, mean: np.ndarray, var: np.ndarray,
                 epsilon: float | None = None, momentum: float | None = None, training_mode: int | None = None,
                 is_test: int | None = None, spatial: int | None = None) -> tuple[np.ndarray]:
            shape = (1, -1) + (1,) * (x.ndim - 2)
            eps = 1e-5 if epsilon is None else float(epsilon)
            y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
            y = y * scale.reshape(shape) + bias.reshape(shape)
            return (y.astype(x.dtype),)

    return [BatchNormalization]


def finite_reference(model: Model, layer: str, x: np.ndarray, targets: Sequence[Target],
                     view: FeatureView | None = None, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """``(N, C)`` float64 channel sums of gradients and of activations x gradients (over the
    positions of ``view``'s map) by central differences along per-channel directions, the head run
    in float64 by onnx's reference evaluator. The step is ``eps`` of the activations' largest value:
    in float64 its rounding noise is ~1e-16 / eps, its truncation error ~eps^2."""
    from onnx.reference import ReferenceEvaluator

    view = view or FeatureView()
    cut = (layer,)
    split = model.split(cut)
    feeds, seeds = _seed_weights(model, layer, x, targets)
    a_all = np.asarray(feeds[layer], dtype=np.float64)
    maps = view.to_map(a_all)
    n, c = maps.shape[:2]
    rows = 4 * c  # per channel: +/- along ones, +/- along the activations
    session = ReferenceEvaluator(float64_head(model.static_head(cut, rows)), new_ops=inference_ops())
    sums = np.zeros((n, c)), np.zeros((n, c))
    for i in range(n):
        m = maps[i]
        scale = max(float(np.abs(m).max()), 1e-3)
        batch = np.repeat(m[None], rows, axis=0)
        steps = np.zeros((2, c))
        for k in range(c):
            for j, direction in enumerate((np.ones_like(m[k]), m[k])):
                h = eps * scale / max(float(np.abs(direction).max()), 1e-12)
                steps[j, k] = h
                batch[4 * k + 2 * j, k] += h * direction
                batch[4 * k + 2 * j + 1, k] -= h * direction
        tensor = view.to_tensor(batch, np.repeat(a_all[i:i + 1], rows, axis=0))
        others = {name: np.repeat(np.asarray(v[i:i + 1], dtype=np.float64), rows, axis=0)
                  for name, v in feeds.items() if name != layer}
        outs = session.run(list(split.head_outputs), {**others, layer: tensor})
        score = np.zeros(rows)
        for name, o in zip(split.head_outputs, outs):
            if name in seeds:
                o64 = np.asarray(o, dtype=np.float64)
                score += (o64 * seeds[name][i][None]).reshape(rows, -1).sum(axis=1)
        for k in range(c):
            for j in range(2):
                sums[j][i, k] = (score[4 * k + 2 * j] - score[4 * k + 2 * j + 1]) / (2 * steps[j, k])
    return sums
