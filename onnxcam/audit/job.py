"""The jobs behind ``onnxcam audit`` and ``onnxcam compare``.

``run_audit`` is a streaming, resumable job (``onnxcam.jobs``): per-image records are written as
they are produced, the report is built from aggregates and a sample, and an interrupted run continues
with ``resume=True``. ``run_compare`` writes report.html, metrics.json and metrics.csv through one
output transaction, so an error or Ctrl-C leaves no half-written report behind.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxcam.audit.compare import check_comparable, compare_batch, rank_by_change
from onnxcam.audit.randomize import spread_steps, weight_nodes
from onnxcam.audit.report_html import Tile, data_uri, render_compare
from onnxcam.audit.shared import (
    SANITY_FALLS_TO,
    SANITY_RISE,
    SANITY_SUSPICIOUS,
    AuditConfig,
    JobSummary,
    Progress,
    _audit_task,
    _batches,
    _check_common,
    _csv,
    _finite,
    _make_cam,
    _no_images,
    _stats,
    boxes_to_input,
    read_boxes,
    sanity_verdict,
)
from onnxcam.errors import ArgumentError
from onnxcam.image import Preprocess, preprocess, to_display
from onnxcam.jobs.engine_ray import RayOptions
from onnxcam.jobs.run import run_job
from onnxcam.jobs.sources import Source, from_paths
from onnxcam.jobs.spec import spec_for
from onnxcam.labels import LabelsSpec
from onnxcam.model import LayerSpec, Model
from onnxcam.output import OutputDir
from onnxcam.overlay import show_cam_on_image
from onnxcam.registry import get_method


@dataclass
class CompareConfig:
    preprocess: Preprocess
    method: str = "gradcam"
    layer_a: LayerSpec = "auto"
    layer_b: LayerSpec = "auto"
    labels: LabelsSpec = None
    batch_size: int = 16
    alpha: float = 0.5
    colormap: str = "jet"
    method_options: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------- audit


def audit_units(model: Model, n_images: int, config: AuditConfig) -> int:
    """Progress units ``run_audit`` reports: images x methods, plus sanity steps x methods."""
    units = n_images * len(config.methods)
    if config.sanity and n_images:
        units += len(spread_steps(len(weight_nodes(model.proto)), config.sanity_steps)) * len(config.methods)
    return units


def run_audit(model: Model, paths: Sequence[Path] | Source, out: str | Path, config: AuditConfig,
              progress: Progress | None = None, *, resume: bool = False, engine: str = "local",
              ray: RayOptions | None = None, overlays: bool = True, sample_k: int = 8) -> JobSummary:
    """Audit ``config.methods`` on ``paths`` (or a ``onnxcam.jobs.sources.Source``: a manifest, a class
    tree) into ``out``: records.parquet / records.jsonl / metrics.csv, overlays/, metrics.json,
    report.html, then ``_DONE``. ``resume``: continue an interrupted job in ``out``; ``engine``:
    ``local`` or ``ray`` (``ray``: ``RayOptions``); ``sample_k``: worst, best and random images per
    method shown in the report (every image up to 50 images).
    """
    _check_common(model, config.preprocess, config.batch_size, config.alpha, config.colormap)
    if not config.methods:
        raise ArgumentError("no method given: pass --methods gradcam (see `onnxcam methods`)")
    if config.steps < 1:
        raise ArgumentError(f"--steps must be >= 1, got {config.steps}")
    source = paths if isinstance(paths, Source) else from_paths(list(paths))
    spec = spec_for(model, config, boxed_source=source.boxed, overlays=overlays)
    names = [get_method(m).name for m in config.methods]
    if len(set(names)) != len(names):
        raise ArgumentError(f"--methods lists a method twice ({', '.join(config.methods)}): give each once")
    box_file = [Path(config.boxes)] if isinstance(config.boxes, (str, Path)) else []
    return run_job(spec, source, out, model=model, resume=resume, engine=engine, ray=ray, sample_k=sample_k,
                   progress=progress, inputs=box_file)


# -------------------------------------------------------------------------------------- compare


def run_compare(model_a: Model, model_b: Model, paths: Sequence[Path], out: str | Path, config: CompareConfig,
                progress: Progress | None = None) -> JobSummary:
    """Explain ``paths`` with both models; writes report.html, metrics.json, metrics.csv under ``out``."""
    start = time.perf_counter()
    _check_common(model_a, config.preprocess, config.batch_size, config.alpha, config.colormap)
    check_comparable(model_a, model_b)
    task_a = _audit_task(model_a, config.labels, "onnxcam compare")
    task_b = _audit_task(model_b, config.labels, "onnxcam compare")
    cam_a = _make_cam(model_a, config.method, config.layer_a, config.batch_size, config.method_options, task_a)
    cam_b = _make_cam(model_b, config.method, config.layer_b, config.batch_size, config.method_options, task_b)
    out_dir = OutputDir(out, inputs=[*paths, model_a.path, model_b.path])
    pp = config.preprocess
    label = task_a.label
    images: list[dict[str, Any]] = []
    tiles: list[list[Tile]] = []
    failed: list[dict[str, str]] = []
    for loaded in _batches(paths, config.batch_size, failed, progress, 1):
        if not loaded:
            continue
        x = preprocess([img for _, img in loaded], pp)
        res = compare_batch(cam_a, cam_b, x)
        task_a.check_classes(res.probs_a.shape[1])
        top_a, top_b = res.top1_a, res.top1_b
        for i, (p, img) in enumerate(loaded):
            k = int(res.classes[i])
            images.append({
                "file": str(p), "name": p.name, "class": k, "label": label(k),
                "top1_a": int(top_a[i]), "top1_b": int(top_b[i]),
                "top1_a_label": label(int(top_a[i])), "top1_b_label": label(int(top_b[i])),
                "top1_agree": bool(top_a[i] == top_b[i]),
                "prob_a": float(res.probs_a[i, k]), "prob_b": float(res.probs_b[i, k]),
                "pearson": _finite(res.pearson[i]), "top_iou": _finite(res.top_iou[i]),
                "change": _finite(res.change[i]),
            })
            view = to_display(img, pp)
            diff = np.abs(res.maps_a[i].astype(np.float64) - res.maps_b[i])
            # Scaled to its own maximum so small differences are visible; the scale is stated beside it.
            scale = float(diff.max())
            images[-1]["diff_max"] = _finite(scale)
            tiles.append([
                ("input", data_uri((view * 255).astype(np.uint8))),
                (f"A: {model_a.name}", data_uri(show_cam_on_image(view, res.maps_a[i], config.alpha, config.colormap))),
                (f"B: {model_b.name}", data_uri(show_cam_on_image(view, res.maps_b[i], config.alpha, config.colormap))),
                (f"|A - B|, colour scale 0 to {scale:.3f}",
                 data_uri(show_cam_on_image(view, diff / scale if scale > 0 else diff, config.alpha, config.colormap,
                                            normalize=False))),
            ])
        if progress is not None:
            progress(len(loaded))
    if not images:
        raise _no_images(failed, len(paths))
    change = np.array([item["change"] for item in images], dtype=np.float64)
    iou = np.array([np.nan if item["top_iou"] is None else item["top_iou"] for item in images], dtype=np.float64)
    ranking = [int(i) for i in rank_by_change(change, iou)] if images else []
    for rank, i in enumerate(ranking, 1):
        images[i]["change_rank"] = rank
    report = {
        "model_a": str(model_a.path), "model_b": str(model_b.path),
        "model_a_name": model_a.name, "model_b_name": model_b.name,
        "method": cam_a.name, "layers_a": list(cam_a.layers), "layers_b": list(cam_b.layers),
        "images": images, "failed": failed, "ranking": ranking,
        "summary": {
            "images": len(images),
            "top1_agreement": _finite(np.mean([item["top1_agree"] for item in images])) if images else None,
            "pearson": _stats([item["pearson"] for item in images]),
            "top_iou": _stats([item["top_iou"] for item in images]),
            "max_prob_diff": _finite(max((abs(item["prob_a"] - item["prob_b"]) for item in images), default=None)),
        },
    }
    report["verdict"] = compare_verdict(images)
    columns = ["change_rank", "file", "class", "label", "top1_a", "top1_b", "top1_agree", "prob_a", "prob_b",
               "pearson", "top_iou", "change"]
    with out_dir.transaction(replace_previous=True) as tx:
        tx.write_json("metrics.json", report)
        tx.write_text("metrics.csv", _csv([images[i] for i in ranking], columns))
        tx.write_text("report.html", render_compare(report, tiles))
        files = list(tx.written)
    return JobSummary(Path(out), report, files, time.perf_counter() - start, failed)


#: An image whose maps correlate below this (or whose top-1 class differs) counts as changed.
CHANGED_PEARSON = 0.8
#: Median Pearson at or above which (with at most ``AGREE_CHANGED`` of images changed) the maps agree.
AGREE_PEARSON = 0.9
AGREE_CHANGED = 0.1


def compare_verdict(images: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One sentence on whether the two models explain alike, with the numbers behind it."""
    pearson = [float(item["pearson"]) for item in images if item.get("pearson") is not None]
    changed = [item for item in images if not item["top1_agree"] or item.get("pearson") is None
               or float(item["pearson"]) < CHANGED_PEARSON]
    n = len(images)
    median = float(np.median(pearson)) if pearson else float("nan")
    agree = bool(pearson) and median >= AGREE_PEARSON and len(changed) <= AGREE_CHANGED * n
    what = "maps agree" if agree else "maps differ"
    text = (f"{what}: median Pearson {median:.2f}, {len(changed)} of {n} images changed (Pearson below "
            f"{CHANGED_PEARSON} or top-1 class differs)") if pearson else \
        f"maps differ: no image has a defined correlation ({n} images)"
    return {"agree": agree, "median_pearson": _finite(median), "changed": len(changed), "images": n, "text": text}


__all__ = ["SANITY_FALLS_TO", "SANITY_RISE", "SANITY_SUSPICIOUS", "AuditConfig", "CompareConfig", "JobSummary",
           "audit_units", "boxes_to_input", "compare_verdict", "read_boxes", "run_audit", "run_compare",
           "sanity_verdict"]

