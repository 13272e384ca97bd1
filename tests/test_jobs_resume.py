"""Issue #18 (b): an audit killed with SIGKILL at random points and resumed ends with the records of an
uninterrupted run, no image missing or twice; a killed folder never passes for a finished job."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from graphs import residual_net, save

N_IMAGES = 500


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("jobs_resume")
    model = save(residual_net(seed=1), root / "res.onnx")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        cv2.imwrite(str(images / f"img{i:04d}.png"), (rng.random((12, 14, 3)) * 255).astype(np.uint8))
    return model, images


def _cmd(model: Path, images: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "onnxcam_cli.main", "audit", str(model), str(images), "--out", str(out), "-m",
            "gradcam", "--steps", "4", "--batch-size", "4", "--no-sanity", "--quiet", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def _parts(out: Path) -> int:
    return len(list((out / "parts").glob("part-*.json"))) if (out / "parts").is_dir() else 0


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]


def test_sigkilled_audit_resumes_to_the_uninterrupted_records(ws: tuple[Path, Path], tmp_path: Path) -> None:
    model, images = ws
    ref = tmp_path / "ref"
    done = subprocess.run(_cmd(model, images, ref), capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    rng = random.Random(18)
    kills = 0
    refused = False
    for _ in range(6):
        proc = subprocess.Popen(_cmd(model, images, out, "--resume"), env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        # Wait until this run has written a chunk, then kill it at a random point after that.
        before, t0 = _parts(out), time.monotonic()
        while proc.poll() is None and _parts(out) == before and time.monotonic() - t0 < 60:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        if proc.poll() is not None:
            assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        assert not (out / "_DONE").exists()
        if not refused:  # an unfinished job is never mistaken for a finished one, nor silently replaced
            again = subprocess.run(_cmd(model, images, out), capture_output=True, text=True, env=_env(), timeout=300)
            assert again.returncode != 0 and "unfinished audit" in again.stderr and "--resume" in again.stderr
            refused = True
    else:
        last = subprocess.run(_cmd(model, images, out, "--resume"), capture_output=True, text=True, env=_env(),
                              timeout=300)
        assert last.returncode == 0, last.stderr
    assert kills >= 3, f"only {kills} kill(s) landed mid-job"
    assert (out / "_DONE").is_file()
    got, want = _records(out), _records(ref)
    assert [r["index"] for r in got] == list(range(N_IMAGES))  # none missing, none twice, in order
    assert got == want
    assert (out / "metrics.csv").read_text() == (ref / "metrics.csv").read_text()
    a, b = json.loads((out / "metrics.json").read_text()), json.loads((ref / "metrics.json").read_text())
    assert a["summary"] == b["summary"] and a["false_alarm"] == b["false_alarm"]
    overlays = sorted(p.name for p in (out / "overlays").iterdir())
    assert len(overlays) == N_IMAGES and not [p for p in out.rglob("*.tmp")]
