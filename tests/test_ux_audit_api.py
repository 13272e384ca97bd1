"""Issue #17 beyond explain: the audit report (verdicts, calibrated flags, inline SVG charts, flags
once per image, a box legend) checked in headless Chromium; the compare verdict; the CUDA install
check; the pytorch-grad-cam style Python API."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from graphs import residual_net, save
from typer.testing import CliRunner

import onnxcam
from cli.main import app
from cli.progress import _State
from onnxcam import runtime
from onnxcam.audit.job import compare_verdict, sanity_verdict
from onnxcam.audit.metrics_run import FALSE_ALARM_TARGET, INSERTION_MARGIN, calibrate_insertion
from onnxcam.errors import InputError, OnnxCamWarning, OnnxRuntimeError

runner = CliRunner()
N_IMAGES = 4


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("ux_audit")
    model = save(residual_net(seed=1), root / "res.onnx")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        cv2.imwrite(str(images / f"img{i}.png"), (rng.random((20, 24, 3)) * 255).astype(np.uint8))
    boxes = root / "boxes.json"
    boxes.write_text(json.dumps({"img0.png": {"box": [0, 0, 12, 10]}, "img1.png": {"box": [12, 10, 24, 20]}}))
    return model, images, boxes


@pytest.fixture(scope="module")
def audit_out(ws: tuple[Path, Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, images, boxes = ws
    out = tmp_path_factory.mktemp("ux_audit_out") / "audit"
    result = runner.invoke(app, ["audit", str(model), str(images), "--boxes", str(boxes), "-m", "gradcam,eigencam",
                                 "--out", str(out), "--steps", "8", "--quiet", "--sanity-images", "3"])
    assert result.exit_code == 0, result.output
    return out


# -------------------------------------------------------------------------------------- verdicts


def test_sanity_verdict_reads_the_whole_curve() -> None:
    assert sanity_verdict([0.6, 0.3, 0.1], [0, 0, 0], 4)[0] == "falls"
    verdict, text = sanity_verdict([0.2, 0.6, 0.1], [0, 0, 0], 4)  # rises to 0.6 on the way
    assert verdict == "rises" and "0.60" in text and "falls as expected" not in text
    verdict, text = sanity_verdict([0.5, 0.4, 0.30], [0, 0, 0], 4)  # ends at 0.30
    assert verdict == "partial" and "falls as expected" not in text
    assert sanity_verdict([0.9, 0.8, 0.7], [0, 0, 0], 4)[0] == "survives"
    verdict, text = sanity_verdict([0.5, 0.2, 0.1], [0, 3, 3], 4)  # 3 of 4 images dropped at the end
    assert verdict == "undefined" and "3 of 4 at depth 2" in text and "3 of 4 at depth 3" in text
    verdict, text = sanity_verdict([0.5, 0.2, 0.1], [0, 1, 0], 4)
    assert verdict == "falls" and "1 of 4 at depth 2" in text


def test_compare_verdict() -> None:
    items = [{"pearson": 0.95, "top1_agree": True}] * 15 + [{"pearson": 0.5, "top1_agree": True}]
    v = compare_verdict(items)
    assert v["agree"] and v["text"].startswith("maps agree: median Pearson 0.95, 1 of 16 images changed")
    v = compare_verdict([{"pearson": 0.95, "top1_agree": False}] * 4)
    assert not v["agree"] and "4 of 4 images changed" in v["text"]


def test_calibrated_margin_sets_the_false_alarm_rate() -> None:
    rng = np.random.default_rng(0)
    truth = rng.random(4000)
    # Random maps' AUCs scatter around each image's value with std 0.1.
    a, b, c = (truth + rng.normal(0, 0.1, truth.size) for _ in range(3))
    margin, expected = calibrate_insertion(a, b)
    assert margin == pytest.approx(1.6449 * 0.1 * math.sqrt(1.5), rel=0.05)
    assert expected == pytest.approx(FALSE_ALARM_TARGET, abs=1e-6)
    # A third, uninformative map against the two-map baseline is flagged at about the target rate.
    rate = float(np.mean(c < (a + b) / 2 - margin))
    assert abs(rate - FALSE_ALARM_TARGET) < 0.015
    margin, expected = calibrate_insertion(truth, truth + 1e-4)  # no spread: the floor, no false alarms
    assert margin == INSERTION_MARGIN and expected == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------------------------------- report


def test_audit_report_contents(audit_out: Path) -> None:
    report = json.loads((audit_out / "metrics.json").read_text())
    fa = report["false_alarm"]
    assert fa["of"] == 2 * N_IMAGES and fa["margin"] >= INSERTION_MARGIN and 0 <= fa["expected"] <= 0.05 + 1e-9
    for m in ("gradcam", "eigencam", "random"):
        curves = report["curves"][m]
        assert len(curves["deletion"]["mean"]) == 9 and len(curves["insertion"]["std"]) == 9
    for res in report["sanity"]["methods"].values():
        assert res["verdict"] in ("falls", "rises", "partial", "survives", "undefined")
        assert len(res["dropped"]) == len(res["depths"])
    text = (audit_out / "report.html").read_text()
    assert "<details open>" in text and "ground-truth" in text
    assert "false-alarm rate" in text


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("no chromium on PATH: apt-get install -y chromium (.ci/run installs it)")


def _render(page: Path, tmp_path: Path) -> str:
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           # Any network request fails: what renders is what the file holds.
           "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _no_external_references(text: str) -> None:
    for attr in re.findall(r"""\b(?:src|href|xlink:href)\s*=\s*["']([^"']*)["']""", text):
        assert attr.startswith(("data:", "#")), attr
    assert not re.search(r"url\((?!data:|#)", text) and "@import" not in text and not re.search(r"https?://", text)


def test_audit_report_in_headless_chromium(audit_out: Path, tmp_path: Path) -> None:
    text = (audit_out / "report.html").read_text()
    _no_external_references(text)
    dom = _render(audit_out / "report.html", tmp_path)
    total = N_IMAGES * 3
    assert f'data-images-loaded="{total}"' in dom
    # Charts: deletion + insertion curves, one distribution per metric, the sanity curve.
    report = json.loads((audit_out / "metrics.json").read_text())
    n_charts = 2 + len(report["metric_keys"]) + 1
    assert len(re.findall(r'<svg class="chart"', dom)) == n_charts
    assert len(re.findall(r'<polyline class="series"', dom)) >= 2 * 3 + 2  # 2 methods + random, x 2; sanity
    assert len(re.findall(r'<polygon class="spread"', dom)) >= 4  # each method's spread on both curves
    # Every flag's reason once per image, whatever the number of methods that raised it.
    for i, item in enumerate(report["images"]):
        card = re.search(rf'<div class="card" id="img-{i}">(.*?)</div>\s*(?=<div class="card"|<p class="meta" id)',
                         dom, re.S)
        assert card is not None
        codes = re.findall(r'data-flag="([a-z_]+)"', card.group(1))
        raised = {c for res in item["methods"].values() for c in res["flags"]}
        assert sorted(codes) == sorted(raised)  # one line per code, no repeats


def test_compare_report_has_a_verdict_and_a_scaled_difference(ws: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model, images, _ = ws
    out = tmp_path / "cmp"
    result = runner.invoke(app, ["compare", str(model), str(model), str(images), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "metrics.json").read_text())
    assert report["verdict"]["agree"] and report["verdict"]["text"].startswith("maps agree: median Pearson 1.00")
    text = (out / "report.html").read_text()
    assert "Verdict: maps agree" in text and "colour scale 0 to 0.000" in text
    _no_external_references(text)
    assert 'data-images-loaded="16"' in _render(out / "report.html", tmp_path)


def test_audit_of_unreadable_images_fails_and_writes_nothing(ws: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model, _, _ = ws
    bad = tmp_path / "bad.png"
    bad.write_text("no image")
    out = tmp_path / "audit"
    result = runner.invoke(app, ["audit", str(model), str(bad), "--out", str(out), "--quiet", "--no-sanity"])
    assert result.exit_code == 5 and "no image could be read" in result.stderr
    assert not out.exists()


def test_progress_counter_shows_fractions_and_stage() -> None:
    state = _State(4, "explaining")
    state.advance(0, stage="building sessions")
    assert state.stage == "building sessions" and state.counter() == "0/4"
    state.advance(0.5, stage="explaining")
    assert state.counter() == "0.5/4"
    state.advance(3.5)
    assert state.counter() == "4/4"


# ------------------------------------------------------------------------------------ CUDA check


@pytest.fixture()
def cpu_only_ort(monkeypatch: pytest.MonkeyPatch) -> None:
    providers = ["AzureExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(runtime.ort, "get_available_providers", lambda: providers)
    monkeypatch.setattr(runtime, "cuda_usable", lambda: False)
    monkeypatch.setattr(runtime, "_WARNED", set())


def test_cuda_asked_for_without_a_cuda_build(cpu_only_ort: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "gpu_present", lambda: False)
    with pytest.raises(OnnxRuntimeError) as info:
        runtime.providers_for("cuda")
    assert "--device cuda was asked for" in str(info.value) and runtime.REPAIR_CUDA in str(info.value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert runtime.providers_for("auto") == ["CPUExecutionProvider"]  # no GPU: nothing to say


def test_gpu_present_but_cpu_onnxruntime_warns_once(cpu_only_ort: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "gpu_present", lambda: True)
    with pytest.warns(OnnxCamWarning, match="has an NVIDIA GPU.*pip uninstall -y onnxruntime onnxruntime-gpu"):
        assert runtime.providers_for("auto") == ["CPUExecutionProvider"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runtime.providers_for("auto")  # once per process
    assert runtime.cuda_install_problem("cpu") is None


def test_cli_says_how_to_repair_the_install(cpu_only_ort: None, monkeypatch: pytest.MonkeyPatch,
                                            ws: tuple[Path, Path, Path], tmp_path: Path) -> None:
    monkeypatch.setattr(runtime, "gpu_present", lambda: True)
    model, images, _ = ws
    result = runner.invoke(app, ["explain", str(model), str(images), "--out", str(tmp_path / "o"), "-q"])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(notes) == 1 and notes[0].startswith("onnxcam: note: this machine has an NVIDIA GPU")
    assert runtime.REPAIR_CUDA in notes[0]


# ------------------------------------------------------------------------------- Python API


class _FakeTensor:
    """What onnxcam needs of a torch tensor (duck-typed: the library never imports torch)."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def detach(self) -> _FakeTensor:
        return self

    def cpu(self) -> _FakeTensor:
        return self

    def numpy(self) -> np.ndarray:
        return self.array


