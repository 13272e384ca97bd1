"""``onnxcam audit`` / ``onnxcam compare`` end to end on a tiny conv net: a self-contained report,
JSON/CSV with the expected keys and finite numbers, flags on a constructed near-tie, compare of a
model with itself and with a perturbed copy; rendered in headless Chromium when available."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import subprocess

import cv2
import numpy as np
import onnx
import pytest
from graphs import residual_net, save
from onnx import numpy_helper
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()
N_IMAGES = 3


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    model = save(residual_net(seed=1), root / "res.onnx")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        cv2.imwrite(str(images / f"img{i}.png"), (rng.random((20, 24, 3)) * 255).astype(np.uint8))
    boxes = root / "boxes.json"
    boxes.write_text(json.dumps({"img0.png": {"box": [0, 0, 12, 10]}, "img1.png": {"box": [12, 10, 24, 20]}}))
    return root, model, images, boxes


def _finite_numbers(obj, path="$"):
    if isinstance(obj, float):
        assert math.isfinite(obj), path
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _finite_numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _finite_numbers(v, f"{path}[{i}]")


def _check_self_contained(text: str, n_overlays: int, n_inputs: int) -> None:
    assert not re.search(r"https?://", text)
    assert not re.search(r"<(link|script)[^>]+(src|href)=", text)  # no external CSS/JS
    imgs = re.findall(r"<img\b[^>]*>", text)
    assert len(imgs) == n_overlays + n_inputs
    assert all(re.search(r'src="data:image/(png|jpeg);base64,', tag) for tag in imgs)
    assert len(re.findall(r'<img class="overlay"', text)) == n_overlays


@pytest.fixture(scope="module")
def audit_out(workspace):
    root, model, images, boxes = workspace
    out = root / "audit_out"
    result = runner.invoke(app, ["audit", str(model), str(images), "--boxes", str(boxes), "--methods",
                                 "gradcam,eigencam", "--out", str(out), "--steps", "8", "--quiet",
                                 "--sanity-images", "2"])
    assert result.exit_code == 0, result.output
    return out


def test_audit_report_is_self_contained(audit_out):
    text = (audit_out / "report.html").read_text()
    _check_self_contained(text, N_IMAGES * 2, N_IMAGES)
    assert "Sanity check" in text and "img2.png" in text


def test_audit_json_and_csv(audit_out):
    report = json.loads((audit_out / "metrics.json").read_text())
    _finite_numbers(report)
    keys = ["average_drop", "increase", "deletion_auc", "insertion_auc", "border_energy", "pointing_game",
            "energy_pointing_game", "cam_box_iou"]
    assert report["metric_keys"] == keys and report["methods"] == ["gradcam", "eigencam"]
    assert len(report["images"]) == N_IMAGES
    first = report["images"][0]
    assert first["box"] == [[0, 0, 4, 4]]  # 24 x 20 image stretched to 8 x 8
    assert report["images"][2]["box"] is None
    for m in ("gradcam", "eigencam"):
        values = first["methods"][m]["values"]
        assert set(values) == set(keys) and all(isinstance(values[k], float) for k in keys)
        assert 0 <= values["insertion_auc"] <= 1 and values["pointing_game"] in (0.0, 1.0)
        assert report["summary"][m]["cam_box_iou"]["n"] == 2  # img2 has no box
        assert report["summary"][m]["deletion_auc"]["n"] == N_IMAGES
    sanity = report["sanity"]["methods"]["gradcam"]
    assert sanity["depths"] == [1, 2, 3] and len(sanity["per_image"][0]) == 2
    with (audit_out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == N_IMAGES * 2
    expected = {"file", "method", "class", "probability", "near_tie", "flags", "random_insertion_auc", *keys}
    assert expected <= set(rows[0])
    assert all(math.isfinite(float(r["deletion_auc"])) for r in rows)
    assert rows[4]["cam_box_iou"] == ""  # img2, no box


def test_near_tie_flag_fires(tmp_path, workspace):
    _, _, images, _ = workspace
    proto = residual_net(seed=1)
    inits = {t.name: t for t in proto.graph.initializer}
    wf, bf = numpy_helper.to_array(inits["wf"]).copy(), numpy_helper.to_array(inits["bf"]).copy()
    wf[1] = wf[0]  # classes 0 and 1 score identically: an exact tie on every image ...
    bf[0] = bf[1] = 20.0  # ... and far above the other classes, so they are the top 2
    wf[0] += 1e-3  # ... up to a hair, so class 0 is the top-1
    inits["wf"].CopyFrom(numpy_helper.from_array(wf, "wf"))
    inits["bf"].CopyFrom(numpy_helper.from_array(bf, "bf"))
    model = save(proto, tmp_path / "tie.onnx")
    out = tmp_path / "out"
    result = runner.invoke(app, ["audit", str(model), str(images), "--out", str(out), "--steps", "4", "--quiet",
                                 "--no-sanity", "--labels", str(_labels(tmp_path))])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "metrics.json").read_text())
    assert report["near_ties"] == N_IMAGES and report["sanity"] is None
    for item in report["images"]:
        assert item["near_tie"] is True
        top = item["predictions"]
        assert [p["label"] for p in top[:2]] in (["zero", "one"], ["one", "zero"])
        assert abs(top[0]["probability"] - top[1]["probability"]) < 0.05
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert all("near_tie" in r["flags"].split(";") for r in rows)
    assert "top-2 probabilities within 0.05" in (out / "report.html").read_text()


def _labels(tmp_path):
    f = tmp_path / "labels.txt"
    f.write_text("zero\none\ntwo\nthree\n")
    return f


def test_compare_with_itself(workspace, tmp_path):
    _, model, images, _ = workspace
    out = tmp_path / "cmp"
    result = runner.invoke(app, ["compare", str(model), str(model), str(images), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "metrics.json").read_text())
    assert report["summary"]["top1_agreement"] == 1.0
    assert all(item["pearson"] == pytest.approx(1.0) and item["top_iou"] == 1.0 for item in report["images"])
    assert report["summary"]["max_prob_diff"] == 0.0
    _check_self_contained((out / "report.html").read_text(), N_IMAGES * 3, N_IMAGES)


def test_compare_with_a_perturbed_copy_ranks_the_images(workspace, tmp_path):
    root, model, images, _ = workspace
    proto = onnx.load(str(model))
    rng = np.random.default_rng(5)
    for t in proto.graph.initializer:
        if t.name == "w2":
            w = numpy_helper.to_array(t)
            t.CopyFrom(numpy_helper.from_array((w + rng.normal(0, 0.3, w.shape)).astype(np.float32), "w2"))
    perturbed = save(proto, tmp_path / "res_perturbed.onnx")
    out = tmp_path / "cmp"
    result = runner.invoke(app, ["compare", str(model), str(perturbed), str(images), "--out", str(out), "--quiet",
                                 "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "metrics.json").read_text())
    _finite_numbers(report)
    ranking = report["ranking"]
    assert sorted(ranking) == list(range(N_IMAGES))
    changes = [report["images"][i]["change"] for i in ranking]
    assert changes == sorted(changes, reverse=True) and changes[0] > 0
    assert all(report["images"][i]["change"] == pytest.approx(1 - report["images"][i]["pearson"]) for i in ranking)
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["change_rank"]) for r in rows] == [1, 2, 3]
    assert [r["file"] for r in rows] == [report["images"][i]["file"] for i in ranking]


def test_audit_refuses_bad_arguments(workspace, tmp_path):
    _, model, images, _ = workspace
    result = runner.invoke(app, ["audit", str(model), str(images), "--methods", "nope", "--out", str(tmp_path / "o"),
                                 "--quiet"])
    assert result.exit_code == 2 and "unknown method 'nope'" in result.output
    assert not (tmp_path / "o").exists()
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    result = runner.invoke(app, ["audit", str(model), str(images), "--labels", str(labels), "--out",
                                 str(tmp_path / "o"), "--quiet", "--no-sanity"])
    assert result.exit_code == 2 and "2 names" in result.output and "4 classes" in result.output
    assert not (tmp_path / "o").exists()


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.skipif(_chromium() is None, reason="no chromium/chrome binary on PATH (apt-get install chromium)")
def test_report_renders_in_headless_chromium(audit_out, tmp_path):
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=5000", "--dump-dom", (audit_out / "report.html").resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    total = N_IMAGES * 3
    # The page's own script counts images that decoded (complete and naturalWidth > 0).
    assert f'data-images-loaded="{total}"' in proc.stdout, proc.stdout[:500]
    assert f'data-images-total="{total}"' in proc.stdout
    assert f"{total} of {total} images loaded" in proc.stdout
