"""Issue #18 (c): the same audit on Ray Data (a local cluster, ``ray.init(num_cpus=2)``) and embedded gives
the same per-image records; an actor killed mid-job is restarted and nothing is lost or written twice.

One module, one ``ray.init`` (Ray's start-up is the expensive part on a 2-core machine)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from graphs import residual_net, save
from typer.testing import CliRunner

from cli.main import app

N_IMAGES = 200
runner = CliRunner()
ARGS = ["-m", "gradcam", "--steps", "4", "--batch-size", "8", "--no-sanity", "--quiet"]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=int(200e6), log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A model, a manifest of 200 images with labels and boxes, and the embedded engine's audit of it."""
    root = tmp_path_factory.mktemp("jobs_ray")
    model = save(residual_net(seed=1), root / "res.onnx")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N_IMAGES):
        cv2.imwrite(str(images / f"img{i:04d}.png"), (rng.random((12, 14, 3)) * 255).astype(np.uint8))
        rows.append({"path": f"images/img{i:04d}.png", "label": str(i % 4), "box": [1, 1, 9, 8]})
    manifest = root / "val.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ref = root / "embedded"
    result = runner.invoke(app, ["audit", str(model), "--manifest", str(manifest), "--out", str(ref), *ARGS])
    assert result.exit_code == 0, result.output
    return model, manifest, ref


def _same_records(out: Path, ref: Path) -> None:
    got = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    want = [json.loads(line) for line in (ref / "records.jsonl").read_text().splitlines()]
    assert [r["index"] for r in got] == list(range(N_IMAGES))
    assert got == want  # exactly: every metric value, prediction, flag
    assert (out / "metrics.csv").read_text() == (ref / "metrics.csv").read_text()
    import pyarrow.parquet as pq

    assert pq.read_table(out / "records.parquet").equals(pq.read_table(ref / "records.parquet"))
    assert len(list((out / "overlays").iterdir())) == N_IMAGES


def test_ray_engine_records_equal_the_embedded_ones(ray_cluster: None, ws: tuple[Path, Path, Path],
                                                    tmp_path: Path) -> None:
    model, manifest, ref = ws
    out = tmp_path / "ray"
    result = runner.invoke(app, ["audit", str(model), "--manifest", str(manifest), "--out", str(out), *ARGS,
                                 "--engine", "ray", "--ray-actors", "2"])
    assert result.exit_code == 0, result.output
    _same_records(out, ref)
    report = json.loads((out / "metrics.json").read_text())
    assert report["accuracy"] == json.loads((ref / "metrics.json").read_text())["accuracy"]
    assert [c["label"] for c in report["per_class"]] == ["0", "1", "2", "3"]
    assert (out / "_DONE").is_file()


def _actor_pids() -> list[int]:
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"ChunkActor" in cmd:
                pids.append(int(pid))
    return pids


def test_killed_actor_loses_and_duplicates_nothing(ray_cluster: None, ws: tuple[Path, Path, Path],
                                                   tmp_path: Path) -> None:
    model, manifest, ref = ws
    out = tmp_path / "ray_kill"
    killed: list[int] = []

    def kill_one_actor_mid_job() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if len(list((out / "parts").glob("part-*.json"))) >= 3 if (out / "parts").is_dir() else False:
                pids = _actor_pids()
                if pids:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])
                    return
            time.sleep(0.005)

    thread = threading.Thread(target=kill_one_actor_mid_job, daemon=True)
    thread.start()
    result = runner.invoke(app, ["audit", str(model), "--manifest", str(manifest), "--out", str(out), *ARGS,
                                 "--engine", "ray", "--ray-actors", "2"])
    thread.join(timeout=5)
    assert result.exit_code == 0, result.output
    assert killed, "no actor was killed mid-job"
    _same_records(out, ref)
