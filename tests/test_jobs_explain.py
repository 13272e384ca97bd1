"""Issue #18: `explain` streams its per-image records (a temp log, then summary.json written from it, an
image per line) and reads them back from disk: the summary's images are those of summary.json."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from graphs import residual_net, save

from onnxcam import load
from onnxcam.image import get_preset
from onnxcam.pipeline import ExplainConfig, RecordLog, explain_images


def test_explain_records_are_streamed_and_read_back(tmp_path: Path) -> None:
    model = load(save(residual_net(seed=1), tmp_path / "res.onnx"))
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(7):
        cv2.imwrite(str(images / f"img{i}.png"), (rng.random((12, 14, 3)) * 255).astype(np.uint8))
    (images / "bad.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    config = ExplainConfig(preprocess=get_preset("imagenet", model.input.size, model.input.layout),
                           methods=["gradcam", "eigencam"], batch_size=3)
    summary = explain_images(model, sorted(images.iterdir()), out, config)
    on_disk = json.loads((out / "summary.json").read_text())
    assert isinstance(summary.images, RecordLog) and len(summary.images) == 7
    assert list(summary.images) == on_disk["images"]
    assert summary.images[-1] == on_disk["images"][6] and summary.images[1:3] == on_disk["images"][1:3]
    assert [Path(f["file"]).name for f in on_disk["failed"]] == ["bad.png"]
    assert on_disk["methods"] == ["gradcam", "eigencam"] and set(on_disk) == {
        "model", "device", "methods", "layers", "images", "failed", "notes"}
    assert not list(out.glob(".*.tmp"))  # the record log is gone
    with pytest.raises(IndexError):
        summary.images[7]
