"""The demo model and images shipped in ``onnxcam/data/demo`` (built by ``python -m models.demo_train``).

No torch here: the demo must work with onnxruntime, numpy and OpenCV alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

DEMO = Path(__file__).resolve().parents[1] / "onnxcam" / "data" / "demo"
MODEL = DEMO / "demo_cnn.onnx"


@pytest.fixture(scope="module")
def meta() -> dict[str, Any]:
    return dict(json.loads((DEMO / "meta.json").read_text()))


@pytest.fixture(scope="module")
def boxes() -> dict[str, dict[str, Any]]:
    return dict(json.loads((DEMO / "boxes.json").read_text()))


@pytest.fixture(scope="module")
def labels() -> list[str]:
    return (DEMO / "labels.txt").read_text().splitlines()


def _load_rgb(path: Path) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, f"cannot read {path}"
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _preprocess(rgb: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """``(H, W, 3)`` uint8 -> ``(1, 3, H, W)`` float32 following meta.json."""
    h, w = meta["input_size"]
    assert rgb.shape == (h, w, 3)
    unit = rgb.astype(np.float32) / 255.0
    normed = (unit - np.asarray(meta["mean"], np.float32)) / np.asarray(meta["std"], np.float32)
    return np.ascontiguousarray(normed.transpose(2, 0, 1)[None])


def test_files_exist_and_model_is_small() -> None:
    for name in ("demo_cnn.onnx", "labels.txt", "boxes.json", "meta.json"):
        assert (DEMO / name).is_file(), name
    assert MODEL.stat().st_size < 2 * 1024 * 1024


def test_model_is_valid_ir9_opset17_with_dynamic_batch(meta: dict[str, Any]) -> None:
    model = onnx.load(str(MODEL))
    onnx.checker.check_model(model)
    assert model.ir_version == 9
    assert {imp.version for imp in model.opset_import if imp.domain in ("", "ai.onnx")} == {17}
    (inp,) = model.graph.input
    assert inp.name == meta["input_name"]
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param  # symbolic batch
    assert [d.dim_value for d in dims[1:]] == [3, *meta["input_size"]]
    # The CAM layer named in meta.json feeds the GAP -> Gemm head that classic CAM needs.
    gap = [n for n in model.graph.node if n.op_type == "GlobalAveragePool"]
    assert [n.input[0] for n in gap] == [meta["cam_layer"]]
    assert any(n.op_type == "Gemm" for n in model.graph.node)


def test_labels_and_boxes_are_consistent(labels: list[str], boxes: dict[str, dict[str, Any]], meta: dict) -> None:
    assert labels == meta["classes"]
    assert len(set(labels)) == len(labels) >= 4
    assert 8 <= len(boxes) <= 12
    h, w = meta["input_size"]
    for fname, entry in boxes.items():
        assert (DEMO / "images" / fname).is_file(), fname
        assert labels[entry["class_index"]] == entry["label"]
        assert fname.rsplit("_", 1)[0] == entry["label"]
        x0, y0, x1, y1 = entry["box"]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        # Objects span ~30-70% of the image side by construction (radius 24-40 px at 128 px).
        assert 0.3 * w <= max(x1 - x0, y1 - y0) <= 0.7 * w
    assert sorted(p.name for p in (DEMO / "images").glob("*.png")) == sorted(boxes)


def test_every_demo_image_is_classified_as_its_label(boxes: dict[str, dict[str, Any]], meta: dict) -> None:
    sess = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    names = sorted(boxes)
    batch = np.concatenate([_preprocess(_load_rgb(DEMO / "images" / n), meta) for n in names])
    (logits,) = sess.run([meta["output_name"]], {meta["input_name"]: batch})
    assert logits.shape == (len(names), len(meta["classes"]))
    predicted = logits.argmax(axis=1).tolist()
    assert predicted == [boxes[n]["class_index"] for n in names]
    # Batch and single-image runs agree (dynamic batch axis works).
    single = sess.run(None, {meta["input_name"]: batch[:1]})[0]
    np.testing.assert_allclose(single, logits[:1], rtol=1e-4, atol=1e-4)


def test_meta_records_preprocessing_and_accuracy(meta: dict[str, Any]) -> None:
    assert meta["layout"] == "NCHW" and meta["color"] == "RGB"
    assert meta["mean"] == [0.485, 0.456, 0.406] and meta["std"] == [0.229, 0.224, 0.225]
    assert meta["heldout_accuracy"] >= 0.95
    # Measured with onnxcam's own Grad-CAM -> cam_to_boxes -> box_iou pipeline by the build script.
    assert "onnxcam.GradCAM" in meta["localisation_method"]
    for split in ("demo", "heldout"):
        assert meta["gradcam_localisation"][split]["iou_ge_0.5"] >= 0.8
        assert meta["gradcam_localisation"][split]["argmax_inside"] >= 0.9
