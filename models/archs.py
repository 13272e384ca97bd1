"""Small hand-written torch architectures (torchvision does not import in this environment).

Every activation that a test hooks is its own module instance, called exactly once per forward,
so a forward hook on it sees exactly one tensor, the one the ONNX export names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv (no bias) + BatchNorm; the exporter folds the BN into the Conv."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout))


# ---------------------------------------------------------------- resnet_small / resnet50


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv_bn(cin, cout, 3, stride)
        self.relu1 = nn.ReLU()
        self.conv2 = conv_bn(cout, cout, 3)
        self.down = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.relu1(self.conv1(x)))
        return self.relu2(y + self.down(x))


class ResNetSmall(nn.Module):
    """(N, 3, 64, 64) -> (N, 10): conv stem + MaxPool, 3 stages of 2 basic blocks, GAP -> Linear."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 16, 3, 2), nn.ReLU())
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 16))
        self.layer2 = nn.Sequential(BasicBlock(16, 32, 2), BasicBlock(32, 32))
        self.layer3 = nn.Sequential(BasicBlock(32, 64, 2), BasicBlock(64, 64))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.stem(x))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * 4
        self.conv1 = conv_bn(cin, width, 1)
        self.relu1 = nn.ReLU()
        self.conv2 = conv_bn(width, width, 3, stride)
        self.relu2 = nn.ReLU()
        self.conv3 = conv_bn(width, cout, 1)
        self.down = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()
        self.relu3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3(self.relu2(self.conv2(self.relu1(self.conv1(x)))))
        return self.relu3(y + self.down(x))


class ResNet50(nn.Module):
    """The ResNet-50 v1.5 layout (stride on the 3x3): (N, 3, 224, 224) -> (N, 1000)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 64, 7, 2), nn.ReLU())
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages = []
        cin = 64
        for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            layer = []
            for i in range(blocks):
                layer.append(Bottleneck(cin, width, stride if i == 0 else 1))
                cin = width * 4
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.stem(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ---------------------------------------------------------------- mobilenet_se


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, squeeze: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(squeeze, c, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, exp: int, cout: int, k: int, stride: int, se: bool) -> None:
        super().__init__()
        self.expand = nn.Sequential(conv_bn(cin, exp, 1), nn.Hardswish())
        self.dw = nn.Sequential(conv_bn(exp, exp, k, stride, groups=exp), nn.Hardswish())
        self.se: nn.Module = SqueezeExcite(exp, max(8, exp // 4)) if se else nn.Identity()
        self.project = conv_bn(exp, cout, 1)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.dw(self.expand(x))))
        return x + y if self.residual else y


class MobileNetSE(nn.Module):
    """MobileNetV3-style (N, 3, 64, 64) -> (N, 10): depthwise convs, SE, HardSwish/HardSigmoid."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 16, 3, 2), nn.Hardswish())
        self.blocks = nn.Sequential(
            InvertedResidual(16, 48, 24, 3, 2, False),
            InvertedResidual(24, 72, 24, 3, 1, False),
            InvertedResidual(24, 72, 40, 5, 2, True),
            InvertedResidual(40, 120, 40, 5, 1, True),
        )
        self.head = nn.Sequential(conv_bn(40, 96, 1), nn.Hardswish())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(96, 128), nn.Hardswish(), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))


# ---------------------------------------------------------------- densenet_small


