"""The jobs behind ``onnxcam audit`` and ``onnxcam compare``: images in, report.html,
metrics.json and metrics.csv out.

Structured like ``onnxcam.pipeline``: images are decoded and run in batches, an unreadable image is
reported and skipped, and everything is written through one output transaction, so an error or
Ctrl-C leaves no half-written report behind.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from onnxcam.audit.compare import check_comparable, compare_batch, rank_by_change
from onnxcam.audit.metrics_run import (
    BASE_METRICS,
    BOX_METRICS,
    ROAD_METRIC,
    method_metrics,
    model_predict,
    near_tie,
    random_maps,
    top_predictions,
)
from onnxcam.audit.randomize import sanity_run, spread_steps, weight_nodes
from onnxcam.audit.report_html import Tile, data_uri, render_audit, render_compare
from onnxcam.errors import ArgumentError, ImageError
from onnxcam.explainers.base import BaseCAM
from onnxcam.image import Preprocess, crop_box, load_image, preprocess, to_display
from onnxcam.metrics import deletion_insertion
from onnxcam.model import LayerSpec, Model
from onnxcam.output import OutputDir
from onnxcam.overlay import colormap_code, draw_boxes, show_cam_on_image
from onnxcam.registry import get_method
from onnxcam.tasks import ClassificationTask, class_indices, classifier_task, detect_task

Progress = Callable[[int], None]

#: Mean Spearman correlation at the deepest randomisation above which a method is flagged.
SANITY_SUSPICIOUS = 0.5


@dataclass
class AuditConfig:
    """What to audit and how. ``boxes``: a boxes.json path or its parsed mapping (see ``read_boxes``)."""

    preprocess: Preprocess
    methods: Sequence[str] = ("gradcam",)
    layer: LayerSpec = "auto"
    labels: Sequence[str] | None = None
    boxes: str | Path | Mapping[str, Any] | None = None
    batch_size: int = 16
    steps: int = 32  # deletion / insertion steps
    road: bool = False
    sanity: bool = True
    sanity_images: int = 4
    sanity_steps: int = 4
    alpha: float = 0.5
    colormap: str = "jet"
    seed: int = 0
    method_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class CompareConfig:
    preprocess: Preprocess
    method: str = "gradcam"
    layer_a: LayerSpec = "auto"
    layer_b: LayerSpec = "auto"
    labels: Sequence[str] | None = None
    batch_size: int = 16
    alpha: float = 0.5
    colormap: str = "jet"
    method_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class JobSummary:
    out_dir: Path
    report: dict[str, Any]
    files: list[Path]
    seconds: float
    failed: list[dict[str, str]]


# ------------------------------------------------------------------------------------ shared bits


def _check_common(model: Model, pp: Preprocess, batch_size: int, alpha: float, colormap: str) -> None:
    if batch_size < 1:
        raise ArgumentError(f"--batch-size must be >= 1, got {batch_size}")
    if not 0.0 <= alpha <= 1.0:
        raise ArgumentError(f"--alpha must be in [0, 1], got {alpha}")
    colormap_code(colormap)
    if pp.size != model.input.size or pp.layout != model.input.layout:
        raise ArgumentError(
            f"preprocessing gives {pp.layout} {pp.size[0]}x{pp.size[1]} but {model.name} takes "
            f"{model.input.layout} {model.input.height}x{model.input.width}: drop --size/--layout or fix them"
        )


def _make_cam(model: Model, method: str, layer: LayerSpec, batch_size: int, options: dict[str, Any],
              task: ClassificationTask) -> BaseCAM:
    cls = get_method(method)
    return cls(model, layer, batch_size=batch_size, task=task, **options.get(cls.name, {}))


def _audit_task(model: Model, labels: Sequence[str] | None, what: str) -> ClassificationTask:
    """The model's task with the user's labels; audits rank class probabilities, so a classifier's."""
    return classifier_task(detect_task(model.output_shapes, model.task.name, labels), what)


def _batches(paths: Sequence[Path], batch_size: int, failed: list[dict[str, str]],
             progress: Progress | None, units: int) -> Any:
    """Yields ``(loaded [(path, rgb)], paths in batch)``; unreadable images go to ``failed``."""
    for start in range(0, len(paths), batch_size):
        batch = paths[start: start + batch_size]
        loaded: list[tuple[Path, np.ndarray]] = []
        for p in batch:
            try:
                loaded.append((p, load_image(p)))
            except ImageError as exc:
                failed.append({"file": str(p), "error": str(exc)})
                if progress is not None:
                    progress(units)
        yield loaded


