"""The auto layer on hand-built graphs (issue 13 item 9): never a model output, nor a map that only
biases, scales or activates into one; a map one row high (a text line's) still has places."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import onnxcam
from onnxcam.graph.protos import make_model


def _save(nodes: list, inits: dict[str, np.ndarray], out_shape: list, path: Path) -> Path:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(v if v.dtype == np.int64 else v.astype(np.float32), k) for k, v in inits.items()],
    )
    path.write_bytes(make_model(graph, [helper.make_opsetid("", 17)]).SerializeToString())
    return path


def test_a_biased_sigmoid_map_output_is_not_the_auto_layer(tmp_path: Path) -> None:
    """DBNet-style: features -> Conv (no bias) -> Add(bias) -> Sigmoid -> output."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["feat"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["feat"], ["act"]),
        helper.make_node("Conv", ["act", "w2"], ["logit_nobias"]),
        helper.make_node("Add", ["logit_nobias", "b2"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["y"]),
    ]
    inits = {"w1": rng.normal(size=(4, 3, 3, 3)), "w2": rng.normal(size=(1, 4, 1, 1)), "b2": np.ones((1, 1, 1))}
    model = onnxcam.load(_save(nodes, inits, ["N", 1, 16, 16], tmp_path / "seg.onnx"), device="cpu")
    assert model.resolve_layers("auto") == ("act",)


def test_a_residual_sum_into_the_output_is_not_mistaken_for_a_bias(tmp_path: Path) -> None:
    """Add of two computed maps is a new map, not the output biased: ``a`` stays a candidate."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "w2"], ["b"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["a", "b"], ["s"]),
        helper.make_node("GlobalAveragePool", ["s"], ["p"]),
        helper.make_node("Flatten", ["p"], ["y"]),
    ]
    inits = {"w1": rng.normal(size=(4, 3, 3, 3)), "w2": rng.normal(size=(4, 3, 3, 3))}
    model = onnxcam.load(_save(nodes, inits, ["N", 4], tmp_path / "res.onnx"), device="cpu")
    assert model.resolve_layers("auto") == ("s",)


def test_a_one_row_line_map_is_a_map(tmp_path: Path) -> None:
    """CRNN-style: conv maps pooled over the height into (N, C, 1, W), then a per-column classifier."""
    rng = np.random.default_rng(2)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["feat"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["feat"], ["act"]),
        helper.make_node("AveragePool", ["act"], ["line"], kernel_shape=[16, 1]),
        helper.make_node("Squeeze", ["line", "ax"], ["seq"]),
        helper.make_node("Transpose", ["seq"], ["tc"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["tc", "w2"], ["y"]),
    ]
    inits = {"w1": rng.normal(size=(4, 3, 3, 3)), "w2": rng.normal(size=(4, 5)), "ax": np.array([2], np.int64)}
    path = _save(nodes, inits, ["N", 16, 5], tmp_path / "crnn.onnx")
    model = onnxcam.load(path, device="cpu")
    assert model.resolve_layers("auto") == ("line",)
    assert model.layer("line").shape[2:] == (1, 16)
