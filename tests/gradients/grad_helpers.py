"""Helpers for the gradient tests: tiny-graph construction and a float64 finite-difference oracle."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from onnxcam.gradients import GradientModel, build_gradient_model
from onnxcam.graph.protos import make_model


def tiny_model(
    nodes: list[onnx.NodeProto],
    inputs: dict[str, Sequence[int | str]],
    outputs: Sequence[str],
    inits: dict[str, np.ndarray] | None = None,
    opset: int = 17,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v)) for k, v in inputs.items()],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()],
    )
    model = make_model(graph, [helper.make_opsetid("", opset)])
    return onnx.shape_inference.infer_shapes(model)


def run_gradient(gm: GradientModel, feeds: dict[str, np.ndarray], seeds: dict[str, np.ndarray]) -> dict[str, Any]:
    session = ort.InferenceSession(gm.model.SerializeToString(), providers=["CPUExecutionProvider"])
    inputs = dict(feeds)
    inputs.update({gm.seed_inputs[k]: v.astype(np.float32) for k, v in seeds.items()})
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(None, inputs), strict=True))
    return {k: values[v] for k, v in gm.grad_outputs.items()} | {"__outputs__": values}


def _to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for init in m.graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float64), init.name))
    return m


class Erf(OpRun):
    # the stock reference Erf computes in float32, too coarse for a float64 oracle
    op_domain = ""

    def _run(self, x: np.ndarray) -> tuple[np.ndarray]:
        return (np.vectorize(math.erf)(x),)


class LayerNormalization(OpRun):
    # the stock reference computes in float32 (stash_type=1)
    op_domain = ""

    def _run(self, x, scale, bias=None, axis=-1, epsilon=1e-5, stash_type=1):  # type: ignore[no-untyped-def]
        axes = tuple(range(axis % x.ndim, x.ndim))
        mean = x.mean(axis=axes, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
        y = (x - mean) / np.sqrt(var + epsilon) * scale
        return (y if bias is None else y + bias,)


class Oracle:
    """sum(seed * output) evaluated in float64 by onnx's reference evaluator."""

    def __init__(self, model: onnx.ModelProto, seeds: dict[str, np.ndarray]) -> None:
        self.ref = ReferenceEvaluator(_to_float64(model), new_ops=[Erf, LayerNormalization])
        self.seeds = seeds

    def score(self, feeds: dict[str, np.ndarray]) -> float:
        outs = self.ref.run(list(self.seeds), {k: v.astype(np.float64) for k, v in feeds.items()})
        return float(sum(np.sum(s * o) for s, o in zip(self.seeds.values(), outs, strict=True)))

    def gradient(self, feeds: dict[str, np.ndarray], name: str, h: float = 1e-6) -> np.ndarray:
        x = feeds[name].astype(np.float64)
        grad = np.zeros_like(x)
        for i in range(x.size):
            for sign in (1, -1):
                moved = x.copy().reshape(-1)
                moved[i] += sign * h
                grad.reshape(-1)[i] += sign * self.score(feeds | {name: moved.reshape(x.shape)})
        return grad / (2 * h)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    scale = max(float(np.max(np.abs(b))), 1e-12)
    return float(np.max(np.abs(a.astype(np.float64) - b)) / scale)


def check_against_fd(
    model: onnx.ModelProto,
    feeds: dict[str, np.ndarray],
    wrt: Sequence[str] | None = None,
    tol: float = 1e-4,
    rng: np.random.Generator | None = None,
    seeds: dict[str, np.ndarray] | None = None,
    directions: int = 0,
) -> dict[str, np.ndarray]:
    """Build the gradient model w.r.t. the float inputs, compare with float64 central differences."""
    rng = rng or np.random.default_rng(1)
    wrt = list(wrt or feeds)
    gm = build_gradient_model(model, wrt)
    ref = ReferenceEvaluator(_to_float64(model), new_ops=[Erf, LayerNormalization])
    outs = ref.run(None, {k: v.astype(np.float64) for k, v in feeds.items()})
    if seeds is None:
        seeds = {o.name: rng.standard_normal(np.shape(v)) for o, v in zip(model.graph.output, outs, strict=True)}
    got = run_gradient(gm, feeds, seeds)
    oracle = Oracle(model, seeds)
    for name in wrt:
        assert got[name].shape == feeds[name].shape
        if directions:
            # random directions: <grad, d> against a float64 central difference along d
            for _ in range(directions):
                d = rng.standard_normal(feeds[name].shape)
                h = 1e-5
                base = feeds[name].astype(np.float64)
                fd = (oracle.score(feeds | {name: base + h * d}) - oracle.score(feeds | {name: base - h * d})) / (2 * h)
                predicted = float(np.sum(got[name].astype(np.float64) * d))
                assert abs(fd - predicted) <= tol * max(abs(fd), 1e-6) + 1e-6, f"{name}: {predicted} vs {fd}"
            continue
        expected = oracle.gradient(feeds, name)
        assert got[name].shape == feeds[name].shape
        err = rel_err(got[name], expected)
        assert err <= tol, f"{name}: relative error {err:.2e} > {tol:.0e}"
    return got
