"""Shapes and types of the tensors in a graph, and copies of a model with fixed input dims."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnx

from onnxcam.graph.const_fold import shape_skeleton, value_infos
from onnxcam.graph.tensor_info import FLOAT_TYPES, Dim, TensorInfo


def _info(value: onnx.ValueInfoProto) -> TensorInfo:
    tt = value.type.tensor_type
    shape: tuple[Dim, ...] | None = None
    if tt.HasField("shape"):
        dims: list[Dim] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
        shape = tuple(dims)
    return TensorInfo(value.name, int(tt.elem_type), shape)


def tensor_infos(model: onnx.ModelProto) -> dict[str, TensorInfo]:
    """Every tensor of the main graph whose type is known: inputs, outputs, value_info, initializers."""
    g = model.graph
    infos: dict[str, TensorInfo] = {}
    for init in g.initializer:
        infos[init.name] = TensorInfo(init.name, int(init.data_type), tuple(int(d) for d in init.dims))
    for value in list(g.value_info) + list(g.input) + list(g.output):
        if value.type.HasField("tensor_type"):
            infos[value.name] = _info(value)
    return infos


def format_shape(shape: Sequence[Dim] | None) -> str:
    """``(N, 3, 224, 224)``; unknown dims as ``?``."""
    if shape is None:
        return "(unknown)"
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def make_value_info(name: str, elem_type: int, shape: Sequence[Dim] | None) -> onnx.ValueInfoProto:
    """A ValueInfoProto; ``None`` dims become anonymous."""
    if shape is None:
        return onnx.helper.make_tensor_value_info(name, elem_type, None)
    return onnx.helper.make_tensor_value_info(name, elem_type, list(shape))


def with_static_inputs(model: onnx.ModelProto, dims: Mapping[str, Sequence[Dim]]) -> onnx.ModelProto:
    """A copy of ``model`` whose named inputs have the given static dims, shapes re-inferred.

    Intermediate value_info is dropped first: it carries the symbolic batch dim, which would
    otherwise survive and keep the gradient builder from seeing static shapes. Inference runs on a
    weightless skeleton (see ``const_fold``) and its value_info is copied back.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.value_info[:]
    for value in copy.graph.input:
        if value.name in dims:
            value.CopyFrom(make_value_info(value.name, value.type.tensor_type.elem_type, dims[value.name]))
    for value in copy.graph.output:
        # Output dims are re-derived by inference; stale symbolic dims would conflict with static ones.
        tt = value.type.tensor_type
        if tt.HasField("shape"):
            for d in tt.shape.dim:
                d.Clear()
    skeleton, folded = shape_skeleton(copy)
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, check_type=False, strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, RuntimeError, ValueError):
        return copy
    copy.graph.value_info.extend(inferred.graph.value_info)
    copy.graph.value_info.extend(make_value_info(i.name, i.elem_type, i.shape) for i in value_infos(folded).values())
    outputs = {o.name: o for o in inferred.graph.output}
    for value in copy.graph.output:
        if value.name in outputs:
            value.CopyFrom(outputs[value.name])
    return copy


__all__ = [
    "FLOAT_TYPES", "Dim", "TensorInfo", "format_shape", "make_value_info", "tensor_infos", "with_static_inputs",
]
