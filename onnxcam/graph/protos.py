"""Small helpers for emitting ONNX models that the installed onnxruntime accepts."""

from __future__ import annotations

from collections.abc import Iterable

import onnx

# onnx >= 1.23 stamps IR version 14 on new models, which onnxruntime 1.31 rejects;
# IR 9 covers every opset onnxcam emits (up to 21) and loads on every supported runtime.
IR_VERSION = 9


def make_model(
    graph: onnx.GraphProto,
    opset_imports: Iterable[onnx.OperatorSetIdProto],
    *,
    ir_version: int = IR_VERSION,
) -> onnx.ModelProto:
    """Wrap ``graph`` into a model with an IR version onnxruntime accepts."""
    model = onnx.helper.make_model(graph, opset_imports=list(opset_imports), producer_name="onnxcam")
    model.ir_version = min(ir_version, IR_VERSION)
    return model


def opset_version(model: onnx.ModelProto, domain: str = "") -> int:
    """The opset version ``model`` imports for ``domain`` ("" is the default ONNX domain)."""
    for imp in model.opset_import:
        if imp.domain in (domain, "ai.onnx" if domain == "" else domain):
            return int(imp.version)
    return 0
