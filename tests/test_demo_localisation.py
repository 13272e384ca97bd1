"""The shipped demo model localises its objects through onnxcam's own Grad-CAM pipeline.

Uses only the files in ``onnxcam/data/demo`` (no torch): the README's first command shows these
maps, so they must land on the objects whose true boxes ``boxes.json`` records.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import onnxcam

DEMO = Path(__file__).resolve().parents[1] / "onnxcam" / "data" / "demo"
THRESHOLD = 0.2  # the CAM paper's rule: 20% of the map's max, largest connected component


@pytest.fixture(scope="module")
def meta() -> dict[str, Any]:
    return dict(json.loads((DEMO / "meta.json").read_text()))


@pytest.fixture(scope="module")
def truth() -> dict[str, dict[str, Any]]:
    return dict(json.loads((DEMO / "boxes.json").read_text()))


@pytest.fixture(scope="module")
def model(meta: dict[str, Any]) -> onnxcam.Model:
    return onnxcam.load(str(DEMO / meta["model"]), device="cpu")


@pytest.fixture(scope="module")
def maps(model: onnxcam.Model, meta: dict[str, Any], truth: dict[str, dict[str, Any]]) -> dict[str, np.ndarray]:
    """File name -> Grad-CAM map ``(H, W)`` for the predicted (top) class, as the product computes it."""
    names = sorted(truth)
    pp = onnxcam.get_preset("unit", model.input.size, model.input.layout, mean=meta["mean"], std=meta["std"])
    x = onnxcam.preprocess([onnxcam.load_image(DEMO / "images" / n) for n in names], pp)
    out = onnxcam.GradCAM(model, layer="auto")(x)
    assert out.shape == (len(names), *meta["input_size"])
    return dict(zip(names, out, strict=True))


def _box(entry: dict[str, Any]) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = (int(v) for v in entry["box"])
    return (x0, y0, x1, y1)


def test_auto_layer_is_the_cam_layer(model: onnxcam.Model, meta: dict[str, Any]) -> None:
    # layer="auto" must pick the last conv stage (the GAP input), not an earlier feature map.
    layer = model.layer("auto")
    assert layer.name == meta["cam_layer"]
    assert layer.spatial == tuple(meta["cam_layer_shape"][1:])


def test_cam_boxes_overlap_true_boxes(maps: dict[str, np.ndarray], truth: dict[str, dict[str, Any]]) -> None:
    ious = {}
    for name, cam in maps.items():
        box = onnxcam.cam_to_boxes(cam, THRESHOLD)
        ious[name] = onnxcam.box_iou(box, _box(truth[name])) if isinstance(box, tuple) else 0.0
    rate = float(np.mean([v >= 0.5 for v in ious.values()]))
    assert rate >= 0.8, f"CAM-box IoU >= 0.5 for only {rate:.0%} of demo images: {ious}"


def test_cam_peak_lies_inside_true_box(maps: dict[str, np.ndarray], truth: dict[str, dict[str, Any]]) -> None:
    inside = {}
    for name, cam in maps.items():
        y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
        x0, y0, x1, y1 = _box(truth[name])
        inside[name] = bool(x0 <= x < x1 and y0 <= y < y1)
    rate = float(np.mean(list(inside.values())))
    assert rate >= 0.9, f"map argmax inside the true box for only {rate:.0%} of demo images: {inside}"
