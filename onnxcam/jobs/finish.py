"""Finishing a job: from the parts on disk to the record files, metrics.json and report.html.

Three passes over the parts, each holding one part at a time: (1) the random-map pairs, to calibrate
the low-insertion margin; (2) every record with its final flags, into the record files, the
aggregates and the sample; (3) the sampled records again, for the report's cards. The report embeds
the sampled images only, so its size depends on the sample, not on the number of images.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from onnxcam.audit.metrics_run import (
    BASE_METRICS,
    BOX_METRICS,
    FALSE_ALARM_TARGET,
    ROAD_METRIC,
    calibrate_insertion,
    review_flags,
)
from onnxcam.audit.report_html import Tile, data_uri, render_audit
from onnxcam.audit.shared import _finite, _run_sanity, _with_boxes
from onnxcam.errors import ImageError
from onnxcam.image import load_image, preprocess, to_display
from onnxcam.jobs.aggregate import Aggregates, Sample
from onnxcam.jobs.records import RecordWriters, read_parts
from onnxcam.jobs.spec import JobSpec
from onnxcam.jobs.work import Worker
from onnxcam.output import OutputDir, write_json, write_text

__all__ = ["REPORT_ALL", "finish_job", "metric_keys"]

#: Audits of up to this many images show every image in the report.
REPORT_ALL = 50
#: The report's images stop at this many bytes of data URIs (later cards show their numbers only), so the
#: report stays under 20 MB whatever the number of methods; the sample's picks come first, then flagged images.
TILE_BUDGET = 15_000_000


def metric_keys(spec: JobSpec) -> list[str]:
    return list(BASE_METRICS) + (list(BOX_METRICS) if spec.with_boxes else []) + \
        ([ROAD_METRIC] if spec.config.road else [])


def _calibrate(folder: Path) -> dict[str, Any]:
    first, second = array("d"), array("d")
    for part in read_parts(folder):
        for record in part["records"]:
            pair = record.get("random_insertion_aucs") or [None, None]
            if None not in pair:
                first.append(float(pair[0]))
                second.append(float(pair[1]))
    a, b = np.frombuffer(first, dtype=np.float64), np.frombuffer(second, dtype=np.float64)
    margin, expected = calibrate_insertion(a, b)
    hits = int(np.sum(a < b - margin) + np.sum(b < a - margin))
    return {"margin": margin, "target": FALSE_ALARM_TARGET, "expected": _finite(expected),
            "flagged": hits, "of": 2 * len(a), "rate": _finite(hits / (2 * len(a))) if len(a) else None}


def _reflag(record: dict[str, Any], margin: float) -> None:
    base = record.get("random_insertion_auc")
    for res in record["methods"].values():
        values = {k: float("nan") if v is None else float(v) for k, v in res["values"].items()}
        res["flags"] = review_flags(values, base, margin)


def _tiles(folder: Path, record: dict[str, Any], spec: JobSpec, methods: list[str]) -> list[Tile]:
    """The card's tiles: the input as the model saw it (boxes drawn), then each method's overlay file."""
    pp = spec.config.preprocess
    try:
        view = to_display(load_image(record["file"]), pp)
        rgb = _with_boxes((view * 255).astype(np.uint8), [None if record.get("box") is None else
                                                          np.asarray(record["box"], dtype=np.int64)], 0)
        tiles: list[Tile] = [("input", data_uri(rgb))]
    except ImageError:
        tiles = [("input (no longer readable)", data_uri(np.zeros((8, 8, 3), np.uint8)))]
    for m in methods:
        name = record["methods"][m].get("overlay")
        bgr = cv2.imread(str(folder / name), cv2.IMREAD_COLOR) if name else None
        rgb = np.zeros((8, 8, 3), np.uint8) if bgr is None else np.ascontiguousarray(bgr[:, :, ::-1])
        tiles.append((m, data_uri(rgb)))
    return tiles


def finish_job(out: OutputDir, spec: JobSpec, worker: Callable[[], Worker], *, sample_k: int = 8,
               labelled: bool = False,
               progress: Callable[..., None] | None = None) -> tuple[dict[str, Any], list[Path]]:
    """Write the record files, metrics.json and report.html from the parts; returns (metrics, files).

    ``worker()`` gives a worker (built on first use) for the sanity check, which runs here, on the
    first images, whatever engine computed the records.
    """
    folder = out.path
    config = spec.config
    calibration = _calibrate(folder)
    margin = calibration["margin"]
    keys = metric_keys(spec)
    methods: list[str] = []
    failed: list[dict[str, Any]] = []
    all_notes: list[str] = []
    writers = RecordWriters(out, keys, labelled)
    agg: Aggregates | None = None
    sample: Sample | None = None
    first: list[dict[str, Any]] = []  # the sanity check's images
    total = 0
    devices: list[str] = []
    try:
        for part in read_parts(folder):
            total += int(part.get("images", 0))
            if part.get("device") and part["device"] not in devices:
                devices.append(part["device"])
            failed += [{"file": f["file"], "error": f["error"]} for f in part["failed"]]
            all_notes += [n for n in part.get("notes", []) if n not in all_notes]
            for record in part["records"]:
                if agg is None or sample is None:
                    methods = list(record["methods"])
                    agg = Aggregates(methods, keys)
                    sample = Sample(methods, sample_k, config.seed)
                _reflag(record, margin)
                curves = record.pop("_curves", {})
                agg.add(record, curves)
                sample.add(record)
                if len(first) < config.sanity_images:
                    first.append({"file": record["file"]})
            writers.write([{k: v for k, v in r.items() if k != "_curves"} for r in part["records"]])
        if agg is None or sample is None:
            writers.discard()
            return {}, []
        files = writers.commit()
    except BaseException:
        writers.discard()
        raise
    show = sample.indices() if agg.images > REPORT_ALL else None
    images: list[dict[str, Any]] = []
    for part in read_parts(folder):
        for record in part["records"]:
            if show is None or int(record["index"]) in show:
                record.pop("_curves", None)
                _reflag(record, margin)
                images.append(record)
    picked = {i for kinds in sample.chosen().values() for ids in kinds.values() for i in ids}
    by_priority = sorted(range(len(images)), key=lambda j: (int(images[j]["index"]) not in picked, j))
    tiles: list[list[Tile]] = [[] for _ in images]
    budget = TILE_BUDGET
    for j in by_priority:
        row = _tiles(folder, images[j], spec, methods)
        size = sum(len(uri) for _, uri in row)
        if size > budget:
            break
        tiles[j], budget = row, budget - size
    sanity = None
    readable = []
    for item in first if config.sanity else []:
        # On a cluster the images may not be readable where the command runs: then there is no sanity check.
        with suppress(ImageError):
            readable.append(load_image(item["file"]))
    if readable:
        if progress is not None:
            progress(0, stage="sanity check")
        w = worker()
        sanity = _run_sanity(w.model, w.cams, preprocess(readable, config.preprocess), config, progress)
    elif config.sanity:
        all_notes.append("sanity check not run: no image could be read where the command runs")
    pp = config.preprocess
    model_name = Path(spec.model).name
    report: dict[str, Any] = {
        "model": spec.model, "model_name": model_name, "device": ", ".join(devices),
        "preprocess": f"{pp.layout} {pp.size[0]}x{pp.size[1]} {pp.resize_mode}, mean {list(pp.mean)}, "
                      f"std {list(pp.std)}, scale {pp.scale:g}",
        "methods": methods, "layers": {m: list(v) for m, v in _layers(worker, methods).items()},
        "metric_keys": keys, "deletion_insertion_steps": config.steps,
        "images": images, "images_total": agg.images, "images_listed": total,
        "sample": {"k": sample_k, "all": show is None, "methods": sample.chosen() if show is not None else {},
                   "flagged_not_shown": [m for m in sample.flagged_more if show is None or m["index"] not in show],
                   "flagged_total": sample.flagged_count},
        "failed": failed, "summary": agg.summary(),
        "flag_counts": dict(agg.flag_counts), "near_ties": agg.near_ties,
        "sanity": sanity, "false_alarm": calibration, "insertion_margin": margin,
        "curves": agg.curve_stats(), "notes": all_notes,
        "records": {"parquet": "records.parquet", "jsonl": "records.jsonl", "csv": "metrics.csv"},
    }
    if agg.classes:
        report["accuracy"] = _finite(agg.accuracy()) if agg.accuracy() is not None else None
        report["per_class"] = agg.per_class()
    metrics = out.target("metrics.json")
    write_json(metrics, report)
    html = out.target("report.html")
    write_text(html, render_audit(report, tiles))
    return report, [*files, metrics, html]


def _layers(worker: Callable[[], Worker], methods: list[str]) -> dict[str, list[str]]:
    w = worker()
    return {c.name: list(c.layers) for c in w.cams if c.name in methods}

