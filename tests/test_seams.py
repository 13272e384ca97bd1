"""The seams every task builds on, on hand-built graphs whose maps can be written by hand:
targets over all outputs, feature views (channels-last, tokens), tasks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxcam
from onnxcam.errors import ArgumentError, LayerShapeError, TargetError
from onnxcam.graph.protos import make_model
from onnxcam.postprocess import finish_single, layer_to_image
from onnxcam.views import FeatureView, view_for

H = W = 6
C = 4


def _f(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)


def _rng_weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "wc": rng.normal(0, 0.5, (C, 3, 3, 3)), "bc": rng.normal(0, 0.1, C),
        "w1": rng.normal(0, 1.0, (3, C)), "b1": rng.normal(0, 0.1, 3),
        "w2": rng.normal(0, 1.0, (4, C)), "b2": rng.normal(0, 0.1, 4),
    }


def two_output_net(tmp: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """x (N, 3, 6, 6) -> Conv -> Relu -> feat (N, 4, 6, 6) -> GAP -> g (N, 4);
    scores = g W1^T + b1 (N, 3), boxes = g W2^T + b2 (N, 4): two outputs that read one layer."""
    w = _rng_weights(7)
    nodes = [
        helper.make_node("Conv", ["x", "wc", "bc"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["feat"]),
        helper.make_node("GlobalAveragePool", ["feat"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["g"], axis=1),
        helper.make_node("Gemm", ["g", "w1", "b1"], ["scores"], transB=1),
        helper.make_node("Gemm", ["g", "w2", "b2"], ["boxes"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "two_outputs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, H, W])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", 4])],
        [_f(k, v) for k, v in w.items()],
    )
    path = tmp / "two_outputs.onnx"
    onnx.save(make_model(graph, [helper.make_opsetid("", 17)]), path)
    return path, w


class ProductTarget(onnxcam.Target):
    """scores[c] * boxes[j]: reads both outputs, and its seeds depend on both."""

    def __init__(self, c: int, j: int) -> None:
        self.c, self.j = c, j

    def score(self, outputs: Sequence[np.ndarray]) -> float:
        return float(outputs[0][self.c] * outputs[1][self.j])

    def seeds(self, outputs: Sequence[np.ndarray]) -> dict[int, np.ndarray]:
        s, b = np.zeros_like(outputs[0]), np.zeros_like(outputs[1])
        s[self.c] = outputs[1][self.j]
        b[self.j] = outputs[0][self.c]
        return {0: s, 1: b}


def _features(x: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    """The Relu features (N, C, H, W) in float64, by hand (3x3 conv, padding 1)."""
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((x.shape[0], C, H, W))
    for i in range(H):
        for j in range(W):
            patch = xp[:, :, i:i + 3, j:j + 3]
            out[:, :, i, j] = np.einsum("nkab,ckab->nc", patch, w["wc"]) + w["bc"]
    return np.maximum(out, 0)


def _gradcam_by_hand(feat: np.ndarray, dscore_dg: np.ndarray) -> np.ndarray:
    """Grad-CAM raw maps when score depends on feat only through g = mean(feat): dS/dfeat = dS/dg / (H W)."""
    weights = dscore_dg / (H * W)  # spatial mean of a spatially constant gradient
    return np.einsum("nc,nchw->nhw", weights, feat)


@pytest.fixture(scope="module")
def two_outputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[onnxcam.Model, dict[str, np.ndarray], np.ndarray]:
    path, w = two_output_net(tmp_path_factory.mktemp("seams"))
    x = np.random.default_rng(1).normal(size=(3, 3, H, W)).astype(np.float32)
    return onnxcam.load(path, device="cpu"), w, x


def test_target_reading_the_second_output(two_outputs: tuple) -> None:
    model, w, x = two_outputs
    feat = _features(x, w)
    target = onnxcam.ClassTarget(2, output_index=1)  # box coordinate 2
    e = onnxcam.GradCAM(model, "feat").explain(x, target)
    expected = _gradcam_by_hand(feat, np.tile(w["w2"][2], (3, 1)))
    np.testing.assert_allclose(e.raw["feat"], expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    np.testing.assert_allclose(e.maps, finish_single(layer_to_image(expected.astype(np.float32), (H, W))),
                               atol=1e-5)
    g = feat.mean(axis=(2, 3))
    np.testing.assert_allclose(e.scores, g @ w["w2"][2] + w["b2"][2], rtol=1e-5)


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "ablationcam", "scorecam"])
def test_target_reading_both_outputs(two_outputs: tuple, method: str) -> None:
    model, w, x = two_outputs
    feat = _features(x, w)
    g = feat.mean(axis=(2, 3))
    scores, boxes = g @ w["w1"].T + w["b1"], g @ w["w2"].T + w["b2"]
    c, j = 1, 3
    target = ProductTarget(c, j)
    e = onnxcam.get_method(method)(model, "feat").explain(x, target)
    np.testing.assert_allclose(e.scores, scores[:, c] * boxes[:, j], rtol=1e-5)
    if method in ("gradcam", "hirescam"):
        # d(s_c b_j)/dg = b_j W1[c] + s_c W2[j]; the gradient is constant over space, so both agree
        dg = boxes[:, j, None] * w["w1"][c] + scores[:, c, None] * w["w2"][j]
        expected = _gradcam_by_hand(feat, dg)
    elif method == "ablationcam":
        # each channel set to 0 (post-Relu minimum), the head's product re-scored by hand
        expected = np.zeros((3, H, W))
        base = scores[:, c] * boxes[:, j]
        for k in range(C):
            ga = g.copy()
            ga[:, k] = 0.0
            ablated = (ga @ w["w1"][c] + w["b1"][c]) * (ga @ w["w2"][j] + w["b2"][j])
            expected += ((base - ablated) / np.abs(base))[:, None, None] * feat[:, k]
    else:
        # Score-CAM: softmax over channels of the target on the input masked by each normalised channel
        up = feat  # already at input size (6x6)
        lo, hi = up.min(axis=(2, 3), keepdims=True), up.max(axis=(2, 3), keepdims=True)
        masks = np.where(hi > lo, (up - lo) / np.where(hi > lo, hi - lo, 1), 0)
        masked = x[:, None].astype(np.float64) * masks[:, :, None]
        sc = np.zeros((3, C))
        for k in range(C):
            fk = _features(masked[:, k], w).mean(axis=(2, 3))
            sc[:, k] = (fk @ w["w1"][c] + w["b1"][c]) * (fk @ w["w2"][j] + w["b2"][j])
        weights = np.exp(sc - sc.max(axis=1, keepdims=True))
        weights /= weights.sum(axis=1, keepdims=True)
        expected = np.einsum("nc,nchw->nhw", weights, feat)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(e.raw["feat"], expected, rtol=1e-4, atol=1e-4 * scale)


def test_target_errors_name_the_outputs(two_outputs: tuple) -> None:
    model, _, x = two_outputs
    with pytest.raises(TargetError, match="output #2 but the model has 2 output"):
        onnxcam.GradCAM(model, "feat")(x, onnxcam.ClassTarget(0, output_index=2))
    with pytest.raises(TargetError, match="out of range: the model output has 4 classes"):
        onnxcam.GradCAM(model, "feat")(x, onnxcam.ClassTarget(4, output_index=1))


def test_gradients_seed_each_output_once(two_outputs: tuple) -> None:
    """A batch mixing targets of output 0 and output 1 runs one gradient graph seeded on both."""
    model, w, x = two_outputs
    feat = _features(x, w)
    targets = [onnxcam.ClassTarget(0), onnxcam.ClassTarget(1, output_index=1), ProductTarget(2, 0)]
    g = model.gradients(x, "feat", targets)
    g_mean = feat.mean(axis=(2, 3))
    s, b = g_mean @ w["w1"].T + w["b1"], g_mean @ w["w2"].T + w["b2"]
    dg = np.stack([w["w1"][0], w["w2"][1], b[2, 0] * w["w1"][2] + s[2, 2] * w["w2"][0]])
    expected = np.broadcast_to((dg / (H * W))[:, :, None, None], feat.shape)
    np.testing.assert_allclose(g.gradients["feat"], expected, rtol=1e-5, atol=1e-6)


# -- feature views ------------------------------------------------------------------------------


def _viewed_net(tmp: Path, kind: str, prefix: int = 1) -> tuple[Path, dict[str, np.ndarray]]:
    """x (N, 3, 6, 6) -> Conv -> Relu -> feat (NCHW), then the layer under test:
    ``nhwc``: Transpose -> f (N, 6, 6, C) -> GAP over (1, 2) -> Gemm;
    ``tokens``: Reshape+Transpose -> (N, 36, C), Concat with ``prefix`` learned tokens -> f (N, prefix + 36, C)
    -> a head that reads only the patch tokens' mean and (through a Gather) the first token."""
    w = _rng_weights(11)
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Conv", ["x", "wc", "bc"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["feat"]),
    ]
    inits = [_f(k, v) for k, v in w.items()]
    if kind == "nhwc":
        nodes += [
            helper.make_node("Transpose", ["feat"], ["f"], perm=[0, 2, 3, 1]),
            helper.make_node("ReduceMean", ["f", "axes"], ["g"], keepdims=0),
            helper.make_node("Gemm", ["g", "w1", "b1"], ["y"], transB=1),
        ]
        inits.append(numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes"))
    else:
        cls = rng.normal(0, 1.0, (1, prefix, C))
        nodes += [
            helper.make_node("Reshape", ["feat", "flat_shape"], ["fl"]),
            helper.make_node("Transpose", ["fl"], ["patches"], perm=[0, 2, 1]),
            helper.make_node("Shape", ["x"], ["xs"], start=0, end=1),
            helper.make_node("Concat", ["xs", "tok_tail"], ["tok_shape"], axis=0),
            helper.make_node("Expand", ["cls", "tok_shape"], ["cls_b"]),
            helper.make_node("Concat", ["cls_b", "patches"], ["f"], axis=1),
            helper.make_node("Slice", ["f", "p0", "pend", "ax1"], ["pt"]),
            helper.make_node("ReduceMean", ["pt", "ax1"], ["pm"], keepdims=0),
            helper.make_node("Gather", ["f", "zero"], ["first"], axis=1),
            helper.make_node("Mul", ["first", "half"], ["fh"]),
            helper.make_node("Add", ["pm", "fh"], ["g"]),
            helper.make_node("Gemm", ["g", "w1", "b1"], ["y"], transB=1),
        ]
        inits += [
            numpy_helper.from_array(np.array([0, C, H * W], dtype=np.int64), "flat_shape"),
            numpy_helper.from_array(np.array([prefix, C], dtype=np.int64), "tok_tail"),
            _f("cls", cls),
            numpy_helper.from_array(np.array([prefix], dtype=np.int64), "p0"),
            numpy_helper.from_array(np.array([prefix + H * W], dtype=np.int64), "pend"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "ax1"),
            numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
            _f("half", np.float32(0.5)),
        ]
        w["cls"] = cls
    graph = helper.make_graph(
        nodes, f"viewed_{kind}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, H, W])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        inits,
    )
    path = tmp / f"viewed_{kind}_{prefix}.onnx"
    onnx.save(make_model(graph, [helper.make_opsetid("", 18)]), path)
    return path, w


@pytest.mark.parametrize("kind, view, prefix", [("nhwc", "NHWC", 0), ("tokens", "tokens", 1),
                                                ("tokens", "tokens:2", 2), ("tokens", "tokens", 5)])
def test_views_give_the_feature_map_and_its_gradient(tmp_path: Path, kind: str, view: str, prefix: int) -> None:
    path, w = _viewed_net(tmp_path, kind, prefix)
    model = onnxcam.load(path, device="cpu")
    x = np.random.default_rng(2).normal(size=(3, 3, H, W)).astype(np.float32)
    layer = model.layer("f", view=view)
    assert layer.shape == (model.input.batch, C, H, W) and layer.view.prefix == prefix
    feat = _features(x, w)
    k = 2
    # the patch tokens reach y only through their mean (and the prefix tokens are constants), so
    # d y_k / d map = W1[k] / (H W) at every position: Grad-CAM is as on an NCHW layer
    expected = _gradcam_by_hand(feat, np.tile(w["w1"][k], (3, 1)))
    for method in ("gradcam", "layercam", "ablationcam"):
        e = onnxcam.get_method(method)(model, "f", view=view).explain(x, k)
        if method == "ablationcam":
            g = feat.mean(axis=(2, 3))
            base = g @ w["w1"][k] + w["b1"][k] + (0.5 * w["cls"][0, 0] @ w["w1"][k] if kind == "tokens" else 0)
            expected_m = np.zeros((3, H, W))
            for ch in range(C):
                drop = g[:, ch] * w["w1"][k, ch]  # the channel ablated to 0 (post-Relu minimum)
                expected_m += (drop / np.abs(base))[:, None, None] * feat[:, ch]
            want = expected_m
        elif method == "layercam":
            want = np.einsum("nc,nchw->nhw", np.maximum(np.tile(w["w1"][k], (3, 1)) / (H * W), 0), feat)
        else:
            want = expected
        np.testing.assert_allclose(e.raw["f"], want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    g = model.gradients(x, "f", k, view=view)
    assert g.activations["f"].shape == (3, C, H, W)
    np.testing.assert_allclose(g.activations["f"], feat, rtol=1e-5, atol=1e-5)


def test_view_round_trip_keeps_prefix_tokens() -> None:
    rng = np.random.default_rng(0)
    t = rng.normal(size=(2, 1 + 12, 5)).astype(np.float32)
    v = view_for(t.shape, FeatureView("NTD", 1, (3, 4)))
    m = v.to_map(t)
    assert m.shape == (2, 5, 3, 4)
    np.testing.assert_array_equal(m[:, :, 1, 2], t[:, 1 + 1 * 4 + 2, :])
    edited = m.copy()
    edited[:, 0] = 0
    back = v.to_tensor(edited, t)
    np.testing.assert_array_equal(back[:, 0], t[:, 0])  # the class token is kept
    np.testing.assert_array_equal(back[:, 1:, 0], 0)
    np.testing.assert_array_equal(back[:, 1:, 1:], t[:, 1:, 1:])
    nhwc = view_for((2, 3, 4, 5), "nhwc")
    x = rng.normal(size=(2, 3, 4, 5))
    np.testing.assert_array_equal(nhwc.to_tensor(nhwc.to_map(x), x), x)


def test_view_errors() -> None:
    with pytest.raises(LayerShapeError, match="not 0..8 prefix tokens"):
        view_for(("N", 45, 8), "tokens")
    with pytest.raises(LayerShapeError, match="rank-3"):
        view_for(("N", 4, 6, 6), "tokens")
    with pytest.raises(ArgumentError, match="unknown view"):
        view_for(("N", 4, 6, 6), "chw")
    with pytest.raises(LayerShapeError, match="37 tokens but the view says 2"):
        view_for(("N", 37, 8), FeatureView("NTD", 2, (6, 6)))


# -- tasks ----------------------------------------------------------------------------------------


def test_tasks_from_output_shapes() -> None:
    assert onnxcam.detect_task([(10,)]).name == "classification"
    assert onnxcam.detect_task([(10, 1, 1)]).name == "classification"
    assert onnxcam.detect_task([(5, 16, 16)]).name == "segmentation"
    assert onnxcam.detect_task([(128,)], "embedding").name == "embedding"
    with pytest.raises(ArgumentError, match="unknown task"):
        onnxcam.detect_task([(10,)], "detection-ish")


def test_classification_task_targets_and_rows() -> None:
    task = onnxcam.ClassificationTask(["a", "b", "c"])
    logits = np.array([[0.0, 2.0, 1.0], [3.0, 0.0, 0.5]], dtype=np.float32)
    assert [t.category for t in task.default_targets([logits])] == [1, 0]  # type: ignore[attr-defined]
    top = task.top_targets([logits], 2)
    assert [[t.category for t in row] for row in top] == [[1, 2], [0, 2]]  # type: ignore[attr-defined]
    rows = task.predictions([logits], 2)
    assert [r["label"] for r in rows[0]] == ["b", "c"]
    np.testing.assert_allclose(sum(r["probability"] for r in task.predictions([logits], 3)[1]), 1.0)
    assert task.describe(onnxcam.ClassTarget(2)) == {"class": 2, "label": "c"}
    assert task.describe(onnxcam.SoftmaxTarget(0))["target"] == "class 0 (softmax probability)"
    with pytest.raises(ArgumentError, match="top-k 4 is out of range"):
        task.top_targets([logits], 4)
    with pytest.raises(ArgumentError, match="labels file has 3 names but the model outputs 4"):
        task.check([np.zeros((1, 4))])
    with pytest.raises(TargetError, match="got 1 targets for a batch of 2"):
        task.resolve([1], [logits])


def test_segmentation_and_embedding_tasks() -> None:
    seg = onnxcam.SegmentationTask()
    maps = np.zeros((1, 3, 4, 4), dtype=np.float32)
    maps[0, 2, :2] = 5.0
    assert seg.default_targets([maps])[0].category == 2  # type: ignore[attr-defined]
    probs = seg.probabilities([maps])
    assert probs.shape == (1, 3) and np.isclose(probs.sum(), 1.0) and probs[0].argmax() == 2
    emb = onnxcam.EmbeddingTask()
    with pytest.raises(TargetError, match="EmbeddingTarget"):
        emb.resolve(None, [np.ones((2, 8), dtype=np.float32)])
    ref = np.arange(8, dtype=np.float32)
    t = emb.resolve(onnxcam.EmbeddingTarget(ref), [np.ones((2, 8), dtype=np.float32)])
    assert len(t) == 2 and emb.describe(t[0]) == {"target": "embedding cosine similarity"}


def test_fullgrad_says_it_does_not_use_the_layer(two_outputs: tuple) -> None:
    model, _, x = two_outputs
    with pytest.warns(onnxcam.errors.OnnxCamWarning, match="FullGrad uses the input and every bias-carrying layer"):
        onnxcam.FullGrad(model, "feat")


def test_a_dropped_model_is_freed_at_once(tmp_path: Path) -> None:
    """No reference cycle through the gradient engine: a model and its sessions go when the last
    reference does, not at some later full GC pass (a test suite held 10 GB that way)."""
    import gc
    import weakref

    path, _ = two_output_net(tmp_path)
    model = onnxcam.load(path, device="cpu")
    x = np.random.default_rng(1).normal(size=(2, 3, H, W)).astype(np.float32)
    onnxcam.GradCAM(model, "feat")(x)
    onnxcam.AblationCAM(model, "feat")(x)
    ref = weakref.ref(model)
    gc.disable()
    try:
        del model
        assert ref() is None
    finally:
        gc.enable()


def test_release_drops_sessions_and_graphs_and_maps_come_back_the_same(two_outputs: tuple) -> None:
    model, _, x = two_outputs
    target = onnxcam.ClassTarget(2, output_index=1)
    with onnxcam.GradCAM(model, "feat") as cam:
        first = cam(x, targets=target)
        assert model._sessions and model.gradient_engine._graphs
    # Leaving the with-block released them; the next call rebuilds them and computes the same maps.
    assert not model._sessions and not model._splits and not model.gradient_engine._graphs
    again = onnxcam.GradCAM(model, "feat")(x, targets=target)
    assert first.max() > 0
    np.testing.assert_array_equal(first, again)
