"""Input contracts beyond one float RGB image: 1- and 4-channel inputs, uint8 and float16 inputs,
extra fixed inputs (``extra_inputs=``, CLI ``--input NAME=VALUE``). Each model is a hand-built
graph whose answer is known from the plain float model with the same weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from graphs import residual_net, save
from onnx import TensorProto, helper, numpy_helper

import onnxcam
from onnxcam.errors import UnsupportedModelError
from onnxcam.image import get_preset, preprocess

LAYER = "e"


def photo(h: int = 8, w: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def with_channels(c: int) -> onnx.ModelProto:
    """residual_net taking ``c`` input channels (its first conv widened or narrowed)."""
    m = residual_net()
    w1 = next(i for i in m.graph.initializer if i.name == "w1")
    arr = np.random.default_rng(5).normal(0, 0.5, (6, c, 3, 3)).astype(np.float32)
    w1.CopyFrom(numpy_helper.from_array(arr, "w1"))
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_value = c
    return m


def with_input_type(elem: int) -> onnx.ModelProto:
    """residual_net behind a Cast from an ``elem`` input (uint8 pixels, float16 values)."""
    m = residual_net()
    m.graph.input[0].name = "pixels"
    m.graph.input[0].type.tensor_type.elem_type = elem
    m.graph.node.insert(0, helper.make_node("Cast", ["pixels"], ["x"], to=TensorProto.FLOAT, name="cast"))
    return m


def with_scale_input() -> onnx.ModelProto:
    """residual_net whose logits are multiplied by a second input ``s`` of shape (N, 1)."""
    m = residual_net()
    m.graph.input.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", 1]))
    y = next(n for n in m.graph.node if n.name == "fc")
    y.output[0] = "y0"
    m.graph.node.append(helper.make_node("Mul", ["y0", "s"], ["y"], name="scale"))
    return m


@pytest.mark.parametrize("channels", [1, 4])
def test_preprocess_makes_the_models_channel_count(channels: int, tmp_path: Path) -> None:
    model = onnxcam.load(save(with_channels(channels), tmp_path / "m.onnx"))
    assert model.input.channels == channels
    img = photo()
    pp = get_preset("unit", model.input.size, model.input.layout, channels=channels)
    x = preprocess([img], pp)
    assert x.shape == (1, channels, 8, 8)
    rgb = img.astype(np.float32) / 255
    if channels == 1:
        np.testing.assert_allclose(x[0, 0], rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32), atol=1e-6)
    else:
        np.testing.assert_allclose(x[0, :3], rgb.transpose(2, 0, 1), atol=1e-6)
        np.testing.assert_allclose(x[0, 3], 1.0)
    g = model.gradients(x, LAYER)
    assert np.abs(g.gradients[LAYER]).max() > 0
    # the CLI builds the same preprocessing from the model
    from onnxcam_cli.parsing import preprocessing

    assert preprocessing(model, "unit", "", "", False).channels == channels


def test_gray_photo_matches_the_gray_conversion_by_hand() -> None:
    img = photo(16, 16, seed=3)
    pp = get_preset("imagenet", (16, 16), "NHWC", channels=1)
    x = preprocess([img], pp)
    gray = img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    np.testing.assert_allclose(x[0, ..., 0], (gray / 255 - 0.485) / 0.229, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("elem", [TensorProto.UINT8, TensorProto.FLOAT16])
def test_uint8_and_float16_inputs(elem: int, tmp_path: Path) -> None:
    plain = onnxcam.load(save(residual_net(), tmp_path / "plain.onnx"))
    typed = onnxcam.load(save(with_input_type(elem), tmp_path / "typed.onnx"))
    pixels = np.random.default_rng(2).integers(0, 256, (2, 3, 8, 8)).astype(np.float32)
    got = typed.gradients(pixels, LAYER)
    ref = plain.gradients(pixels, LAYER)  # pixel values are exact in uint8 and float16 alike
    np.testing.assert_allclose(got.gradients[LAYER], ref.gradients[LAYER], rtol=1e-6, atol=1e-9)
    if elem == TensorProto.UINT8:
        # float values are rounded and clipped to the type's range, never wrapped around
        out = typed.forward(np.full((1, 3, 8, 8), 300.4, dtype=np.float32))
        np.testing.assert_allclose(out[0], plain.forward(np.full((1, 3, 8, 8), 255.0, dtype=np.float32))[0],
                                   rtol=1e-6)


def test_extra_inputs_are_fixed_for_every_image(tmp_path: Path) -> None:
    path = save(with_scale_input(), tmp_path / "two.onnx")
    with pytest.raises(UnsupportedModelError, match="extra_inputs"):
        onnxcam.load(path)
    plain = onnxcam.load(save(residual_net(), tmp_path / "plain.onnx"))
    model = onnxcam.load(path, extra_inputs={"s": [2.0]})
    x = np.random.default_rng(4).normal(0, 1, (3, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(model.forward(x)[0], 2 * plain.forward(x)[0], rtol=1e-6)
    got = model.gradients(x, LAYER, targets=1)
    ref = plain.gradients(x, LAYER, targets=1)
    np.testing.assert_allclose(got.gradients[LAYER], 2 * ref.gradients[LAYER], rtol=1e-6, atol=1e-9)
    # a batch of another size runs too: the value follows the image batch
    assert model.forward(x[:1])[0].shape == (1, 4)
    assert path.read_bytes() == save(with_scale_input(), tmp_path / "again.onnx").read_bytes()


def test_cli_input_option(tmp_path: Path) -> None:
    path = save(with_scale_input(), tmp_path / "two.onnx")
    img = tmp_path / "img.png"
    cv2.imwrite(str(img), photo())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "onnxcam_cli.main", "explain", str(path), str(img), "--out", str(tmp_path / "o"),
           "--input", "s=2", "-q"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["images"][0]["explanations"][0]["method"] == "gradcam"
    bad = subprocess.run(cmd + ["--input", "nope=1"], capture_output=True, text=True, env=env)
    assert bad.returncode != 0 and "nope" in bad.stderr + bad.stdout


def test_float16_softmax_output(tmp_path: Path) -> None:
    """Logits cast to float16, then Softmax: the seed goes in as float16, the gradient is the plain model's."""
    m = residual_net()
    m.graph.node.append(helper.make_node("Cast", ["y"], ["y16"], to=TensorProto.FLOAT16, name="to16"))
    m.graph.node.append(helper.make_node("Softmax", ["y16"], ["p"], axis=1, name="softmax"))
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info("p", TensorProto.FLOAT16, ["N", 4]))
    half = onnxcam.load(save(m, tmp_path / "half.onnx"))
    plain = onnxcam.load(save(residual_net(), tmp_path / "plain.onnx"))
    x = np.random.default_rng(6).normal(0, 1, (2, 3, 8, 8)).astype(np.float32)
    got = half.gradients(x, LAYER, targets=2)
    ref = plain.gradients(x, LAYER, targets=2)
    np.testing.assert_allclose(got.gradients[LAYER], ref.gradients[LAYER], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(got.scores, ref.scores, rtol=1e-3)
