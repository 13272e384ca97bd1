"""Graphs with NMS inside (the "end2end" export: yolov8n_det + NonMaxSuppression + Gather) are
explained through the tensors NMS reads: ``pre_nms`` returns them as a box/score pair detector's
outputs, numpy NMS keeps what onnxruntime's NonMaxSuppression keeps, and a detection's map through
the pre-NMS graph equals its map through the same detector exported without NMS."""

from __future__ import annotations

from functools import cache

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxcam
from models.build import build
from onnxcam.detection import DetectionTask, nms
from onnxcam.detection.end2end import BOXES, SCORES, pre_nms
from onnxcam.detection.layouts import to_xyxy
from onnxcam.errors import OnnxCamWarning
from onnxcam.graph.protos import make_model


@pytest.fixture(autouse=True, scope="module")
def _release_models():
    """Drop this module's cached models (and their sessions) when it is done: the suite is long."""
    yield
    _pre.cache_clear()


def _image(seed: int = 5) -> np.ndarray:
    """Smooth blobs on a gradient ``(1, 3, 320, 320)`` (scores off the sigmoid's flat ends)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:320, 0:320] / 320.0
    img = np.stack([xx, yy, 1 - xx]) * 0.4
    for _ in range(6):
        cy, cx, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.15)
        img = img + np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[None] * rng.uniform(0.2, 0.6, (3, 1, 1))
    return np.clip(img, 0, 1).astype(np.float32)[None]


@cache
def _pre(tmp: str) -> tuple[str, object]:
    proto = onnx.load(str(build("yolov8n_det_nms")))
    found = pre_nms(proto)
    assert found is not None
    path = f"{tmp}/pre_nms.onnx"
    onnx.save(found.model, path)
    return path, found


@pytest.fixture(scope="module")
def pre(tmp_path_factory):
    return _pre(str(tmp_path_factory.mktemp("nms")))


def test_a_graph_without_nms_is_left_alone():
    assert pre_nms(onnx.load(str(build("yolov8n_det")))) is None


def test_pre_nms_outputs_are_the_detectors_boxes_and_scores(pre):
    path, found = pre
    assert (found.iou, found.score, found.max_per_class) == (pytest.approx(0.45), pytest.approx(0.25), 100)
    x = _image()
    plain = ort.InferenceSession(str(build("yolov8n_det")), providers=["CPUExecutionProvider"])
    (raw,) = plain.run(None, {"images": x})
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == [BOXES, SCORES]
    boxes, scores = sess.run(None, {"images": x})
    np.testing.assert_allclose(boxes[0], to_xyxy(raw[0, :4].T, "cxcywh"), rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(scores[0], raw[0, 4:].T)


def _onnx_nms(boxes: np.ndarray, scores: np.ndarray, iou: float, score: float, max_out: int) -> np.ndarray:
    """onnxruntime's NonMaxSuppression on ``boxes (1, A, 4)`` xyxy and ``scores (1, K, A)``: ``(M, 3)``."""
    inits = [numpy_helper.from_array(np.array([max_out], np.int64), "m"),
             numpy_helper.from_array(np.array([iou], np.float32), "i"),
             numpy_helper.from_array(np.array([score], np.float32), "s")]
    node = helper.make_node("NonMaxSuppression", ["b", "c", "m", "i", "s"], ["k"])
    g = helper.make_graph([node], "nms", [helper.make_tensor_value_info("b", TensorProto.FLOAT, list(boxes.shape)),
                                          helper.make_tensor_value_info("c", TensorProto.FLOAT, list(scores.shape))],
                          [helper.make_tensor_value_info("k", TensorProto.INT64, None)], inits)
    sess = ort.InferenceSession(make_model(g, [helper.make_opsetid("", 17)]).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    return sess.run(None, {"b": boxes.astype(np.float32), "c": scores.astype(np.float32)})[0]


def test_numpy_nms_keeps_what_onnx_nms_keeps_per_class(pre):
    path, found = pre
    boxes, scores = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"images": _image()})
    # ONNX NMS reads (y1, x1, y2, x2) corners by default; any pair of opposite corners works.
    kept = _onnx_nms(boxes[:, :, [1, 0, 3, 2]], scores.transpose(0, 2, 1), 0.45, 0.25, 100)
    checked = 0
    for c in range(scores.shape[2]):
        s = scores[0, :, c]
        live = np.flatnonzero(s > 0.25)
        if len(live) < 2 or len(np.unique(s[live])) < len(live):
            continue  # ties order differently between implementations
        ours = live[nms(boxes[0, live], s[live], np.zeros(len(live), np.int64), 0.45, 100)]
        theirs = kept[kept[:, 1] == c, 2]
        np.testing.assert_array_equal(ours, theirs)
        checked += 1
    assert checked >= 5


