"""A weightless copy of a model for shape inference, with its constant subgraphs evaluated in numpy.

Shape inference is what tells onnxcam every tensor's shape (layers, splits, gradient graphs), and
it is on the path of every command. Two things made it slow on real exports:

- ``onnx.shape_inference`` serialises the whole model, weights included, across to C++ and back;
  a 19 MB EfficientNet costs 20 ms per call. Shapes never depend on weight values, so large
  initializers are declared as typed graph inputs instead and their bytes stay behind.
- PyTorch exports ``F.pad`` with literal paddings as a chain of Constant/ConstantOfShape/Concat/
  Reshape/Slice/Transpose/Cast nodes. onnx's data propagation does not see through that chain, so
  every tensor after a SAME-padded convolution had an unknown shape and onnxruntime had to be run
  once to read them off. Evaluating the constant-only nodes here (a few microseconds each) turns
  the paddings into initializers and inference sees every dim.

Only small constants are folded (``MAX_ELEMENTS``); any op outside ``_EVALUATORS`` or any
evaluation error leaves the node as it is, so folding can only add information.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcam.graph.tensor_info import TensorInfo

# Initializers above this many elements are weights: declared as inputs, never copied or evaluated.
WEIGHT_ELEMENTS = 1024
# Folded results above this many elements are left to the runtime (e.g. a large ConstantOfShape).
MAX_ELEMENTS = 65536

Evaluator = Callable[[onnx.NodeProto, list[Any], dict[str, Any], int], list[np.ndarray]]


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _constant(node: onnx.NodeProto, ins: list[Any], at: dict[str, Any], opset: int) -> list[np.ndarray]:
    if "value" in at:
        return [numpy_helper.to_array(at["value"])]
    if "value_float" in at:
        return [np.array(at["value_float"], dtype=np.float32)]
    if "value_floats" in at:
        return [np.array(at["value_floats"], dtype=np.float32)]
    if "value_int" in at:
        return [np.array(at["value_int"], dtype=np.int64)]
    if "value_ints" in at:
        return [np.array(at["value_ints"], dtype=np.int64)]
    raise ValueError("Constant without a dense value")


def _constant_of_shape(node: onnx.NodeProto, ins: list[Any], at: dict[str, Any], opset: int) -> list[np.ndarray]:
    value = numpy_helper.to_array(at["value"]) if "value" in at else np.zeros(1, dtype=np.float32)
    shape = [int(d) for d in ins[0]]
    if int(np.prod(shape)) > MAX_ELEMENTS:
        raise ValueError("too large to fold")
    return [np.full(shape, value.reshape(-1)[0], dtype=value.dtype)]


def _reshape(node: onnx.NodeProto, ins: list[Any], at: dict[str, Any], opset: int) -> list[np.ndarray]:
    x, shape = ins[0], [int(d) for d in ins[1]]
    if not at.get("allowzero", 0):
        shape = [x.shape[k] if d == 0 else d for k, d in enumerate(shape)]
    return [x.reshape(shape)]


def _axes(node: onnx.NodeProto, ins: list[Any], at: dict[str, Any], opset: int, since: int) -> list[int] | None:
    if opset >= since:
        return [int(a) for a in ins[1]] if len(ins) > 1 and ins[1] is not None else None
    axes = at.get("axes")
    return None if axes is None else [int(a) for a in axes]


def _unsqueeze(node: onnx.NodeProto, ins: list[Any], at: dict[str, Any], opset: int) -> list[np.ndarray]:
    axes = _axes(node, ins, at, opset, 13)
    if axes is None:
        raise ValueError("Unsqueeze without axes")
    x = ins[0]
    rank = x.ndim + len(axes)
    for a in sorted(a % rank for a in axes):
        x = np.expand_dims(x, a)
    return [x]


def _squeeze(node: onnx.NodeProto, ins: list[Any], at: dict[str, Any], opset: int) -> list[np.ndarray]:
    axes = _axes(node, ins, at, opset, 13)
    x = ins[0]
    return [np.squeeze(x) if axes is None else np.squeeze(x, axis=tuple(a % x.ndim for a in axes))]


def _slice(node: onnx.NodeProto, ins: list[Any], at: dict[str, Any], opset: int) -> list[np.ndarray]:
    x = ins[0]
    if opset >= 10:
        starts, ends = ins[1], ins[2]
        axes = ins[3] if len(ins) > 3 and ins[3] is not None else range(len(starts))
        steps = ins[4] if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
    else:
        starts, ends = at["starts"], at["ends"]
        axes = at.get("axes", range(len(starts)))
        steps = [1] * len(starts)
    index: list[slice] = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        # ONNX clamps out-of-range bounds (INT64_MAX means "to the end"), as Python slicing does.
        index[int(a) % x.ndim] = slice(int(s), int(e), int(st))
    return [x[tuple(index)]]


def _gather(node: onnx.NodeProto, ins: list[Any], at: dict[str, Any], opset: int) -> list[np.ndarray]:
    return [np.take(ins[0], ins[1].astype(np.int64), axis=int(at.get("axis", 0)))]


def _concat(node: onnx.NodeProto, ins: list[Any], at: dict[str, Any], opset: int) -> list[np.ndarray]:
    return [np.concatenate([np.asarray(v) for v in ins], axis=int(at["axis"]))]


def _cast(node: onnx.NodeProto, ins: list[Any], at: dict[str, Any], opset: int) -> list[np.ndarray]:
    dtype = onnx.helper.tensor_dtype_to_np_dtype(int(at["to"]))
    if np.dtype(dtype).kind not in "fiub":
        raise ValueError("cast to a non-numeric type")
    return [ins[0].astype(dtype)]


def _div(node: onnx.NodeProto, ins: list[Any], at: dict[str, Any], opset: int) -> list[np.ndarray]:
    a, b = ins
    if np.asarray(a).dtype.kind in "iu":
        # ONNX integer division truncates toward zero, as C does; numpy's // floors.
        return [np.trunc(np.true_divide(a, b)).astype(np.result_type(a, b))]
    return [np.asarray(np.divide(a, b)).astype(np.result_type(a, b))]


def _unary(fn: Callable[[np.ndarray], np.ndarray]) -> Evaluator:
    def ev(node: onnx.NodeProto, ins: list[Any], at: dict[str, Any], opset: int) -> list[np.ndarray]:
        return [np.asarray(fn(ins[0])).astype(ins[0].dtype)]
    return ev


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray], keep_type: bool = True) -> Evaluator:
    def ev(node: onnx.NodeProto, ins: list[Any], at: dict[str, Any], opset: int) -> list[np.ndarray]:
        out = np.asarray(fn(ins[0], ins[1]))
        return [out.astype(np.result_type(ins[0], ins[1])) if keep_type else out]
    return ev


def _variadic(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Evaluator:
    def ev(node: onnx.NodeProto, ins: list[Any], at: dict[str, Any], opset: int) -> list[np.ndarray]:
        out = ins[0]
        for v in ins[1:]:
            out = fn(out, v)
        return [np.asarray(out)]
    return ev


def _range(node: onnx.NodeProto, ins: list[Any], at: dict[str, Any], opset: int) -> list[np.ndarray]:
    start, limit, delta = (np.asarray(v).reshape(()) for v in ins)
    return [np.arange(start.item(), limit.item(), delta.item()).astype(start.dtype)]


def _expand(node: onnx.NodeProto, ins: list[Any], at: dict[str, Any], opset: int) -> list[np.ndarray]:
    shape = [int(d) for d in ins[1]]
    out = ins[0] * np.ones(shape, dtype=ins[0].dtype)
    return [out]


_EVALUATORS: dict[str, Evaluator] = {
    "Constant": _constant,
    "ConstantOfShape": _constant_of_shape,
    "Identity": lambda node, ins, at, opset: [ins[0]],
    "Cast": _cast,
    "Reshape": _reshape,
    "Flatten": lambda node, ins, at, opset: [ins[0].reshape(int(np.prod(ins[0].shape[: int(at.get("axis", 1))])), -1)],
    "Transpose": lambda node, ins, at, opset: [np.transpose(ins[0], at.get("perm"))],
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Slice": _slice,
    "Gather": _gather,
    "Concat": _concat,
    "Shape": lambda node, ins, at, opset: [np.array(ins[0].shape, dtype=np.int64)],
    "Size": lambda node, ins, at, opset: [np.array(ins[0].size, dtype=np.int64)],
    "Add": _binary(np.add),
    "Sub": _binary(np.subtract),
    "Mul": _binary(np.multiply),
    "Div": _div,
    "Neg": _unary(np.negative),
    "Abs": _unary(np.abs),
    "Ceil": _unary(np.ceil),
    "Floor": _unary(np.floor),
    "Max": _variadic(np.maximum),
    "Min": _variadic(np.minimum),
    "Equal": _binary(np.equal, keep_type=False),
    "Less": _binary(np.less, keep_type=False),
    "Greater": _binary(np.greater, keep_type=False),
    "Not": lambda node, ins, at, opset: [np.asarray(np.logical_not(ins[0]))],
    "Where": lambda node, ins, at, opset: [np.choose(np.asarray(ins[0], dtype=np.int64), [ins[2], ins[1]])],
    "Range": _range,
    "Expand": _expand,
}


def constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a ``Constant`` node (dense forms only), else None."""
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
        return None
    try:
        return _constant(node, [], _attrs(node), 0)[0]
    except ValueError:
        return None


