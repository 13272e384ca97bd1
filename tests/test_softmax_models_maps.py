"""Softmax-output models give real maps: the PP-OCR text-direction classifier (Paddle, real weights,
Softmax output, opset 11) classifies a rendered text line and its upside-down copy correctly, and
its Grad-CAM / Grad-CAM++ / LayerCAM maps are non-blank and equal the maps of the same model with
the Softmax cut off (what Grad-CAM differentiates is the logit either way)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

import onnxcam
from onnxcam.image import get_preset, preprocess


def text_lines() -> list[np.ndarray]:
    """A dark text line on white, 48 x 192 RGB, upright and rotated by 180 degrees."""
    img = np.full((48, 192, 3), 255, dtype=np.uint8)
    cv2.putText(img, "Hello 2024", (6, 34), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (20, 20, 20), 2, cv2.LINE_AA)
    return [img, np.ascontiguousarray(img[::-1, ::-1])]


def without_softmax(path: Path, out: Path) -> Path:
    """The model with its final Softmax (and the Identity after it) cut off: it outputs the logits."""
    m = onnx.load(str(path))
    g = m.graph
    producers = {o: n for n in g.node for o in n.output}
    node = producers[g.output[0].name]
    dropped = []
    while node.op_type in ("Identity", "Softmax"):
        dropped.append(node)
        node = producers[node.input[0]]
    logits = dropped[-1].input[0]
    keep = [n for n in g.node if all(n is not d for d in dropped)]
    del g.node[:]
    g.node.extend(keep)
    del g.output[:]
    g.output.append(onnx.helper.make_tensor_value_info(logits, onnx.TensorProto.FLOAT, ["batch", 2]))
    onnx.save(m, str(out))
    return out


@pytest.fixture(scope="module")
def cls_models(build_model, tmp_path_factory: pytest.TempPathFactory) -> tuple[onnxcam.Model, onnxcam.Model]:
    path = build_model("paddle_ocr_cls")
    cut = without_softmax(path, tmp_path_factory.mktemp("cut") / "cls_logits.onnx")
    return onnxcam.load(path, input_size=(48, 192)), onnxcam.load(cut, input_size=(48, 192))


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam"])
def test_paddle_classifier_maps_are_those_of_its_logits(method: str, cls_models) -> None:
    model, logits_model = cls_models
    assert model.task.logits_output is not None and logits_model.task.logits_output is None
    pp = get_preset("unit", model.input.size, model.input.layout, mean=(0.5,) * 3, std=(0.5,) * 3)
    x = preprocess(text_lines(), pp)
    probs = model.forward(x)[0]
    assert probs.argmax(axis=1).tolist() == [0, 1], probs  # upright -> 0 degrees, flipped -> 180
    cam = onnxcam.get_method(method)(model, "auto")
    ref = onnxcam.get_method(method)(logits_model, "auto")
    e, r = cam.explain(x), ref.explain(x)
    for i in range(2):
        assert e.maps[i].max() > 0 and np.ptp(e.maps[i]) > 0.1, f"blank {method} map on image {i}"
    np.testing.assert_allclose(e.maps, r.maps, atol=1e-5)
    np.testing.assert_allclose(e.scores, r.scores, rtol=1e-5)