def test_a_detections_map_through_the_pre_nms_graph_equals_the_plain_detectors(pre):
    path, _ = pre
    ours = onnxcam.load(path, device="cpu")
    plain = onnxcam.load(build("yolov8n_det"), device="cpu")
    task = ours.task
    assert isinstance(task, DetectionTask) and task.layout.kind == "pairs" and task.layout.num_classes == 80
    assert ours.resolve_layers("auto") == plain.resolve_layers("auto")
    x = _image()
    dets = task.detections(ours.forward(x))[0]
    ref = plain.task.detections(plain.forward(x))[0]  # type: ignore[attr-defined]
    assert [(d.index, d.category) for d in dets[:10]] == [(d.index, d.category) for d in ref[:10]]
    np.testing.assert_allclose([d.box for d in dets[:10]], [d.box for d in ref[:10]], atol=1e-3)
    live = [k for k, d in enumerate(dets) if 0.3 < d.score < 0.97][:2]
    assert live
    for k in live:
        got = onnxcam.GradCAM(ours)(x, targets=[task.detection_target(dets[k])])
        want = onnxcam.GradCAM(plain)(x, targets=[plain.task.detection_target(ref[k])])  # type: ignore[attr-defined]
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_loading_an_end2end_graph_explains_it_through_its_pre_nms_tensors(pre, tmp_path):
    """``onnxcam.load`` (and so ``onnxcam explain``) on the NMS graph itself, no options: the same
    detections and maps as the pre-NMS model, a note naming the graph's own thresholds, the file untouched."""
    path, _ = pre
    end2end = build("yolov8n_det_nms")
    before = end2end.read_bytes()
    with pytest.warns(OnnxCamWarning, match=r"NonMaxSuppression.*iou 0\.45, score 0\.25"):
        direct = onnxcam.load(end2end, device="cpu")
    assert end2end.read_bytes() == before
    ours = onnxcam.load(path, device="cpu")
    assert isinstance(direct.task, DetectionTask) and direct.task.layout.kind == "pairs"
    x = _image()
    dets = direct.task.detections(direct.forward(x))[0]
    ref = ours.task.detections(ours.forward(x))[0]  # type: ignore[attr-defined]
    assert [(d.index, d.category) for d in dets] == [(d.index, d.category) for d in ref] and dets
    k = next(k for k, d in enumerate(dets) if 0.3 < d.score < 0.97)
    got = onnxcam.GradCAM(direct)(x, targets=[direct.task.detection_target(dets[k])])
    want = onnxcam.GradCAM(ours)(x, targets=[ours.task.detection_target(ref[k])])  # type: ignore[attr-defined]
    assert got.max() > 0.5
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_explain_cli_on_an_end2end_graph_needs_no_options(tmp_path):
    import json

    from onnxcam_cli.main import app
    from PIL import Image
    from typer.testing import CliRunner

    img = tmp_path / "blobs.png"
    Image.fromarray((_image()[0].transpose(1, 2, 0) * 255).astype(np.uint8)).save(img)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["explain", str(build("yolov8n_det_nms")), str(img), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "NonMaxSuppression" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"][0]["detections"], summary
