"""Cascading randomisation: which initializers change at each step, the input proto untouched,
temp files cleaned up, and the sanity-check correlation falling on a small model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import residual_net
from onnx import helper, numpy_helper

from onnxcam.audit.randomize import (
    model_from_proto,
    randomized_models,
    sanity_run,
    spread_steps,
    weight_nodes,
)
from onnxcam.errors import ArgumentError
from onnxcam.graph.protos import make_model


def _inits(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}


def test_weight_nodes_in_graph_order():
    nodes = weight_nodes(residual_net())
    assert [(n.node, n.initializers) for n in nodes] == [
        ("conv1", ("w1", "b1")), ("conv2", ("w2", "b2")), ("fc", ("wf", "bf"))]


def test_step_k_redraws_exactly_the_last_k_nodes_and_never_touches_the_input():
    proto = residual_net()
    before = proto.SerializeToString()
    original = _inits(proto)
    models = randomized_models(proto, 3, seed=1)
    assert proto.SerializeToString() == before
    expected_changed = [{"wf", "bf"}, {"wf", "bf", "w2", "b2"}, {"wf", "bf", "w2", "b2", "w1", "b1"}]
    for model, changed in zip(models, expected_changed, strict=True):
        new = _inits(model)
        assert {k for k in original if not np.array_equal(original[k], new[k])} == changed
        for k in changed:
            assert new[k].shape == original[k].shape and new[k].dtype == original[k].dtype
        onnx.checker.check_model(model)
    # Nested cascade: a tensor re-drawn at step 1 keeps the same random values at steps 2 and 3.
    for k in ("wf", "bf"):
        assert np.array_equal(_inits(models[0])[k], _inits(models[2])[k])


def test_redrawn_weights_match_the_original_std():
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.7, (64, 32)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 32])],
        [numpy_helper.from_array(w, "w")])
    (model,) = randomized_models(make_model(graph, [helper.make_opsetid("", 17)]), 1)
    new = _inits(model)["w"]
    assert abs(new.std() / w.std() - 1) < 0.05
    assert abs(np.corrcoef(new.ravel(), w.ravel())[0, 1]) < 0.1


def test_qdq_weights_are_redrawn_in_the_integer_domain():
    wq = np.arange(-8, 8, dtype=np.int8).reshape(4, 4)
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["w"], name="dq"),
         helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(wq, "wq"), numpy_helper.from_array(np.float32(0.1), "s"),
         numpy_helper.from_array(np.int8(0), "z")])
    proto = make_model(graph, [helper.make_opsetid("", 17)])
    assert [n.initializers for n in weight_nodes(proto)] == [("wq",)]
    new = _inits(randomized_models(proto, 1)[0])
    assert new["wq"].dtype == np.int8 and not np.array_equal(new["wq"], wq)
    assert new["s"] == np.float32(0.1)  # the scale is not a weight


def test_steps_out_of_range_are_refused():
    with pytest.raises(ArgumentError, match="3 weight-carrying nodes"):
        randomized_models(residual_net(), [4])
    with pytest.raises(ArgumentError, match="empty"):
        randomized_models(residual_net(), [])


def test_spread_steps():
    assert spread_steps(3, 4) == [1, 2, 3]
    assert spread_steps(50, 4) == [1, 4, 14, 50]
    assert spread_steps(0, 4) == []


def test_model_from_proto_uses_a_temp_dir_that_is_removed(tmp_path):
    with model_from_proto(residual_net(), "my model.onnx") as m:
        folder = m.path.parent
        assert folder.exists() and not folder.is_relative_to(tmp_path)
        assert m.name == "my_model.onnx"
        out = m.forward(np.zeros((2, 3, 8, 8), np.float32))[0]
        assert out.shape == (2, 4)
    assert not folder.exists()


def test_sanity_correlation_falls_on_a_small_model():
    proto = residual_net(seed=3)
    x = np.random.default_rng(0).normal(0, 1, (6, 3, 8, 8)).astype(np.float32)
    with model_from_proto(proto, "res.onnx") as model:
        res = sanity_run(model, "gradcam", x, steps=[1, 2, 3])
        # The same model (no layer randomised) reproduces its maps exactly.
        from onnxcam.metrics import rank_correlation
        from onnxcam.registry import get_method
        again = get_method("gradcam")(model).explain(x, [int(c) for c in res.classes]).maps
        original = get_method("gradcam")(model).explain(x).maps
    assert all(rank_correlation(a, b) == pytest.approx(1.0) for a, b in zip(original, again, strict=True))
    assert res.depths == [1, 2, 3] and res.per_image.shape == (3, 6)
    assert res.randomized == [["fc"], ["fc", "conv2"], ["fc", "conv2", "conv1"]]
    assert np.isfinite(res.mean).all()
    assert res.mean.max() < 0.5  # far below the 1.0 of the trained model
