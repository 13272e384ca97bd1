"""TensorFlow / Keras exports (tf2onnx), random weights: NHWC inputs, a final Softmax, TF's op style.

Keras applications are built with ``weights=None`` (nothing is downloaded) under a fixed seed, at
small inputs so the export and the tests stay quick. TensorFlow is imported only while building.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from torch import nn

from models.export import finalize
from models.layermatch import rel_err
from models.zoo import ModelSpec

PARITY_TOL = 1e-4


def _mobilenet_v2(tf: Any) -> Any:
    return tf.keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None, classes=10)


def _resnet50(tf: Any) -> Any:
    return tf.keras.applications.ResNet50(input_shape=(64, 64, 3), weights=None, classes=10)


def _small_cnn(tf: Any) -> Any:
    layers = tf.keras.layers
    inp = tf.keras.Input((64, 64, 3))
    x = layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(inp)
    x = layers.MaxPooling2D(2)(x)
    y = layers.SeparableConv2D(32, 3, padding="same")(x)
    y = layers.BatchNormalization()(y)
    y = layers.Activation("swish")(y)
    x = layers.Concatenate()([layers.Conv2D(32, 1)(x), y])
    x = layers.Conv2D(48, 3, padding="same", activation="elu")(x)
    x = layers.AveragePooling2D(2)(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(10, activation="softmax")(x)
    return tf.keras.Model(inp, x)


BUILDERS: dict[str, Callable[[Any], Any]] = {
    "keras_mobilenetv2": _mobilenet_v2,
    "keras_resnet50": _resnet50,
    "keras_small_cnn": _small_cnn,
}


def export_keras(spec: ModelSpec, path: Path, deps: Mapping[str, Path]) -> None:
    """Build the spec's Keras model under seed 0, convert with tf2onnx at opset 13, check parity."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    import tf2onnx

    tf.keras.utils.set_random_seed(0)
    keras_model = BUILDERS[spec.name](tf)
    h, w, c = spec.input_shape
    signature = (tf.TensorSpec((None, h, w, c), tf.float32, name=spec.input_name),)
    proto, _ = tf2onnx.convert.from_keras(keras_model, input_signature=signature, opset=13)
    finalize(proto, path, f"onnxcam corpus model {spec.name}: {spec.description}")
    x = np.random.default_rng(0).uniform(-1, 1, (2, h, w, c)).astype(np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {spec.input_name: x})
    ref = keras_model(x, training=False).numpy()
    err = rel_err(np.asarray(got), ref)
    if err > PARITY_TOL:
        raise RuntimeError(f"{path}: onnxruntime differs from Keras by {err:.2e} (relative) > {PARITY_TOL}")
    onnx.checker.check_model(str(path))


def no_torch_module() -> nn.Module:
    raise RuntimeError("a Keras export has no torch module: compare it against onnx2torch or float64 references")


def _spec(name: str, shape: tuple[int, int, int], description: str) -> ModelSpec:
    return ModelSpec(name=name, input_shape=shape, layout="NHWC", dynamic_batch=True, num_classes=10,
                     factory=no_torch_module, layers={}, description=description, default=False,
                     input_name="input", output_name="", make_onnx=export_keras)


SPECS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        _spec("keras_mobilenetv2", (96, 96, 3), "Keras MobileNetV2 alpha 0.35 (random weights), Softmax, tf2onnx"),
        _spec("keras_resnet50", (64, 64, 3), "Keras ResNet50 (random weights), Softmax, tf2onnx"),
        _spec("keras_small_cnn", (64, 64, 3),
              "Keras CNN: SeparableConv, swish, elu, Concat, Max/AveragePool, Softmax (random weights), tf2onnx"),
    )
}
