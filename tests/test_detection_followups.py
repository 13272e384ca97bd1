"""Detector details reachable from the CLI: a forced ``--task detect`` picks the maps feeding the
head, detectors are letterboxed whatever the preset, and ``onnxcam layers`` marks every default
layer of a detector."""

from __future__ import annotations

import json

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import onnxcam
from cli.main import app
from models.build import build
from onnxcam.detection import DetectionTask
from onnxcam.graph.protos import make_model

runner = CliRunner()


def small_yolo(path):
    """x (1, 3, 48, 48) -> Conv/8 -> feat (1, 8, 6, 6) -> box and class 1x1 convs -> (1, 10, 36) as
    YOLOv8 (cx, cy, w, h, then 6 sigmoid scores). 36 predictions for 10 channels are too few for the
    shapes alone to say "detector": only ``--task detect`` reads it as one."""
    rng = np.random.default_rng(0)
    grid = (np.arange(6) + 0.5) * 8
    cx, cy = np.meshgrid(grid, grid)
    centre = np.stack([cx, cy]).reshape(1, 2, 6, 6).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], strides=[8, 8], kernel_shape=[8, 8]),
        helper.make_node("Relu", ["c0"], ["feat"]),
        helper.make_node("Conv", ["feat", "wb", "bb"], ["box_raw"]),
        helper.make_node("Conv", ["feat", "wc", "bc"], ["cls_raw"]),
        helper.make_node("Slice", ["box_raw", "s0", "s2", "ax"], ["xy_raw"]),
        helper.make_node("Slice", ["box_raw", "s2", "s4", "ax"], ["wh_raw"]),
        helper.make_node("Add", ["xy_raw", "centre"], ["xy"]),
        helper.make_node("Exp", ["wh_raw"], ["wh_unit"]),
        helper.make_node("Mul", ["wh_unit", "sixteen"], ["wh"]),
        helper.make_node("Sigmoid", ["cls_raw"], ["cls"]),
        helper.make_node("Concat", ["xy", "wh", "cls"], ["cat"], axis=1),
        helper.make_node("Reshape", ["cat", "shape"], ["output0"]),
    ]
    inits = [numpy_helper.from_array(a.astype(np.float32) if a.dtype.kind == "f" else a, n) for n, a in [
        ("w0", rng.normal(0, 0.1, (8, 3, 8, 8))), ("b0", rng.normal(0, 0.1, 8)),
        ("wb", rng.normal(0, 0.3, (4, 8, 1, 1))), ("bb", np.zeros(4)),
        ("wc", rng.normal(0, 1.0, (6, 8, 1, 1))), ("bc", rng.normal(0, 0.5, 6)),
        ("s0", np.array([0], np.int64)), ("s2", np.array([2], np.int64)), ("s4", np.array([4], np.int64)),
        ("ax", np.array([1], np.int64)), ("centre", centre), ("sixteen", np.array(16.0)),
        ("shape", np.array([1, 10, 36], np.int64)),
    ]]
    graph = helper.make_graph(nodes, "small_yolo",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 48, 48])],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 10, 36])], inits)
    model = make_model(graph, [helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture()
def image(tmp_path):
    rng = np.random.default_rng(1)
    img = cv2.resize(rng.uniform(0, 255, (5, 7, 3)).astype(np.float32), (70, 50)).astype(np.uint8)
    path = tmp_path / "pic.png"
    cv2.imwrite(str(path), img)
    return path


def test_forced_detect_task_explains_at_the_maps_feeding_the_head(tmp_path, image):
    path = small_yolo(tmp_path / "small_yolo.onnx")
    assert not isinstance(onnxcam.load(path, device="cpu").task, DetectionTask)
    out = tmp_path / "out"
    result = runner.invoke(app, ["explain", str(path), str(image), "--task", "detect", "--conf", "0.05",
                                 "--detections", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["layers"] == ["feat"]
    assert summary["preprocess"] == "letterbox 48x48"
    assert summary["images"][0]["detections"], "no detection to explain"


@pytest.mark.parametrize("preset", ["unit", "yolo", "imagenet"])
def test_a_detector_is_letterboxed_whatever_the_preset(tmp_path, image, preset):
    out = tmp_path / "out"
    result = runner.invoke(app, ["explain", str(build("yolov8n_det")), str(image), "--preprocess", preset,
                                 "--detections", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "summary.json").read_text())["preprocess"] == "letterbox 320x320"


def test_the_yolo_preset_letterboxes_a_classifier_too(tmp_path):
    from cli.parsing import preprocessing

    model = onnxcam.load(build("resnet_small"), device="cpu")
    assert preprocessing(model, "yolo", "", "", False).resize_mode == "letterbox"
    assert preprocessing(model, "imagenet", "", "", False).resize_mode == "stretch"
    assert preprocessing(model, "yolo", "", "", True).resize_mode == "center_crop"


def test_layers_marks_every_default_layer_of_a_detector():
    path = build("yolov8n_det")
    expected = onnxcam.load(path, device="cpu").resolve_layers("auto")
    assert len(expected) == 3
    result = runner.invoke(app, ["layers", str(path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["auto"] == list(expected)
    assert [row["name"] for row in data["layers"] if row["auto"]] == list(expected)
    table = runner.invoke(app, ["layers", str(path)])
    assert table.exit_code == 0 and table.output.count("<- auto") == 3
    assert "auto layers (3, fused)" in table.output


def test_softmax_class_scores_are_still_read_as_a_detector(tmp_path):
    """SSD's scores end in a Softmax over the classes: that is a detector's, not a classifier's."""
    proto = onnx.load(str(build("boxscore_det")))
    (node,) = [n for n in proto.graph.node if n.output[0] == "scores"]
    assert node.op_type == "Sigmoid"
    node.op_type = "Softmax"
    node.attribute.append(helper.make_attribute("axis", -1))
    path = tmp_path / "ssd_softmax.onnx"
    onnx.save(proto, str(path))
    model = onnxcam.load(path, device="cpu")
    task = model.task
    assert isinstance(task, DetectionTask) and task.layout.kind == "pairs" and task.layout.num_classes == 20
    assert model.output_shapes.activations == {1: "Softmax"}  # type: ignore[attr-defined]
    x = np.random.default_rng(0).uniform(0, 1, (1, 3, 256, 256)).astype(np.float32)
    out = model.forward(x)
    np.testing.assert_allclose(out[1].sum(axis=-1), 1.0, rtol=1e-5)
    from onnxcam.detection import DecodeOptions, decode

    det = decode(task.layout, out, DecodeOptions(conf=0.0, max_det=5))[0]
    cam = onnxcam.GradCAM(model).explain(x, targets=[task.detection_target(det[0])])
    assert float(cam.scores[0]) == pytest.approx(det[0].score, rel=1e-5) and np.ptp(cam.maps) > 0.5
