"""Behaviour of every CAM class end to end: batch invariance, blank inputs, and localisation on real
photos with EfficientNet-Lite0's ImageNet weights."""

from __future__ import annotations

import warnings
from functools import cache
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxcam
from onnxcam.errors import OnnxCamWarning
from onnxcam.graph.protos import make_model
from onnxcam.method_specs import applies
from onnxcam.registry import spec_of

# Keyword arguments that keep the re-running methods cheap (fewer channels / samples).
CHEAP: dict[str, dict[str, Any]] = {
    "smoothgradcam++": {"num_samples": 2},
    "sscam": {"num_samples": 2},
}


# Every method these CNNs can run, read from the specs: those requiring something (attention) are
# left out here; their one-line refusal on a CNN is tested in test_robust_properties.
CNN_METHODS = sorted(name for name in onnxcam.METHODS if not spec_of(name).requires)


def _applicable(model: onnxcam.Model, method: str) -> type[onnxcam.BaseCAM]:
    """The class of ``method``, which must apply to ``model`` (a method without requirements applies
    to every model)."""
    cls = onnxcam.METHODS[method]
    assert applies(cls, model), f"{method} refuses {model.name}, though its spec requires nothing"
    return cls


def _explain(model: onnxcam.Model, method: str, layer: str, x: np.ndarray, targets: Any, **kw: Any) -> np.ndarray:
    cls = _applicable(model, method)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OnnxCamWarning)
        return cls(model, layer=layer, **{**CHEAP.get(method, {}), **kw})(x, targets)


# ------------------------------------------------------------------ batch invariance

BATCH_IMAGES = 16


@cache
def _resnet() -> tuple[onnxcam.Model, np.ndarray, dict[str, str]]:
    from models.build import MODELS, build
    from models.weights import calibration_batch

    spec = MODELS["resnet_small"]
    x = calibration_batch(spec.input_shape, spec.layout, seed=77, batch=BATCH_IMAGES).numpy()
    layers = {role: tensor for role, (_, tensor) in spec.layers.items()}
    return onnxcam.load(build("resnet_small"), device="cpu"), x, layers


def _layer_for(method: str, layers: dict[str, str]) -> str:
    # The channel-by-channel methods run at "mid" (32 channels) to stay fast.
    return layers["mid"] if method in ("scorecam", "sscam", "ablationcam") else layers["last"]


@cache
def _one_by_one(method: str) -> np.ndarray:
    model, x, layers = _resnet()
    targets = [i % 10 for i in range(BATCH_IMAGES)]  # fixed, so the argmax cannot differ by batch
    return np.concatenate([
        _explain(model, method, _layer_for(method, layers), x[i : i + 1], [targets[i]], batch_size=1)
        for i in range(BATCH_IMAGES)
    ])  # fmt: skip


@pytest.mark.parametrize("n", [1, 3, 16])
@pytest.mark.parametrize("method", CNN_METHODS)
def test_batched_maps_equal_one_by_one(method: str, n: int) -> None:
    model, x, layers = _resnet()
    targets = [i % 10 for i in range(n)]
    # batch_size 4 makes the internal chunks straddle images for n = 16 and split n = 3 unevenly.
    got = _explain(model, method, _layer_for(method, layers), x[:n], targets, batch_size=4)
    expected = _one_by_one(method)[:n]
    assert got.shape == expected.shape == (n, 64, 64)
    assert np.abs(got - expected).max() <= 1e-5
    assert expected.max() > 0.5  # real maps, not blanks agreeing


# ------------------------------------------------------------------ blank activations / gradients


