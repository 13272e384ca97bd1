"""Files that ship inside the package: the demo model, its labels, images and true boxes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxcam.errors import ModelNotFoundError

DEMO_DIR = Path(__file__).resolve().parent / "demo"


@dataclass(frozen=True)
class DemoFiles:
    """The embedded demo: a small CNN trained on synthetic shapes (``python -m models.demo_train``)."""

    model: Path
    labels: list[str]
    images: list[Path]
    truth: dict[str, dict[str, Any]]  # image file name -> {"label", "class_index", "box"}
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    preset: str
    meta: dict[str, Any]


def demo_files() -> DemoFiles:
    """Paths and metadata of the embedded demo; ``ModelNotFoundError`` if the package lacks them."""
    meta_path = DEMO_DIR / "meta.json"
    if not meta_path.is_file():
        raise ModelNotFoundError(
            f"the demo files are missing from {DEMO_DIR}: reinstall onnxcam, or rebuild them with "
            "`python -m models.demo_train` in a source checkout"
        )
    meta = json.loads(meta_path.read_text())
    labels = [line.strip() for line in (DEMO_DIR / "labels.txt").read_text().splitlines() if line.strip()]
    truth = json.loads((DEMO_DIR / "boxes.json").read_text())
    mean = tuple(float(v) for v in meta["mean"])
    std = tuple(float(v) for v in meta["std"])
    return DemoFiles(
        model=DEMO_DIR / meta.get("model", "demo_cnn.onnx"),
        labels=labels,
        images=sorted((DEMO_DIR / "images").glob("*.png")),
        truth=truth,
        mean=(mean[0], mean[1], mean[2]),
        std=(std[0], std[1], std[2]),
        preset="unit",  # meta.json: pixels / 255, then the mean/std above
        meta=meta,
    )


DEMO_DETECT_DIR = Path(__file__).resolve().parent / "demo_detect"


@dataclass(frozen=True)
class DemoDetectFiles:
    """The embedded detection demo: a tiny detector trained on synthetic shape scenes
    (``python -m models.demo_train_detect``); its output reads as YOLOv8's ``(N, 4 + K, A)``."""

    model: Path
    labels: list[str]
    images: list[Path]
    truth: dict[str, list[dict[str, Any]]]  # image file name -> [{"label", "class_index", "box"}, ...]
    preset: str
    meta: dict[str, Any]


def demo_detect_files() -> DemoDetectFiles:
    """Paths and metadata of the embedded detection demo; ``ModelNotFoundError`` if the package lacks them."""
    meta_path = DEMO_DETECT_DIR / "meta.json"
    if not meta_path.is_file():
        raise ModelNotFoundError(
            f"the detection demo files are missing from {DEMO_DETECT_DIR}: reinstall onnxcam, or rebuild them with "
            "`python -m models.demo_train_detect` in a source checkout"
        )
    meta = json.loads(meta_path.read_text())
    labels = [line.strip() for line in (DEMO_DETECT_DIR / "labels.txt").read_text().splitlines() if line.strip()]
    return DemoDetectFiles(
        model=DEMO_DETECT_DIR / meta["model"],
        labels=labels,
        images=sorted((DEMO_DETECT_DIR / "images").glob("*.png")),
        truth=json.loads((DEMO_DETECT_DIR / "boxes.json").read_text()),
        preset=str(meta.get("preset", "yolo")),
        meta=meta,
    )
