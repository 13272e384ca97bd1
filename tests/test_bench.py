"""``onnxcam.bench`` and ``onnxcam bench``: the table's values and shape, not the timings themselves."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from onnxcam.bench import BenchRow, bench, bench_input, format_table, parse_method_spec
from onnxcam.errors import ArgumentError
from onnxcam.model import load


@pytest.fixture(scope="module")
def small(build_model) -> Path:  # type: ignore[no-untyped-def]
    return Path(build_model("resnet_small"))


def _finite_positive(row: BenchRow) -> None:
    for v in (row.seconds, row.seconds_per_image, row.ratio_to_forward):
        assert math.isfinite(v) and v > 0, row


def test_in_process_table_has_one_row_per_method(small: Path) -> None:
    r = bench(small, ["gradcam", "ablationcam", "scorecam:max_channels=3"], batch_size=4, images=3,
              repeats=1, memory=False)
    assert [row.method for row in r.rows] == ["gradcam", "ablationcam", "scorecam"]
    assert r.rows[2].options == {"max_channels": 3}
    # Heavy methods are capped at heavy_images=1; the others use all 3 images.
    assert [row.images for row in r.rows] == [3, 1, 1]
    assert r.forward.method == "forward" and r.forward.images == 3 and r.forward.ratio_to_forward == 1.0
    for row in (r.forward, *r.rows):
        _finite_positive(row)
        assert row.seconds_per_image == pytest.approx(row.seconds / row.images)
        assert row.peak_mib is None  # no isolated process, no memory figure
    assert r.rows[0].ratio_to_forward == pytest.approx(r.rows[0].seconds_per_image / r.forward.seconds_per_image)
    assert r.layer == load(small).layer("auto").name
    assert r.device == "cpu"
    text = format_table(r).splitlines()
    assert len(text) == 2 + 4 and text[-1].startswith("scorecam max_channels=3")
    assert len(r.table()) == 4


def test_isolated_run_reports_peak_memory(small: Path) -> None:
    r = bench(small, ["gradcam"], batch_size=2, repeats=1, memory=True)
    assert len(r.rows) == 1
    for row in (r.forward, r.rows[0]):
        _finite_positive(row)
        assert row.peak_mib is not None and math.isfinite(row.peak_mib) and row.peak_mib >= 0


def test_method_spec_parsing() -> None:
    assert parse_method_spec("Score-CAM:max_channels=64") == ("scorecam", {"max_channels": 64})
    assert parse_method_spec("gradcam") == ("gradcam", {})
    assert parse_method_spec("sscam:std=0.5:num_samples=2") == ("sscam", {"std": 0.5, "num_samples": 2})
    with pytest.raises(ArgumentError, match="key=value"):
        parse_method_spec("scorecam:64")
    with pytest.raises(ArgumentError, match="unknown method"):
        parse_method_spec("nosuchcam")


def test_bad_arguments(small: Path) -> None:
    with pytest.raises(ArgumentError, match="repeats"):
        bench(small, ["gradcam"], repeats=0, memory=False)
    with pytest.raises(ArgumentError, match="forward"):
        bench(small, ["forward"], memory=False)
    with pytest.raises(ArgumentError, match="no methods"):
        bench(small, [], memory=False)


def test_bench_input_is_deterministic_and_shaped(small: Path) -> None:
    m = load(small)
    a, b = bench_input(m, 2, seed=1), bench_input(m, 2, seed=1)
    assert a.shape == m.input.shape(2) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, bench_input(m, 2, seed=2))
    assert 0.2 < float(a.std()) < 3.0


def test_cli_json(small: Path) -> None:
    res = CliRunner().invoke(app, ["bench", str(small), "-m", "gradcam,layercam", "-b", "2", "-r", "1",
                                   "--no-memory", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert [r["method"] for r in rows] == ["forward", "gradcam", "layercam"]
    assert all(r["seconds_per_image"] > 0 for r in rows)
    bad = CliRunner().invoke(app, ["bench", str(small), "-m", "nosuchcam", "--no-memory"])
    assert bad.exit_code != 0 and "unknown method" in bad.output
