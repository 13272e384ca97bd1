"""Build the demo model that ships inside onnxcam (``onnxcam/data/demo/``).

Run ``python -m models.demo_train [--out onnxcam/data/demo]``. It renders a seeded synthetic
shapes dataset (one object of a known class and box per cluttered image), trains a small CNN
deterministically on CPU, exports it to ONNX, writes the demo images with their true boxes, and
checks, with onnxcam's own pipeline on the exported ONNX (Grad-CAM at ``layer="auto"``,
``cam_to_boxes`` at 20% of the max, ``box_iou``), that the maps localise the objects, since the
README's first command shows exactly that.

Localisation is trained for, not left to chance: besides cross-entropy the loss penalises the true
class's CAM where the object is absent and where it is faint on the object (``localisation_loss``,
using the rendered object masks). Without it, a CNN small enough to train in minutes on CPU gave
CAM boxes ~1.9x the true box area (IoU >= 0.5 for only ~60% of images); the penalty changes what
the model attends to, not how onnxcam computes the maps.

Architecture (CAM-friendly): conv/BN/ReLU stages down to a 16x16 (stride 8) last stage, then
global average pooling and one Linear layer, so classic CAM applies as well as Grad-CAM.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring")
IMAGE_SIZE = 128
MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
TRAIN_SEED, TEST_SEED, DEMO_SEED, TORCH_SEED = 0, 1, 2, 0
# Objects span ~30-70% of the image side so that a stride-8 CAM (16x16 cells) can outline them.
MIN_RADIUS, MAX_RADIUS = 24, 40
STRIDE = 8  # the CAM layer's stride: a 16x16 grid
# Weight of the localisation terms in the loss (see ``localisation_loss``).
LOC_WEIGHT = 1.0
FILL_LEVEL = 0.25
CAM_THRESHOLD = 0.2  # the CAM paper's box rule: 20% of the map's max, largest component
DEMO_PER_CLASS = 2
INPUT_NAME, OUTPUT_NAME = "input", "logits"
OPSET = 17
IR_VERSION = 9  # onnx 1.23 stamps IR 14, which onnxruntime rejects


# ---------------------------------------------------------------- dataset rendering


def _regular_polygon(n: int, radius: float, angle: float) -> np.ndarray:
    """``(n, 2)`` vertices on a circle of ``radius`` around the origin, first one at ``angle``."""
    t = angle + 2.0 * np.pi * np.arange(n) / n
    return np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)


def _star(radius: float, angle: float) -> np.ndarray:
    """``(10, 2)`` vertices of a five-pointed star, alternating outer and inner radius."""
    t = angle + np.pi * np.arange(10) / 5
    r = np.where(np.arange(10) % 2 == 0, radius, 0.42 * radius)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _cross(radius: float, angle: float) -> np.ndarray:
    """``(12, 2)`` vertices of a plus sign whose arms reach ``radius``."""
    a, b = radius, 0.3 * radius
    pts = np.array(
        [[b, b], [b, a], [-b, a], [-b, b], [-a, b], [-a, -b], [-b, -b], [-b, -a], [b, -a], [b, -b], [a, -b], [a, b]],
        dtype=np.float64,
    )
    c, s = np.cos(angle), np.sin(angle)
    return pts @ np.array([[c, s], [-s, c]])


def _shape_mask(cls: int, cx: float, cy: float, radius: float, angle: float, size: int) -> np.ndarray:
    """``(size, size)`` uint8 anti-aliased coverage (0-255) of class ``cls`` centred at (cx, cy)."""
    mask = np.zeros((size, size), np.uint8)
    # cv2 draws with sub-pixel precision via fixed-point coordinates (shift bits).
    shift = 4
    scale = float(1 << shift)
    centre = (int(round(cx * scale)), int(round(cy * scale)))
    name = CLASSES[cls]
    if name in ("circle", "ring"):
        cv2.circle(mask, centre, int(round(radius * scale)), 255, -1, cv2.LINE_AA, shift)
        if name == "ring":
            cv2.circle(mask, centre, int(round(0.55 * radius * scale)), 0, -1, cv2.LINE_AA, shift)
        return mask
    if name == "square":
        pts = _regular_polygon(4, radius * 0.92, angle)
    elif name == "triangle":
        pts = _regular_polygon(3, radius, angle)
    elif name == "star":
        pts = _star(radius, angle)
    else:
        pts = _cross(radius, angle)
    poly = np.round((pts + np.array([cx, cy])) * scale).astype(np.int32)
    cv2.fillPoly(mask, [poly], 255, cv2.LINE_AA, shift)
    return mask


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """``(size, size, 3)`` float32 RGB: a greyish random gradient plus class-irrelevant clutter."""
    # Backgrounds and clutter are low-saturation and objects saturated, so the object is findable by
    # colour as well as by shape; this is what lets a tiny CNN train in minutes on CPU.
    level0, level1 = rng.uniform(20, 235, 2)
    c0 = np.clip(level0 + rng.normal(0, 12, 3), 0, 255)
    c1 = np.clip(level1 + rng.normal(0, 12, 3), 0, 255)
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    t = np.cos(theta) * xx + np.sin(theta) * yy
    t = (t - t.min()) / (t.max() - t.min() + 1e-6)
    img = (c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]).astype(np.float32)

    def colour() -> list[float]:
        # Distractors appear in every class, so the classifier must learn to ignore them.
        return np.clip(rng.uniform(0, 255) + rng.normal(0, 15, 3), 0, 255).tolist()

    for _ in range(int(rng.integers(3, 9))):
        p0 = tuple(int(v) for v in rng.integers(-20, size + 20, 2))
        p1 = tuple(int(v) for v in rng.integers(-20, size + 20, 2))
        cv2.line(img, p0, p1, colour(), int(rng.integers(1, 4)), cv2.LINE_AA)
    for _ in range(int(rng.integers(1, 4))):
        steps = rng.normal(0, 6, (int(rng.integers(4, 10)), 2))
        walk = np.cumsum(steps, axis=0) + rng.uniform(0, size, 2)
        cv2.polylines(img, [walk.astype(np.int32)], False, colour(), int(rng.integers(1, 3)), cv2.LINE_AA)
    for _ in range(int(rng.integers(4, 14))):
        centre = tuple(int(v) for v in rng.integers(0, size, 2))
        axes = tuple(int(v) for v in rng.integers(1, 6, 2))
        cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour(), -1, cv2.LINE_AA)
    return img


def _object_colour(rng: np.random.Generator) -> np.ndarray:
    """A saturated RGB colour ``(3,)`` float: random hue, saturation 0.65-1, value 0.55-1."""
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(166, 255), rng.uniform(140, 255)]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float64)


Box = tuple[int, int, int, int]


def render_sample(rng: np.random.Generator, size: int = IMAGE_SIZE) -> tuple[np.ndarray, int, Box]:
    """One image ``(size, size, 3)`` uint8 RGB, its class index and the object's box.

    The box is ``(x0, y0, x1, y1)`` in pixels, inclusive-exclusive, around the object's pixels
    with at least 50% coverage.
    """
    img, cls, box, _ = render_sample_with_cover(rng, size)
    return img, cls, box


def render_sample_with_cover(
    rng: np.random.Generator, size: int = IMAGE_SIZE
) -> tuple[np.ndarray, int, Box, np.ndarray]:
    """``render_sample`` plus the object's coverage ``(size // STRIDE, size // STRIDE)`` float32 in
    [0, 1] on the CAM layer's grid (fraction of each cell's pixels the object covers)."""
    cls = int(rng.integers(len(CLASSES)))
    img = _background(rng, size)
    radius = float(rng.uniform(MIN_RADIUS, MAX_RADIUS))
    margin = radius + 2
    cx, cy = rng.uniform(margin, size - margin, 2)
    mask = _shape_mask(cls, float(cx), float(cy), radius, float(rng.uniform(0, 2 * np.pi)), size)
    alpha = mask.astype(np.float32)[..., None] / 255.0
    colour = _object_colour(rng)
    shade = 1.0 + 0.15 * (np.linspace(-1, 1, size, dtype=np.float32)[None, :, None] * rng.uniform(-1, 1))
    obj = np.broadcast_to(colour.astype(np.float32), img.shape) * shade
    img = img * (1 - alpha) + obj * alpha
    img += rng.normal(0, rng.uniform(3, 14), img.shape).astype(np.float32)
    ys, xs = np.nonzero(mask >= 128)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    g = size // STRIDE
    cover = (mask.astype(np.float32) / 255.0).reshape(g, STRIDE, g, STRIDE).mean(axis=(1, 3))
    return np.clip(img, 0, 255).astype(np.uint8), cls, box, cover


@dataclass
class Dataset:
    images: np.ndarray  # (N, H, W, 3) uint8 RGB
    labels: np.ndarray  # (N,) int64
    boxes: np.ndarray  # (N, 4) int64, x0 y0 x1 y1 inclusive-exclusive
    cover: np.ndarray | None = None  # (N, g, g) float32 object coverage of each CAM-grid cell


def make_dataset(n: int, seed: int) -> Dataset:
    """``n`` samples rendered from ``np.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    labels = np.empty(n, np.int64)
    boxes = np.empty((n, 4), np.int64)
    g = IMAGE_SIZE // STRIDE
    cover = np.empty((n, g, g), np.float32)
    for i in range(n):
        images[i], labels[i], boxes[i], cover[i] = render_sample_with_cover(rng)
    return Dataset(images, labels, boxes, cover)