class DenseLayer(nn.Module):
    """Pre-activation BN-ReLU-Conv; returns ``cat([x, new], 1)`` so its output is the Concat."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(cin, growth, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(self.relu(self.norm(x)))], 1)


class DenseNetSmall(nn.Module):
    """(N, 3, 64, 64) -> (N, 10): two dense blocks with a transition, final BN-ReLU, GAP -> Linear."""

    def __init__(self, num_classes: int = 10, growth: int = 12) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 24, 3, 2), nn.ReLU())
        self.block1 = nn.Sequential(*(DenseLayer(24 + i * growth, growth) for i in range(3)))
        c1 = 24 + 3 * growth
        self.transition = nn.Sequential(
            nn.BatchNorm2d(c1), nn.ReLU(), nn.Conv2d(c1, 32, 1, bias=False), nn.AvgPool2d(2)
        )
        self.block2 = nn.Sequential(*(DenseLayer(32 + i * growth, growth) for i in range(3)))
        c2 = 32 + 3 * growth
        self.final_norm = nn.BatchNorm2d(c2)
        self.final_relu = nn.ReLU()
        self.fc = nn.Linear(c2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.transition(self.block1(self.stem(x))))
        x = self.final_relu(self.final_norm(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).view(x.shape[0], -1))


# ---------------------------------------------------------------- vgg_maxpool


class VGGMaxPool(nn.Module):
    """(1, 3, 64, 64) -> (1, 10): plain conv stages, MaxPool after the last one, flatten -> MLP."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for i, cout in enumerate((16, 16, 32, 32, 64, 64)):
            layers += [nn.Conv2d(cin, cout, 3, 1, 1), nn.ReLU()]
            if i % 2 == 1:
                layers.append(nn.MaxPool2d(2))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(64 * 8 * 8, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


# ---------------------------------------------------------------- convnext_small


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of (N, C, H, W), written out so it exports as primitive ops."""

    def __init__(self, c: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        x = (x - mu) / torch.sqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class ConvNeXtBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(c, c, 7, 1, 3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.pwconv1 = nn.Linear(c, 4 * c)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtSmall(nn.Module):
    """(N, 3, 64, 64) -> (N, 10): patchify stem, 2 stages of ConvNeXt blocks, GAP -> LN -> Linear."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 4, 4), LayerNorm2d(32))
        self.stages = nn.Sequential(
            nn.Sequential(ConvNeXtBlock(32), ConvNeXtBlock(32)),
            nn.Sequential(LayerNorm2d(32), nn.Conv2d(32, 64, 2, 2), ConvNeXtBlock(64), ConvNeXtBlock(64)),
        )
        self.norm = nn.LayerNorm(64, eps=1e-6)
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.head(self.norm(x.mean((2, 3))))


# ---------------------------------------------------------------- shufflenet_small


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        x = x.reshape(n, self.groups, c // self.groups, h, w).transpose(1, 2)
        return x.reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: stride 1 splits the channels (Split), stride 2 runs two branches."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = cout // 2
        self.split_sizes = [cin // 2, cin - cin // 2]
        bin_ = cin if stride == 2 else cin // 2
        self.branch2 = nn.Sequential(
            conv_bn(bin_, half, 1), nn.ReLU(), conv_bn(half, half, 3, stride, groups=half),
            conv_bn(half, half, 1), nn.ReLU(),
        )  # fmt: skip
        self.branch1: nn.Module = (
            nn.Sequential(conv_bn(cin, cin, 3, 2, groups=cin), conv_bn(cin, half, 1), nn.ReLU())
            if stride == 2
            else nn.Identity()
        )
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            # Constant split sizes, so the exporter emits one Split (chunk on a traced shape
            # becomes a Shape/Slice chain).
            x1, x2 = torch.split(x, self.split_sizes, dim=1)
            out = torch.cat([x1, self.branch2(x2)], 1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], 1)
        return self.shuffle(out)


class ShuffleNetSmall(nn.Module):
    """(N, 3, 64, 64) -> (N, 10): ShuffleNetV2-style, channel split + channel shuffle."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 24, 3, 2), nn.ReLU())
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.stage2 = nn.Sequential(ShuffleUnit(24, 48, 2), ShuffleUnit(48, 48, 1), ShuffleUnit(48, 48, 1))
        self.stage3 = nn.Sequential(ShuffleUnit(48, 96, 2), ShuffleUnit(96, 96, 1))
        self.conv5 = nn.Sequential(conv_bn(96, 128, 1), nn.ReLU())
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv5(self.stage3(self.stage2(self.maxpool(self.stem(x)))))
        return self.fc(x.mean((2, 3)))


# ---------------------------------------------------------------- silu_net


class SiLUBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(conv_bn(c, c, 3), nn.SiLU())
        self.conv2 = conv_bn(c, c, 3)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.conv2(self.conv1(x)))


class SiLUNet(nn.Module):
    """(N, 3, 64, 64) -> (N, 10): SiLU (Sigmoid*Mul in ONNX) residual blocks, AvgPool downsampling."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 24, 3, 2), nn.SiLU())
        self.stage1 = nn.Sequential(SiLUBlock(24), nn.AvgPool2d(2))
        self.stage2 = nn.Sequential(conv_bn(24, 48, 1), nn.SiLU(), SiLUBlock(48), nn.AvgPool2d(2))
        self.stage3 = nn.Sequential(conv_bn(48, 64, 1), nn.SiLU(), SiLUBlock(64))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


# ---------------------------------------------------------------- nhwc_net


class NHWCNet(nn.Module):
    """(N, 64, 64, 3) -> (N, 10), like a TensorFlow export: permutes to NCHW first thing."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 16, 3, 2), nn.ReLU6())
        self.block1 = BasicBlock(16, 32, 2)
        self.block2 = BasicBlock(32, 48, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(48, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(self.stem(x.permute(0, 3, 1, 2))))
        return self.fc(torch.flatten(self.pool(x), 1))


# ---------------------------------------------------------------- segnet_small


class SegNetSmall(nn.Module):
    """(N, 3, 64, 64) -> (N, 5, 64, 64): encoder, ConvTranspose + bilinear Resize decoder with a skip."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(conv_bn(3, 16, 3, 2), nn.ReLU())
        self.enc2 = nn.Sequential(conv_bn(16, 32, 3, 2), nn.ReLU(), conv_bn(32, 32, 3), nn.ReLU())
        self.up = nn.ConvTranspose2d(32, 16, 2, 2)
        self.dec = nn.Sequential(conv_bn(32, 16, 3), nn.ReLU())
        self.classifier = nn.Conv2d(16, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        d = self.dec(torch.cat([self.up(self.enc2(e1)), e1], 1))
        y = self.classifier(d)
        return F.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=False)