def _stats(values: Sequence[float]) -> dict[str, Any]:
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(arr.mean()), "std": float(arr.std()), "n": int(arr.size)}


def _finite(value: Any) -> Any:
    """``value`` with NaN/Inf as None (JSON has no NaN), numpy scalars as Python numbers."""
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    return value


def _csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    return buf.getvalue()


# ---------------------------------------------------------------------------------------- boxes


def read_boxes(source: str | Path | Mapping[str, Any]) -> dict[str, NDArray[np.float64]]:
    """``{file name: (k, 4) boxes}`` from boxes.json (``{"name": {"box": [x0, y0, x1, y1], ...}}``,
    or ``"boxes": [[...], ...]`` for several), in original-image pixels; keys matched by file name."""
    where = str(source) if isinstance(source, (str, Path)) else "boxes mapping"
    if isinstance(source, (str, Path)):
        try:
            data = json.loads(Path(source).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArgumentError(f"cannot read boxes file {where}: {exc}; pass a JSON file "
                                '{"image.jpg": {"box": [x0, y0, x1, y1]}}') from exc
    else:
        data = source
    if not isinstance(data, Mapping):
        raise ArgumentError(f"{where} must hold a JSON object mapping file names to {{\"box\": [x0, y0, x1, y1]}}")
    out: dict[str, NDArray[np.float64]] = {}
    for name, entry in data.items():
        raw = entry.get("boxes", [entry["box"]] if "box" in entry else None) if isinstance(entry, Mapping) else None
        try:
            arr = np.asarray(raw, dtype=np.float64).reshape(-1, 4) if raw is not None else None
        except (TypeError, ValueError):
            arr = None
        if arr is None or arr.shape[0] == 0 or not np.all(np.isfinite(arr)) or np.any(arr[:, 2:] <= arr[:, :2]):
            raise ArgumentError(
                f"{where}: entry {name!r} is {entry!r}; each entry needs \"box\": [x0, y0, x1, y1] with x1 > x0 and "
                "y1 > y0 (original-image pixels), or \"boxes\": a list of such boxes"
            )
        out[Path(str(name)).name] = arr
    return out


def boxes_to_input(boxes: NDArray[np.float64], hw: tuple[int, int], pp: Preprocess) -> NDArray[np.int64] | None:
    """Original-image boxes ``(k, 4)`` mapped to model-input pixels by the preprocessing geometry.

    Boxes are grown to whole pixels (floor / ceil) and clipped; boxes that fall outside a center
    crop are dropped; None when none is left.
    """
    rx0, ry0, rx1, ry1 = crop_box(hw, pp.size, pp.resize_mode, pp.crop_fraction)
    h, w = pp.size
    sx, sy = w / (rx1 - rx0), h / (ry1 - ry0)
    mapped = np.empty_like(boxes)
    mapped[:, [0, 2]] = (boxes[:, [0, 2]] - rx0) * sx
    mapped[:, [1, 3]] = (boxes[:, [1, 3]] - ry0) * sy
    # A small epsilon keeps exact integer boundaries from growing by a pixel through float error.
    out = np.stack([np.floor(mapped[:, 0] + 1e-6), np.floor(mapped[:, 1] + 1e-6),
                    np.ceil(mapped[:, 2] - 1e-6), np.ceil(mapped[:, 3] - 1e-6)], axis=1).astype(np.int64)
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, w)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, h)
    keep = (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])
    return out[keep] if keep.any() else None


# ---------------------------------------------------------------------------------------- audit


def audit_units(model: Model, n_images: int, config: AuditConfig) -> int:
    """Progress units ``run_audit`` reports: images x methods, plus sanity steps x methods."""
    units = n_images * len(config.methods)
    if config.sanity and n_images:
        units += len(spread_steps(len(weight_nodes(model.proto)), config.sanity_steps)) * len(config.methods)
    return units


