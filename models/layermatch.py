"""Match torch module outputs to ONNX tensors by value (used to find and re-check `ModelSpec.layers`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn


def onnx_tensors(path: str | Path, names: Sequence[str], x: np.ndarray) -> dict[str, np.ndarray]:
    """Values of the tensors ``names`` (plus the outputs) for input ``x``, via a scratch copy.

    Intermediate tensors are exposed by appending them as graph outputs in memory; the file on
    disk is not touched.
    """
    model = onnx.load(str(path))
    known = {o.name for o in model.graph.output}
    for name in names:
        if name not in known:
            # No type/shape given: onnxruntime infers it, so any element type works.
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    outs = sess.run(None, feed)
    return {o.name: v for o, v in zip(sess.get_outputs(), outs, strict=True)}


def torch_activation(model: nn.Module, module_path: str, x: np.ndarray) -> np.ndarray:
    """Output of ``model.get_submodule(module_path)`` for input ``x``; it must run exactly once."""
    seen: list[torch.Tensor] = []
    handle = model.get_submodule(module_path).register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    try:
        with torch.no_grad():
            model(torch.from_numpy(x))
    finally:
        handle.remove()
    if len(seen) != 1:
        raise ValueError(f"module {module_path!r} ran {len(seen)} times in one forward; hook a module used once")
    return seen[0].numpy()


def rel_err(a: np.ndarray, ref: np.ndarray) -> float:
    """max |a - ref| / max |ref| (shapes must match)."""
    if a.shape != ref.shape:
        return float("inf")
    return float(np.abs(a - ref).max() / max(float(np.abs(ref).max()), 1e-12))


def find_matches(path: str | Path, model: nn.Module, module_path: str, x: np.ndarray, tol: float = 1e-4) -> list[str]:
    """ONNX tensors (node outputs) whose value equals the output of ``module_path`` within ``tol``."""
    ref = torch_activation(model, module_path, x)
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(path))).graph
    floats = {
        vi.name for vi in [*graph.value_info, *graph.output] if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    }
    names = [o for n in graph.node for o in n.output if o in floats]
    values = onnx_tensors(path, names, x)
    return [n for n in names if rel_err(values[n], ref) < tol]
