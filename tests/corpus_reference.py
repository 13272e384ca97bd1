"""Independent float64 references for onnxcam's gradients on exported models (corpus tests).

At the same activations onnxcam's body produced, the head of the split is differentiated by
- torch autograd on an onnx2torch conversion of the head, in float64, where it converts;
- otherwise float64 central differences along per-channel directions, with onnx's reference
  evaluator running a float64 copy of the head.

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


def _tv_stub() -> None:
    from models import torchvision_stub

    torchvision_stub.install()
    import sys

    ops = sys.modules["torchvision.ops"]
    for name in ("roi_align", "nms", "batched_nms"):
        if not hasattr(ops, name):
            setattr(ops, name, lambda *a, **k: None)


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


def torch_reference(model: Model, layer: str, x: np.ndarray, targets: Sequence[Target]) -> np.ndarray:
    """``(N, C, ...)`` float64 gradient of the targets' scores w.r.t. ``layer``, by torch autograd
    on onnx2torch's conversion of the head. Raises whatever onnx2torch raises when it cannot convert."""
    _tv_stub()
    import onnx2torch
    import torch

    cut = (layer,)
    split = model.split(cut)
    feeds, seeds = _seed_weights(model, layer, x, targets)
    head = constants_as_initializers(model.static_head(cut, x.shape[0]))
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
        if node.op_type == "BatchNormalization":
            # onnx's reference BatchNormalization-9 uses batch statistics whenever ``momentum`` is set
            # (Paddle sets it); at inference momentum means nothing, so drop it.
            kept = [a for a in node.attribute if a.name != "momentum"]
            del node.attribute[:]
            node.attribute.extend(kept)
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


def finite_reference(model: Model, layer: str, x: np.ndarray, targets: Sequence[Target],
                     eps: float = 1e-7) -> tuple[np.ndarray, np.ndarray]:
    """``(N, C)`` float64 channel sums of gradients and of activations x gradients by central
    differences along per-channel directions, the head run in float64 by onnx's reference evaluator."""
    from onnx.reference import ReferenceEvaluator

    cut = (layer,)
    split = model.split(cut)
    feeds, seeds = _seed_weights(model, layer, x, targets)
    a_all = np.asarray(feeds[layer], dtype=np.float64)
    n, c = a_all.shape[:2]
    rows = 4 * c  # per channel: +/- along ones, +/- along the activations
    session = ReferenceEvaluator(float64_head(model.static_head(cut, rows)))
    sums = np.zeros((n, c)), np.zeros((n, c))
    for i in range(n):
        a = a_all[i]
        scale = max(float(np.abs(a).max()), 1e-3)
        batch = np.repeat(a[None], rows, axis=0)
        steps = np.zeros((2, c))
        for k in range(c):
            for j, direction in enumerate((np.ones_like(a[k]), a[k])):
                h = eps * scale / max(float(np.abs(direction).max()), 1e-12)
                steps[j, k] = h
                batch[4 * k + 2 * j, k] += h * direction
                batch[4 * k + 2 * j + 1, k] -= h * direction
        others = {name: np.repeat(np.asarray(v[i:i + 1], dtype=np.float64), rows, axis=0)
                  for name, v in feeds.items() if name != layer}
        outs = session.run(list(split.head_outputs), {**others, layer: batch})
        score = np.zeros(rows)
        for name, o in zip(split.head_outputs, outs):
            if name in seeds:
                o64 = np.asarray(o, dtype=np.float64)
                score += (o64 * seeds[name][i][None]).reshape(rows, -1).sum(axis=1)
        for k in range(c):
            for j in range(2):
                sums[j][i, k] = (score[4 * k + 2 * j] - score[4 * k + 2 * j + 1]) / (2 * steps[j, k])
    return sums
