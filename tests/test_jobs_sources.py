"""Issue #18: inputs at scale (manifests, class trees, globs), the report built from a sample, resume
refusing another job, and the clear error when Ray is missing."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from graphs import residual_net, save
from typer.testing import CliRunner

from cli.main import app
from onnxcam.errors import ArgumentError
from onnxcam.jobs.aggregate import Moments, Sample
from onnxcam.jobs.sources import class_tree, manifest, open_source

runner = CliRunner()
ARGS = ["-m", "gradcam", "--steps", "4", "--batch-size", "8", "--no-sanity", "--quiet"]


def _text(result: Any) -> str:
    return " ".join((result.output + (result.stderr or "")).split())


def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), (np.random.default_rng(seed).random((12, 14, 3)) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(residual_net(seed=1), tmp_path_factory.mktemp("jobs_src") / "res.onnx")


def test_manifest_csv_and_jsonl(tmp_path: Path) -> None:
    _png(tmp_path / "a" / "x.png", 0)
    _png(tmp_path / "y.png", 1)
    csv_file = tmp_path / "m.csv"
    csv_file.write_text('path,label,box\na/x.png,cat,1 2 5 6\ny.png,,"[[0, 0, 3, 3], [1, 1, 4, 4]]"\n')
    items = list(manifest(csv_file).items())
    assert [(i.index, Path(i.path), i.label, i.box) for i in items] == [
        (0, tmp_path / "a" / "x.png", "cat", [[1.0, 2.0, 5.0, 6.0]]),
        (1, tmp_path / "y.png", None, [[0.0, 0.0, 3.0, 3.0], [1.0, 1.0, 4.0, 4.0]])]
    src = manifest(csv_file)
    assert src.labelled and src.boxed and src.count() == 2
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text(json.dumps({"path": str(tmp_path / "y.png")}) + "\n\n")
    only = manifest(jsonl)
    assert not only.labelled and [i.path for i in only.items()] == [str(tmp_path / "y.png")]
    bad = tmp_path / "bad.csv"
    bad.write_text("path,box\ny.png,5 5 1 1\n")
    with pytest.raises(ArgumentError, match=r"line 2: box .* x1 > x0"):
        list(manifest(bad).items())
    with pytest.raises(ArgumentError, match="'path' column"):
        (tmp_path / "nopath.csv").write_text("file\ny.png\n")
        list(manifest(tmp_path / "nopath.csv").items())


def test_class_tree_numbers_classes_like_imagefolder(tmp_path: Path) -> None:
    for cls, n in (("n02", 2), ("n01", 1), ("n03", 1)):
        for i in range(n):
            _png(tmp_path / cls / f"{i}.png", i)
    (tmp_path / "n01" / "notes.txt").write_text("not an image")
    items = list(class_tree(tmp_path).items())
    assert [(i.index, i.label, i.class_index) for i in items] == [(0, "n01", 0), (1, "n02", 1), (2, "n02", 1),
                                                                  (3, "n03", 2)]
    with pytest.raises(ArgumentError, match="one root folder"):
        open_source([str(tmp_path), str(tmp_path)], class_folders=True)


def test_sample_keeps_worst_best_random_and_flagged() -> None:
    sample = Sample(["m"], k=2, seed=0, flagged_limit=1)
    for i, gain in enumerate([0.3, -0.2, 0.1, 0.5, -0.4]):
        flags = ["border"] if i in (1, 3) else []
        sample.add({"index": i, "file": f"{i}.png", "near_tie": False, "random_insertion_auc": 0.5,
                    "methods": {"m": {"values": {"insertion_auc": 0.5 + gain}, "flags": flags}}})
    chosen = sample.chosen()["m"]
    assert chosen["worst"] == [4, 1] and chosen["best"] == [3, 0] and len(chosen["random"]) == 2
    assert sample.flagged == [1] and sample.flagged_more == [{"index": 3, "file": "3.png", "flags": ["border"]}]
    again = Sample(["m"], k=2, seed=0)
    for i in reversed(range(5)):  # the random pick does not depend on the order records arrive in
        again.add({"index": i, "file": "", "near_tie": False, "random_insertion_auc": None,
                   "methods": {"m": {"values": {}, "flags": []}}})
    assert sorted(again.chosen()["m"]["random"]) == sorted(chosen["random"])
    m = Moments()
    for v in (1.0, None, float("nan"), 3.0):
        m.add(v)
    assert m.stats() == {"mean": 2.0, "std": 1.0, "n": 2}


def test_class_tree_audit_reports_accuracy_and_a_sampled_report(model: Path, tmp_path: Path) -> None:
    root = tmp_path / "val"
    for k in range(4):
        for i in range(16):
            _png(root / f"class{k}" / f"{i}.png", 100 * k + i)
    out = tmp_path / "out"
    result = runner.invoke(app, ["audit", str(model), str(root), "--class-folders", "--out", str(out), *ARGS,
                                 "--report-sample", "2"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "metrics.json").read_text())
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert report["images_total"] == len(records) == 64
    correct = [r["correct"] for r in records]
    assert report["accuracy"] == pytest.approx(sum(correct) / 64)
    assert [c["label"] for c in report["per_class"]] == [f"class{k}" for k in range(4)]
    assert [c["class"] for c in report["per_class"]] == [0, 1, 2, 3]
    for c in report["per_class"]:
        mine = [r for r in records if r["true_label"] == c["label"]]
        assert c["images"] == 16 and c["accuracy"] == pytest.approx(np.mean([r["correct"] for r in mine]))
    # 64 images > 50: the report shows the sample (2 worst, 2 best, 2 random, the first flagged ones) only
    chosen = report["sample"]["methods"]["gradcam"]
    shown = {r["index"] for r in report["images"]}
    assert set(chosen["worst"]) | set(chosen["best"]) | set(chosen["random"]) <= shown
    assert len(shown) < 64 and [r["index"] for r in report["images"]] == sorted(shown)
    worst = min(records, key=lambda r: r["methods"]["gradcam"]["values"]["insertion_auc"] - r["random_insertion_auc"])
    assert chosen["worst"][0] == worst["index"]
    text = (out / "report.html").read_text()
    assert "Accuracy" in text and "class3" in text
    # the same folder, other settings: --resume refuses to mix two jobs
    again = runner.invoke(app, ["audit", str(model), str(root), "--class-folders", "--out", str(out), *ARGS,
                                "--resume", "--steps", "5"])
    assert again.exit_code != 0 and "--resume: the job in" in _text(again) and "model or settings" in _text(again)


def test_engine_ray_without_ray_names_the_install(model: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _png(tmp_path / "img" / "a.png", 0)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    result = runner.invoke(app, ["audit", str(model), str(tmp_path / "img"), "--out", str(tmp_path / "o"), *ARGS,
                                 "--engine", "ray"])
    assert result.exit_code != 0 and 'pip install "onnxcam[ray]"' in _text(result)
    assert not (tmp_path / "o").exists()


def test_rerun_replaces_a_finished_audit_and_keeps_user_files(model: Path, tmp_path: Path) -> None:
    for i in range(3):
        _png(tmp_path / "img" / f"{i}.png", i)
    out = tmp_path / "out"
    first = runner.invoke(app, ["audit", str(model), str(tmp_path / "img"), "--out", str(out), *ARGS])
    assert first.exit_code == 0, first.output
    (out / "overlays" / "mine.jpg").write_bytes(b"a user's file")
    (out / "parts" / "part-00000099.json").write_text("{}")  # a stale part of an earlier job: not this job's
    again = runner.invoke(app, ["audit", str(model), str(tmp_path / "img"), "--out", str(out), *ARGS, "--steps", "5"])
    assert again.exit_code == 0, again.output
    assert (out / "overlays" / "mine.jpg").read_bytes() == b"a user's file"
    assert sorted(p.name for p in (out / "parts").iterdir()) == ["part-00000000.json"]
    assert json.loads((out / "metrics.json").read_text())["deletion_insertion_steps"] == 5
    assert len((out / "records.jsonl").read_text().splitlines()) == 3 and (out / "_DONE").is_file()
