"""The model zoo: one `ModelSpec` per ONNX model the tests, benchmarks and demo use.

Each spec's ``factory`` rebuilds the torch module with the same seeded weights on every call,
so tests can compare onnxcam on the ONNX file against torch autograd on identical weights.
``layers`` maps a role ("last", "mid", ...) to (torch module path for ``model.get_submodule``,
ONNX tensor name holding exactly that module's output); the names were found by matching values
(``models.layermatch``) and are re-checked by ``tests/test_models_zoo.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

from torch import nn

from models import archs
from models.weights import seeded

Layout = Literal["NCHW", "NHWC"]
# A custom builder gets the spec, the output path and the built files of ``requires``.
MakeOnnx = Callable[["ModelSpec", Path, Mapping[str, Path]], None]


@dataclass(frozen=True)
class ModelSpec:
    """What a test needs to know about one zoo model.

    ``input_shape`` is per sample: (C, H, W) for NCHW, (H, W, C) for NHWC. The ONNX input is
    ``input_name`` with a leading batch axis ("batch" when ``dynamic_batch``, else 1).
    """

    name: str
    input_shape: tuple[int, int, int]
    layout: Layout
    dynamic_batch: bool
    num_classes: int
    factory: Callable[[], nn.Module]
    layers: Mapping[str, tuple[str, str]]
    task: Literal["classification", "segmentation"] = "classification"
    description: str = ""
    default: bool = True  # built by ``python -m models.build`` with no names
    input_name: str = "input"
    output_name: str = "logits"
    mean: tuple[float, float, float] | None = None  # per-channel preprocessing, 0..1 RGB scale
    std: tuple[float, float, float] | None = None
    make_onnx: MakeOnnx | None = None  # None: export ``factory()`` with the legacy exporter
    requires: tuple[str, ...] = ()
    extra: Mapping[str, object] = field(default_factory=dict)

    def batch_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        """The ONNX input shape for ``batch`` samples, `(N, C, H, W)` or `(N, H, W, C)`."""
        return (batch, *self.input_shape)

    @property
    def spatial(self) -> tuple[int, int]:
        """Input (H, W)."""
        s = self.input_shape
        return (s[1], s[2]) if self.layout == "NCHW" else (s[0], s[1])


def _spec(
    name: str,
    make: Callable[[], nn.Module],
    head: str,
    seed: int,
    layers: Mapping[str, tuple[str, str]],
    *,
    shape: tuple[int, int, int] = (3, 64, 64),
    layout: Layout = "NCHW",
    dynamic_batch: bool = True,
    num_classes: int = 10,
    **kw: object,
) -> ModelSpec:
    factory = partial(seeded, make, head, shape, layout, seed)
    return ModelSpec(
        name=name, input_shape=shape, layout=layout, dynamic_batch=dynamic_batch,
        num_classes=num_classes, factory=factory, layers=layers, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


ZOO: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        _spec(
            "resnet_small",
            archs.ResNetSmall,
            "fc",
            101,
            {
                "last": ("layer3.1", "/layer3/layer3.1/relu2/Relu_output_0"),
                "mid": ("layer2.0.relu1", "/layer2/layer2.0/relu1/Relu_output_0"),
                "early": ("layer1.1", "/layer1/layer1.1/relu2/Relu_output_0"),
            },
            description="stem conv + MaxPool, basic residual blocks (Add), GAP -> Linear",
        ),
        _spec(
            "mobilenet_se",
            archs.MobileNetSE,
            "classifier.2",
            102,
            {
                "last": ("head.1", "/head/head.1/HardSwish_output_0"),
                "mid": ("blocks.3.se", "/blocks/blocks.3/se/Mul_output_0"),
                "dw": ("blocks.2.dw.1", "/blocks/blocks.2/dw/dw.1/HardSwish_output_0"),
            },
            description="MobileNetV3-style: depthwise conv, squeeze-excite, HardSwish/HardSigmoid",
        ),
        _spec(
            "densenet_small",
            archs.DenseNetSmall,
            "fc",
            103,
            {
                "last": ("final_relu", "/final_relu/Relu_output_0"),
                "mid": ("block2.1", "/block2/block2.1/Concat_output_0"),
            },
            description="dense blocks (Concat), transition AvgPool, GAP -> Linear",
        ),
        _spec(
            "vgg_maxpool",
            archs.VGGMaxPool,
            "classifier.2",
            104,
            {
                "last": ("features.13", "/features/features.13/Relu_output_0"),
                "mid": ("features.8", "/features/features.8/Relu_output_0"),
            },
            dynamic_batch=False,
            description="plain convs, MaxPool after the last conv stage, flatten -> MLP; fixed batch 1",
        ),
        _spec(
            "convnext_small",
            archs.ConvNeXtSmall,
            "head",
            105,
            {
                "last": ("stages.1", "/stages/stages.1/stages.1.3/Add_output_0"),
                "mid": ("stages.1.2.dwconv", "/stages/stages.1/stages.1.2/dwconv/Conv_output_0"),
                "mid_nhwc": ("stages.1.2.act", "/stages/stages.1/stages.1.2/act/Mul_1_output_0"),
            },
            description="ConvNeXt blocks: dw 7x7, LayerNorm (channels-last + channels-first), GELU, MLP",
        ),
        _spec(
            "shufflenet_small",
            archs.ShuffleNetSmall,
            "fc",
            106,
            {
                "last": ("conv5.1", "/conv5/conv5.1/Relu_output_0"),
                "mid": ("stage2.1.shuffle", "/stage2/stage2.1/shuffle/Reshape_1_output_0"),
            },
            description="ShuffleNetV2-style: chunk -> Split, channel shuffle (Reshape/Transpose)",
        ),
        _spec(
            "silu_net",
            archs.SiLUNet,
            "fc",
            107,
            {
                "last": ("stage3.2", "/stage3/stage3.2/act/Mul_output_0"),
                "mid": ("stage2.2.conv1.1", "/stage2/stage2.2/conv1/conv1.1/Mul_output_0"),
            },
            description="SiLU (Sigmoid*Mul) residual blocks with AvgPool downsampling",
        ),
        _spec(
            "nhwc_net",
            archs.NHWCNet,
            "fc",
            108,
            {
                "last": ("block2", "/block2/relu2/Relu_output_0"),
                "mid": ("block1.relu1", "/block1/relu1/Relu_output_0"),
            },
            shape=(64, 64, 3),
            layout="NHWC",
            description="TensorFlow-like NHWC input (N, 64, 64, 3), transposed to NCHW inside",
        ),
        _spec(
            "segnet_small",
            archs.SegNetSmall,
            "classifier",
            109,
            {
                "last": ("dec.1", "/dec/dec.1/Relu_output_0"),
                "mid": ("enc2.3", "/enc2/enc2.3/Relu_output_0"),
            },
            num_classes=5,
            task="segmentation",
            description="segmentation (N, 5, 64, 64): ConvTranspose + skip Concat + bilinear Resize",
        ),
        _spec(
            "resnet50",
            archs.ResNet50,
            "fc",
            110,
            {
                "last": ("layer4.2", "/layer4/layer4.2/relu3/Relu_output_0"),
                "mid": ("layer3.0.relu2", "/layer3/layer3.0/relu2/Relu_output_0"),
            },
            shape=(3, 224, 224),
            num_classes=1000,
            default=False,
            description="ResNet-50 bottleneck layout, seeded random weights (benchmarks only)",
        ),
    )
}
