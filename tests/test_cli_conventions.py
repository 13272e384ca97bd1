"""CLI conventions (issue #17): --version, -h, completion, --method/--methods everywhere, case-insensitive
--layout, --channel-order, no sentinel defaults, one --target, --top-k range, repeated methods, did you
mean, `layers --json`, '#N' layers, method options (--option and its shortcuts), and a lazy --help."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import typer
from graphs import residual_net, save
from typer.testing import CliRunner

from cli.main import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
COMMANDS = [c.name for c in app.registered_commands]
CLICK: Any = typer.main.get_command(app)  # typer vendors click; only its attributes are used


@pytest.fixture()
def ws(tmp_path: Path) -> tuple[Path, Path, Path]:
    model = save(residual_net(), tmp_path / "res.onnx")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        cv2.imwrite(str(images / f"img{i}.png"), (rng.random((20, 24, 3)) * 255).astype(np.uint8))
    return model, images, tmp_path / "out"


def _explain(ws: tuple[Path, Path, Path], *extra: str) -> Any:
    model, images, out = ws
    return runner.invoke(app, ["explain", str(model), str(images), "--out", str(out), "--quiet", "--save-npy",
                               *extra])


def _one_line_error(result: Any, code: int, *names: str) -> None:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxcam: error: "), result.stderr
    for name in names:
        assert name in lines[0], lines[0]


def _option(command: str, name: str) -> Any:
    params = [p for p in CLICK.commands[command].params if p.name == name]
    assert len(params) == 1
    return params[0]


def _map(out: Path, method: str = "gradcam") -> np.ndarray:
    summary = json.loads((out / "summary.json").read_text())
    entry = next(e for e in summary["images"][0]["explanations"] if e["method"] == method)
    return np.load(out / entry["npy"])


# -- version, help, completion ----------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag: str) -> None:
    import onnxcam

    result = runner.invoke(app, [flag])
    assert result.exit_code == 0 and result.output.strip() == f"onnxcam {onnxcam.__version__}"


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_short_help_on_every_command(command: str | None) -> None:
    args = [command, "-h"] if command else ["-h"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage:") and "-h, --help" in result.output


def test_shell_completion_is_offered() -> None:
    result = runner.invoke(app, ["--help"])
    assert "--install-completion" in result.output and "--show-completion" in result.output


# -- spellings and defaults -------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["explain", "compare", "bench", "audit", "demo"])
def test_method_and_methods_are_both_accepted(command: str) -> None:
    option = _option(command, "methods" if command in ("audit", "bench") else "method")
    assert {"--method", "--methods", "-m"} <= set(option.opts)


def test_bench_device_defaults_to_auto() -> None:
    assert _option("bench", "device").default == "auto"


@pytest.mark.parametrize(("command", "name"), [("explain", "target"), ("explain", "max_channels"),
                                               ("compare", "max_channels"), ("bench", "max_channels"),
                                               ("audit", "max_channels"), ("bench", "images"),
                                               ("bench", "threads"), ("layers", "last")])
def test_no_sentinel_defaults(command: str, name: str) -> None:
    assert _option(command, name).default is None


@pytest.mark.parametrize(("command", "flag"), [("bench", "--images"), ("bench", "--threads"), ("layers", "--last")])
def test_counts_below_one_are_errors(ws: tuple[Path, Path, Path], command: str, flag: str) -> None:
    _one_line_error(runner.invoke(app, [command, str(ws[0]), flag, "0"]), 2, f"{flag} 0: must be >= 1")


def test_layout_is_case_insensitive(ws: tuple[Path, Path, Path]) -> None:
    assert _explain(ws, "--layout", "nchw").exit_code == 0
    _one_line_error(_explain(ws, "--layout", "nchx"), 2, "--layout 'nchx'", "NCHW or NHWC")


def test_channel_order_reaches_preprocessing(ws: tuple[Path, Path, Path], tmp_path: Path) -> None:
    assert _explain(ws, "--channel-order", "rgb").exit_code == 0
    rgb = _map(ws[2])
    bgr_ws = (ws[0], ws[1], tmp_path / "bgr")
    assert _explain(bgr_ws, "--channel-order", "BGR").exit_code == 0
    assert not np.allclose(rgb, _map(bgr_ws[2]))
    _one_line_error(_explain(ws, "--channel-order", "rbg"), 2, "--channel-order 'rbg'", "rgb or bgr")


# -- targets, top-k, methods ------------------------------------------------------------------------


def test_negative_target_is_an_error(ws: tuple[Path, Path, Path]) -> None:
    _one_line_error(_explain(ws, "--target", "-1"), 2, "--target -1", "start at 0")


def test_several_targets_are_an_error_not_the_last_one(ws: tuple[Path, Path, Path]) -> None:
    _one_line_error(_explain(ws, "-t", "1", "-t", "2"), 2, "--target is given 2 times (1, 2)", "give one --target")


def test_top_k_above_the_class_count_is_an_error(ws: tuple[Path, Path, Path]) -> None:
    _one_line_error(_explain(ws, "--top-k", "10"), 2, "--top-k 10", "4 classes")
    assert _explain(ws, "--top-k", "4").exit_code == 0


def test_repeated_method_runs_once_with_a_note(ws: tuple[Path, Path, Path]) -> None:
    result = _explain(ws, "-m", "gradcam,Grad-CAM,eigencam")
    assert result.exit_code == 0, result.output
    assert "note: method Grad-CAM is given twice" in result.stderr
    summary = json.loads((ws[2] / "summary.json").read_text())
    assert [e["method"] for e in summary["images"][0]["explanations"]] == ["gradcam", "eigencam"]


def test_mistyped_method_gets_did_you_mean(ws: tuple[Path, Path, Path]) -> None:
    _one_line_error(_explain(ws, "-m", "gradcan"), 2, "'gradcan'", "did you mean 'gradcam'")


# -- layers -----------------------------------------------------------------------------------------


def test_layers_json(ws: tuple[Path, Path, Path]) -> None:
    result = runner.invoke(app, ["layers", str(ws[0]), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [row["name"] for row in data["layers"]] == ["a", "b", "c", "d", "e", "g"]
    assert [row["index"] for row in data["layers"]] == [0, 1, 2, 3, 4, 5]
    assert data["auto"] == "e" and [row["auto"] for row in data["layers"]] == [False] * 4 + [True, False]
    assert data["layers"][0]["shape"] == ["N", 6, 8, 8] and data["layers"][0]["op"] == "Conv"


def test_layer_by_row_number(ws: tuple[Path, Path, Path], tmp_path: Path) -> None:
    assert _explain(ws, "--layer", "#2").exit_code == 0
    named = (ws[0], ws[1], tmp_path / "named")
    assert _explain(named, "--layer", "c").exit_code == 0
    np.testing.assert_array_equal(_map(ws[2]), _map(named[2]))


def test_layer_row_out_of_range(ws: tuple[Path, Path, Path]) -> None:
    _one_line_error(_explain(ws, "--layer", "#9"), 2, "--layer #9", "6 candidate layers (#0..#5)")


def test_bare_number_is_a_name_and_the_error_points_to_rows(ws: tuple[Path, Path, Path]) -> None:
    _one_line_error(_explain(ws, "--layer", "7"), 4, "'7'", "--layer '#7'")


# -- method options ---------------------------------------------------------------------------------


class Captured(Exception):
    pass


@pytest.fixture()
def capture(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replace the library entry points the commands call; record what they were given."""
    import onnxcam.audit.job as job
    import onnxcam.bench as bench
    import onnxcam.pipeline as pipeline

    seen: dict[str, Any] = {}

    def record(name: str) -> Any:
        def fake(*args: Any, **kwargs: Any) -> Any:
            seen[name] = (args, kwargs)
            raise typer.Exit(0)
        return fake

    monkeypatch.setattr(pipeline, "explain_images", record("explain"))
    monkeypatch.setattr(job, "run_compare", record("compare"))
    monkeypatch.setattr(job, "run_audit", record("audit"))
    monkeypatch.setattr(bench, "bench", record("bench"))
    return seen


