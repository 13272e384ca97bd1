"""Split: Shape computations across the cut whose axis 0 is not the batch (a YOLO anchor grid's
aranges) stay what they are, instead of taking the head's batch size."""

from __future__ import annotations

import numpy as np
import pytest
from graphs import save
from onnx import TensorProto, helper, numpy_helper

import onnxcam
from onnxcam.graph.protos import make_model


def _anchor_like(batch: int | str) -> object:
    """x (N, 3, 4, 5) -> Conv -> a; r = Range(0, W) from Shape(x); head: a + ConstantOfShape(Shape(r))
    (ones of shape (W,)) + r, so the head needs Shape of a 1-D tensor computed upstream of the cut."""
    rng = np.random.default_rng(0)
    i64 = lambda name, v: numpy_helper.from_array(np.asarray(v, dtype=np.int64), name)  # noqa: E731
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["a"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Shape", ["x"], ["xs"], name="shape_x"),
        helper.make_node("Gather", ["xs", "three"], ["wdim"], axis=0, name="gather_w"),
        helper.make_node("Range", ["zero", "wdim", "one"], ["r_i"], name="arange"),
        helper.make_node("Cast", ["r_i"], ["r"], to=TensorProto.FLOAT, name="cast"),
        helper.make_node("Shape", ["r"], ["rs"], name="shape_r"),
        helper.make_node("ConstantOfShape", ["rs"], ["ones"], value=numpy_helper.from_array(
            np.ones(1, np.float32), "v"), name="ones"),
        helper.make_node("Add", ["a", "ones"], ["c"], name="add_ones"),
        helper.make_node("Add", ["c", "r"], ["y"], name="add_r"),
    ]
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (2, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.zeros(2, np.float32), "b"),
             i64("three", 3), i64("zero", 0), i64("one", 1)]
    graph = helper.make_graph(nodes, "anchor_like",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 4, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 2, 4, 5])], inits)
    return make_model(graph, [helper.make_opsetid("", 17)])


@pytest.mark.parametrize("batch", ["N", 1])
def test_shape_of_a_1d_tensor_upstream_of_the_cut_is_kept(tmp_path, batch):
    model = onnxcam.load(save(_anchor_like(batch), tmp_path / "m.onnx"), device="cpu")  # type: ignore[arg-type]
    n = 1 if batch == 1 else 3
    x = np.random.default_rng(1).normal(size=(n, 3, 4, 5)).astype(np.float32)
    (ref,) = model.forward(x)
    feeds, _ = model.run_body(x, ["a"])
    (y,) = model.run_head(["a"], feeds)
    assert np.allclose(ref, feeds["a"] + 1.0 + np.arange(5, dtype=np.float32), atol=1e-6)
    assert np.abs(y - ref).max() <= 1e-6
    g = model.gradients(x, "a", targets=onnxcam.targets.ClassTarget(0))
    assert np.allclose(g.gradients["a"][:, 0], 1.0) and np.allclose(g.gradients["a"][:, 1], 0.0)
