"""Gradients through a head's local region taken on crops (onnxcam.graph.local, onnxcam.crops).

The crop path must give the numbers the whole-head gradient graph gives: on every detector of
models/ at anchors in the interior and on all four edges (windows shifted against the map's own
border), on a hand-built head with every kind of kernel geometry the region admits (dilation,
stride 2 with asymmetric pads, SAME_UPPER, max pooling, channel split/concat, a crossing skip; with
pooling on one window, without it each tensor on its own window, masked at the edge), and
for a dense gradient (a classifier's mid layer, where the window is the whole image). The window
arithmetic itself is checked against hand-computed boxes.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxcam
from models.build import build
from onnxcam.data import demo_detect_files
from onnxcam.detection.targets import DetectionScoreTarget, DRiseTarget
from onnxcam.graph.local import Kernel
from onnxcam.targets import ClassTarget, output_seeds


@cache
def _model(name: str) -> onnxcam.Model:
    path = demo_detect_files().model if name == "demo_detect" else build(name)
    return onnxcam.load(path, device="cpu")


@pytest.fixture(autouse=True, scope="module")
def _release_models():
    yield
    _model.cache_clear()


def _both(model: onnxcam.Model, x: np.ndarray, layers, targets) -> tuple[onnxcam.engine.Gradients, ...]:
    engine = model.gradient_engine
    engine.local_crops = True
    local = engine.compute(x, layers, targets, model.task)
    engine.local_crops = False
    try:
        dense = engine.compute(x, layers, targets, model.task)
    finally:
        engine.local_crops = True
    return local, dense


def _assert_same(local, dense, layers) -> None:
    for layer in layers:
        a, b = local.gradients[layer], dense.gradients[layer]
        scale = max(float(np.abs(b).max()), 1e-30)
        # Crops run the same kernels on smaller maps: onnxruntime may pick another blocking, so float32
        # summation order may differ; nothing else may.
        assert float(np.abs(a - b).max()) <= 1e-5 * scale, (layer, float(np.abs(a - b).max()), scale)
        # The body runs with more outputs on the crop path (another onnxruntime session).
        np.testing.assert_allclose(local.activations[layer], dense.activations[layer], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(local.scores, dense.scores, rtol=1e-5, atol=1e-7)


def _edge_anchors(model: onnxcam.Model, x: np.ndarray, grids: list[tuple[int, int]]) -> list[int]:
    """Prediction indices at the corners and edge middles of every level (``grids``: each level's
    (h, w), in the order the predictions are laid out), 16 spread over all of them, and the top
    detection's."""
    layout = model.task.layout  # type: ignore[attr-defined]
    n = layout.rows(model.forward(x))[0].shape[-2]
    picks = {int(i) for i in np.linspace(0, n - 1, 16)}
    cells = sum(h * w for h, w in grids)
    per = n // cells  # predictions per cell (RetinaNet/SSD-style heads lay several anchors per cell)
    assert per * cells == n, (grids, n)
    start = 0
    for h, w in grids:
        for r, c in ((0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1), (h // 2, 0), (0, w // 2), (h // 2, w // 2)):
            picks.update({start + (r * w + c) * per, start + (r * w + c) * per + per - 1})
        start += h * w * per
    dets = model.task.detections(model.forward(x))[0]  # type: ignore[attr-defined]
    if dets:
        picks.add(dets[0].index)
    return sorted(picks)


def _image(size: tuple[int, int], seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([xx, yy, 1 - xx]) * 0.4
    for _ in range(5):
        cy, cx, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.15)
        img = img + np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[None] * rng.uniform(0.2, 0.6, (3, 1, 1))
    return np.clip(img, 0, 1).astype(np.float32)[None]


@pytest.mark.parametrize("name", ["yolov8n_det", "yolov8n_det_op12", "yolo11n_det", "boxscore_det", "demo_detect"])
def test_detectors_crop_gradients_equal_the_whole_head_graph(name: str) -> None:
    model = _model(name)
    x = _image(model.input.size)
    layers = onnxcam.GradCAM(model).layers
    engine = model.gradient_engine
    plan = engine.local_plan(model.frontier(tuple(layers)), tuple(layers))
    assert plan is not None, f"{name}: its head has a local region and a cheap tail"
    layout = model.task.layout  # type: ignore[attr-defined]
    _, probs, _ = layout.rows(model.forward(x))
    region = plan.crops.region
    # One grid per level (a level may have a box and a class boundary tensor).
    grids = list(dict.fromkeys(region.sizes[b] for b in plan.boundary if b in plan.crops.seeded))
    anchors = _edge_anchors(model, x, grids)
    targets = [DetectionScoreTarget(layout, i, int(np.argmax(probs[0, i]))) for i in anchors]
    dets = model.task.detections(model.forward(x))[0]  # type: ignore[attr-defined]
    if dets:
        targets.append(DRiseTarget(layout, dets[0].box, dets[0].category))
    rows = np.repeat(x, len(targets), axis=0)
    local, dense = _both(model, rows, layers, targets)
    _assert_same(local, dense, layers)
    # The crops were crops: an interior anchor's window is a fraction of the image.
    feeds, outputs = model.run_body(rows, plan.cut)
    seeds = output_seeds(targets, outputs)
    seeded = tuple(model.split(plan.cut).model_outputs[k] for k in sorted(seeds))
    _, boundary = engine._graph_gradients(plan.cut, plan.boundary, seeded, seeds, feeds, 16)
    windows = [w for w in plan.crops.windows(boundary) if w is not None]
    assert windows
    h, w = model.input.size
    assert min(win[1][2] * win[1][3] for win in windows) <= h * w / 4, windows


def test_channel_means_from_the_crops_equal_the_dense_gradients_means() -> None:
    """Grad-CAM reads only each channel's spatial mean: on the crop path those come from the crops
    themselves (``means_only``), with no full-size gradient per row, and equal the dense means."""
    model = _model("yolov8n_det")
    x = _image(model.input.size)
    layers = tuple(onnxcam.GradCAM(model).layers)
    plan = model.gradient_engine.local_plan(model.frontier(layers), layers)
    assert plan is not None
    layout = model.task.layout  # type: ignore[attr-defined]
    _, probs, _ = layout.rows(model.forward(x))
    grids = list(dict.fromkeys(plan.crops.region.sizes[b] for b in plan.boundary if b in plan.crops.seeded))
    targets = [DetectionScoreTarget(layout, i, int(np.argmax(probs[0, i]))) for i in _edge_anchors(model, x, grids)]
    engine = model.gradient_engine
    rows = engine.repeat(x, len(targets))
    means = engine.compute(rows, layers, targets, model.task, means_only=True)
    dense = engine.compute(rows, layers, targets, model.task)
    assert means.kind == "channel-mean" and dense.kind == "elementwise"
    for layer in layers:
        m = means.gradients[layer]
        assert m.strides[2] == m.strides[3] == 0  # spread over the positions, not a map per row
        expected = dense.gradients[layer].mean(axis=(2, 3), dtype=np.float64)
        np.testing.assert_allclose(m[:, :, 0, 0], expected, rtol=0, atol=1e-6 * np.abs(expected).max())
    cam = onnxcam.GradCAM(model)
    fast = cam(rows, targets=targets)
    engine.local_crops = False
    try:
        whole = cam(rows, targets=targets)
    finally:
        engine.local_crops = True
    np.testing.assert_allclose(fast, whole, atol=1e-5)


def test_kernel_input_box_follows_stride_padding_and_dilation() -> None:
    k = Kernel(kernel=(3, 3), strides=(2, 2), dilations=(1, 1), pads_begin=(1, 0))
    # Output rows 2..3 read input rows 2*2-1 .. 3*2-1+2; columns 0..0 read 0 .. 2 (clipped at the map).
    assert k.input_box((2, 0, 3, 0), (16, 16)) == (3, 0, 7, 2)
    d = Kernel(kernel=(3, 1), strides=(1, 1), dilations=(2, 1), pads_begin=(2, 0))
    assert d.input_box((0, 5, 0, 5), (8, 8)) == (0, 5, 2, 5)
    assert d.input_box((7, 0, 7, 0), (8, 8)) == (5, 0, 7, 0)


# -- a hand-built head --------------------------------------------------------------------------
def _conv(name: str, x: str, cin: int, cout: int, rng: np.random.Generator, inits: list, **attrs) -> onnx.NodeProto:
    k = attrs.pop("k", 3)
    w = (rng.standard_normal((cout, cin, k, k)) * 0.3).astype(np.float32)
    inits.append(numpy_helper.from_array(w, name + "_w"))
    inits.append(numpy_helper.from_array((rng.standard_normal(cout) * 0.1).astype(np.float32), name + "_b"))
    return helper.make_node("Conv", [x, name + "_w", name + "_b"], [name], name=name, **attrs)


def _hand_built(path: Path, variant: str = "pool") -> Path:
    """image (1,3,32,32) -> body conv -> L (4,32,32); head: dilated conv, stride-2 conv with pads
    (0,0,1,1), a skip from the body crossing the cut, channel Split/Mul, MaxPool 2x2, Concat, SAME_UPPER
    conv -> (2,8,8), then a non-local tail: Reshape to (64, 2) positions x channels.

    ``variant``: "pool" as above (the region runs on one window); "conv": a 2x2 stride-2 conv with
    pads (1, 1, 0, 0) instead of the pooling (each tensor on its own window, masked at the edge);
    "exp": that conv followed by an Exp (an op that may overflow: every tensor masked)."""
    rng = np.random.default_rng(0)
    inits: list = []
    nodes = [
        _conv("L0", "image", 3, 4, rng, inits, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["L0"], ["L"], name="L_relu"),
        _conv("skip", "image", 3, 6, rng, inits, k=1, strides=[2, 2]),  # crosses the cut at stride 2
        _conv("a0", "L", 4, 4, rng, inits, pads=[2, 2, 2, 2], dilations=[2, 2]),
        helper.make_node("Relu", ["a0"], ["a"], name="a_relu"),
        _conv("b0", "a", 4, 6, rng, inits, strides=[2, 2], pads=[0, 0, 1, 1]),
        helper.make_node("Add", ["b0", "skip"], ["b1"], name="b_add"),
        helper.make_node("Sigmoid", ["b1"], ["b"], name="b_sig"),
        helper.make_node("Split", ["b", "split"], ["c1", "c2"], name="c_split", axis=1),
        helper.make_node("Mul", ["c1", "c2"], ["d"], name="d_mul"),
        helper.make_node("MaxPool", ["d"], ["e"], name="e_pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Concat", ["e", "e"], ["f"], name="f_cat", axis=1),
    ]
    if variant != "pool":
        nodes[-2:] = [_conv("e0" if variant == "exp" else "e", "d", 3, 3, rng, inits, k=2, strides=[2, 2],
                            pads=[1, 1, 0, 0])]
        if variant == "exp":
            nodes.append(helper.make_node("Exp", ["e0"], ["e"], name="e_exp"))
        nodes.append(helper.make_node("Concat", ["e", "e"], ["f"], name="f_cat", axis=1))
    nodes += [
        _conv("g", "f", 6, 2, rng, inits, auto_pad="SAME_UPPER"),
        helper.make_node("Reshape", ["g", "shape"], ["g2"], name="g_flat"),
        helper.make_node("Transpose", ["g2"], ["out"], name="g_t", perm=[0, 2, 1]),
    ]
    inits.append(numpy_helper.from_array(np.array([3, 3], np.int64), "split"))
    inits.append(numpy_helper.from_array(np.array([0, 2, 64], np.int64), "shape"))
    graph = helper.make_graph(nodes, "local_head", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                                   ["N", 3, 32, 32])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 64, 2])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, path)
    return path


