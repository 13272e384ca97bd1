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


def _softmax_2d(x: np.ndarray, axis: int, log: bool) -> np.ndarray:
    # before opset 13 Softmax coerced its input to 2-D at `axis`; onnx's reference ignores that
    flat = x.reshape(int(np.prod(x.shape[: axis % x.ndim])), -1)
    shifted = flat - flat.max(axis=1, keepdims=True)
    logz = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return (shifted - logz if log else np.exp(shifted - logz)).reshape(x.shape)


class Softmax11(OpRun):
    op_domain = ""

    def _run(self, x, axis=1):  # type: ignore[no-untyped-def]
        return (_softmax_2d(x, axis, log=False),)


class LogSoftmax11(OpRun):
    op_domain = ""

    def _run(self, x, axis=1):  # type: ignore[no-untyped-def]
        return (_softmax_2d(x, axis, log=True),)


def _group_norm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, groups: int, eps: float) -> np.ndarray:
    grouped = x.reshape(x.shape[0], groups, -1)
    mean = grouped.mean(axis=2, keepdims=True)
    var = grouped.var(axis=2, keepdims=True)
    normed = ((grouped - mean) / np.sqrt(var + eps)).reshape(x.shape)
    view = [1, -1] + [1] * (x.ndim - 2)
    if scale.size == groups and groups != x.shape[1]:  # opset 18: per group
        normed = normed.reshape(x.shape[0], groups, -1) * scale.reshape(1, -1, 1) + bias.reshape(1, -1, 1)
        return normed.reshape(x.shape)
    return normed * scale.reshape(view) + bias.reshape(view)


class GroupNormalization(OpRun):
    # the stock reference (the function body) computes in float32 at opset 21 (stash_type=1)
    op_domain = ""

    def _run(self, x, scale, bias, num_groups=1, epsilon=1e-5, stash_type=1):  # type: ignore[no-untyped-def]
        return (_group_norm(x, scale, bias, num_groups, epsilon),)


class LRN(OpRun):
    # the stock reference loops over the batch axis instead of the channels
    op_domain = ""

    def _run(self, x, alpha=1e-4, beta=0.75, bias=1.0, size=1):  # type: ignore[no-untyped-def]
        lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
        square_sum = np.zeros_like(x)
        for c in range(x.shape[1]):
            square_sum[:, c] = np.sum(x[:, max(0, c - lo) : c + hi + 1] ** 2, axis=1)
        return (x / (bias + alpha / size * square_sum) ** beta,)


class BatchNormalization(OpRun):
    # the stock reference for opsets 9-13 normalises with batch statistics (momentum is set by default)
    op_domain = ""

    def _run(self, x, scale, bias, mean, var, epsilon=1e-5, momentum=0.9, training_mode=0):  # type: ignore[no-untyped-def]
        scale, bias, mean, var = (v.reshape([1, -1] + [1] * (x.ndim - 2)) for v in (scale, bias, mean, var))
        return ((x - mean) / np.sqrt(var + epsilon) * scale + bias,)


class Cast(OpRun):
    # float -> float32 casts would drop the oracle back to single precision: float stays float64
    op_domain = ""

    def _run(self, x, to=TensorProto.FLOAT, saturate=1, round_mode="up"):  # type: ignore[no-untyped-def]
        if to in (TensorProto.FLOAT, TensorProto.DOUBLE) and x.dtype.kind == "f":
            return (x.astype(np.float64),)
        return (x.astype(helper.tensor_dtype_to_np_dtype(to)),)


def reference_ops(model: onnx.ModelProto) -> list[type[OpRun]]:
    """Float64-exact replacements for the reference ops that compute in float32 or miss old semantics."""
    ops: list[type[OpRun]] = [Erf, LayerNormalization, GroupNormalization, LRN, BatchNormalization, Cast]
    opset = next((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), 21)
    if opset < 13:
        ops += [type("Softmax", (Softmax11,), {}), type("LogSoftmax", (LogSoftmax11,), {})]
    return ops


class Oracle:
    """sum(seed * output) evaluated in float64 by onnx's reference evaluator."""

    def __init__(self, model: onnx.ModelProto, seeds: dict[str, np.ndarray]) -> None:
        self.ref = ReferenceEvaluator(_to_float64(model), new_ops=reference_ops(model))
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
    ref = ReferenceEvaluator(_to_float64(model), new_ops=reference_ops(model))
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