def _opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def fold_constants(
    graph: onnx.GraphProto, constants: dict[str, np.ndarray], opset: int,
) -> tuple[set[int], dict[str, np.ndarray]]:
    """Evaluate, in graph order, every node whose inputs are all in ``constants`` and whose op this
    module knows. Returns the indices of the folded nodes and their outputs (``constants`` grows)."""
    folded: set[int] = set()
    produced: dict[str, np.ndarray] = {}
    for k, node in enumerate(graph.node):
        ev = _EVALUATORS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if ev is None or any(n and n not in constants for n in node.input):
            continue
        if node.op_type == "Constant" and any(a.name in ("sparse_value",) for a in node.attribute):
            continue
        try:
            ins = [constants[n] if n else None for n in node.input]
            outs = ev(node, ins, _attrs(node), opset)
        except (ValueError, TypeError, KeyError, IndexError, OverflowError, MemoryError, ZeroDivisionError):
            continue
        if len(outs) != len([o for o in node.output if o]) or any(np.size(o) > MAX_ELEMENTS for o in outs):
            continue
        for name, value in zip(node.output, outs):
            constants[name] = produced[name] = np.asarray(value)
        folded.add(k)
    return folded, produced


def shape_skeleton(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A weightless copy of ``model`` for shape inference, and the values of the tensors it folded.

    Large initializers become typed graph inputs (their shapes are what inference needs); constant
    subgraphs are folded into small initializers. The copy computes nothing: it is only for
    ``onnx.shape_inference`` (and must not be run or saved).
    """
    g = model.graph
    opset = _opset(model)
    skeleton = onnx.ModelProto()
    skeleton.ir_version = model.ir_version
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    sg = skeleton.graph
    sg.name = g.name
    constants: dict[str, np.ndarray] = {}
    weight_inputs: list[onnx.ValueInfoProto] = []
    for init in g.initializer:
        if int(np.prod(init.dims)) > WEIGHT_ELEMENTS or init.data_location == onnx.TensorProto.EXTERNAL:
            weight_inputs.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        else:
            try:
                constants[init.name] = numpy_helper.to_array(init)
            except (ValueError, TypeError):
                weight_inputs.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    folded, produced = fold_constants(g, constants, opset)
    used = {n for k, node in enumerate(g.node) if k not in folded for n in node.input} | {o.name for o in g.output}
    sg.node.extend(node for k, node in enumerate(g.node) if k not in folded)
    init_names = {i.name for i in g.initializer}
    sg.input.extend(i for i in g.input if i.name not in init_names)
    sg.input.extend(weight_inputs)
    sg.initializer.extend(numpy_helper.from_array(v, n) for n, v in constants.items() if n in used)
    sg.output.extend(g.output)
    sg.value_info.extend(g.value_info)
    return skeleton, produced


def value_infos(values: dict[str, np.ndarray]) -> dict[str, TensorInfo]:
    """``TensorInfo`` of each folded value (numeric ones; strings have no ONNX shape to give)."""
    return {n: TensorInfo(n, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), tuple(int(d) for d in v.shape))
            for n, v in values.items() if v.dtype.kind in "fiub"}


__all__ = ["MAX_ELEMENTS", "WEIGHT_ELEMENTS", "constant_value", "fold_constants", "shape_skeleton", "value_infos"]