@pytest.mark.parametrize("variant", ["pool", "conv", "exp"])
def test_hand_built_head_every_position_equals_the_whole_graph(tmp_path: Path, variant: str) -> None:
    model = onnxcam.load(_hand_built(tmp_path / "local.onnx", variant), device="cpu")
    x = np.random.default_rng(1).uniform(0, 1, (1, 3, 32, 32)).astype(np.float32)
    layers = ("L", "b")  # the cut and a layer inside the region, past the stride-2 kernel
    plan = model.gradient_engine.local_plan(model.frontier(layers), layers)
    assert plan is not None and plan.boundary == ("g",)
    assert plan.crops.region.step == (4, 4) and "skip" in plan.crops.region.cut
    targets = [ClassTarget(p) for p in range(64)]  # every output position, both channels
    rows = np.repeat(x, 64, axis=0)
    local, dense = _both(model, rows, layers, targets)
    _assert_same(local, dense, layers)
    assert np.abs(dense.gradients["L"]).max() > 0
    assert plan.crops.windowed == (variant != "pool")
    if variant != "pool":
        # Per-tensor windows (onnxcam.graph.local_windows), every output position (all of them on or
        # next to an edge but the middle 4x4: both graphs, with and without the edge's masks) ran.
        built = {(key[0], key[4]) for key in plan.crops._graphs}
        assert built == {(("g",), True), (("g",), False)}, built
        # Position (3, 3) of g (stride 4): seed window (12, 12, 4, 4) (a multiple of the strides 4, 2
        # and 1 the graph holds). Relative to it the SAME_UPPER conv reads f = e -1..1; the 2x2 stride-2
        # conv with one pad before reads d = b = b0 = the skip -3..2 (stride 2); the stride-2 conv with
        # no pad before reads a -6..6; the dilated conv L -8..8 (image rows 4..20): each tensor its own.
        g = np.zeros((1, 2, 8, 8), np.float32)
        g[0, :, 3, 3] = 1
        (seeded, window), = plan.crops.windows({"g": g})
        assert seeded == ("g",) and window == (12, 12, 4, 4)
        boxes = plan.crops.plan((seeded, 4, 4)).boxes
        expected = {"g": 0, "f": 1, "e": 1, "d": 3, "b0": 3, "skip": 3, "a": 6, "L": 8}
        assert {t: boxes[t] for t in expected} == {t: (-r, -r, 2 if t in "d b0 skip" else r,
                                                       2 if t in "d b0 skip" else r) for t, r in expected.items()}
        return
    # Position (3, 3) of the 8x8 output g (stride 4): the SAME_UPPER conv reads f = e rows 2..4; the
    # pool d 4..9 (stride 2, as are b, b0 and the skip); the stride-2 conv (pads 0 before) a 8..20;
    # the dilated conv L 6..24. Image rows 6..24 -> start 4 (a multiple of the largest stride, 4),
    # 21 rows -> 24 (a multiple of 2 x 4), inside the 32-row image: (4, 4, 24, 24).
    feeds, _ = model.run_body(rows[:1], plan.cut)
    g = np.zeros((1, 2, 8, 8), np.float32)
    g[0, :, 3, 3] = 1
    (seeded, window), = plan.crops.windows({"g": g})
    assert seeded == ("g",)
    assert window == (4, 4, 24, 24)


