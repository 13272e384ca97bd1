"""Detector test models: YOLOv8n- and YOLO11n-style detectors defined here in torch (ultralytics' own
modules need torchvision, which does not import beside this torch), random seeded weights.

Architecture as ultralytics' ``yolov8n.yaml`` (width 0.25, depth 0.33): Conv-BN-SiLU, C2f, SPPF, an
FPN/PAN neck with nearest Upsample + Concat, and the Detect head with DFL (reg_max 16, a softmax
over the bins and a fixed arange 1x1 conv); anchors and strides are computed in ``forward`` from
the feature maps' shapes, as the exported graph does. Output ``(N, 4 + K, A)``: boxes as centre x,
y, width, height in input pixels, then the K class scores after a sigmoid. Exported as ultralytics
exports by default (static batch 1, metadata ``task``, ``imgsz``, ``stride``, ``names``) at opsets
12 and 17, and once with a dynamic batch.

YOLO11n as ``yolo11.yaml`` at scale n (width 0.25, depth 0.50; 2,624,080 parameters, ultralytics'
count): C3k2 for C2f, a C2PSA block (multi-head self-attention over the stride-32 cells) after
SPPF, and a Detect head whose class branch is depth-wise 3x3 + 1x1 convolutions.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import numpy as np
import onnx
import torch
from torch import nn

from models.export import check_parity, finalize
from models.zoo import ModelSpec

NUM_CLASSES = 80
REG_MAX = 16
STRIDES = (8, 16, 32)
ATTENTION_STD = 0.5  # YOLO11's attention logits' std on the calibration images (1.5-17 on the tests' blobs)
# Names as ultralytics writes them (a Python dict literal); generic ones: the weights are random.
NAMES = {i: f"class{i}" for i in range(NUM_CLASSES)}


class Conv(nn.Module):
    """Conv2d (no bias) -> BatchNorm -> SiLU (identity when ``act`` is false), 'same' padding."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, g: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)
        self.act: nn.Module = nn.SiLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool, e: float = 1.0) -> None:
        super().__init__()
        c_ = int(c * e)
        self.cv1 = Conv(c, c_, 3)
        self.cv2 = Conv(c_, c, 3)
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """CSP bottleneck with two convolutions, every bottleneck's output concatenated."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False, e: float = 0.5) -> None:
        super().__init__()
        self.c = int(c2 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m: nn.ModuleList = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, c1: int, c2: int, k: int = 5) -> None:
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1)
        self.cv2 = Conv(c_ * 4, c2, 1)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class DFL(nn.Module):
    """Distribution focal loss integral: softmax over ``c1`` bins, then a fixed arange 1x1 conv."""

    def __init__(self, c1: int = REG_MAX) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(c1, dtype=torch.float).view(1, c1, 1, 1)
        self.c1 = c1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, a = x.shape
        return self.conv(x.view(b, 4, self.c1, a).transpose(2, 1).softmax(1)).view(b, 4, a)


def make_anchors(feats: list[torch.Tensor], strides: tuple[int, ...], offset: float = 0.5) -> tuple[torch.Tensor,
                                                                                                  torch.Tensor]:
    points, stride_tensor = [], []
    for f, stride in zip(feats, strides):
        _, _, h, w = f.shape
        sx = torch.arange(w, dtype=f.dtype) + offset
        sy = torch.arange(h, dtype=f.dtype) + offset
        sy, sx = torch.meshgrid(sy, sx, indexing="ij")
        points.append(torch.stack((sx, sy), -1).view(-1, 2))
        stride_tensor.append(torch.full((h * w, 1), stride, dtype=f.dtype))
    return torch.cat(points), torch.cat(stride_tensor)


def dwconv(c1: int, c2: int, k: int) -> Conv:
    """Depth-wise Conv-BN-SiLU (groups ``gcd(c1, c2)``), ultralytics' DWConv."""
    return Conv(c1, c2, k, g=math.gcd(c1, c2))