def run_audit(model: Model, paths: Sequence[Path], out: str | Path, config: AuditConfig,
              progress: Progress | None = None) -> JobSummary:
    """Audit ``config.methods`` on ``paths``; writes report.html, metrics.json, metrics.csv under ``out``."""
    start = time.perf_counter()
    _check_common(model, config.preprocess, config.batch_size, config.alpha, config.colormap)
    if not config.methods:
        raise ArgumentError("no method given: pass --methods gradcam (see `onnxcam methods`)")
    if config.steps < 1:
        raise ArgumentError(f"--steps must be >= 1, got {config.steps}")
    task = _audit_task(model, config.labels, "onnxcam audit")
    cams = [_make_cam(model, m, config.layer, config.batch_size, config.method_options, task)
            for m in config.methods]
    names = [c.name for c in cams]
    if len(set(names)) != len(names):
        raise ArgumentError(f"--methods lists a method twice ({', '.join(config.methods)}): give each once")
    box_file = Path(config.boxes) if isinstance(config.boxes, (str, Path)) else None
    boxes = read_boxes(config.boxes) if config.boxes is not None else None
    out_dir = OutputDir(out, inputs=[*paths, model.path, *([box_file] if box_file else [])])
    pp = config.preprocess
    predict = model_predict(model, config.batch_size)
    images: list[dict[str, Any]] = []
    tiles: list[list[Tile]] = []
    failed: list[dict[str, str]] = []
    sanity_x: list[np.ndarray] = []
    for loaded in _batches(paths, config.batch_size, failed, progress, len(cams)):
        if not loaded:
            continue
        x = preprocess([img for _, img in loaded], pp)
        outputs = model.forward(x, config.batch_size)
        task.check(outputs)
        probs = task.probabilities(outputs)
        targets = task.default_targets(outputs)
        classes = class_indices(task, targets)
        in_boxes = None
        if boxes is not None:
            in_boxes = [boxes_to_input(boxes[p.name], img.shape[:2], pp) if p.name in boxes else None
                        for p, img in loaded]
        rand = deletion_insertion(predict, x, random_maps(len(loaded), pp.size, config.seed), classes,
                                  steps=config.steps, batch_size=config.batch_size, layout=pp.layout).insertion_auc
        views = [to_display(img, pp) for _, img in loaded]
        batch_items = [_image_record(p, img, probs[i], task, in_boxes, boxes, i, float(rand[i]))
                       for i, (p, img) in enumerate(loaded)]
        batch_tiles = [[("input", data_uri(_with_boxes((v * 255).astype(np.uint8), in_boxes, i)))] for i, v in
                       enumerate(views)]
        for cam in cams:
            e = cam.explain(x, targets)
            res = method_metrics(predict, x, e.maps, classes, pp.layout, in_boxes, rand, config.steps,
                                 config.batch_size, config.road, cam.name)
            for i, item in enumerate(batch_items):
                item["methods"][cam.name] = {
                    "class": int(classes[i]), "label": task.label(int(classes[i])),
                    "values": {k: _finite(v[i]) for k, v in res.values.items()}, "flags": res.flags[i],
                }
                overlay = show_cam_on_image(views[i], e.maps[i], config.alpha, config.colormap)
                batch_tiles[i].append((cam.name, data_uri(_with_boxes(overlay, in_boxes, i))))
            if progress is not None:
                progress(len(loaded))
        images += batch_items
        tiles += batch_tiles
        room = config.sanity_images - sum(len(s) for s in sanity_x)
        if config.sanity and room > 0:
            sanity_x.append(x[:room])
    sanity = None
    if config.sanity and sanity_x:
        sanity = _run_sanity(model, cams, np.concatenate(sanity_x), config, progress)
    report = _audit_report(model, config, names, cams, images, failed, sanity, boxes is not None)
    with out_dir.transaction() as tx:
        tx.write_json("metrics.json", report)
        tx.write_text("metrics.csv", _audit_csv(report))
        tx.write_text("report.html", render_audit(report, tiles))
        files = list(tx.written)
    return JobSummary(Path(out), report, files, time.perf_counter() - start, failed)


def _with_boxes(rgb: np.ndarray, in_boxes: Sequence[NDArray[np.int64] | None] | None, i: int) -> np.ndarray:
    if in_boxes is None or in_boxes[i] is None:
        return rgb
    b = in_boxes[i]
    assert b is not None
    thickness = max(1, round(max(rgb.shape[:2]) / 112))  # visible after the tile is scaled to 224 px
    return draw_boxes(rgb, [(int(x0), int(y0), int(x1), int(y1)) for x0, y0, x1, y1 in b], (255, 255, 255), None,
                      thickness)


def _image_record(p: Path, img: np.ndarray, probs: NDArray[np.float64], task: ClassificationTask,
                  in_boxes: Sequence[NDArray[np.int64] | None] | None, boxes: Mapping[str, Any] | None, i: int,
                  random_insertion: float) -> dict[str, Any]:
    top = top_predictions(probs[None], 3)[0]
    record: dict[str, Any] = {
        "file": str(p), "name": p.name, "size": [int(img.shape[1]), int(img.shape[0])],
        "predictions": [{"class": c, "label": task.label(c), "probability": pr} for c, pr in top],
        "near_tie": bool(near_tie(probs[None])[0]),
        "random_insertion_auc": _finite(random_insertion),
        "methods": {},
    }
    if boxes is not None:
        b = in_boxes[i] if in_boxes is not None else None
        record["box"] = None if b is None else b.tolist()
        if b is None:
            record["box_note"] = ("no box for this image in the boxes file" if p.name not in boxes else
                                  "the labelled box lies outside the region the model sees (center crop)")
    return record


