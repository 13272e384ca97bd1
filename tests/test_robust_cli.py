"""``onnxcam explain`` on a folder with a corrupt image, and failures mid-run: the good images are
explained, the bad one reported, and an aborted run leaves the output folder as it found it."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from graphs import residual_net, save
from typer.testing import CliRunner

from cli.main import app
from onnxcam.errors import OnnxRuntimeError
from onnxcam.explainers.gradient import GradCAM
from onnxcam.output import MANIFEST

runner = CliRunner()
N_IMAGES = 20
CORRUPT = "img07.png"


@pytest.fixture()
def folder(tmp_path: Path) -> tuple[Path, Path]:
    """(model, image folder): 20 PNGs named img00..img19, of which img07.png is corrupt."""
    model = save(residual_net(), tmp_path / "res.onnx")
    images = tmp_path / "photos"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        name = f"img{i:02d}.png"
        if name == CORRUPT:
            (images / name).write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(64))  # PNG magic, garbage body
            continue
        ok, buf = cv2.imencode(".png", (rng.random((16, 20, 3)) * 255).astype(np.uint8))
        assert ok
        (images / name).write_bytes(buf.tobytes())
    return model, images


def _snapshot(folder: Path) -> dict[str, bytes]:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _explain(model: Path, images: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["explain", str(model), str(images), "--out", str(out), "--batch-size", "4",
                                 "--save-npy", *extra])
    return result.exit_code, result.stdout, result.stderr


def test_corrupt_image_is_skipped_and_reported(folder: tuple[Path, Path], tmp_path: Path) -> None:
    model, images = folder
    out = tmp_path / "cams"
    code, stdout, stderr = _explain(model, images, out)
    assert code == 0, stderr
    assert CORRUPT in stderr and "Traceback" not in stderr
    assert "explained 19 image(s)" in stdout
    summary = json.loads((out / "summary.json").read_text())
    explained = [Path(item["file"]).name for item in summary["images"]]
    assert explained == [f"img{i:02d}.png" for i in range(N_IMAGES) if f"img{i:02d}.png" != CORRUPT]
    assert [Path(f["file"]).name for f in summary["failed"]] == [CORRUPT]
    assert CORRUPT in summary["failed"][0]["error"]
    # One overlay and one map per good image, nothing for the corrupt one, nothing else.
    names = sorted(p.name for p in out.iterdir() if p.name != MANIFEST)
    expected = sorted([f"img{i:02d}_gradcam.{ext}" for i in range(N_IMAGES) if i != 7 for ext in ("png", "npy")]
                      + ["summary.json"])
    assert names == expected
    for i in (0, 19):
        m = np.load(out / f"img{i:02d}_gradcam.npy")
        assert m.shape == (8, 8) and np.all(np.isfinite(m)) and 0 <= m.min() and m.max() <= 1
    # The inputs are untouched.
    assert len(list(images.iterdir())) == N_IMAGES


def _fail_after_first_batch(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> dict[str, int]:
    calls = {"n": 0}
    original = GradCAM.explain

    def explain(self, x, targets=None):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] > 1:
            raise exc
        return original(self, x, targets)

    monkeypatch.setattr(GradCAM, "explain", explain)
    return calls


FAILURES = {
    "ctrl-c": (KeyboardInterrupt(), 130, "interrupted"),
    "bug": (RuntimeError("boom in batch 2"), 10, "boom in batch 2"),
    "runtime-error": (OnnxRuntimeError("onnxruntime failed running the model"), 7, "onnxruntime failed"),
}


@pytest.mark.parametrize("kind", list(FAILURES), ids=list(FAILURES))
def test_failure_mid_run_leaves_no_partial_files(folder: tuple[Path, Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    exc, code_expected, words = FAILURES[kind]
    model, images = folder
    out = tmp_path / "cams"
    calls = _fail_after_first_batch(monkeypatch, exc)
    code, _, stderr = _explain(model, images, out, "--quiet")
    assert calls["n"] == 2, "the failure must come after a batch was written"
    assert code == code_expected, stderr
    assert words in stderr and "Traceback" not in stderr
    assert not out.exists(), f"partial output left: {_snapshot(out).keys()}"


@pytest.mark.parametrize("kind", list(FAILURES), ids=list(FAILURES))
def test_failed_rerun_restores_previous_results(folder: tuple[Path, Path], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """A second run into a folder of earlier results that dies mid-way puts every old file back."""
    model, images = folder
    out = tmp_path / "cams"
    code, _, stderr = _explain(model, images, out, "--quiet", "--colormap", "viridis")
    assert code == 0, stderr
    (out / "notes.txt").write_text("mine\n")
    before = _snapshot(out)
    exc, code_expected, _ = FAILURES[kind]
    _fail_after_first_batch(monkeypatch, exc)
    code, _, _ = _explain(model, images, out, "--quiet", "--colormap", "jet")  # would change every overlay
    assert code == code_expected
    assert _snapshot(out) == before
    # No temp/backup files (the manifest of the first run's files stays, as before).
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [MANIFEST]


def test_all_images_corrupt_exits_5(folder: tuple[Path, Path], tmp_path: Path) -> None:
    model, images = folder
    code, _, stderr = _explain(model, images / CORRUPT, tmp_path / "cams")
    assert code == 5 and CORRUPT in stderr