def test_a_dense_gradient_goes_back_to_the_whole_head_graph(build_model) -> None:  # type: ignore[no-untyped-def]
    """A classifier's middle layer: the tail (pooling + linear) is cheap, so there is a local region,
    but pooling spreads every gradient over the whole map: the crops would be the whole image, and the
    engine takes the whole head's graph instead (from then on), with the same numbers."""
    model = onnxcam.load(build_model("resnet_small"), device="cpu")
    layers = [la.name for la in model.layers()]
    mid = (layers[len(layers) // 2],)
    x = np.random.default_rng(2).uniform(0, 1, model.input.shape(2)).astype(np.float32)
    engine = model.gradient_engine
    plan = engine.local_plan(model.frontier(mid), mid)
    assert plan is not None
    first = engine.compute(x, mid, None, model.task)
    assert not plan.crops._graphs  # no crop graph was built
    assert engine.local_plan(model.frontier(mid), mid) is None
    engine.local_crops = False
    whole = engine.compute(x, mid, None, model.task)
    _assert_same(first, whole, mid)
    auto = (model.layer().name,)
    engine.local_crops = True
    assert engine.local_plan(model.frontier(auto), auto) is None  # nothing local between it and the pooling


def test_window_masks_mark_the_positions_on_the_map() -> None:
    """An edge graph's masks (``WindowMask``, fed per row from the window's origin): a box of a stride-8
    tensor on a 4x5 map, relative to the origin, checked by hand at two origins."""
    from onnxcam.graph.local_windows import WindowMask

    mask = WindowMask((8, 8), (-2, -1, 1, 2), (4, 5))
    got = mask.values(np.array([[0, 0], [16, 24]]))
    assert got.shape == (2, 1, 4, 4) and got.dtype == bool
    rows0, cols0 = np.array([0, 0, 1, 1], bool), np.array([0, 1, 1, 1], bool)  # positions -2..1 and -1..2
    rows1, cols1 = np.array([1, 1, 1, 1], bool), np.array([1, 1, 1, 0], bool)  # 0..3 and 2..5 (5 is off the map)
    np.testing.assert_array_equal(got[0, 0], rows0[:, None] & cols0[None, :])
    np.testing.assert_array_equal(got[1, 0], rows1[:, None] & cols1[None, :])
