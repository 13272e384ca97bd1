"""The emitter that rules write gradient nodes through: fresh names, constants, opset-aware helpers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

Shape = list[int | None]


class NoRule(Exception):
    """A rule cannot differentiate this node (unsupported attribute, non-constant operand, ...)."""


class Emitter:
    """Holds what rules need to know about the forward graph and collects the nodes they emit."""

    def __init__(
        self,
        shapes: dict[str, Shape | None],
        dtypes: dict[str, int],
        consts: dict[str, np.ndarray],
        active: set[str],
        opset: int,
        taken: set[str],
    ) -> None:
        self.shapes = shapes
        self.dtypes = dtypes
        self.consts = consts
        self._active = active
        self.opset = opset
        self._taken = taken
        self._counter = 0
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._const_cache: dict[tuple[str, tuple[int, ...], bytes], str] = {}
        # QuantizeLinear outputs that only quantise a model output (see the QDQ rule).
        self.output_quantizers: set[str] = set()

    # --- facts about the forward graph -------------------------------------------------------
    def active(self, name: str) -> bool:
        return bool(name) and name in self._active

    def shape(self, name: str) -> Shape | None:
        return self.shapes.get(name)

    def static_shape(self, name: str) -> list[int]:
        shape = self.shapes.get(name)
        if shape is None or any(d is None for d in shape):
            raise NoRule(f"needs a static shape for tensor '{name}' (got {shape})")
        return [int(d) for d in shape if d is not None]

    def rank(self, name: str) -> int:
        shape = self.shapes.get(name)
        if shape is None:
            raise NoRule(f"needs the rank of tensor '{name}'")
        return len(shape)

    def dtype(self, name: str) -> int:
        return self.dtypes.get(name, onnx.TensorProto.FLOAT)

    def value(self, name: str) -> np.ndarray | None:
        return self.consts.get(name) if name else None

    def need_value(self, name: str, what: str) -> np.ndarray:
        value = self.value(name)
        if value is None:
            raise NoRule(f"needs a constant {what} (tensor '{name}')")
        return value

    # --- emitting ------------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        while True:
            self._counter += 1
            name = f"onnxcam_grad/{hint}_{self._counter}"
            if name not in self._taken:
                self._taken.add(name)
                return name

    def op(self, op_type: str, inputs: Sequence[str], **attrs: Any) -> str:
        return self.op_n(op_type, inputs, 1, **attrs)[0]

    def op_n(self, op_type: str, inputs: Sequence[str], n_out: int, **attrs: Any) -> list[str]:
        outs = [self.fresh(op_type.lower()) for _ in range(n_out)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=outs[0], **attrs))
        return outs

    def const(self, array: np.ndarray) -> str:
        array = np.ascontiguousarray(array)
        key = (str(array.dtype), tuple(array.shape), array.tobytes())
        if key not in self._const_cache:
            name = self.fresh("const")
            self.initializers.append(numpy_helper.from_array(array, name))
            self._const_cache[key] = name
        return self._const_cache[key]

    def ints(self, values: Sequence[int]) -> str:
        return self.const(np.asarray(list(values), dtype=np.int64))

    def scalar(self, value: float, like: str) -> str:
        np_dtype = helper.tensor_dtype_to_np_dtype(self.dtype(like))
        return self.const(np.asarray(value, dtype=np_dtype))

    def array_like(self, array: np.ndarray, like: str) -> str:
        return self.const(np.asarray(array, dtype=helper.tensor_dtype_to_np_dtype(self.dtype(like))))

    # --- opset-aware helpers -------------------------------------------------------------------
    def _axes_op(self, op_type: str, x: str, axes: Sequence[int], since: int, **attrs: Any) -> str:
        if self.opset >= since:
            return self.op(op_type, [x, self.ints(axes)], **attrs)
        return self.op(op_type, [x], axes=list(axes), **attrs)

    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: int = 1) -> str:
        since = 13 if op_type == "ReduceSum" else 18
        return self._axes_op(op_type, x, axes, since, keepdims=keepdims)

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        return self._axes_op("Unsqueeze", x, axes, 13)

    def reshape_like(self, x: str, ref: str) -> str:
        shape = self.shape(ref)
        if shape is not None and all(d is not None for d in shape):
            return self.op("Reshape", [x, self.ints([int(d) for d in shape if d is not None])])
        return self.op("Reshape", [x, self.op("Shape", [ref])])

    def crop(self, x: str, begin: Sequence[int], end: Sequence[int]) -> str:
        """Drop ``begin[a]``/``end[a]`` leading/trailing entries of ``x`` along each axis ``a``.

        Slice rather than a negative Pad: the ONNX spec and onnx's reference leave negative pads
        undefined before opset 18, while Slice with starts/ends as inputs means the same from opset 10.
        """
        axes = [a for a in range(len(begin)) if begin[a] or end[a]]
        if not axes:
            return x
        big = np.iinfo(np.int64).max
        starts = [begin[a] for a in axes]
        ends = [-end[a] if end[a] else big for a in axes]
        return self.op("Slice", [x, self.ints(starts), self.ints(ends), self.ints(axes)])

    def scatter_add(self, like: str, index: np.ndarray, values: str) -> str:
        """Flat zeros shaped like ``like`` with the flat ``values`` added at the constant flat ``index``.

        ScatterElements only adds repeated indices from opset 16 (reduction="add"); before that a
        repeated index keeps one arbitrary write, so the writes are split into layers in which every
        index is unique (the k-th occurrence of each index goes to layer k) and the layers summed.
        """
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        flat = self.op("Reshape", [self.zeros_like(like), self.ints([-1])])
        values = self.op("Reshape", [values, self.ints([-1])])
        if self.opset >= 16:
            return self.op("ScatterElements", [flat, self.ints(index.tolist()), values], axis=0, reduction="add")
        order = np.argsort(index, kind="stable")
        sorted_index = index[order]
        first = np.searchsorted(sorted_index, sorted_index, side="left")
        occurrence = np.empty_like(index)
        occurrence[order] = np.arange(index.size) - first
        layers = []
        for k in range(int(occurrence.max(initial=0)) + 1):
            positions = np.nonzero(occurrence == k)[0]
            picked = values
            if positions.size != index.size:
                picked = self.op("Gather", [values, self.ints(positions.tolist())])
            layers.append(self.op("ScatterElements", [flat, self.ints(index[positions].tolist()), picked], axis=0))
        return layers[0] if len(layers) == 1 else self.op("Sum", layers)

    def zeros_like(self, ref: str) -> str:
        value = numpy_helper.from_array(np.zeros(1, dtype=helper.tensor_dtype_to_np_dtype(self.dtype(ref))), "zero")
        return self.op("ConstantOfShape", [self.op("Shape", [ref])], value=value)

    def compare(self, op_type: str, a: str, b: str) -> str:
        """GreaterOrEqual/LessOrEqual, spelled Not(Less/Greater) before opset 12 introduced them."""
        if self.opset >= 12 or op_type not in ("GreaterOrEqual", "LessOrEqual"):
            return self.op(op_type, [a, b])
        return self.op("Not", [self.op("Less" if op_type == "GreaterOrEqual" else "Greater", [a, b])])

    def mul(self, a: str, b: str) -> str:
        return self.op("Mul", [a, b])

    def unbroadcast(self, grad: str, ref: str, grad_shape: Shape | None) -> str:
        """Sum ``grad`` (shaped like a broadcast result) back to the shape of ``ref``."""
        ref_shape = self.shape(ref)
        if ref_shape is None or grad_shape is None:
            raise NoRule(f"needs the ranks of '{ref}' and its broadcast result")
        if list(ref_shape) == list(grad_shape) and all(d is not None for d in ref_shape):
            return grad
        lead = len(grad_shape) - len(ref_shape)
        axes = list(range(lead))
        for i, dim in enumerate(ref_shape):
            # a symbolic dim on both sides is taken as equal: broadcasting a symbolic batch
            # against a symbolic batch is the only way exporters produce it
            if dim == 1 and grad_shape[lead + i] != 1:
                axes.append(lead + i)
        summed = self.reduce("ReduceSum", grad, axes, keepdims=1) if axes else grad
        if lead == 0 and not axes:
            return summed
        return self.reshape_like(summed, ref)


def attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default
