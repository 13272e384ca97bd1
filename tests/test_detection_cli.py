"""`onnxcam explain` on a detector: one overlay per detection, a grid, every kept detection in
summary.json with its box on the original image; no detection -> the plain image and an empty
list (exit 0); bad --detections / --conf and unreadable layouts -> one-line errors."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from graphs import residual_net, save
from typer.testing import CliRunner

from cli.main import app
from models.build import build
from onnxcam.detection import to_image_boxes
from onnxcam.image import crop_box

runner = CliRunner()


@pytest.fixture(scope="module")
def detector():
    return build("yolov8n_det")


@pytest.fixture()
def image(tmp_path):
    rng = np.random.default_rng(0)
    coarse = rng.uniform(0, 255, (6, 9, 3)).astype(np.float32)
    img = cv2.resize(coarse, (360, 240), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)
    path = tmp_path / "in" / "street.png"
    path.parent.mkdir()
    cv2.imwrite(str(path), img[..., ::-1])
    return path


def test_one_map_per_detection_and_boxes_on_the_original_image(detector, image, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["explain", str(detector), str(image), "--detections", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    item = summary["images"][0]
    assert summary["task"] == "detect" and summary["preprocess"] == "letterbox 320x320"
    assert item["outputs"]["gradcam"] == ["street_gradcam_det0.png", "street_gradcam_det1.png"]
    assert len(item["detections"]) > 2 and item["explained"] == 2  # every kept detection is listed
    scores = [d["score"] for d in item["detections"]]
    assert scores == sorted(scores, reverse=True) and min(scores) > 0.25
    region = crop_box((240, 360), (320, 320), "letterbox")
    for d in item["detections"][:5]:
        assert np.allclose(d["box"], to_image_boxes(np.array(d["box_input"]), region, (320, 320)), atol=0.1)
        assert d["label"] == f"class{d['class']}"
    overlay = cv2.imread(str(out / "street_gradcam_det0.png"))
    assert overlay.shape == (240, 360, 3)
    assert (out / "street_grid.png").is_file()


def test_no_detection_writes_the_plain_image_and_an_empty_list(detector, image, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["explain", str(detector), str(image), "--conf", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "no detection above conf 1.0" in result.output
    item = json.loads((out / "summary.json").read_text())["images"][0]
    assert item["detections"] == [] and item["outputs"] == {}
    written = cv2.imread(str(out / "street.png"))[..., ::-1]
    assert np.array_equal(written, cv2.imread(str(image))[..., ::-1])


@pytest.mark.parametrize(("args", "message"), [
    (["--detections", "0"], "--detections must be >= 1"),
    (["--conf", "-0.5"], "confidence threshold must be in [0, 1]"),
])
def test_bad_options_are_one_line_errors(detector, image, tmp_path, args, message):
    result = runner.invoke(app, ["explain", str(detector), str(image), "--out", str(tmp_path / "o"), *args])
    assert result.exit_code != 0 and message in result.output
    assert not (tmp_path / "o").exists()


def test_unreadable_layout_names_shapes_and_options(image, tmp_path):
    model = save(residual_net(), tmp_path / "cls.onnx")
    result = runner.invoke(app, ["explain", str(model), str(image), "--task", "detect", "--out", str(tmp_path / "o")])
    assert result.exit_code != 0
    line = result.output.strip()
    assert "\n" not in line and "(N, 4)" in line and "box formats" in line and "task=" in line