def preprocess(images: np.ndarray) -> np.ndarray:
    """``(N, H, W, 3)`` uint8 RGB -> ``(N, 3, H, W)`` float32: [0, 1] scaling, then ImageNet mean/std."""
    unit = images.astype(np.float32) / 255.0
    normed = (unit - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    return np.ascontiguousarray(normed.transpose(0, 3, 1, 2))


# ---------------------------------------------------------------- model and training


def _conv(cin: int, cout: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class DemoCNN(nn.Module):
    """128x128 RGB -> logits; last conv stage ``features.stage3`` is ``(N, 64, 16, 16)``."""

    def __init__(self, num_classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.features = nn.Sequential()
        self.features.add_module("stage1", nn.Sequential(_conv(3, 16, 2)))
        self.features.add_module("stage2", nn.Sequential(_conv(16, 32, 2), _conv(32, 32), _conv(32, 32)))
        # The stride-8 stage mixes channels with 1x1 convs only: its receptive field stays ~31 px,
        # enough to see corners, spikes and a ring's hole, while 3x3 convs here smeared the CAM
        # well past the object (CAM boxes ~2.7x the true box area, IoU >= 0.5 for only 8%).
        self.features.add_module(
            "stage3", nn.Sequential(_conv(32, 64, 2), _conv(64, 64, kernel=1), _conv(64, 64, kernel=1))
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def localisation_loss(feats: torch.Tensor, weight: torch.Tensor, cover: torch.Tensor) -> torch.Tensor:
    """Penalty on the class's CAM ``(N, g, g)`` = ``weight`` ``(N, C)`` . ``feats`` ``(N, C, g, g)``.

    With GAP + Linear, Grad-CAM equals this CAM up to a positive factor, so shaping it shapes what
    onnxcam shows. Two terms, both scale-free: the share of positive CAM mass on cells the object
    does not touch (dilation by the receptive field and evidence from clutter), and how far cells
    mostly covered by the object fall below 40% of the peak (maps that light up one corner only).
    """
    cam = torch.relu(torch.einsum("nc,nchw->nhw", weight, feats))
    outside = (cover <= 0.0).float()
    leak = (cam * outside).sum((1, 2)) / (cam.sum((1, 2)) + 1e-6)
    peak = cam.amax((1, 2), keepdim=True).detach() + 1e-6
    inside = (cover >= 0.5).float()
    fill = (torch.relu(FILL_LEVEL - cam / peak) * inside).sum((1, 2)) / (inside.sum((1, 2)) + 1e-6)
    return (leak + fill).mean()


def train(model: DemoCNN, data: Dataset, epochs: int, batch: int = 64, lr: float = 3e-3) -> None:
    """Deterministic AdamW + one-cycle training on ``data`` (CPU): cross-entropy plus
    ``LOC_WEIGHT`` x ``localisation_loss`` on the true class's CAM."""
    if data.cover is None:
        raise ValueError("training needs the object coverage grids (make_dataset renders them)")
    y_all = torch.from_numpy(data.labels)
    cover_all = torch.from_numpy(data.cover)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(y_all) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)
    gen = torch.Generator().manual_seed(TORCH_SEED)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(y_all), generator=gen)
        total, correct, loss_sum, loc_sum = 0, 0, 0.0, 0.0
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            # Preprocessing per batch keeps memory at uint8 size (a float copy of the set is ~1 GB).
            xb, yb, cb = torch.from_numpy(preprocess(data.images[idx.numpy()])), y_all[idx], cover_all[idx]
            # Random flips are free label-preserving augmentation; the coverage grid flips along.
            if torch.rand((), generator=gen) < 0.5:
                xb, cb = xb.flip(3), cb.flip(2)
            feats = model.features(xb)
            logits = model.fc(torch.flatten(model.pool(feats), 1))
            loc = localisation_loss(feats, model.fc.weight[yb], cb)
            loss = loss_fn(logits, yb) + LOC_WEIGHT * loc
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            loc_sum += float(loc.detach()) * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            total += len(idx)
        print(
            f"  epoch {epoch + 1}/{epochs}: loss {loss_sum / total:.4f} (localisation {loc_sum / total:.4f})"
            f"  train acc {correct / total:.4f}",
            flush=True,
        )
    model.eval()


@torch.no_grad()
def predict(model: DemoCNN, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """``(N, H, W, 3)`` uint8 -> ``(N, C)`` float32 logits."""
    model.eval()
    out = [model(torch.from_numpy(preprocess(images[i : i + batch]))).numpy() for i in range(0, len(images), batch)]
    return np.concatenate(out)


# ---------------------------------------------------------------- localisation check


def onnxcam_localisation(onnx_path: Path, data: Dataset, batch: int = 50) -> tuple[float, float, np.ndarray]:
    """Measure localisation the way the product does, on the exported ONNX.

    onnxcam's Grad-CAM (``layer="auto"``, top class) on images preprocessed as meta.json says,
    ``cam_to_boxes(map, CAM_THRESHOLD)`` and ``box_iou``. Returns (fraction with IoU >= 0.5,
    fraction whose map argmax lies inside the true box, per-image IoUs ``(N,)``).
    """
    import onnxcam

    model = onnxcam.load(str(onnx_path), device="cpu")
    pp = onnxcam.get_preset("unit", model.input.size, model.input.layout, mean=MEAN, std=STD)
    cam = onnxcam.GradCAM(model, layer="auto")
    ious, inside = [], []
    for i in range(0, len(data.labels), batch):
        x = onnxcam.preprocess(list(data.images[i : i + batch]), pp)
        for m, b in zip(cam(x), data.boxes[i : i + batch], strict=True):
            truth = (int(b[0]), int(b[1]), int(b[2]), int(b[3]))
            box = onnxcam.cam_to_boxes(m, CAM_THRESHOLD)
            ious.append(onnxcam.box_iou(box, truth) if isinstance(box, tuple) else 0.0)
            y, x_ = np.unravel_index(int(np.argmax(m)), m.shape)
            inside.append(truth[0] <= x_ < truth[2] and truth[1] <= y < truth[3])
    arr = np.array(ious)
    return float(np.mean(arr >= 0.5)), float(np.mean(inside)), arr


def auto_layer_name(onnx_path: Path) -> str:
    """The tensor onnxcam's ``layer="auto"`` resolves to (must be the GAP input, the CAM layer)."""
    import onnxcam

    return str(onnxcam.load(str(onnx_path), device="cpu").layer("auto").name)


# ---------------------------------------------------------------- export


def export_onnx(model: DemoCNN, path: Path, check_images: np.ndarray) -> float:
    """Write ``model`` as ONNX (opset 17, dynamic batch, IR 9) and return the max |torch - ORT| logit gap."""
    import onnx
    import onnxruntime as ort

    model.eval()
    dummy = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        dynamo=False,
        opset_version=OPSET,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
    )
    proto = onnx.load(str(path))
    proto.ir_version = IR_VERSION
    proto.producer_name = "onnxcam-demo"
    proto.doc_string = "onnxcam demo CNN: synthetic shapes, 128x128 RGB, see meta.json for preprocessing"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = preprocess(check_images)
    ort_logits = sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    gap = float(np.abs(ort_logits - predict(model, check_images)).max())
    if gap > 1e-3:
        raise RuntimeError(f"onnxruntime logits differ from torch by {gap:.2e} on {path}")
    return gap


def cam_layer_tensor(path: Path) -> str:
    """Name of the ONNX tensor feeding GlobalAveragePool (the last conv stage's output)."""
    import onnx

    graph = onnx.load(str(path)).graph
    for node in graph.node:
        if node.op_type == "GlobalAveragePool":
            return str(node.input[0])
    raise RuntimeError(f"no GlobalAveragePool node in {path}")


def select_demo(model: DemoCNN, per_class: int, seed: int) -> Dataset:
    """The first ``per_class`` correctly classified samples of each class from ``seed``."""
    rng = np.random.default_rng(seed)
    picked: dict[int, list[tuple[np.ndarray, tuple[int, int, int, int]]]] = {c: [] for c in range(len(CLASSES))}
    while any(len(v) < per_class for v in picked.values()):
        img, cls, box = render_sample(rng)
        if len(picked[cls]) >= per_class:
            continue
        if int(predict(model, img[None]).argmax()) == cls:
            picked[cls].append((img, box))
    images, labels, boxes = [], [], []
    for c in range(len(CLASSES)):
        for img, box in picked[c]:
            images.append(img)
            labels.append(c)
            boxes.append(box)
    return Dataset(np.stack(images), np.array(labels, np.int64), np.array(boxes, np.int64))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("onnxcam/data/demo"), help="output folder")
    parser.add_argument("--n-train", type=int, default=6000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--n-loc", type=int, default=100, help="held-out images for the localisation check")
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args(argv)

    torch.manual_seed(TORCH_SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)

    t0 = time.perf_counter()
    train_set = make_dataset(args.n_train, TRAIN_SEED)
    test_set = make_dataset(args.n_test, TEST_SEED)
    print(f"rendered {args.n_train} train / {args.n_test} test images in {time.perf_counter() - t0:.1f} s")

    model = DemoCNN()
    t0 = time.perf_counter()
    train(model, train_set, args.epochs)
    train_s = time.perf_counter() - t0
    accuracy = float((predict(model, test_set.images).argmax(1) == test_set.labels).mean())
    print(
        f"held-out accuracy: {accuracy:.4f} ({args.n_test} images); "
        f"training time: {train_s:.1f} s on {torch.get_num_threads()} threads"
    )

    demo = select_demo(model, DEMO_PER_CLASS, DEMO_SEED)
    out: Path = args.out
    (out / "images").mkdir(parents=True, exist_ok=True)
    for old in (out / "images").glob("*.png"):
        old.unlink()
    onnx_path = out / "demo_cnn.onnx"
    gap = export_onnx(model, onnx_path, test_set.images[:64])
    print(f"wrote {onnx_path} ({onnx_path.stat().st_size} bytes); max |torch - onnxruntime| = {gap:.2e}")
    cam_layer = cam_layer_tensor(onnx_path)
    auto = auto_layer_name(onnx_path)
    if auto != cam_layer:
        raise RuntimeError(f"onnxcam's layer='auto' picks {auto!r}, not the CAM layer {cam_layer!r}")

    loc = Dataset(test_set.images[: args.n_loc], test_set.labels[: args.n_loc], test_set.boxes[: args.n_loc])
    rates: dict[str, dict[str, float]] = {}
    for name, ds in (("demo", demo), ("heldout", loc)):
        iou_rate, inside_rate, ious = onnxcam_localisation(onnx_path, ds)
        rates[name] = {"iou_ge_0.5": iou_rate, "argmax_inside": inside_rate, "mean_iou": float(ious.mean())}
        print(
            f"onnxcam Grad-CAM localisation ({name}, {len(ds.labels)} images): IoU>=0.5 {iou_rate:.3f}, "
            f"argmax in box {inside_rate:.3f}, mean IoU {ious.mean():.3f}"
        )

    (out / "labels.txt").write_text("".join(f"{c}\n" for c in CLASSES))

    boxes: dict[str, dict[str, Any]] = {}
    counts = dict.fromkeys(CLASSES, 0)
    for img, cls, box in zip(demo.images, demo.labels, demo.boxes, strict=True):
        name = CLASSES[int(cls)]
        fname = f"{name}_{counts[name]}.png"
        counts[name] += 1
        cv2.imwrite(str(out / "images" / fname), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        boxes[fname] = {"label": name, "class_index": int(cls), "box": [int(v) for v in box]}
    (out / "boxes.json").write_text(json.dumps(boxes, indent=2) + "\n")

    meta = {
        "model": "demo_cnn.onnx",
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "output": "logits (apply softmax for probabilities)",
        "input_size": [IMAGE_SIZE, IMAGE_SIZE],
        "layout": "NCHW",
        "color": "RGB",
        "scale": "divide uint8 pixels by 255 to get [0, 1]",
        "mean": list(MEAN),
        "std": list(STD),
        "classes": list(CLASSES),
        "cam_layer": cam_layer,
        "cam_layer_shape": [64, IMAGE_SIZE // STRIDE, IMAGE_SIZE // STRIDE],
        "box_format": "[x0, y0, x1, y1] pixels, inclusive-exclusive",
        "heldout_accuracy": round(accuracy, 4),
        "heldout_size": args.n_test,
        "gradcam_localisation": {k: {m: round(v, 4) for m, v in r.items()} for k, r in rates.items()},
        "localisation_method": (
            f"onnxcam.GradCAM(layer='auto'), cam_to_boxes(threshold={CAM_THRESHOLD}), box_iou; "
            f"heldout = first {args.n_loc} test images"
        ),
        "training_seconds": round(train_s, 1),
        "generator": "python -m models.demo_train",
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {len(boxes)} demo images, labels.txt, boxes.json, meta.json to {out}")

    ok = accuracy >= 0.95 and all(r["iou_ge_0.5"] >= 0.8 and r["argmax_inside"] >= 0.9 for r in rates.values())
    if not ok:
        print("FAILED: accuracy < 0.95 or localisation below 80% IoU / 90% argmax", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
