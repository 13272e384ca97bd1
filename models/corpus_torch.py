"""PyTorch exports for the corpus of real-world export styles: zoo architectures at other opsets,
a classifier exported with its Softmax, and a grayscale CTC text recognizer with a ``(T, N, C)`` output.

Weights are the zoo's seeded ones (``models.weights.seeded``): the torch module each spec builds
is the one exported, so tests can compare against autograd on the same numbers.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from models.export import finalize
from models.layermatch import rel_err
from models.weights import calibration_batch
from models.zoo import ZOO, ModelSpec

PARITY_TOL = 1e-4


class WithActivation(nn.Module):
    """``net`` followed by a final ``Softmax`` / ``LogSoftmax`` / ``Sigmoid`` over the class axis."""

    def __init__(self, net: nn.Module, activation: str) -> None:
        super().__init__()
        self.net = net
        self.act = {"softmax": nn.Softmax(dim=1), "log_softmax": nn.LogSoftmax(dim=1), "sigmoid": nn.Sigmoid()}[
            activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.net(x))


class CRNNGray(nn.Module):
    """A grayscale CTC recognizer: (N, 1, 32, 128) -> log-probabilities (T=32, N, 12), time-major."""

    def __init__(self, num_classes: int = 12) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),        # 16x64
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d((2, 1)),  # 8x64
            nn.Conv2d(32, 48, 3, padding=1), nn.BatchNorm2d(48), nn.ReLU(), nn.MaxPool2d((2, 2)),  # 4x32
            nn.Conv2d(48, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        )  # fmt: skip
        self.pool = nn.AvgPool2d((4, 1))
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(self.features(x)).squeeze(2)  # (N, 64, T)
        y = y.permute(2, 0, 1)  # (T, N, 64): the layout CTC losses take
        return self.fc(y).log_softmax(2)


def export_at(opset: int, spec: ModelSpec, path: Path, deps: Mapping[str, Path]) -> None:
    """Export ``spec.factory()`` at ``opset`` with the legacy exporter; check parity with torch."""
    module = spec.factory().eval()
    batch = 2 if spec.dynamic_batch else 1
    x = calibration_batch(spec.input_shape, spec.layout, seed=0, batch=batch)
    out_axis = int(spec.extra.get("batch_axis", 0))  # type: ignore[call-overload]
    axes = {spec.input_name: {0: "batch"}, spec.output_name: {out_axis: "batch"}} if spec.dynamic_batch else None
    tmp = path.with_suffix(".export.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(tmp), dynamo=False, opset_version=opset, input_names=[spec.input_name],
                          output_names=[spec.output_name], dynamic_axes=axes)
    model = onnx.load(str(tmp))
    tmp.unlink()
    finalize(model, path, f"onnxcam corpus model {spec.name}: {spec.description}")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {spec.input_name: x.numpy()})
    with torch.no_grad():
        ref = module(x).numpy()
    err = rel_err(np.asarray(got), ref)
    if err > PARITY_TOL:
        raise RuntimeError(f"{path}: onnxruntime differs from torch by {err:.2e} (relative) > {PARITY_TOL}")


def _variant(base: str, opset: int, name: str | None = None, activation: str | None = None) -> ModelSpec:
    spec = ZOO[base]
    factory = spec.factory
    if activation is not None:
        def factory(f=spec.factory, a=activation):  # type: ignore[no-untyped-def]
            return WithActivation(f(), a).eval()
    return replace(spec, name=name or f"{base}_op{opset}", factory=factory, default=False,
                   description=f"{spec.description}; opset {opset}" + (f", ends in {activation}" if activation else ""),
                   make_onnx=partial(export_at, opset), extra={"opset": opset, "activation": activation})


def crnn_gray() -> nn.Module:
    """``CRNNGray`` with seeded weights (the zoo's calibration expects (N, K) class scores)."""
    with torch.random.fork_rng():
        torch.manual_seed(121)
        return CRNNGray().eval()


CRNN_SPEC = ModelSpec(
    name="crnn_gray_op17", input_shape=(1, 32, 128), layout="NCHW", dynamic_batch=True, num_classes=12,
    factory=crnn_gray, layers={}, default=False,
    description="grayscale CTC recognizer, (T, N, C) LogSoftmax output; opset 17", input_name="x",
    output_name="log_probs", make_onnx=partial(export_at, 17), extra={"opset": 17, "batch_axis": 1},
)  # fmt: skip

SPECS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        _variant("resnet_small", 11),
        _variant("vgg_maxpool", 11),
        _variant("mobilenet_se", 13),
        _variant("shufflenet_small", 13),
        _variant("densenet_small", 20),
        _variant("silu_net", 20),
        _variant("resnet_small", 17, "resnet_small_softmax", "softmax"),
        _variant("mobilenet_se", 11, "mobilenet_se_softmax_op11", "softmax"),
        _variant("segnet_small", 13, "segnet_small_sigmoid_op13", "sigmoid"),
        CRNN_SPEC,
    )
}
