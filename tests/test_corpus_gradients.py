"""The corpus of real-world exports: PyTorch at opsets 11-20, Paddle (the PP-OCR models inside the
rapidocr wheel, real weights), Keras via tf2onnx, the QDQ / dynamic / QOperator int8 copies of
EfficientNet-Lite0. On each, at the auto layer and a middle layer, the
channel sums of gradients and of activations x gradients onnxcam computes agree with an independent
float64 reference (torch autograd on onnx2torch's conversion of the head, or float64 central
differences on onnx's reference evaluator where it does not convert): median over photos <= 1e-4.
"""

from __future__ import annotations

import numpy as np
import pytest
from corpus_reference import channel_sums, finite_reference, rel_errors, torch_reference

import onnxcam
from onnxcam.image import get_preset, preprocess
from onnxcam.views import FeatureView

TOL = 1e-4
PHOTOS = ("astronaut", "chelsea", "coffee")
TORCH, DIFFS = "onnx2torch", "float64 differences"

# name -> (input size for dynamic models, preset, the reference). Which reference a model gets is
# fixed here, not by what happens to convert: onnx2torch (pinned in the test extra) has no converter
# for AveragePool-19 and Reshape-19, so the opset-20 exports get float64 differences.
CORPUS: dict[str, tuple[tuple[int, int] | None, str, str]] = {
    "resnet_small_op11": (None, "imagenet", TORCH),
    "vgg_maxpool_op11": (None, "imagenet", TORCH),
    "mobilenet_se_op13": (None, "imagenet", TORCH),
    "shufflenet_small_op13": (None, "imagenet", TORCH),
    "densenet_small_op20": (None, "imagenet", DIFFS),
    "silu_net_op20": (None, "imagenet", DIFFS),
    "resnet_small_softmax": (None, "imagenet", TORCH),
    "mobilenet_se_softmax_op11": (None, "imagenet", TORCH),
    "segnet_small_sigmoid_op13": (None, "imagenet", TORCH),
    "crnn_gray_op17": (None, "unit", TORCH),
    "paddle_ocr_cls": ((48, 192), "paddle", TORCH),
    "paddle_ocr_det": ((96, 96), "paddle", TORCH),
    "paddle_ocr_rec": ((48, 160), "paddle", TORCH),
    "keras_mobilenetv2": (None, "tf", TORCH),
    "keras_small_cnn": (None, "tf", TORCH),
    "keras_resnet50": (None, "tf", TORCH),
    # int8 copies (onnxruntime.quantization) of EfficientNet-Lite0: the reference differentiates the
    # clipped straight-through surrogate, the function the int8 gradients are exact for.
    "efficientnet_lite0_int8": (None, "imagenet", TORCH),
    "efficientnet_lite0_int8_dyn": (None, "imagenet", TORCH),
    "efficientnet_lite0_int8_qop": (None, "imagenet", TORCH),
}


def photos() -> list[np.ndarray]:
    from skimage import data

    return [np.ascontiguousarray(getattr(data, p)()[..., :3]) for p in PHOTOS]


def photo_batch(model: onnxcam.Model, preset: str) -> np.ndarray:
    if preset == "paddle":
        pp = get_preset("unit", model.input.size, model.input.layout, mean=(0.5,) * 3, std=(0.5,) * 3,
                        channels=model.input.channels)
    else:
        pp = get_preset(preset, model.input.size, model.input.layout, channels=model.input.channels)
    return preprocess(photos(), pp)


def auto_layer(model: onnxcam.Model) -> str:
    """The auto layer, which is never a model output nor what only activates or biases into one
    (issue 13 item 9: a DBNet's ConvTranspose + bias + Sigmoid map)."""
    auto = model.layer("auto").name
    sources = {o.source for o in model.explained.outputs} | set(model.outputs)
    assert auto not in sources, f"{model.name}: the auto layer {auto!r} is an output"
    return auto


def nchw_layers(model: onnxcam.Model) -> list:
    """The candidates that are NCHW tensors themselves (middle layers are picked among these)."""
    return [layer for layer in model.layers() if layer.view.is_identity]


def middle_layer(model: onnxcam.Model, auto: str) -> str:
    names = [layer.name for layer in nchw_layers(model)]
    middle = names[len(names) // 2]
    return middle if middle != auto else names[max(0, len(names) // 2 - 1)]


def view_of(model: onnxcam.Model, layer: str) -> FeatureView:
    """How CAM methods see ``layer`` (channel sums are taken over the map's positions: for a token
    tensor over tokens, not over its feature axis, where a LayerNorm makes gradient sums vanish)."""
    return model.layer(layer).view


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_channel_sums_match_float64_reference(name: str, build_model) -> None:
    # The Keras models need tensorflow (the test extra installs it): a missing one fails here, loudly.
    size, preset, reference = CORPUS[name]
    model = onnxcam.load(build_model(name), input_size=size)
    x = photo_batch(model, preset)
    auto = auto_layer(model)
    measured = {}
    for layer in (auto, middle_layer(model, auto)):
        g = model.gradients_at(x, [layer])
        assert g.source == "gradient graph", f"{name} {layer}: {g.source}"
        view = view_of(model, layer)
        acts = view.to_map(g.activations[layer])
        ours = channel_sums(acts, view.to_map(g.gradients[layer]))
        assert np.abs(ours[0]).max() > 0, f"{name} {layer}: all-zero gradients"
        if reference == TORCH:
            refs = channel_sums(acts, view.to_map(torch_reference(model, layer, x, g.targets)))
        else:
            refs = finite_reference(model, layer, x, g.targets, view)
        errs = [float(np.median(rel_errors(o, r))) for o, r in zip(ours, refs)]
        measured[layer] = errs
        assert max(errs) <= TOL, (name, layer, reference, errs)
    print(name, reference, measured)


def test_finite_reference_agrees_with_onnx2torch_on_a_paddle_head(build_model) -> None:
    """The two references agree where both run: on the Paddle classifier's last stage (BatchNormalization
    at opset 11 with ``momentum`` set, hard-swish, MaxPool-11, Softmax), one photo."""
    model = onnxcam.load(build_model("paddle_ocr_cls"), input_size=(48, 192))
    x = photo_batch(model, "paddle")[:1]
    layer = "conv2d_93.tmp_0"
    g = model.gradients_at(x, [layer])
    acts = g.activations[layer]
    by_torch = channel_sums(acts, torch_reference(model, layer, x, g.targets))
    by_diffs = finite_reference(model, layer, x, g.targets)
    errs = [float(rel_errors(d, t)[0]) for d, t in zip(by_diffs, by_torch)]
    print("finite differences vs onnx2torch:", errs)
    assert max(errs) <= 1e-6