def _run_sanity(model: Model, cams: Sequence[BaseCAM], x: np.ndarray, config: AuditConfig,
                progress: Progress | None) -> dict[str, Any]:
    methods: dict[str, Any] = {}
    for cam in cams:
        res = sanity_run(model, cam.name, x, config.sanity_steps, list(cam.layers), config.batch_size, config.seed,
                         config.method_options.get(cam.name, {}), progress)
        last = float(res.mean[-1]) if res.mean.size else float("nan")
        methods[cam.name] = {
            "depths": res.depths, "randomized_nodes": res.randomized,
            "mean": [_finite(v) for v in res.mean],
            "per_image": [[_finite(v) for v in row] for row in res.per_image],
            "suspicious": bool(math.isfinite(last) and last > SANITY_SUSPICIOUS),
            "notes": res.notes,
        }
    return {"images": int(x.shape[0]), "threshold": SANITY_SUSPICIOUS, "methods": methods}


def _audit_report(model: Model, config: AuditConfig, names: list[str], cams: Sequence[BaseCAM],
                  images: list[dict[str, Any]], failed: list[dict[str, str]], sanity: dict[str, Any] | None,
                  with_boxes: bool) -> dict[str, Any]:
    keys = list(BASE_METRICS) + (list(BOX_METRICS) if with_boxes else []) + ([ROAD_METRIC] if config.road else [])
    summary: dict[str, Any] = {
        m: {k: _stats([item["methods"][m]["values"].get(k) for item in images]) for k in keys} for m in names
    }
    summary["random"] = {"random_insertion_auc": _stats([item["random_insertion_auc"] for item in images])}
    pp = config.preprocess
    return {
        "model": str(model.path), "model_name": model.name, "device": model.device,
        "preprocess": f"{pp.layout} {pp.size[0]}x{pp.size[1]} {pp.resize_mode}, mean {list(pp.mean)}, "
                      f"std {list(pp.std)}, scale {pp.scale:g}",
        "methods": names, "layers": {c.name: list(c.layers) for c in cams},
        "metric_keys": keys, "deletion_insertion_steps": config.steps,
        "images": images, "failed": failed, "summary": summary,
        "flag_counts": {m: sum(1 for item in images if item["methods"][m]["flags"]) for m in names},
        "near_ties": sum(1 for item in images if item["near_tie"]),
        "sanity": sanity,
    }


def _audit_csv(report: dict[str, Any]) -> str:
    keys = report["metric_keys"]
    rows = []
    for item in report["images"]:
        for m, res in item["methods"].items():
            top = item["predictions"][0]
            rows.append({"file": item["file"], "method": m, "class": res["class"], "label": res["label"],
                         "probability": top["probability"], "near_tie": int(item["near_tie"]),
                         **res["values"], "random_insertion_auc": item["random_insertion_auc"],
                         "flags": ";".join(res["flags"] + (["near_tie"] if item["near_tie"] else []))})
    columns = ["file", "method", "class", "label", "probability", "near_tie", *keys, "random_insertion_auc", "flags"]
    return _csv(rows, columns)


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
            tiles.append([
                ("input", data_uri((view * 255).astype(np.uint8))),
                (f"A: {model_a.name}", data_uri(show_cam_on_image(view, res.maps_a[i], config.alpha, config.colormap))),
                (f"B: {model_b.name}", data_uri(show_cam_on_image(view, res.maps_b[i], config.alpha, config.colormap))),
                ("|A - B|", data_uri(show_cam_on_image(view, diff, config.alpha, config.colormap, normalize=False))),
            ])
        if progress is not None:
            progress(len(loaded))
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
    columns = ["change_rank", "file", "class", "label", "top1_a", "top1_b", "top1_agree", "prob_a", "prob_b",
               "pearson", "top_iou", "change"]
    with out_dir.transaction() as tx:
        tx.write_json("metrics.json", report)
        tx.write_text("metrics.csv", _csv([images[i] for i in ranking], columns))
        tx.write_text("report.html", render_compare(report, tiles))
        files = list(tx.written)
    return JobSummary(Path(out), report, files, time.perf_counter() - start, failed)


__all__ = ["AuditConfig", "CompareConfig", "JobSummary", "audit_units", "boxes_to_input", "read_boxes",
           "run_audit", "run_compare"]
