"""Export a zoo `ModelSpec` to ONNX with the legacy (TorchScript) exporter and verify the file."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from models.layermatch import rel_err
from models.weights import calibration_batch
from models.zoo import ModelSpec

OPSET = 17
# onnxruntime rejects the IR version recent onnx stamps (14); 9 covers opset 17.
MAX_IR_VERSION = 9
PARITY_TOL = 1e-4


def prune_dead(model: onnx.ModelProto) -> None:
    """Drop nodes whose outputs nothing reads, then initializers nothing reads.

    The quantizer folds Clips into their Convs but leaves the Clip bounds' Constant nodes behind;
    onnxruntime would log a warning per leftover on every session creation.
    """
    graph = model.graph
    while True:
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        live = [node for node in graph.node if any(o in used for o in node.output)]
        if len(live) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(live)
    used = {name for node in graph.node for name in node.input}
    inits = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def finalize(model: onnx.ModelProto, path: Path, doc: str = "") -> None:
    """Prune dead nodes, clamp the IR version, check, and write ``model`` to ``path`` atomically."""
    prune_dead(model)
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    model.producer_name = "onnxcam-models"
    if doc:
        model.doc_string = doc
    onnx.checker.check_model(model, full_check=True)
    tmp = path.with_suffix(".onnx.tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)


def check_parity(spec: ModelSpec, path: Path, module: torch.nn.Module, x: np.ndarray) -> float:
    """Relative max error of onnxruntime vs torch on ``x``; raises if above `PARITY_TOL`."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {spec.input_name: x})
    with torch.no_grad():
        ref = module(torch.from_numpy(x)).numpy()
    err = rel_err(got, ref)
    if err > PARITY_TOL:
        raise RuntimeError(f"{path}: onnxruntime differs from torch by {err:.2e} (relative) > {PARITY_TOL}")
    return err


def export_spec(spec: ModelSpec, path: Path) -> None:
    """Export ``spec.factory()`` to ``path`` (dynamic batch axis if ``spec.dynamic_batch``)."""
    module = spec.factory().eval()
    # Trace with batch 2 when the batch is dynamic, so no op gets specialised to a batch of 1.
    batch = 2 if spec.dynamic_batch else 1
    x = calibration_batch(spec.input_shape, spec.layout, seed=0, batch=batch)
    axes = {spec.input_name: {0: "batch"}, spec.output_name: {0: "batch"}} if spec.dynamic_batch else None
    tmp = path.with_suffix(".export.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(
            module, (x,), str(tmp), dynamo=False, opset_version=OPSET,
            input_names=[spec.input_name], output_names=[spec.output_name], dynamic_axes=axes,
        )  # fmt: skip
    model = onnx.load(str(tmp))
    tmp.unlink()
    finalize(model, path, f"onnxcam test model {spec.name}: {spec.description}")
    check_parity(spec, path, module, x.numpy())
