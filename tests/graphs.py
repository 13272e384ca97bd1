"""Small hand-built ONNX models for tests (no torch needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxcam.graph.protos import make_model


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(arr.astype(np.float32), name)


def residual_net(batch: int | str = "N", classes: int = 4, seed: int = 0, nhwc: bool = False) -> onnx.ModelProto:
    """x -> Conv -> a -> Relu -> b -> Conv -> c; d = b + c (skip bypasses c's conv) -> Relu -> GAP -> Gemm -> y."""
    rng = np.random.default_rng(seed)
    nodes = []
    x = "x"
    if nhwc:
        nodes.append(helper.make_node("Transpose", ["x"], ["x_nchw"], perm=[0, 3, 1, 2], name="to_nchw"))
        x = "x_nchw"
    nodes += [
        helper.make_node("Conv", [x, "w1", "b1"], ["a"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["a"], ["b"], name="relu1"),
        helper.make_node("Conv", ["b", "w2", "b2"], ["c"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Add", ["b", "c"], ["d"], name="add"),
        helper.make_node("Relu", ["d"], ["e"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["e"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], axis=1, name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1, name="fc"),
    ]
    inits = [
        _init("w1", rng.normal(0, 0.5, (6, 3, 3, 3))), _init("b1", rng.normal(0, 0.1, 6)),
        _init("w2", rng.normal(0, 0.3, (6, 6, 3, 3))), _init("b2", rng.normal(0, 0.1, 6)),
        _init("wf", rng.normal(0, 1.0, (classes, 6))), _init("bf", rng.normal(0, 0.1, classes)),
    ]
    shape = [batch, 8, 8, 3] if nhwc else [batch, 3, 8, 8]
    graph = helper.make_graph(
        nodes, "residual_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, classes])],
        inits,
    )
    return make_model(graph, [helper.make_opsetid("", 17)])


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path
