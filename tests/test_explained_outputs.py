"""Outputs made by a final activation are explained at their logits; time-major outputs are made
batch-first. Each model here is a hand-built graph with and without the activation (or with the
batch axis first and second): the same weights, so the maps and gradients must be the same."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from graphs import residual_net, save
from onnx import TensorProto, helper, numpy_helper

import onnxcam
from onnxcam.graph.outputs import explained_graph, final_activations
from onnxcam.pipeline import ExplainConfig, explain_images
from onnxcam.targets import SequenceTarget, SoftmaxTarget
from onnxcam.tasks import SequenceTask

LAYER = "e"


def with_tail(model: onnx.ModelProto, nodes: list[onnx.NodeProto], out: str, shape: list[object]) -> onnx.ModelProto:
    """``model`` with ``nodes`` appended after its output ``y``; the new graph output is ``out``."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.node.extend(nodes)
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, shape))
    return m


def x_batch(n: int = 3) -> np.ndarray:
    return np.random.default_rng(1).normal(0, 1, (n, 3, 8, 8)).astype(np.float32)


TAILS = {
    "softmax": ([helper.make_node("Softmax", ["y"], ["p"], axis=1)], "p", ["N", 4]),
    "log_softmax": ([helper.make_node("LogSoftmax", ["y"], ["p"], axis=-1)], "p", ["N", 4]),
    "sigmoid": ([helper.make_node("Sigmoid", ["y"], ["p"])], "p", ["N", 4]),
    "softmax_identity_flatten": ([helper.make_node("Softmax", ["y"], ["s"], axis=1),
                                  helper.make_node("Identity", ["s"], ["i"]),
                                  helper.make_node("Flatten", ["i"], ["p"], axis=1)], "p", ["N", 4]),
}


def test_final_activation_found_through_shape_only_nodes() -> None:
    nodes, out, shape = TAILS["softmax_identity_flatten"]
    found = final_activations(with_tail(residual_net(), nodes, out, shape).graph)
    assert set(found) == {"p"}
    assert found["p"].activation == "Softmax" and found["p"].logits == "y"
    assert [n.op_type for n in found["p"].chain] == ["Identity", "Flatten"]
    assert final_activations(residual_net().graph) == {}


def test_model_without_activation_is_unchanged() -> None:
    proto = residual_net()
    from onnxcam.graph.shapes import tensor_infos

    explained = explained_graph(proto, tensor_infos(proto), "N")
    assert explained.proto.SerializeToString() == proto.SerializeToString()
    assert explained.names == ("y",)


@pytest.mark.parametrize("tail", sorted(TAILS))
def test_class_targets_differentiate_the_logits(tail: str, tmp_path: Path) -> None:
    plain = onnxcam.load(save(residual_net(), tmp_path / "plain.onnx"))
    nodes, out, shape = TAILS[tail]
    act = onnxcam.load(save(with_tail(residual_net(), nodes, out, shape), tmp_path / "act.onnx"))
    x = x_batch()
    ref = plain.gradients_at(x, [LAYER])
    got = act.gradients_at(x, [LAYER])
    assert [t.category for t in got.targets] == [t.category for t in ref.targets]  # type: ignore[attr-defined]
    np.testing.assert_allclose(got.gradients[LAYER], ref.gradients[LAYER], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(got.scores, ref.scores, rtol=1e-6)
    assert np.abs(got.gradients[LAYER]).max() > 0
    # the model's own probabilities are still what it outputs, in output #0
    forward = act.forward(x)
    np.testing.assert_allclose(forward[0], onnxcam.load(act.path).session("forward").run(None, {"x": x})[0],
                               rtol=1e-6)


def test_softmax_target_is_the_models_probability(tmp_path: Path) -> None:
    plain = onnxcam.load(save(residual_net(), tmp_path / "plain.onnx"))
    nodes, out, shape = TAILS["softmax"]
    act = onnxcam.load(save(with_tail(residual_net(), nodes, out, shape), tmp_path / "act.onnx"))
    x = x_batch()
    ref = plain.gradients_at(x, [LAYER], targets=SoftmaxTarget(2))
    got = act.gradients_at(x, [LAYER], targets=SoftmaxTarget(2))
    probs = act.forward(x)[0]
    np.testing.assert_allclose(got.scores, probs[:, 2], rtol=1e-5)
    np.testing.assert_allclose(got.scores, ref.scores, rtol=1e-5)
    np.testing.assert_allclose(got.gradients[LAYER], ref.gradients[LAYER], rtol=1e-5, atol=1e-9)


def test_summary_says_which_score_is_explained(tmp_path: Path) -> None:
    nodes, out, shape = TAILS["softmax"]
    model = onnxcam.load(save(with_tail(residual_net(), nodes, out, shape), tmp_path / "act.onnx"))
    import cv2

    img = tmp_path / "img.png"
    cv2.imwrite(str(img), np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8))
    pp = onnxcam.get_preset("imagenet", model.input.size, model.input.layout)
    explain_images(model, [img], tmp_path / "out", ExplainConfig(preprocess=pp, methods=["gradcam"]))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["images"][0]["explanations"][0]["score"] == "logit before Softmax"
    assert "logits before it" in summary["notes"][0]
    probs = [p["probability"] for p in summary["images"][0]["predictions"]]
    x = onnxcam.preprocess([cv2.cvtColor(cv2.imread(str(img)), cv2.COLOR_BGR2RGB)], pp)
    np.testing.assert_allclose(probs[0], model.forward(x)[0].max(), rtol=1e-5)