def _tiny_model(path: str, conv_bias: float, zero_class_row: bool) -> str:
    """(N, 3, 16, 16) -> Conv 3x3 (4 ch, bias ``conv_bias``) -> Relu -> GAP -> Flatten -> Gemm (3 classes).

    A large negative conv bias makes the Relu output all zero for small inputs; a zero Gemm row
    makes class 0's score independent of the activations (all-zero gradients).
    """
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((4, 3, 3, 3)) * 0.1).astype(np.float32)
    b = np.full(4, conv_bias, np.float32)
    fc = rng.standard_normal((3, 4)).astype(np.float32)
    if zero_class_row:
        fc[0] = 0
    inits = [numpy_helper.from_array(a, n) for a, n in ((w, "w"), (b, "b"), (fc, "fc"), (np.ones(3, np.float32), "fb"))]
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["act"]),
        helper.make_node("GlobalAveragePool", ["act"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc", "fb"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        inits,
    )  # fmt: skip
    onnx.save(make_model(graph, [helper.make_opsetid("", 17)]), path)
    return path


GRADIENT_METHODS = sorted(name for name in CNN_METHODS if onnxcam.METHODS[name].uses_gradients) + ["cam"]


def _assert_blank_with_warning(model: onnxcam.Model, method: str, x: np.ndarray, targets: Any) -> None:
    cls = _applicable(model, method)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        maps = cls(model, layer="act", **CHEAP.get(method, {}))(x, targets)
    assert maps.shape == (len(x), 16, 16)
    assert np.all(np.isfinite(maps)), f"{method} gave non-finite values"
    assert np.all(maps == 0), f"{method}: max {maps.max()}"
    assert any(issubclass(w.category, OnnxCamWarning) for w in caught), f"{method} did not warn"
    assert not any(issubclass(w.category, RuntimeWarning) for w in caught), [str(w.message) for w in caught]


@pytest.mark.parametrize("method", CNN_METHODS)
def test_all_zero_activations_give_zero_maps_and_a_warning(method: str, tmp_path: Any) -> None:
    model = onnxcam.load(_tiny_model(str(tmp_path / "dead.onnx"), -10.0, False), device="cpu")
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)
    assert not np.any(model.run_body(x, ("act",))[0]["act"])
    _assert_blank_with_warning(model, method, x, [1, 2])


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_all_zero_gradients_give_zero_maps_and_a_warning(method: str, tmp_path: Any) -> None:
    model = onnxcam.load(_tiny_model(str(tmp_path / "flat.onnx"), 0.5, True), device="cpu")
    x = np.random.default_rng(2).uniform(0, 1, (2, 3, 16, 16)).astype(np.float32)
    assert np.all(model.run_body(x, ("act",))[0]["act"] > 0)
    _assert_blank_with_warning(model, method, x, 0)


# ------------------------------------------------------------------ localisation on real photos

# Hand-set boxes (x0, y0, x1, y1) on the 224x224 centre crop, set by viewing the photos: the cat's
# head (all but the background strip on the right) and the espresso cup with its rim (not the
# saucer or spoon below it).
PHOTOS = {"chelsea": (285, (10, 15, 200, 215)), "coffee": (967, (35, 0, 185, 125))}
EFFNET_KW: dict[str, dict[str, Any]] = {
    "scorecam": {"max_channels": 24, "batch_size": 48},
    "sscam": {"max_channels": 24, "num_samples": 2, "batch_size": 48},
}


@cache
def _effnet() -> tuple[onnxcam.Model, np.ndarray, str]:
    pytest.importorskip("skimage")
    from models.build import MODELS, build
    from models.efficientnet import photo, preprocess

    x = np.concatenate([preprocess(photo(name)) for name in PHOTOS])
    return onnxcam.load(build("efficientnet_lite0"), device="cpu"), x, MODELS["efficientnet_lite0"].layers["last"][1]


@pytest.mark.parametrize("method", CNN_METHODS)
def test_efficientnet_map_peaks_on_the_object(method: str) -> None:
    model, x, layer = _effnet()
    classes = [c for c, _ in PHOTOS.values()]
    assert list(model.forward(x)[0].argmax(axis=1)) == classes
    maps = _explain(model, method, layer, x, classes, **EFFNET_KW.get(method, {}))
    for (name, (_, (x0, y0, x1, y1))), m in zip(PHOTOS.items(), maps, strict=True):
        y, xx = np.unravel_index(int(m.argmax()), m.shape)
        assert x0 <= xx <= x1 and y0 <= y <= y1, f"{method} on {name}: max at (x={xx}, y={y})"
