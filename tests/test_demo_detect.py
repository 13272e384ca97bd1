"""The detection demo shipped in ``onnxcam/data/demo_detect`` (``python -m models.demo_train_detect``):
a tiny detector with real weights trained on synthetic shape scenes.

Its files, what it detects on the demo scenes, and the acceptance check of detection maps: on
held-out scenes rendered by the same generator (numpy + OpenCV, seeded), each detection's Grad-CAM
map (default layers, fused) peaks inside the detection's box, and two detections of different
objects get different maps, each peaking in its own box. ``onnxcam demo --task detect`` runs it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

import onnxcam
from cli.main import app
from onnxcam.data import demo_detect_files
from onnxcam.detection import DetectionTask

DEMO = Path(__file__).resolve().parents[1] / "onnxcam" / "data" / "demo_detect"
HELDOUT_SCENES = 60


@pytest.fixture(scope="module")
def files() -> Any:
    return demo_detect_files()


@pytest.fixture(scope="module")
def model(files: Any) -> onnxcam.Model:
    return onnxcam.load(files.model, device="cpu")


def _iou(a: Any, b: Any) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
    return iw * ih / union if union > 0 else 0.0


def test_files_are_small_and_the_model_is_an_ultralytics_style_export(files: Any) -> None:
    assert files.model.stat().st_size < 1024 * 1024
    proto = onnx.load(str(files.model))
    onnx.checker.check_model(proto)
    assert proto.ir_version == 9
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["task"] == "detect" and meta["imgsz"] == "[128, 128]" and meta["stride"] == "16"
    assert eval(meta["names"]) == dict(enumerate(files.labels))  # noqa: S307 - the names dict literal
    assert files.labels == files.meta["classes"] and len(files.labels) == 6
    assert sorted(p.name for p in files.images) == sorted(files.truth) and len(files.images) >= 4
    for objects in files.truth.values():
        assert 2 <= len(objects) <= 3 and len({o["label"] for o in objects}) == len(objects)


def test_recognised_as_yolov8_with_both_levels_as_default_layers(model: onnxcam.Model, files: Any) -> None:
    task = model.task
    assert isinstance(task, DetectionTask) and task.layout.kind == "yolov8" and task.layout.num_classes == 6
    assert [task.label(k) for k in range(6)] == files.labels
    layers = model.resolve_layers("auto")
    assert [model.tensor_info(n).shape[2:] for n in layers] == [(16, 16), (8, 8)]


def test_every_demo_object_is_detected_and_nothing_else(model: onnxcam.Model, files: Any) -> None:
    pp = onnxcam.get_preset("yolo", model.input.size)
    for path in files.images:
        x = onnxcam.preprocess([onnxcam.load_image(path)], pp)
        dets = model.task.detections(model.forward(x))[0]  # type: ignore[attr-defined]
        truth = files.truth[path.name]
        assert len(dets) == len(truth), path.name
        for t in truth:
            assert any(d.category == t["class_index"] and _iou(d.box, t["box"]) >= 0.5 for d in dets), (path.name, t)


def test_each_detections_gradcam_map_peaks_in_its_box(model: onnxcam.Model) -> None:
    from models.demo_train_detect import TEST_SEED, make_scenes, to_input

    task = model.task
    cam = onnxcam.GradCAM(model)
    engine = model.gradient_engine
    inside: list[bool] = []
    pairs: list[bool] = []
    for scene in make_scenes(HELDOUT_SCENES, TEST_SEED):
        x = to_input(scene.image[None])
        dets = task.detections(model.forward(x))[0]  # type: ignore[attr-defined]
        if not dets:
            continue
        # All detections of the scene from one body run.
        maps = cam(engine.repeat(x, len(dets)), targets=[task.detection_target(d) for d in dets])  # type: ignore[attr-defined]
        hits = []
        for d, m in zip(dets, maps, strict=True):
            y, x_ = np.unravel_index(int(np.argmax(m)), m.shape)
            hits.append(bool(d.box[0] <= x_ + 0.5 <= d.box[2] and d.box[1] <= y + 0.5 <= d.box[3]))
        inside += hits
        for i in range(len(dets)):
            for j in range(i + 1, len(dets)):
                if _iou(dets[i].box, dets[j].box) < 0.1:  # different objects
                    differ = float(np.abs(maps[i] - maps[j]).max()) > 0.5
                    pairs.append(differ and hits[i] and hits[j])
    assert len(inside) >= 100
    rate = float(np.mean(inside))
    assert rate >= 0.9, f"Grad-CAM peaks inside the detection's box for {rate:.1%} of {len(inside)} detections"
    assert len(pairs) >= 40
    pair_rate = float(np.mean(pairs))
    assert pair_rate >= 0.85, f"{pair_rate:.1%} of {len(pairs)} pairs of objects have maps peaking in their own boxes"


def test_demo_command_explains_every_detection(tmp_path: Path, files: Any) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--task", "detect", "--out", str(out)])
    assert result.exit_code == 0, result.output
    objects = sum(len(v) for v in files.truth.values())
    assert f"found {objects}/{objects} objects" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "detect" and summary["preprocess"] == "letterbox 128x128"
    for item in summary["images"]:
        assert len(item["outputs"]["gradcam"]) == len(item["detections"]) == item["explained"]
        assert (out / item["grid"]).is_file()
    bad = CliRunner().invoke(app, ["demo", "--task", "segment", "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "--task classify or --task detect" in bad.output