def test_pytorch_grad_cam_keywords(ws: tuple[Path, Path, Path]) -> None:
    model_path, _, _ = ws
    model = onnxcam.load(model_path)
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)
    reference = onnxcam.GradCAM(model, layer=["b"])(x, [onnxcam.ClassTarget(1)] * 2)
    with onnxcam.GradCAM(model, target_layers=["b"]) as cam:
        assert cam.layers == ("b",)
        maps = cam(input_tensor=x, targets=[onnxcam.ClassifierOutputTarget(1), onnxcam.ClassifierOutputTarget(1)])
        np.testing.assert_array_equal(maps, reference)
        np.testing.assert_array_equal(cam(_FakeTensor(x), 1), reference)
        assert model._sessions  # built
    assert not model._sessions  # released on exit
    with pytest.raises(onnxcam.errors.ArgumentError, match="tensor names"):
        onnxcam.GradCAM(model, target_layers=[object()])
    with pytest.raises(onnxcam.errors.ArgumentError, match="either layer= or target_layers="):
        onnxcam.GradCAM(model, layer="b", target_layers=["b"])


def test_exceptions_inside_the_with_block_propagate(ws: tuple[Path, Path, Path]) -> None:
    with pytest.raises(ZeroDivisionError), onnxcam.GradCAM(ws[0]) as cam:
        assert cam.layers
        1 / 0  # noqa: B018


