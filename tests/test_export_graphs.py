"""Export on hand-built graphs: batch-agnostic gradient graphs, Softmax heads, the target input,
errors, external data and the CLI command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from graphs import residual_net, save
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import onnxcam
from onnxcam.errors import ArgumentError
from onnxcam.export import CLASS_OUTPUT, TARGET_INPUT, explainer, export_explainer
from onnxcam.gradients.dynamic import BatchDependenceError, build_batch_agnostic, generalize_batch


def _view_head_net() -> onnx.ModelProto:
    """residual_net whose classifier input is ``g.view(g.size(0), -1)`` (a Shape-derived Reshape)."""
    model = residual_net()
    g = model.graph
    nodes = [n for n in g.node if n.op_type != "Flatten"]
    extra = [
        helper.make_node("Shape", ["g"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "zero"], ["n0"], axis=0, name="gather"),
        helper.make_node("Unsqueeze", ["n0", "zero_axes"], ["n1"], name="unsq"),
        helper.make_node("Concat", ["n1", "minus_one"], ["target_shape"], axis=0, name="concat"),
        helper.make_node("Reshape", ["g", "target_shape"], ["f"], name="view"),
    ]
    gemm = nodes.pop()
    del g.node[:]
    g.node.extend(nodes + extra + [gemm])
    g.initializer.extend([numpy_helper.from_array(np.array(0, np.int64), "zero"),
                          numpy_helper.from_array(np.array([0], np.int64), "zero_axes"),
                          numpy_helper.from_array(np.array([-1], np.int64), "minus_one")])
    return model


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_batch_agnostic_gradient_graph_equals_static_builds(tmp_path: Path) -> None:
    m = onnxcam.load(save(_view_head_net(), tmp_path / "view.onnx"), device="cpu")
    cut, wrt, seeded = ("b",), ("b",), ("y",)
    io = {}

    def build(n: int) -> onnx.ModelProto:
        proto, seeds, grads = m.gradient_engine.gradient_model(cut, wrt, seeded, n)
        io["seed"], io["grad"] = seeds["y"], grads["b"]
        return proto

    general = build_batch_agnostic(build, "b")
    # the folded x.view(n, -1) target and the Reshape adjoint's shape became in-graph values
    assert any(n.name.startswith("onnxcam_batch/") for n in general.graph.node)
    dyn = _session(general)
    rng = np.random.default_rng(0)
    for n in (1, 3, 16):
        feeds = {"b": np.maximum(rng.normal(size=(n, 6, 8, 8)), 0).astype(np.float32),
                 io["seed"]: rng.normal(size=(n, 4)).astype(np.float32)}
        got = dyn.run([io["grad"]], feeds)[0]
        want = _session(build(n)).run([io["grad"]], feeds)[0]
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        # and by hand: y = Wf mean(e) + bf with e = relu(b + conv2(b)); at b's own path dy/db includes W/64
        assert got.shape == (n, 6, 8, 8)


def test_generalize_refuses_non_affine_constants() -> None:
    def proto(value: np.ndarray) -> onnx.ModelProto:
        graph = helper.make_graph(
            [helper.make_node("Reshape", ["x", "shape"], ["y"])], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(value, "shape")])
        return helper.make_model(graph)

    ok = generalize_batch([proto(np.array([n, 2 * n + 1], np.int64)) for n in (5, 9, 11)], (5, 9, 11), "x")
    values = [n for n in ok.graph.node if n.op_type in ("Mul", "Add")]
    assert len(values) == 2
    with pytest.raises(BatchDependenceError):
        generalize_batch([proto(np.array([n * n], np.int64)) for n in (5, 9, 11)], (5, 9, 11), "x")
    with pytest.raises(BatchDependenceError):
        generalize_batch([proto(np.array([1.0 / n], np.float32)) for n in (5, 9, 11)], (5, 9, 11), "x")


def test_generalize_expands_a_value_broadcast_over_the_batch() -> None:
    """A forward value folded at a fixed batch, one row repeated n times (a class token expanded over
    the batch), becomes an in-graph Expand of that row (read from the model's weight of that value);
    a value whose rows differ is refused."""
    row = np.arange(3, dtype=np.float32).reshape(1, 1, 3) + 0.5

    def proto(value: np.ndarray) -> onnx.ModelProto:
        graph = helper.make_graph(
            [helper.make_node("Add", ["x", "token"], ["y"])], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [value.shape[0], 2, 3])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [value.shape[0], 2, 3])],
            [numpy_helper.from_array(value, "token")])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)

    batches = (5, 9, 11)
    weight = numpy_helper.from_array(row, "cls_token")
    general = generalize_batch([proto(np.repeat(row, n, axis=0)) for n in batches], batches, "x", [weight])
    expand = [n for n in general.graph.node if n.op_type == "Expand"]
    assert len(expand) == 1 and expand[0].input[0] == "cls_token" and expand[0].output[0] == "token"
    assert "token" not in {t.name for t in general.graph.initializer}
    sess = _session(general)
    for n in (1, 3, 16):
        x = np.random.default_rng(n).normal(size=(n, 2, 3)).astype(np.float32)
        np.testing.assert_array_equal(sess.run(None, {"x": x})[0], x + row)
    # without the weight, the row is stored under the graph's own name
    alone = generalize_batch([proto(np.repeat(row, n, axis=0)) for n in batches], batches, "x")
    assert [t.name for t in alone.graph.initializer if t.dims == [1, 1, 3]] == ["onnxcam_batch/0/value"]
    with pytest.raises(BatchDependenceError, match="'token'.*export at a fixed batch size"):
        generalize_batch([proto(np.arange(n * 3, dtype=np.float32).reshape(n, 1, 3)) for n in batches], batches, "x")


def test_softmax_model_is_explained_at_its_logits(tmp_path: Path) -> None:
    logits_model = residual_net(classes=5)
    with_softmax = onnx.ModelProto()
    with_softmax.CopyFrom(logits_model)
    g = with_softmax.graph
    g.node.append(helper.make_node("Softmax", ["y"], ["p"], axis=1, name="softmax"))
    g.output[0].name = "p"
    path = save(with_softmax, tmp_path / "softmax.onnx")
    out = tmp_path / "softmax_cam.onnx"
    export_explainer(path, ["gradcam", "layercam"], path=out)
    x = np.random.default_rng(1).normal(size=(3, 3, 8, 8)).astype(np.float32)
    names = ["p", CLASS_OUTPUT, "cam_gradcam", "cam_layercam"]
    p, cls, gradcam, layercam = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(
        names, {"x": x})
    ref_model = onnxcam.load(save(logits_model, tmp_path / "logits.onnx"), device="cpu")
    np.testing.assert_array_equal(cls, p.argmax(axis=1))
    np.testing.assert_allclose(gradcam, onnxcam.GradCAM(ref_model)(x), atol=1e-5)
    np.testing.assert_allclose(layercam, onnxcam.LayerCAM(ref_model)(x), atol=1e-5)


def test_target_input_explains_the_given_classes(tmp_path: Path, build_model) -> None:  # type: ignore[no-untyped-def]
    m = onnxcam.load(build_model("resnet_small"), device="cpu")
    out = tmp_path / "resnet_cam.onnx"
    result = export_explainer(m, "gradcam,hirescam", path=out, target="input")
    assert result.inputs == (m.input.name, TARGET_INPUT)
    assert result.layer == m.layer("auto").name
    x = np.random.default_rng(2).normal(size=m.input.shape(3)).astype(np.float32)
    classes = np.array([4, 0, 9], np.int64)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    cls, gradcam, hirescam = sess.run([CLASS_OUTPUT, "cam_gradcam", "cam_hirescam"],
                                      {m.input.name: x, TARGET_INPUT: classes})
    np.testing.assert_array_equal(cls, classes)
    np.testing.assert_allclose(gradcam, onnxcam.GradCAM(m)(x, list(classes)), atol=1e-4)
    np.testing.assert_allclose(hirescam, onnxcam.HiResCAM(m)(x, list(classes)), atol=1e-4)


def test_non_exportable_methods_are_refused_by_name(tmp_path: Path) -> None:
    path = save(residual_net(), tmp_path / "r.onnx")
    with pytest.raises(ArgumentError, match="scorecam.*exportable methods: gradcam, gradcam\\+\\+"):
        export_explainer(path, "gradcam,scorecam", path=tmp_path / "o.onnx")
    assert not (tmp_path / "o.onnx").exists()


def test_external_data_for_large_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(explainer, "EXTERNAL_DATA_BYTES", 0)
    path = save(residual_net(), tmp_path / "r.onnx")
    out = tmp_path / "r_cam.onnx"
    result = export_explainer(path, ["gradcam"], path=out)
    assert result.external_data and (tmp_path / "r_cam.onnx.data").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.onnx", "r_cam.onnx", "r_cam.onnx.data"]
    onnx.checker.check_model(str(out), full_check=True)
    x = np.random.default_rng(3).normal(size=(2, 3, 8, 8)).astype(np.float32)
    maps = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(["cam_gradcam"], {"x": x})[0]
    np.testing.assert_allclose(maps, onnxcam.GradCAM(str(path))(x), atol=1e-5)


def test_cli_export(tmp_path: Path) -> None:
    from onnxcam_cli.main import app

    path = save(residual_net(), tmp_path / "r.onnx")
    out = tmp_path / "r_cam.onnx"
    runner = CliRunner()
    ok = runner.invoke(app, ["export", str(path), "--method", "gradcam,eigencam", "-o", str(out)])
    assert ok.exit_code == 0, ok.output
    assert "cam_gradcam" in ok.output and "cam_eigencam" in ok.output
    x = np.random.default_rng(4).normal(size=(2, 3, 8, 8)).astype(np.float32)
    eigen = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(["cam_eigencam"], {"x": x})[0]
    np.testing.assert_allclose(eigen, onnxcam.EigenCAM(str(path))(x), atol=1e-4)
    bad = runner.invoke(app, ["export", str(path), "--method", "sscam", "-o", str(tmp_path / "bad.onnx")])
    assert bad.exit_code != 0 and "exportable methods" in bad.output


def test_cli_export_refuses_hirescam_at_a_vits_auto_layer(tmp_path: Path, build_model) -> None:  # type: ignore[no-untyped-def]
    """One error line naming the layer and the fix, exit code 2, nothing written; the named fix exports."""
    from onnxcam_cli.main import app

    path = build_model("vit_tiny")
    out = tmp_path / "vit_cam.onnx"
    runner = CliRunner()
    bad = runner.invoke(app, ["export", str(path), "--method", "hirescam", "-o", str(out)])
    lines = bad.output.strip().splitlines()
    assert bad.exit_code == 2 and len(lines) == 1 and lines[0].startswith("onnxcam: error: "), bad.output
    fix = "/blocks/blocks.3/norm1/LayerNormalization_output_0"
    assert "hirescam cannot be exported at layer '/blocks/blocks.2/Add_1_output_0'" in lines[0]
    assert f"export gradcam, or hirescam at the LayerNorm's output: --layer '{fix}'" in lines[0]
    assert not out.exists() and list(tmp_path.iterdir()) == []
    ok = runner.invoke(app, ["export", str(path), "--method", "hirescam", "--layer", fix, "-o", str(out)])
    assert ok.exit_code == 0 and f"at layer {fix}" in ok.output, ok.output


@pytest.mark.parametrize("name", ["resnet_small", "vit_tiny"])
def test_several_layers_are_fused_as_the_python_path(tmp_path: Path, build_model, name: str) -> None:  # type: ignore[no-untyped-def]
    m = onnxcam.load(build_model(name), device="cpu")
    # two feature layers of the last stage; for the ViT two attention blocks' inputs (token sequences:
    # prefix dropped, grid reshaped; its last tokens get no gradient, the class token alone is read)
    blocks = [la.name for la in m.layers() if la.block_input]
    picked = [la.name for la in m.layers() if la.shape[2:] == m.layer("auto").shape[2:] and not la.output_map][-4:]
    layers = blocks[-2:] if blocks else [picked[0], picked[-1]]
    methods = ["gradcam", "gradcam++", "layercam", "eigencam"]
    result = export_explainer(m, methods, layers, path=tmp_path / "fused.onnx")
    assert result.layers == tuple(layers)
    x = np.random.default_rng(5).normal(size=m.input.shape(3)).astype(np.float32)
    sess = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {m.input.name: x})))
    for k in methods:
        ref = onnxcam.get_method(k)(m, layer=layers)(x)
        single = onnxcam.get_method(k)(m, layer=layers[-1])(x)
        assert np.abs(ref - single).max() > 1e-2, f"{k}: the fused map must differ from one layer's"
        np.testing.assert_allclose(outs[result.maps[k]], ref, atol=1e-4, err_msg=f"{name} {k}")


def test_cli_export_several_layers(tmp_path: Path) -> None:
    from onnxcam_cli.main import app

    path = save(residual_net(), tmp_path / "r.onnx")
    out = tmp_path / "r_cam.onnx"
    ok = CliRunner().invoke(app, ["export", str(path), "--method", "gradcam", "--layer", "b,e", "-o", str(out)])
    assert ok.exit_code == 0, ok.output
    assert "at layers b, e" in ok.output
    x = np.random.default_rng(6).normal(size=(2, 3, 8, 8)).astype(np.float32)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(["cam_gradcam"], {"x": x})[0]
    np.testing.assert_allclose(got, onnxcam.GradCAM(str(path), layer=["b", "e"])(x), atol=1e-5)


def test_fullgrad_through_a_class_token_exports_for_any_batch(tmp_path: Path, build_model) -> None:  # type: ignore[no-untyped-def]
    """FullGrad differentiates from the input, through the class token expanded over the batch: the
    gradient graph built at fixed batches folds that into an (n, 1, D) constant, which the exported graph
    computes in-graph from the model's own class token (stored once), for any batch."""
    m = onnxcam.load(build_model("vit_tiny"), device="cpu")
    result = export_explainer(m, "fullgrad", path=tmp_path / "vit_cam.onnx")
    proto = onnx.load(str(result.path))
    expands = [n for n in proto.graph.node if n.op_type == "Expand" and "onnxcam_batch/" in n.name]
    assert [n.input[0] for n in expands] == ["cls_token"]
    assert [t.name for t in proto.graph.initializer].count("cls_token") == 1
    sess = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(5).normal(size=m.input.shape(3)).astype(np.float32)
    want = onnxcam.FullGrad(m)(x)
    assert want.max() > 0.5
    for n in (1, 3):
        (got,) = sess.run(["cam_fullgrad"], {m.input.name: x[:n]})
        np.testing.assert_allclose(got, want[:n], atol=1e-4)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet_small"])
def test_gradcam_over_a_pooled_linear_head_reads_the_classifier_row(tmp_path: Path, build_model, name: str) -> None:  # type: ignore[no-untyped-def]
    """Layer -> global average pool -> linear: Grad-CAM's weights are the explained class's row / (h w),
    read in place; no gradient graph is spliced in (it is, for a method that needs the full gradient),
    and the maps equal the Python path's, for the top class and for given ones."""
    m = onnxcam.load(build_model(name), device="cpu")
    x = np.random.default_rng(3).normal(size=m.input.shape(3)).astype(np.float32)
    alone = tmp_path / "gradcam.onnx"
    export_explainer(m, "gradcam", path=alone, target="input")
    nodes = onnx.load(str(alone)).graph.node
    assert not [n.name for n in nodes if "onnxcam_export/grad/" in n.name]
    sess = ort.InferenceSession(str(alone), providers=["CPUExecutionProvider"])
    classes = np.array([2, 0, 5], np.int64)
    (got,) = sess.run(["cam_gradcam"], {m.input.name: x, TARGET_INPUT: classes})
    want = onnxcam.GradCAM(m)(x, list(classes))
    assert want.max() > 0.5
    np.testing.assert_allclose(got, want, atol=1e-4)
    both = tmp_path / "both.onnx"
    export_explainer(m, "gradcam,layercam", path=both)
    assert [n.name for n in onnx.load(str(both)).graph.node if "onnxcam_export/grad/" in n.name]
    sess = ort.InferenceSession(str(both), providers=["CPUExecutionProvider"])
    cls, gradcam, layercam = sess.run([CLASS_OUTPUT, "cam_gradcam", "cam_layercam"], {m.input.name: x})
    np.testing.assert_allclose(gradcam, onnxcam.GradCAM(m)(x, list(cls)), atol=1e-4)
    np.testing.assert_allclose(layercam, onnxcam.LayerCAM(m)(x, list(cls)), atol=1e-4)


def _small_maps(shape: tuple[int, int]) -> np.ndarray:
    """(6, h, w) raw maps: random, one interior spike, flat, negative, a range below the epsilon, a ramp."""
    h, w = shape
    rng = np.random.default_rng(8)
    spike = np.zeros(shape)
    spike[h // 2, w // 2] = 5.0
    ramp = np.add.outer(np.arange(h), -0.5 * np.arange(w))
    maps = [rng.normal(size=shape) + 1.0, spike, np.full(shape, 3.0), -np.abs(rng.normal(size=shape)) - 0.1,
            1e-9 * rng.random(shape), ramp]
    return np.stack(maps).astype(np.float32)


@pytest.mark.parametrize("opset", [11, 18])
@pytest.mark.parametrize("resize_op", [False, True])
@pytest.mark.parametrize(("shape", "size"), [((7, 7), (224, 224)), ((7, 9), (240, 300)), ((1, 5), (32, 40)),
                                             ((30, 25), (22, 19)), ((14, 14), (14, 14))])
def test_one_layer_is_normalised_before_the_resize_as_the_python_path(monkeypatch: pytest.MonkeyPatch, opset: int,
                                                                       resize_op: bool, shape: tuple[int, int],
                                                                       size: tuple[int, int]) -> None:
    """ar.finish on one layer: ReLU, both normalisations on the small map (the resize's min and max read
    at the ends of its interpolation cells), one resize by two matrix products (or the Resize op, for
    maps with large weight matrices), the raw map's factor folded into the epsilon: equal to
    ``finish_single(layer_to_image(raw / scale))`` in numpy and cv2, flat, negative and sub-epsilon maps included."""
    from onnxcam.export import arithmetic as ar
    from onnxcam.export._graph import GraphWriter
    from onnxcam.graph.protos import make_model
    from onnxcam.postprocess import finish_single, layer_to_image

    if resize_op:
        monkeypatch.setattr(ar, "_MATMUL_BYTES", 0)
    scale = 49.0
    w = GraphWriter("maps", opset)
    ar.finish(w, [("raw", shape)], size, "out", scale=scale)
    assert ("Resize" in {n.op_type for n in w.nodes}) == (resize_op and shape != size)
    inputs = [helper.make_tensor_value_info("raw", TensorProto.FLOAT, ["N", *shape])]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", *size])]
    graph = helper.make_graph(w.nodes, "finish", inputs, outputs, w.initializers)
    model = make_model(graph, [helper.make_opsetid("", opset)], ir_version=7)
    raw = _small_maps(shape)
    (got,) = _session(model).run(None, {"raw": raw})
    want = finish_single(layer_to_image(raw / np.float32(scale), size))
    assert want[4].max() > 1e-3 and want[0].max() > 0.99  # the epsilon matters in one, not in the other
    assert got.min() >= 0.0 and got.max() <= 1.0
    np.testing.assert_allclose(got, want, atol=1e-5)
