"""The type onnxcam describes a tensor with (element type and shape), below every graph pass.

It lives apart from ``shapes`` (which runs shape inference through ``const_fold``) so that
``const_fold`` can describe the values it folds without importing the module built on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

Dim = int | str | None

FLOAT_TYPES = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
)


@dataclass(frozen=True)
class TensorInfo:
    """Element type and shape of one tensor; a dim is an int, a symbol (str) or unknown (None)."""

    name: str
    elem_type: int
    shape: tuple[Dim, ...] | None

    @property
    def is_float(self) -> bool:
        return self.elem_type in FLOAT_TYPES

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)


__all__ = ["FLOAT_TYPES", "Dim", "TensorInfo"]