def test_pil_images_need_the_preprocessing(ws: tuple[Path, Path, Path]) -> None:
    from PIL import Image

    model = onnxcam.load(ws[0])
    rgb = (np.random.default_rng(1).random((20, 24, 3)) * 255).astype(np.uint8)
    pil = Image.fromarray(rgb)
    with pytest.raises(InputError, match="preprocess='imagenet'"):
        onnxcam.GradCAM(model)(pil)
    pp = onnxcam.get_preset("imagenet", model.input.size, model.input.layout)
    expected = onnxcam.GradCAM(model)(onnxcam.preprocess([rgb], pp))
    np.testing.assert_array_equal(onnxcam.GradCAM(model, preprocess="imagenet")(pil), expected)
    np.testing.assert_array_equal(onnxcam.GradCAM(model, preprocess=pp)([pil, pil])[1], expected[0])


def test_readme_custom_target_example(ws: tuple[Path, Path, Path]) -> None:
    """The README's MarginTarget, run by a gradient method and a gradient-free one."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"```python\n(import numpy as np\nfrom onnxcam import OutputTarget\n.*?)\nmaps = ", readme, re.S)
    assert code is not None
    namespace: dict[str, object] = {}
    exec(code.group(1), namespace)  # noqa: S102 - the project's own README
    margin = namespace["MarginTarget"](1, 2)  # type: ignore[operator]
    model = onnxcam.load(ws[0])
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)
    e = onnxcam.GradCAM(model, "b").explain(x, margin)
    np.testing.assert_allclose(e.scores, e.outputs[0][:, 1] - e.outputs[0][:, 2], rtol=1e-5)
    assert onnxcam.AblationCAM(model, "b")(x, margin).shape == (2, 8, 8)
