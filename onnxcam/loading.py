"""Read and validate an ONNX model file without ever modifying it.

The file is read once, checked (protobuf parse, onnx checker, external data confined to the model's
folder), and shape inference runs on an in-memory copy. Nothing is written back to disk.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError

from onnxcam.errors import (
    ExternalDataError,
    ModelLoadError,
    ModelNotFoundError,
    OnnxCamWarning,
    UnsupportedModelError,
    first_line,
)

# onnxruntime refuses models older than this default-domain opset.
MIN_OPSET = 7


def read_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Parse ``path`` into a validated ``ModelProto`` with its external data loaded.

    Raises ``ModelNotFoundError``, ``ModelLoadError``, ``ExternalDataError`` or ``UnsupportedModelError``
    with a message naming the file and the fix.
    """
    p = Path(path)
    if not p.exists():
        raise ModelNotFoundError(f"model file not found: {p}: check the path (relative paths start at {Path.cwd()})")
    if p.is_dir():
        raise ModelNotFoundError(f"{p} is a directory, not a model file: pass the .onnx file inside it")
    data = _read_bytes(p)
    if not data:
        raise ModelLoadError(f"{p} is empty (0 bytes): re-export the model or copy it again")
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, RuntimeWarning, ValueError) as exc:
        raise ModelLoadError(
            f"{p} is not an ONNX model (protobuf parse failed: {first_line(exc, 300)}); the file may be truncated or "
            "of another format: re-export it with your framework's ONNX exporter"
        ) from exc
    _check_is_model(model, p)
    external = bool(_external_tensors(model))
    _load_external_data(model, p)
    _check_opset(model, p)
    _check_or_runtime_accepts(model, data, p, external)
    return model


def _check_or_runtime_accepts(model: onnx.ModelProto, data: bytes, p: Path, external: bool) -> None:
    """Run onnx's checker; when it complains but onnxruntime loads the model, warn and go on.

    The checker is stricter than the runtime that does the work (a graph output declared without a
    shape, a repeated initializer): refusing such a model would refuse something onnxcam can
    explain. What neither accepts stays a ``ModelLoadError`` naming the checker's complaint.
    """
    try:
        # The file's own bytes: checking the parsed proto would serialise it all over again.
        onnx.checker.check_model(data)
        return
    except onnx.checker.ValidationError as exc:
        complaint = first_line(exc, 300)
    except ValueError as exc:  # models > 2 GB must be checked by path
        if "2GB" in str(exc):
            return
        complaint = first_line(exc, 300)
    # With external data the file's bytes only reference the weights ``model`` now holds.
    runtime_error = _runtime_load_error(model.SerializeToString() if external else data)
    if runtime_error is not None:
        raise ModelLoadError(
            f"{p} fails the ONNX checker: {complaint}; onnxruntime cannot load it either ({runtime_error}): "
            "re-export the model or fix the named node"
        )
    warnings.warn(
        f"{p} fails the ONNX checker ({complaint}) but onnxruntime loads it: explaining it anyway; "
        "re-export the model to silence this",
        OnnxCamWarning,
        stacklevel=3,
    )


def _runtime_load_error(data: bytes) -> str | None:
    """Why a CPU onnxruntime session cannot be built for the model, or None when it can."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # the caller reports the outcome; ORT's own log lines would repeat it
    # Loading is the question, not speed: skip the graph optimisations.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped exceptions
        return first_line(exc, 300)
    return None


def _read_bytes(p: Path) -> bytes:
    try:
        return p.read_bytes()
    except OSError as exc:
        raise ModelNotFoundError(f"cannot read {p}: {exc.strerror}; check its permissions") from exc


def _check_is_model(model: onnx.ModelProto, p: Path) -> None:
    # Protobuf happily parses many byte strings as a ModelProto with unknown fields; a real model
    # has an IR version and a graph with at least one node and one output.
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise ModelLoadError(
            f"{p} parses as protobuf but is not an ONNX model (no IR version or graph): "
            "pass the exported .onnx file, not a weights or tensor file"
        )
    if len(model.graph.node) == 0 or len(model.graph.output) == 0:
        raise ModelLoadError(f"{p} has an empty graph (no nodes or no outputs): re-export the model")


def _check_opset(model: onnx.ModelProto, p: Path) -> None:
    versions = {imp.domain: imp.version for imp in model.opset_import}
    default = versions.get("", versions.get("ai.onnx", 0))
    if default and default < MIN_OPSET:
        raise UnsupportedModelError(
            f"{p} uses opset {default}; onnxruntime needs opset >= {MIN_OPSET}: convert it with "
            "onnx.version_converter.convert_version(model, 17)"
        )
    if model.ir_version > onnx.IR_VERSION:
        raise UnsupportedModelError(
            f"{p} has IR version {model.ir_version}, newer than this onnx ({onnx.IR_VERSION}): "
            "upgrade onnx and onnxruntime, or re-export with an older exporter"
        )


def _external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                tensors.append(attr.t)
    return [t for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL]


def _load_external_data(model: onnx.ModelProto, p: Path) -> None:
    tensors = _external_tensors(model)
    if not tensors:
        return
    folder = p.resolve().parent
    for tensor in tensors:
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        target = (folder / location).resolve()
        if not location or Path(location).is_absolute() or folder not in target.parents:
            raise ExternalDataError(
                f"{p}: tensor {tensor.name!r} stores its data at {location!r}, outside the model's folder {folder}; "
                "onnxcam only reads external data next to the model: move the data file beside the .onnx file "
                "and re-save with a relative location"
            )
        if not target.is_file():
            raise ExternalDataError(
                f"{p}: tensor {tensor.name!r} needs external data file {location!r}, which is missing from "
                f"{folder}: copy it next to the model"
            )
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(folder))
    except (OSError, ValueError) as exc:
        raise ExternalDataError(f"{p}: external data could not be read: {first_line(exc, 300)}") from exc
