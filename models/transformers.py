"""Vision transformers and hybrids from timm (random seeded weights, ``pretrained=False``).

Small input sizes and few blocks keep CI fast; exactness does not need full size. Each spec's
``factory`` builds the timm module with the same weights on every call (``models.weights.seeded``).
timm imports torchvision names at import time; ``models.torchvision_stub`` stands in for them.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from torch import nn

from models.weights import seeded
from models.zoo import ModelSpec


def _timm() -> Any:
    from models.torchvision_stub import install

    install()
    import timm

    return timm


def unfused(model: nn.Module) -> nn.Module:
    """timm's attention modules with the explicit softmax path (same function as the fused kernel):
    hooks on ``attn_drop`` then see each block's attention matrix (the test reference of rollout)."""
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    return model


def vit_tiny() -> nn.Module:
    return unfused(_timm().create_model("vit_tiny_patch16_224", pretrained=False, img_size=112, depth=4,
                                        num_classes=10))


def vit_small_224() -> nn.Module:
    """Full ViT-S/16 at 224 (the benchmark's model)."""
    return unfused(_timm().create_model("vit_small_patch16_224", pretrained=False, num_classes=1000))


def deit_tiny_distilled() -> nn.Module:
    return unfused(_timm().create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=112, depth=4,
                                        num_classes=10))


def vit_registers() -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    _timm()
    return unfused(VisionTransformer(img_size=112, patch_size=16, embed_dim=192, depth=4, num_heads=3,
                                     reg_tokens=4, num_classes=10))


def swin_tiny() -> nn.Module:
    return unfused(_timm().create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=128,
                                        window_size=4, embed_dim=48, depths=(1, 1, 2, 1), num_classes=10))


def mobilevit_xxs() -> nn.Module:
    return unfused(_timm().create_model("mobilevit_xxs", pretrained=False, num_classes=10))


MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


def _spec(name: str, make: Callable[[], nn.Module], head: str, seed: int, size: int, layers: dict[str, tuple[str, str]],
          description: str, default: bool = False, num_classes: int = 10) -> ModelSpec:
    shape = (3, size, size)
    return ModelSpec(
        name=name, input_shape=shape, layout="NCHW", dynamic_batch=True, num_classes=num_classes,
        factory=partial(seeded, make, head, shape, "NCHW", seed), layers=layers, description=description,
        default=default, mean=MEAN, std=STD,
    )  # fmt: skip


# Not built by default (``python -m models.build`` with no names): tests/test_transformers.py builds
# the ones it uses on demand, and the suites that iterate over the default zoo expect CNN roles.
# "last": the input of the last block's first normalisation (the auto layer), as the torch module
# whose output it is and the ONNX tensor name; found by value (models.layermatch) and re-checked by
# tests/test_transformers_models.py.
SPECS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        _spec("vit_tiny", vit_tiny, "head", 201, 112,
              {"last": ("blocks.2", "/blocks/blocks.2/Add_1_output_0")},
              "ViT-Ti/16 at 112 (7x7 patches + class token), 4 blocks"),
        _spec("deit_tiny_distilled", deit_tiny_distilled, "head", 202, 112,
              {"last": ("blocks.2", "/blocks/blocks.2/Add_1_output_0")},
              "DeiT-Ti distilled at 112: class + distillation tokens, 4 blocks"),
        _spec("vit_registers", vit_registers, "head", 203, 112,
              {"last": ("blocks.2", "/blocks/blocks.2/Add_1_output_0")},
              "ViT-Ti/16 at 112 with 4 register tokens (prefix 5), 4 blocks"),
        _spec("swin_tiny", swin_tiny, "head.fc", 204, 128,
              {"last": ("layers.3.downsample", "/layers/layers.3/downsample/reduction/MatMul_output_0")},
              "Swin-T layout at 128, window 4, depths 1-1-2-1: NHWC stages"),
        _spec("mobilevit_xxs", mobilevit_xxs, "head.fc", 205, 128,
              {"last": ("final_conv", "/final_conv/bn/act/Mul_output_0")},
              "MobileViT-XXS at 128: conv stages with transformer blocks on unfolded patches"),
        _spec("vit_small_224", vit_small_224, "head", 206, 224, {}, "ViT-S/16 at 224 (benchmark only)",
              default=False, num_classes=1000),
    )
}
