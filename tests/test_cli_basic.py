"""CLI: every command's --help shows an example; explain writes overlays + summary; the installed
entry point runs (subprocess)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from graphs import residual_net, save
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()
COMMANDS = [c.name for c in app.registered_commands]


def test_all_commands_registered():
    assert {"layers", "explain", "demo", "methods", "check-gradients"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_an_example(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output and "onnxcam " in result.output


@pytest.fixture()
def workspace(tmp_path):
    model = save(residual_net(), tmp_path / "res.onnx")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(images / f"img{i}.png"), (rng.random((20, 24, 3)) * 255).astype(np.uint8))
    return model, images, tmp_path / "out"


def test_explain_writes_overlays_npy_grid_and_summary(workspace):
    model, images, out = workspace
    result = runner.invoke(app, ["explain", str(model), str(images), "--method", "gradcam,eigencam", "--out", str(out),
                                 "--save-npy", "--quiet", "--size", "8x8"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["images"]) == 3 and summary["failed"] == []
    first = summary["images"][0]
    assert [e["method"] for e in first["explanations"]] == ["gradcam", "eigencam"]
    for e in first["explanations"]:
        assert (out / e["overlay"]).is_file()
        m = np.load(out / e["npy"])
        assert m.shape == (8, 8) and 0.0 <= m.min() and m.max() <= 1.0
    assert (out / first["grid"]).is_file()
    assert len(first["predictions"]) == 4  # min(top-5, 4 classes)


def test_layers_prints_table_and_auto_pick(workspace):
    model, _, _ = workspace
    result = runner.invoke(app, ["layers", str(model)])
    assert result.exit_code == 0
    assert "<- auto" in result.output and "auto layer: e" in result.output


def test_missing_model_is_one_line_error(tmp_path):
    result = runner.invoke(app, ["layers", str(tmp_path / "nope.onnx")])
    assert result.exit_code == 3
    assert result.output.count("\n") == 1 and "nope.onnx" in result.output and "Traceback" not in result.output


def test_installed_entry_point_runs(tmp_path):
    exe = shutil.which("onnxcam")
    if exe is None:
        pytest.fail("the `onnxcam` console script is not installed: run `pip install -e .` first")
    proc = subprocess.run([exe, "methods"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "gradcam" in proc.stdout and "ablationcam" in proc.stdout
    proc = subprocess.run([exe, "layers", str(tmp_path / "missing.onnx")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3 and proc.stderr.startswith("onnxcam: error:") and "Traceback" not in proc.stderr


def test_demo_writes_overlays_for_every_demo_image(tmp_path):
    from onnxcam.data import demo_files

    files = demo_files()
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["images"]) == len(files.images) >= 8
    for item in summary["images"]:
        entry = item["explanations"][0]
        assert (out / entry["overlay"]).is_file() and (out / entry["npy"]).is_file()
        assert item["predictions"][0]["label"] == files.truth[Path(item["file"]).name]["label"]