def test_explain_option_and_shortcuts(ws: tuple[Path, Path, Path], capture: dict[str, Any]) -> None:
    result = _explain(ws, "-m", "scorecam,sscam,smoothgradcam++", "--option", "scorecam.max_channels=3",
                      "--option", "torchcam_compat=true", "--samples", "5", "--noise-std", "0.25")
    assert result.exit_code == 0, result.output
    config = capture["explain"][0][3]
    assert config.method_options == {
        "scorecam": {"max_channels": 3},
        "sscam": {"num_samples": 5, "std": 0.25},
        "smoothgradcam++": {"torchcam_compat": True, "num_samples": 5, "std": 0.25},
    }


def test_max_channels_alias_and_its_range(ws: tuple[Path, Path, Path], capture: dict[str, Any]) -> None:
    assert _explain(ws, "-m", "scorecam", "--max-channels", "4").exit_code == 0
    assert capture["explain"][0][3].method_options == {"scorecam": {"max_channels": 4}}
    _one_line_error(_explain(ws, "-m", "scorecam", "--max-channels", "-5"), 2, "--max-channels -5", ">= 1")
    _one_line_error(_explain(ws, "-m", "gradcam", "--max-channels", "5"), 2, "--max-channels", "scorecam, sscam")


def test_unknown_option_names_the_allowed_ones(ws: tuple[Path, Path, Path]) -> None:
    _one_line_error(_explain(ws, "-m", "scorecam", "--option", "scorecam.channels=3"), 2,
                    "scorecam has no option 'channels'", "allowed: scorecam.max_channels")


