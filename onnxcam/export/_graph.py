"""A small node writer for the exported graph: fresh names under one prefix, constants, helpers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcam.graph.protos import make_model

PREFIX = "onnxcam_export/"


class GraphWriter:
    """Collects nodes and initializers; every name it makes starts with ``PREFIX`` + a scope."""

    def __init__(self, scope: str, opset: int) -> None:
        self.scope = scope
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0
        self._consts: dict[tuple[str, tuple[int, ...], bytes], str] = {}

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{PREFIX}{self.scope}/{hint}_{self._count}"

    def op(self, op_type: str, inputs: Sequence[str], out: str | None = None, **attrs: Any) -> str:
        name = out or self.fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], name=name,
                                           **{k: v for k, v in attrs.items() if v is not None}))
        return name

    def const(self, array: Any, dtype: Any = None) -> str:
        arr = np.ascontiguousarray(np.asarray(array, dtype=dtype))
        key = (str(arr.dtype), tuple(arr.shape), arr.tobytes())
        if key not in self._consts:
            name = self.fresh("const")
            self.initializers.append(numpy_helper.from_array(arr, name))
            self._consts[key] = name
        return self._consts[key]

    def ints(self, values: Sequence[int]) -> str:
        return self.const(np.asarray(list(values), dtype=np.int64))

    def f32(self, value: float) -> str:
        return self.const(np.float32(value))

    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: int = 1) -> str:
        """``op_type`` over ``axes``: axes are an input from opset 13 (ReduceSum) / 18 (the others)."""
        since = 13 if op_type == "ReduceSum" else 18
        if self.opset >= since:
            return self.op(op_type, [x, self.ints(axes)], keepdims=keepdims)
        return self.op(op_type, [x], axes=list(axes), keepdims=keepdims)

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        if self.opset >= 13:
            return self.op("Unsqueeze", [x, self.ints(axes)])
        return self.op("Unsqueeze", [x], axes=list(axes))

    def squeeze(self, x: str, axes: Sequence[int], out: str | None = None) -> str:
        if self.opset >= 13:
            return self.op("Squeeze", [x, self.ints(axes)], out=out)
        return self.op("Squeeze", [x], axes=list(axes), out=out)

    def clip(self, x: str, low: float, high: float, out: str | None = None) -> str:
        """``x`` clipped to ``[low, high]``: the bounds are inputs from opset 11."""
        if self.opset >= 11:
            return self.op("Clip", [x, self.f32(low), self.f32(high)], out=out)
        return self.op("Clip", [x], min=low, max=high, out=out)

    def slice(self, x: str, start: int, end: int, axis: int) -> str:
        """``x[start:end]`` along ``axis``: starts / ends are inputs from opset 10."""
        if self.opset >= 10:
            return self.op("Slice", [x, self.ints([start]), self.ints([end]), self.ints([axis])])
        return self.op("Slice", [x], starts=[start], ends=[end], axes=[axis])

    def batch(self, x: str) -> str:
        """``(1,)`` int64: the first dim of ``x`` at run time."""
        if self.opset >= 15:
            return self.op("Shape", [x], start=0, end=1)
        return self.op("Slice", [self.op("Shape", [x]), self.ints([0]), self.ints([1])])


def exported_model(base: onnx.ModelProto, nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
                   outputs: list[onnx.ValueInfoProto], initializers: list[onnx.TensorProto]) -> onnx.ModelProto:
    """The exported file's model: ``base``'s name, value_info, opsets and metadata around the given graph."""
    g = base.graph
    graph = onnx.helper.make_graph(nodes, g.name or "onnxcam_export", inputs, outputs, initializers,
                                   value_info=list(g.value_info))
    proto = make_model(graph, base.opset_import, ir_version=max(base.ir_version, 7))
    proto.producer_name = "onnxcam"
    for prop in base.metadata_props:
        proto.metadata_props.add().CopyFrom(prop)
    return proto

