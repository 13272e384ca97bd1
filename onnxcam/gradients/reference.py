"""A float64 copy of a head, the reference ``check-gradients`` differentiates numerically.

Central differences of a float32 head carry rounding noise of about ``u * |score| / step``
(u ~ 6e-8), which at the step sizes that keep truncation small reaches 1e-2 on deep heads: a
check against them fails correct gradients. In float64 that noise is ~1e-16 relative, so the step
can be small enough that truncation and kinks (ReLU, clips, max) hardly matter.

``float64_model`` converts every float32 tensor of a head (initializers, Constant values, Casts to
float, declared types) to float64 and folds DequantizeLinear nodes of constant weights into float64
weights (the quantised weights' exact real values). ``Float64Runner`` runs it with onnxruntime when
every op has a double kernel there, else with onnx's reference evaluator (numpy; every op in
float64), and says which in ``what``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcam.errors import GradientError

_F32 = onnx.TensorProto.FLOAT
_F64 = onnx.TensorProto.DOUBLE
# Inputs whose type the op fixes to float32 (not the computation's type): left as they are.
_KEEP_FLOAT32: dict[str, frozenset[int]] = {"Resize": frozenset({1, 2}), "Upsample": frozenset({1})}


def _fold_quantize(node: onnx.NodeProto, values: dict[str, np.ndarray]) -> np.ndarray | None:
    """A QuantizeLinear of constants (e.g. a quantised pad value), per-tensor: its integer value."""
    if node.op_type != "QuantizeLinear" or not all(i in values for i in node.input if i):
        return None
    scale = values[node.input[1]].astype(np.float64)
    zero = values[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
    if scale.size != 1:
        return None
    info = np.iinfo(zero.dtype)
    q = np.rint(values[node.input[0]].astype(np.float64) / scale) + zero.astype(np.float64)
    return np.clip(q, info.min, info.max).astype(zero.dtype)


def _fold_weight_dequantize(node: onnx.NodeProto, values: dict[str, np.ndarray]) -> np.ndarray | None:
    if node.op_type == "QuantizeLinear":
        return _fold_quantize(node, values)
    if node.op_type != "DequantizeLinear" or not all(i in values for i in node.input if i):
        return None
    x = values[node.input[0]].astype(np.float64)
    scale = values[node.input[1]].astype(np.float64)
    zero = values[node.input[2]].astype(np.float64) if len(node.input) > 2 and node.input[2] else np.zeros(())
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * x.ndim
        shape[axis % x.ndim] = -1
        scale, zero = scale.reshape(shape), (zero.reshape(shape) if zero.size > 1 else zero)
    return np.asarray((x - zero) * scale)


def float64_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float64 copy of ``model`` (float32 inputs and outputs become float64)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    keep = {node.input[k] for node in g.node for k in _KEEP_FLOAT32.get(node.op_type, ()) if k < len(node.input)}
    values = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type == _F32 and node.output[0] not in keep:
                    a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float64), a.t.name))
                if a.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(a.t)
            nodes.append(node)
            continue
        folded = _fold_weight_dequantize(node, values)
        if folded is not None:
            values[node.output[0]] = folded
            new_inits.append(numpy_helper.from_array(
                folded if folded.dtype.kind in "iu" else folded.astype(np.float64), node.output[0]))
            continue
        for a in node.attribute:
            if node.op_type in ("Cast", "CastLike") and a.name == "to" and a.i == _F32:
                a.i = _F64
            if a.name == "value" and a.type == onnx.AttributeProto.TENSOR and a.t.data_type == _F32:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float64), a.t.name))
        nodes.append(node)
    inits = []
    for init in g.initializer:
        if init.data_type == _F32 and init.name not in keep:
            inits.append(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float64), init.name))
        else:
            inits.append(init)
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    g.initializer.extend(inits + new_inits)
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.tensor_type.elem_type == _F32 and vi.name not in keep:
            vi.type.tensor_type.elem_type = _F64
    folded_names = {i.name for i in new_inits}
    kept_vi = [vi for vi in g.value_info if vi.name not in folded_names]
    del g.value_info[:]
    g.value_info.extend(kept_vi)
    return out


def _float64_ops() -> list[type]:
    """Reference ops whose stock implementation rounds to float32 (onnx 1.23's Erf) or is not the
    inference op (BatchNormalization-9 fills an absent ``momentum`` with 0.9 and then normalises with
    the batch's statistics: each row of a difference batch would depend on the others)."""
    import math

    from onnx.reference.op_run import OpRun

    erf = np.vectorize(math.erf, otypes=[np.float64])

    class Erf(OpRun):  # the class name is the op it replaces
        op_domain = ""

        def _run(self, x: np.ndarray) -> tuple[np.ndarray]:
            return (erf(x).astype(x.dtype),)

    class BatchNormalization(OpRun):  # every version, with the running statistics
        op_domain = ""

        def _run(self, x: np.ndarray, scale: np.ndarray, bias: np.ndarray, mean: np.ndarray, var: np.ndarray,
                 epsilon: float | None = None, momentum: float | None = None, training_mode: int | None = None,
                 is_test: int | None = None, spatial: int | None = None) -> tuple[np.ndarray]:
            shape = (1, -1) + (1,) * (x.ndim - 2)
            eps = 1e-5 if epsilon is None else float(epsilon)
            y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
            return ((y * scale.reshape(shape) + bias.reshape(shape)).astype(x.dtype),)

    return [Erf, BatchNormalization]


class Float64Runner:
    """``runner(feeds) -> outputs``: the float64 copy of ``model``; float inputs are cast to float64.

    ``what``: the engine that runs it ("onnxruntime" or "onnx reference evaluator")."""

    def __init__(self, model: onnx.ModelProto, outputs: Sequence[str]) -> None:
        self.proto = float64_model(model)
        self.outputs = list(outputs)
        self._inputs = {i.name: i.type.tensor_type.elem_type for i in self.proto.graph.input}
        self._ort = None
        try:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            opts.log_severity_level = 4
            self._ort = ort.InferenceSession(self.proto.SerializeToString(), opts,
                                             providers=["CPUExecutionProvider"])
            self.what = "onnxruntime, float64"
        except Exception:  # an op without a double kernel: numpy runs every op in float64
            from onnx.reference import ReferenceEvaluator

            try:
                self._ref = ReferenceEvaluator(self.proto, new_ops=_float64_ops())
            except Exception as exc:
                raise GradientError(f"no float64 reference for this head: onnx's reference evaluator cannot load "
                                    f"it ({str(exc)[:200]})") from exc
            self.what = "onnx reference evaluator, float64"

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        cast = {k: (v.astype(np.float64) if self._inputs.get(k) == _F64 else v) for k, v in feeds.items()
                if k in self._inputs}
        if self._ort is not None:
            return list(self._ort.run(self.outputs, cast))
        return [np.asarray(v) for v in self._ref.run(self.outputs, cast)]


__all__ = ["Float64Runner", "float64_model"]