def sequence_net(time_major: bool, log_softmax: bool = True) -> onnx.ModelProto:
    """residual_net's features -> mean over H -> (T=8, N, 6) or (N, T, 6) -> MatMul (6, 5) -> LogSoftmax."""
    base = residual_net()
    keep = [n for n in base.graph.node if n.name in ("conv1", "relu1", "conv2", "add", "relu2")]
    w = numpy_helper.from_array(np.random.default_rng(3).normal(0, 1, (6, 5)).astype(np.float32), "wseq")
    axes = numpy_helper.from_array(np.array([2], dtype=np.int64), "axes_h")
    perm = [2, 0, 1] if time_major else [0, 2, 1]
    nodes = keep + [
        helper.make_node("ReduceMean", ["e", "axes_h"], ["h"], keepdims=0),
        helper.make_node("Transpose", ["h"], ["t"], perm=perm),
        helper.make_node("MatMul", ["t", "wseq"], ["z"]),
    ]
    out = "z"
    if log_softmax:
        nodes.append(helper.make_node("LogSoftmax", ["z"], ["lp"], axis=2))
        out = "lp"
    shape = [8, "N", 5] if time_major else ["N", 8, 5]
    inits = [i for i in base.graph.initializer if i.name in ("w1", "b1", "w2", "b2")] + [w, axes]
    graph = helper.make_graph(nodes, "seq", list(base.graph.input),
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, shape)], inits)
    from onnxcam.graph.protos import make_model

    return make_model(graph, [helper.make_opsetid("", 18)])


def test_time_major_sequence_output_is_explained_batch_first(tmp_path: Path) -> None:
    tm = onnxcam.load(save(sequence_net(True), tmp_path / "tm.onnx"))
    bf = onnxcam.load(save(sequence_net(False), tmp_path / "bf.onnx"))
    logits = onnxcam.load(save(sequence_net(False, log_softmax=False), tmp_path / "z.onnx"))
    assert isinstance(tm.task, SequenceTask) and tm.task.logits_output is not None
    assert tm.output_shapes[0] == (8, 5)
    x = x_batch(3)
    got = tm.gradients_at(x, [LAYER])
    ref = logits.gradients_at(x, [LAYER], targets=[SequenceTarget(t.path, t.positions)  # type: ignore[attr-defined]
                                                   for t in got.targets])
    np.testing.assert_allclose(got.gradients[LAYER], ref.gradients[LAYER], rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(got.scores, ref.scores, rtol=1e-5)
    np.testing.assert_allclose(tm.forward(x)[0], bf.forward(x)[0], rtol=1e-5, atol=1e-6)
    # one position of the best path, and the same position by hand from the logits
    one = tm.gradients_at(x, [LAYER], targets=4)
    path = logits.forward(x)[0].argmax(axis=2)
    by_hand = [float(logits.forward(x)[0][i, 4, path[i, 4]]) for i in range(3)]
    np.testing.assert_allclose(one.scores, by_hand, rtol=1e-5)
    assert tm.task.predictions(tm.forward(x), 1)[0][0]["sequence"] is not None