def test_compare_takes_methods_and_options(ws: tuple[Path, Path, Path], capture: dict[str, Any]) -> None:
    model, images, out = ws
    result = runner.invoke(app, ["compare", str(model), str(model), str(images), "--methods", "sscam",
                                 "--samples", "2", "--layer-b", "#1", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    config = capture["compare"][0][4]
    assert config.method == "sscam" and config.method_options == {"sscam": {"num_samples": 2}}
    assert config.layer_b == "b"
    two = runner.invoke(app, ["compare", str(model), str(model), str(images), "-m", "gradcam,scorecam"])
    _one_line_error(two, 2, "compare explains with one method")


def test_audit_takes_method_options(ws: tuple[Path, Path, Path], capture: dict[str, Any]) -> None:
    model, images, out = ws
    result = runner.invoke(app, ["audit", str(model), str(images), "--method", "gradcam,scorecam",
                                 "--option", "max_channels=2", "--layout", "nchw", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    config = capture["audit"][0][3]
    assert config.methods == ["gradcam", "scorecam"] and config.method_options == {"scorecam": {"max_channels": 2}}


def test_bench_takes_method_options(ws: tuple[Path, Path, Path], capture: dict[str, Any]) -> None:
    result = runner.invoke(app, ["bench", str(ws[0]), "--method", "scorecam,scorecam:max_channels=2,scorecam",
                                 "--option", "scorecam.max_channels=3", "--layer", "#4"])
    assert result.exit_code == 0, result.output
    args, kwargs = capture["bench"]
    assert args[1] == ["scorecam", "scorecam:max_channels=2"] and "timed once" in result.stderr
    assert kwargs["method_options"] == {"scorecam": {"max_channels": 3}}
    assert kwargs["layer"] == "e" and kwargs["device"] == "auto"
    bad = runner.invoke(app, ["bench", str(ws[0]), "--method", "scorecam:max_channels=0"])
    _one_line_error(bad, 2, "scorecam.max_channels must be >= 1")


# -- start-up ---------------------------------------------------------------------------------------


def test_help_does_not_import_the_heavy_libraries() -> None:
    code = ("import sys\nfrom cli.main import app\ntry:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('onnx', 'onnxruntime', 'cv2', 'numpy', 'scipy') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