class Detect(nn.Module):
    """The Detect head: per level a box branch (``cv2``, 4 x REG_MAX DFL bins) and a class branch
    (``cv3``): YOLOv8's two 3x3 Conv-BN-SiLU (``legacy``) or YOLO11's two depth-wise 3x3 + 1x1 pairs."""

    def __init__(self, nc: int, ch: tuple[int, ...], legacy: bool = True) -> None:
        super().__init__()
        self.nc, self.no = nc, nc + REG_MAX * 4
        c2, c3 = max(16, ch[0] // 4, REG_MAX * 4), max(ch[0], min(nc, 100))
        self.cv2 = nn.ModuleList(nn.Sequential(Conv(x, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * REG_MAX, 1))
                                 for x in ch)
        if legacy:
            self.cv3 = nn.ModuleList(nn.Sequential(Conv(x, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, nc, 1))
                                     for x in ch)
        else:
            self.cv3 = nn.ModuleList(nn.Sequential(nn.Sequential(dwconv(x, x, 3), Conv(x, c3, 1)),
                                                   nn.Sequential(dwconv(c3, c3, 3), Conv(c3, c3, 1)),
                                                   nn.Conv2d(c3, nc, 1)) for x in ch)
        self.dfl = DFL(REG_MAX)

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        xs = [torch.cat((self.cv2[i](x), self.cv3[i](x)), 1) for i, x in enumerate(xs)]
        b = xs[0].shape[0]
        cat = torch.cat([x.view(b, self.no, -1) for x in xs], 2)
        anchors, strides = (t.transpose(0, 1) for t in make_anchors(xs, STRIDES))
        box, cls = cat.split((REG_MAX * 4, self.nc), 1)
        lt, rb = self.dfl(box).chunk(2, 1)
        a = anchors.unsqueeze(0)
        x1y1, x2y2 = a - lt, a + rb
        dbox = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * strides
        return torch.cat((dbox, cls.sigmoid()), 1)


class YOLOv8(nn.Module):
    """YOLOv8 at scale n: ``forward(x) -> (N, 4 + nc, A)``; ``features(x)`` gives the neck's P3, P4,
    P5 maps (what the Detect head reads)."""

    def __init__(self, nc: int = NUM_CLASSES) -> None:
        super().__init__()
        self.b0, self.b1, self.b2 = Conv(3, 16, 3, 2), Conv(16, 32, 3, 2), C2f(32, 32, 1, True)
        self.b3, self.b4 = Conv(32, 64, 3, 2), C2f(64, 64, 2, True)
        self.b5, self.b6 = Conv(64, 128, 3, 2), C2f(128, 128, 2, True)
        self.b7, self.b8, self.b9 = Conv(128, 256, 3, 2), C2f(256, 256, 1, True), SPPF(256, 256, 5)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.h12, self.h15 = C2f(384, 128, 1), C2f(192, 64, 1)
        self.h16, self.h18 = Conv(64, 64, 3, 2), C2f(192, 128, 1)
        self.h19, self.h21 = Conv(128, 128, 3, 2), C2f(384, 256, 1)
        self.detect = Detect(nc, (64, 128, 256))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        p3 = self.b4(self.b3(self.b2(self.b1(self.b0(x)))))
        p4 = self.b6(self.b5(p3))
        p5 = self.b9(self.b8(self.b7(p4)))
        n12 = self.h12(torch.cat((self.up(p5), p4), 1))
        o3 = self.h15(torch.cat((self.up(n12), p3), 1))
        o4 = self.h18(torch.cat((self.h16(o3), n12), 1))
        o5 = self.h21(torch.cat((self.h19(o4), p5), 1))
        return [o3, o4, o5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.detect(self.features(x))


class C3k(nn.Module):
    """CSP bottleneck with three convolutions (ultralytics' C3) over ``n`` 3x3 bottlenecks."""

    def __init__(self, c1: int, c2: int, n: int = 2, shortcut: bool = True, e: float = 0.5) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1, self.cv2, self.cv3 = Conv(c1, c_, 1), Conv(c1, c_, 1), Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, shortcut) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class C3k2(C2f):
    """YOLO11's C2f: each inner block a C3k (``c3k``) or a bottleneck at half width, as ultralytics'."""

    def __init__(self, c1: int, c2: int, n: int = 1, c3k: bool = False, e: float = 0.5,
                 shortcut: bool = True) -> None:
        super().__init__(c1, c2, n, shortcut, e)
        self.m = nn.ModuleList(C3k(self.c, self.c, 2, shortcut) if c3k else Bottleneck(self.c, shortcut, 0.5)
                               for _ in range(n))


class Attention(nn.Module):
    """Multi-head self-attention over the H x W cells of a map (ultralytics' PSA attention): queries
    and keys at ``attn_ratio`` of the head width, a depth-wise 3x3 positional term on the values."""

    def __init__(self, dim: int, num_heads: int, attn_ratio: float = 0.5) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.key_dim = int(self.head_dim * attn_ratio)
        self.scale = self.key_dim ** -0.5
        self.qkv = Conv(dim, dim + 2 * self.key_dim * num_heads, 1, act=False)
        self.proj = Conv(dim, dim, 1, act=False)
        self.pe = Conv(dim, dim, 3, g=dim, act=False)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        b, _, h, w = x.shape
        return self.qkv(x).view(b, self.num_heads, 2 * self.key_dim + self.head_dim, h * w).split(
            [self.key_dim, self.key_dim, self.head_dim], 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._qkv(x)
        attn = ((q.transpose(-2, -1) @ k) * self.scale).softmax(-1)
        y = (v @ attn.transpose(-2, -1)).view(x.shape) + self.pe(v.reshape(x.shape))
        return self.proj(y)

    def temper(self, x: torch.Tensor, std: float) -> None:
        """Scale the queries (their BatchNorm's weight and bias) so the logits on ``x`` have this std."""
        q, k, _ = self._qkv(x)
        factor = std / float(((q.transpose(-2, -1) @ k) * self.scale).std())
        per_head = 2 * self.key_dim + self.head_dim
        rows = [h * per_head + i for h in range(self.num_heads) for i in range(self.key_dim)]
        self.qkv.bn.weight[rows] *= factor
        self.qkv.bn.bias[rows] *= factor


class PSABlock(nn.Module):
    def __init__(self, c: int, attn_ratio: float = 0.5, num_heads: int = 4) -> None:
        super().__init__()
        self.attn = Attention(c, num_heads, attn_ratio)
        self.ffn = nn.Sequential(Conv(c, 2 * c, 1), Conv(2 * c, c, 1, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.ffn(x)


class C2PSA(nn.Module):
    """Half the channels through ``n`` attention + feed-forward blocks, the other half past them."""

    def __init__(self, c1: int, c2: int, n: int = 1, e: float = 0.5) -> None:
        super().__init__()
        assert c1 == c2
        self.c = int(c1 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1)
        self.cv2 = Conv(2 * self.c, c1, 1)
        self.m = nn.Sequential(*(PSABlock(self.c, 0.5, self.c // 64) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.cv1(x).split((self.c, self.c), 1)
        return self.cv2(torch.cat((a, self.m(b)), 1))


class YOLO11(nn.Module):
    """YOLO11 at scale n (``yolo11.yaml``: depth 0.50, width 0.25): C3k2 blocks, SPPF then C2PSA at
    stride 32, the YOLOv8 neck with C3k2, and YOLO11's Detect head (depth-wise class branch).
    Modules are named by their yaml index (``b10`` the C2PSA; ``h16``, ``h19``, ``h22`` the P3, P4,
    P5 maps the head reads)."""

    def __init__(self, nc: int = NUM_CLASSES) -> None:
        super().__init__()
        self.b0, self.b1, self.b2 = Conv(3, 16, 3, 2), Conv(16, 32, 3, 2), C3k2(32, 64, 1, False, 0.25)
        self.b3, self.b4 = Conv(64, 64, 3, 2), C3k2(64, 128, 1, False, 0.25)
        self.b5, self.b6 = Conv(128, 128, 3, 2), C3k2(128, 128, 1, True)
        self.b7, self.b8 = Conv(128, 256, 3, 2), C3k2(256, 256, 1, True)
        self.b9, self.b10 = SPPF(256, 256, 5), C2PSA(256, 256, 1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.h13, self.h16 = C3k2(384, 128, 1, False), C3k2(256, 64, 1, False)
        self.h17, self.h19 = Conv(64, 64, 3, 2), C3k2(192, 128, 1, False)
        self.h20, self.h22 = Conv(128, 128, 3, 2), C3k2(384, 256, 1, True)
        self.detect = Detect(nc, (64, 128, 256), legacy=False)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        p3 = self.b4(self.b3(self.b2(self.b1(self.b0(x)))))
        p4 = self.b6(self.b5(p3))
        p5 = self.b10(self.b9(self.b8(self.b7(p4))))
        n13 = self.h13(torch.cat((self.up(p5), p4), 1))
        o3 = self.h16(torch.cat((self.up(n13), p3), 1))
        o4 = self.h19(torch.cat((self.h17(o3), n13), 1))
        o5 = self.h22(torch.cat((self.h20(o4), p5), 1))
        return [o3, o4, o5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.detect(self.features(x))


_Detector = TypeVar("_Detector", YOLOv8, YOLO11)


def smooth_images(n: int, size: int, seed: int) -> torch.Tensor:
    """``(n, 3, size, size)`` upsampled coarse noise in [0, 1]: closer to photos, for the network,
    than pixel noise."""
    coarse = torch.rand((n, 3, 8, 8), generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def yolov8n(seed: int = 0, nc: int = NUM_CLASSES, size: int = 320) -> YOLOv8:
    """Seeded random weights; BatchNorm statistics from a random batch and class biases set so a
    random image gives a few dozen anchors above 0.25 (a trained detector's few boxes)."""
    torch.manual_seed(seed)
    return _calibrate(YOLOv8(nc), seed, size)


def yolo11n(seed: int = 0, nc: int = NUM_CLASSES, size: int = 320) -> YOLO11:
    """As ``yolov8n`` (seeded random weights, calibrated BatchNorm statistics and class biases), the
    C2PSA attention's queries scaled to soft attention (``ATTENTION_STD``)."""
    torch.manual_seed(seed)
    return _calibrate(YOLO11(nc), seed, size)


def _calibrate(model: _Detector, seed: int, size: int) -> _Detector:
    """``model`` with BatchNorm statistics from smooth random images, its attention logits (if any)
    scaled, and its class logits standardised."""
    x = smooth_images(4, size, seed + 1)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    model.train()
    with torch.no_grad():
        for m in norms:
            m.momentum = None  # cumulative average: one pass gives the batch's statistics
        model(x)
    attentions = [m for m in model.modules() if isinstance(m, Attention)]
    if attentions:
        # A random attention's logits are far apart (std 10-30 on these images): a nearly one-hot
        # softmax, where float32 loses digits that float64 keeps. Queries scaled to logits of std
        # ATTENTION_STD, then every statistic after them taken again.
        model.eval()
        inputs: dict[nn.Module, torch.Tensor] = {}
        hooks = [a.register_forward_pre_hook(lambda m, args: inputs.__setitem__(m, args[0])) for a in attentions]
        with torch.no_grad():
            model(x)
            for hook in hooks:
                hook.remove()
            for a in attentions:
                a.temper(inputs[a], ATTENTION_STD)
            model.train()
            for m in norms:
                m.reset_running_stats()
            model(x)
    model.eval()
    with torch.no_grad():
        feats = model.features(x)
        logits = torch.cat([model.detect.cv3[i](f).flatten(2) for i, f in enumerate(feats)], 2)
        # Standardised logits (a random head's are far apart and saturate the sigmoid, where float32
        # gradients vanish), shifted so the 40th highest lands at 0.5: a few objects above 0.25.
        mean, std = float(logits.mean()), float(logits.std())
        shift = (float(torch.sort(logits[0].flatten(), descending=True).values[40]) - mean) / std
        for seq in model.detect.cv3:
            seq[-1].weight /= std
            seq[-1].bias.copy_((seq[-1].bias - mean) / std - shift)
    return model


def export_yolov8(spec: ModelSpec, path: Path, deps: Mapping[str, Path]) -> None:
    """Export ``spec.factory()`` (YOLOv8n or YOLO11n) as ultralytics does (legacy exporter, static
    batch 1 unless ``spec.dynamic_batch``)."""
    module = spec.factory().eval()
    opset = int(spec.extra.get("opset", 17))  # type: ignore[call-overload]
    batch = 2 if spec.dynamic_batch else 1
    # Parity on the kind of image the statistics came from: on pixel noise YOLO11's random attention
    # is so peaked that float32 itself (torch's too) is 6e-4 from float64.
    x = smooth_images(batch, spec.input_shape[1], 3)
    axes = {spec.input_name: {0: "batch"}, spec.output_name: {0: "batch"}} if spec.dynamic_batch else None
    tmp = path.with_suffix(".export.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(tmp), dynamo=False, opset_version=opset,
                          input_names=[spec.input_name], output_names=[spec.output_name], dynamic_axes=axes)
    model = onnx.load(str(tmp))
    tmp.unlink()
    h, w = spec.input_shape[1:]
    meta = {"task": "detect", "imgsz": f"[{h}, {w}]", "stride": str(max(STRIDES)), "names": str(NAMES),
            "batch": str(batch if not spec.dynamic_batch else -1)}
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    finalize(model, path, f"onnxcam test model {spec.name}: {spec.description}")
    try:
        check_parity(spec, path, module, x.numpy())
    except RuntimeError:
        path.unlink()  # the build is a cache: a file that failed its check must not be kept
        raise


def nms_tail(model: onnx.ModelProto, iou: float = 0.45, score: float = 0.25, max_per_class: int = 100,
             output: str = "output0") -> onnx.ModelProto:
    """``model`` (YOLOv8 ``output (1, 4 + K, A)``) with the classic "end2end" tail appended in ONNX:
    transpose and slice into boxes ``(1, A, 4)`` (cx, cy, w, h) and scores ``(1, K, A)``,
    ``NonMaxSuppression`` (``center_point_box=1``), then Gather / GatherND of the kept boxes, scores
    and classes: outputs ``det_boxes (M, 4)``, ``det_scores (M,)``, ``det_classes (M,)`` int64."""
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    consts = {"s0": np.array([0], np.int64), "s4": np.array([4], np.int64), "big": np.array([1 << 30], np.int64),
              "ax2": np.array([2], np.int64), "max_out": np.array([max_per_class], np.int64),
              "iou": np.array([iou], np.float32), "score": np.array([score], np.float32),
              "i0": np.array(0, np.int64), "i1": np.array(1, np.int64), "i2": np.array(2, np.int64)}
    g.initializer.extend(numpy_helper.from_array(v, f"nms_{k}") for k, v in consts.items())
    g.node.extend([
        helper.make_node("Transpose", [output], ["nms_rows"], perm=[0, 2, 1]),
        helper.make_node("Slice", ["nms_rows", "nms_s0", "nms_s4", "nms_ax2"], ["nms_boxes"]),
        helper.make_node("Slice", ["nms_rows", "nms_s4", "nms_big", "nms_ax2"], ["nms_scores_rows"]),
        helper.make_node("Transpose", ["nms_scores_rows"], ["nms_scores"], perm=[0, 2, 1]),
        helper.make_node("NonMaxSuppression", ["nms_boxes", "nms_scores", "nms_max_out", "nms_iou", "nms_score"],
                         ["nms_selected"], center_point_box=1),
        helper.make_node("Gather", ["nms_selected", "nms_i2"], ["nms_box_index"], axis=1),
        helper.make_node("Gather", ["nms_selected", "nms_i1"], ["det_classes"], axis=1),
        helper.make_node("Gather", ["nms_boxes", "nms_i0"], ["nms_boxes0"], axis=0),
        helper.make_node("Gather", ["nms_boxes0", "nms_box_index"], ["det_boxes"], axis=0),
        helper.make_node("GatherND", ["nms_scores", "nms_selected"], ["det_scores"]),
    ])
    del g.output[:]
    g.output.extend([helper.make_tensor_value_info("det_boxes", TensorProto.FLOAT, ["M", 4]),
                     helper.make_tensor_value_info("det_scores", TensorProto.FLOAT, ["M"]),
                     helper.make_tensor_value_info("det_classes", TensorProto.INT64, ["M"])])
    return m


def export_yolov8_nms(spec: ModelSpec, path: Path, deps: Mapping[str, Path]) -> None:
    """``yolov8n_det`` with the end2end NMS tail (``nms_tail``)."""
    model = nms_tail(onnx.load(str(deps["yolov8n_det"])))
    onnx.checker.check_model(model)
    finalize(model, path, f"onnxcam test model {spec.name}: {spec.description}")


def _spec(name: str, size: int, opset: int, dynamic: bool, description: str,
          arch: Callable[..., nn.Module] = yolov8n) -> ModelSpec:
    return ModelSpec(
        name=name, input_shape=(3, size, size), layout="NCHW", dynamic_batch=dynamic, num_classes=NUM_CLASSES,
        factory=lambda: arch(size=size), layers={}, description=description, default=False,
        input_name="images", output_name="output0", make_onnx=export_yolov8, extra={"opset": opset},
    )


SPECS: dict[str, ModelSpec] = {
    "yolov8n_det": _spec("yolov8n_det", 320, 17, False, "YOLOv8n-style detector, 80 classes, opset 17, batch 1"),
    "yolov8n_det_op12": _spec("yolov8n_det_op12", 320, 12, False, "YOLOv8n-style detector at opset 12, batch 1"),
    "yolov8n_det_dyn": _spec("yolov8n_det_dyn", 320, 17, True, "YOLOv8n-style detector, dynamic batch"),
    "yolov8n_det_nms": ModelSpec(
        name="yolov8n_det_nms", input_shape=(3, 320, 320), layout="NCHW", dynamic_batch=False,
        num_classes=NUM_CLASSES, factory=lambda: yolov8n(size=320), layers={}, default=False,
        description="yolov8n_det with NonMaxSuppression appended (end2end export)", input_name="images",
        output_name="det_boxes", make_onnx=export_yolov8_nms, requires=("yolov8n_det",)),
    "yolov8n_det_640": _spec("yolov8n_det_640", 640, 17, False, "YOLOv8n-style detector at 640x640 (benchmark)"),
    "yolo11n_det": _spec("yolo11n_det", 320, 17, False, "YOLO11n-style detector (C3k2, C2PSA), opset 17, batch 1",
                         yolo11n),
    "yolo11n_det_op12": _spec("yolo11n_det_op12", 320, 12, False, "YOLO11n-style detector at opset 12, batch 1",
                              yolo11n),
}

# ---------------------------------------------------------------- box/score pairs (SSD / RetinaNet style)

PAIR_CLASSES = 20
PAIR_STRIDES = (8, 16, 32)
PAIR_RATIOS = (0.5, 1.0, 2.0)
PAIR_STAGES = ("stage3", "stage4", "stage5")  # the level maps the heads read, strides 8, 16, 32


def _cbr(c1: int, c2: int, s: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c1, c2, 3, s, 1, bias=False), nn.BatchNorm2d(c2), nn.ReLU())


def pair_anchors(size: int) -> torch.Tensor:
    """``(A, 4)`` anchors (cx, cy, w, h) in pixels: per level, cell by cell, ``len(PAIR_RATIOS)`` each."""
    rows = []
    for s in PAIR_STRIDES:
        g = size // s
        ys, xs = torch.meshgrid(torch.arange(g, dtype=torch.float32), torch.arange(g, dtype=torch.float32),
                                indexing="ij")
        centre = torch.stack(((xs + 0.5) * s, (ys + 0.5) * s), -1).reshape(-1, 1, 2)
        wh = torch.tensor([[4 * s * r ** 0.5, 4 * s / r ** 0.5] for r in PAIR_RATIOS])
        rows.append(torch.cat((centre.expand(-1, len(PAIR_RATIOS), 2), wh[None].expand(g * g, -1, 2)), -1)
                    .reshape(-1, 4))
    return torch.cat(rows)


class BoxScoreNet(nn.Module):
    """A RetinaNet/SSD-style detector: conv stages to strides 8, 16, 32 (``PAIR_STAGES``), per level a
    box head (3x3 conv, ReLU, 3x3 conv to 4 per anchor) and a class head (same, K per anchor),
    ``len(PAIR_RATIOS)`` anchors per cell. ``forward(x) -> (boxes (N, A, 4) xyxy pixels decoded
    from the anchors as SSD does (variances 0.1 / 0.2), scores (N, A, K) after a sigmoid)``."""

    def __init__(self, nc: int = PAIR_CLASSES, size: int = 256) -> None:
        super().__init__()
        self.nc, self.na = nc, len(PAIR_RATIOS)
        self.stage1, self.stage2 = _cbr(3, 16, 2), nn.Sequential(_cbr(16, 32, 2), _cbr(32, 32))
        self.stage3 = _cbr(32, 64, 2)
        self.stage4, self.stage5 = _cbr(64, 96, 2), _cbr(96, 128, 2)
        widths = (64, 96, 128)
        self.box = nn.ModuleList(nn.Sequential(nn.Conv2d(c, 48, 3, 1, 1), nn.ReLU(),
                                               nn.Conv2d(48, 4 * self.na, 3, 1, 1)) for c in widths)
        self.cls = nn.ModuleList(nn.Sequential(nn.Conv2d(c, 48, 3, 1, 1), nn.ReLU(),
                                               nn.Conv2d(48, nc * self.na, 3, 1, 1)) for c in widths)
        self.register_buffer("anchors", pair_anchors(size))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        c3 = self.stage3(self.stage2(self.stage1(x)))
        c4 = self.stage4(c3)
        return [c3, c4, self.stage5(c4)]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(x)
        n = x.shape[0]
        deltas = torch.cat([self.box[i](f).permute(0, 2, 3, 1).reshape(n, -1, 4) for i, f in enumerate(feats)], 1)
        logits = torch.cat([self.cls[i](f).permute(0, 2, 3, 1).reshape(n, -1, self.nc) for i, f in enumerate(feats)],
                           1)
        a = self.anchors
        cxcy = a[:, :2] + 0.1 * deltas[..., :2] * a[:, 2:]
        wh = a[:, 2:] * torch.exp(0.2 * deltas[..., 2:])
        return torch.cat((cxcy - wh / 2, cxcy + wh / 2), -1), logits.sigmoid()


def box_score_net(seed: int = 0, size: int = 256) -> BoxScoreNet:
    """Seeded random weights, BatchNorm statistics from smooth random images, class logits
    standardised and shifted so a random image has a few dozen predictions above 0.25."""
    torch.manual_seed(seed)
    model = BoxScoreNet(size=size)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.nn.functional.interpolate(torch.rand((4, 3, 8, 8), generator=gen), size=(size, size), mode="bilinear",
                                        align_corners=False)
    model.train()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = None
        model(x)
    model.eval()
    with torch.no_grad():
        feats = model.features(x)
        logits = torch.cat([model.cls[i](f).flatten() for i, f in enumerate(feats)])
        mean, std = float(logits.mean()), float(logits.std())
        shift = (float(torch.sort(logits, descending=True).values[4 * 40]) - mean) / std
        for seq in model.cls:
            seq[-1].weight /= std
            seq[-1].bias.copy_((seq[-1].bias - mean) / std - shift)
    return model


def pairs_nms_tail(model: onnx.ModelProto, boxes: str = "boxes", scores: str = "scores", iou: float = 0.5,
                   score: float = 0.25, max_per_class: int = 100) -> onnx.ModelProto:
    """``model`` (boxes ``(1, A, 4)`` xyxy, scores ``(1, A, K)``) with torchvision-style post-processing
    in ONNX: ``NonMaxSuppression`` on the corner boxes, then the kept boxes, scores and classes."""
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    consts = {"max_out": np.array([max_per_class], np.int64), "iou": np.array([iou], np.float32),
              "score": np.array([score], np.float32), "i0": np.array(0, np.int64), "i1": np.array(1, np.int64),
              "i2": np.array(2, np.int64)}
    g.initializer.extend(numpy_helper.from_array(v, f"nms_{k}") for k, v in consts.items())
    g.node.extend([
        helper.make_node("Transpose", [scores], ["nms_scores"], perm=[0, 2, 1]),
        helper.make_node("NonMaxSuppression", [boxes, "nms_scores", "nms_max_out", "nms_iou", "nms_score"],
                         ["nms_selected"]),
        helper.make_node("Gather", ["nms_selected", "nms_i2"], ["nms_box_index"], axis=1),
        helper.make_node("Gather", ["nms_selected", "nms_i1"], ["det_classes"], axis=1),
        helper.make_node("Gather", [boxes, "nms_i0"], ["nms_boxes0"], axis=0),
        helper.make_node("Gather", ["nms_boxes0", "nms_box_index"], ["det_boxes"], axis=0),
        helper.make_node("GatherND", ["nms_scores", "nms_selected"], ["det_scores"]),
    ])
    del g.output[:]
    g.output.extend([helper.make_tensor_value_info("det_boxes", TensorProto.FLOAT, ["M", 4]),
                     helper.make_tensor_value_info("det_scores", TensorProto.FLOAT, ["M"]),
                     helper.make_tensor_value_info("det_classes", TensorProto.INT64, ["M"])])
    return m


def export_box_score(spec: ModelSpec, path: Path, deps: Mapping[str, Path]) -> None:
    """Export ``box_score_net`` (dynamic batch), or, with ``extra["nms"]``, batch 1 plus ``pairs_nms_tail``."""
    size = spec.input_shape[1]
    module = box_score_net(size=size).eval()
    nms_tail_on = bool(spec.extra.get("nms", False))
    batch = 1 if nms_tail_on else 2
    x = torch.rand((batch, *spec.input_shape), generator=torch.Generator().manual_seed(3))
    axes = None if nms_tail_on else {spec.input_name: {0: "batch"}, "boxes": {0: "batch"}, "scores": {0: "batch"}}
    tmp = path.with_suffix(".export.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(tmp), dynamo=False, opset_version=17, input_names=[spec.input_name],
                          output_names=["boxes", "scores"], dynamic_axes=axes)
    model = onnx.load(str(tmp))
    tmp.unlink()
    if nms_tail_on:
        model = pairs_nms_tail(model)
    finalize(model, path, f"onnxcam test model {spec.name}: {spec.description}")
    if not nms_tail_on:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {spec.input_name: x.numpy()})
        with torch.no_grad():
            want = [t.numpy() for t in module(x)]
        for g_, w_ in zip(got, want, strict=True):
            if not np.allclose(g_, w_, rtol=1e-3, atol=1e-3):
                raise RuntimeError(f"{spec.name}: onnxruntime differs from torch by {np.abs(g_ - w_).max():.2e}")


def _pair_spec(name: str, nms: bool, description: str) -> ModelSpec:
    return ModelSpec(
        name=name, input_shape=(3, 256, 256), layout="NCHW", dynamic_batch=not nms, num_classes=PAIR_CLASSES,
        factory=lambda: box_score_net(), layers={}, description=description, default=False, input_name="images",
        output_name="boxes", make_onnx=export_box_score, extra={"nms": nms},
    )


SPECS.update({
    "boxscore_det": _pair_spec("boxscore_det", False, "RetinaNet/SSD-style box/score pair detector, 20 classes"),
    "boxscore_det_nms": _pair_spec("boxscore_det_nms", True, "boxscore_det with NonMaxSuppression appended"),
})


__all__ = ["SPECS", "YOLO11", "BoxScoreNet", "YOLOv8", "box_score_net", "export_box_score", "export_yolov8",
           "export_yolov8_nms", "make_anchors", "nms_tail", "pair_anchors", "pairs_nms_tail", "yolo11n", "yolov8n"]


def _self_check() -> None:  # pragma: no cover - a quick look while developing
    m = yolov8n()
    y = m(torch.rand(1, 3, 320, 320)).detach().numpy()
    print(y.shape, (y[0, 4:] > 0.25).sum(), np.sort(y[0, 4:].max(0))[-5:])


if __name__ == "__main__":  # pragma: no cover
    _self_check()
