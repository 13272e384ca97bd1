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
import warnings
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
    FALSE_ALARM_TARGET,
    ROAD_METRIC,
    calibrate_insertion,
    method_metrics,
    model_predict,
    near_tie,
    random_maps,
    review_flags,
    top_predictions,
)
from onnxcam.audit.randomize import sanity_run, spread_steps, weight_nodes
from onnxcam.audit.report_html import Tile, data_uri, render_audit, render_compare
from onnxcam.errors import ArgumentError, ImageError
from onnxcam.explainers.base import BaseCAM
from onnxcam.image import Preprocess, crop_box, load_image, preprocess, to_display
from onnxcam.labels import LabelsSpec, resolve_labels
from onnxcam.metrics import deletion_insertion
from onnxcam.model import LayerSpec, Model
from onnxcam.output import OutputDir
from onnxcam.overlay import colormap_code, draw_boxes, show_cam_on_image
from onnxcam.pipeline import warning_notes
from onnxcam.registry import get_method
from onnxcam.tasks import ClassificationTask, class_indices, classifier_task, detect_task

#: ``progress(n, stage=None)``: ``n`` more units done (fractions while a batch runs); ``stage`` when it changes.
Progress = Callable[..., None]

#: Mean Spearman correlation at the deepest randomisation above which a method is flagged.
SANITY_SUSPICIOUS = 0.5
#: ... and at or below which (with no rise on the way) the curve "falls as expected".
SANITY_FALLS_TO = 0.2
#: A step up by more than this between depths is a rise, whatever the end value.
SANITY_RISE = 0.1


@dataclass
class AuditConfig:
    """What to audit and how. ``boxes``: a boxes.json path or its parsed mapping (see ``read_boxes``)."""

    preprocess: Preprocess
    methods: Sequence[str] = ("gradcam",)
    layer: LayerSpec = "auto"
    labels: LabelsSpec = None  # names, a file, "imagenet"; None: the model's metadata if it has names
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
    labels: LabelsSpec = None
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
    notes: list[str] = field(default_factory=list)  # warnings, one line each, naming the image file


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


def _audit_task(model: Model, labels: LabelsSpec, what: str) -> ClassificationTask:
    """The model's task with the user's labels (or those in its metadata); audits rank class
    probabilities, so a classifier's."""
    names = resolve_labels(labels, model.proto)
    shape = model.output_shapes[0] if model.output_shapes else ()  # per image: (K,) for class scores
    if labels is None and names is not None and shape and shape[0] != len(names):
        names = None  # metadata names that do not fit the outputs are someone else's
    return classifier_task(detect_task(model.output_shapes, model.task.name, names), what)


def _scaled(progress: Progress, units: float) -> Callable[[float], None]:
    """``progress`` fed ``units`` times each fraction an explain call reports."""
    return lambda f: progress(units * f)


def _no_images(failed: Sequence[dict[str, str]], n: int) -> ImageError:
    first = f"; {failed[0]['file']}: {failed[0]['error']}" if failed else ""
    return ImageError(f"no image could be read ({len(failed)} of {n} failed){first}; nothing was written")


def _curve_stats(curves: Sequence[np.ndarray]) -> dict[str, list[float | None]]:
    """Mean and std over images of ``(N, steps + 1)`` curve batches."""
    arr = np.concatenate([np.asarray(c, dtype=np.float64) for c in curves]) if curves else np.zeros((0, 0))
    if arr.size == 0:
        return {"mean": [], "std": []}
    return {"mean": [_finite(v) for v in arr.mean(axis=0)], "std": [_finite(v) for v in arr.std(axis=0)]}


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
    notes: list[str] = []
    sanity_x: list[np.ndarray] = []
    curves: dict[str, dict[str, list[np.ndarray]]] = {m: {"deletion": [], "insertion": []} for m in [*names, "random"]}
    report_progress: Progress = progress if progress is not None else (lambda n, stage=None: None)
    report_progress(0, stage="explaining")
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
        # Two independent random maps per image: the first is the baseline a map must beat, the second
        # measures how often a map with no information would be flagged (the false-alarm rate).
        rand_di = deletion_insertion(predict, x, random_maps(len(loaded), pp.size, config.seed), classes,
                                     steps=config.steps, batch_size=config.batch_size, layout=pp.layout)
        rand2 = deletion_insertion(predict, x, random_maps(len(loaded), pp.size, config.seed + 1), classes,
                                   steps=config.steps, batch_size=config.batch_size, layout=pp.layout).insertion_auc
        rand = (rand_di.insertion_auc + rand2) / 2  # the baseline: two random maps' mean
        curves["random"]["deletion"].append(rand_di.deletion_curves)
        curves["random"]["insertion"].append(rand_di.insertion_curves)
        views = [to_display(img, pp) for _, img in loaded]
        batch_items = [_image_record(p, img, probs[i], task, in_boxes, boxes, i,
                                     (float(rand_di.insertion_auc[i]), float(rand2[i])))
                       for i, (p, img) in enumerate(loaded)]
        batch_tiles = [[("input", data_uri(_with_boxes((v * 255).astype(np.uint8), in_boxes, i)))] for i, v in
                       enumerate(views)]
        files = [str(p) for p, _ in loaded]
        for cam in cams:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                # Half of a batch's progress is the explanation, half its metrics.
                with cam.reporting(_scaled(report_progress, 0.5 * len(loaded))):
                    e = cam.explain(x, targets)
            notes += [n for n in warning_notes(caught, files) if n not in notes]
            res = method_metrics(predict, x, e.maps, classes, pp.layout, in_boxes, rand, config.steps,
                                 config.batch_size, config.road, cam.name)
            curves[cam.name]["deletion"].append(res.curves["deletion"])
            curves[cam.name]["insertion"].append(res.curves["insertion"])
            for i, item in enumerate(batch_items):
                item["methods"][cam.name] = {
                    "class": int(classes[i]), "label": task.label(int(classes[i])),
                    "values": {k: _finite(v[i]) for k, v in res.values.items()}, "flags": res.flags[i],
                }
                overlay = show_cam_on_image(views[i], e.maps[i], config.alpha, config.colormap)
                batch_tiles[i].append((cam.name, data_uri(_with_boxes(overlay, in_boxes, i))))
            report_progress(0.5 * len(loaded))
        images += batch_items
        tiles += batch_tiles
        room = config.sanity_images - sum(len(s) for s in sanity_x)
        if config.sanity and room > 0:
            sanity_x.append(x[:room])
    if not images:
        raise _no_images(failed, len(paths))
    calibration = _calibrate_flags(images)
    sanity = None
    if config.sanity and sanity_x:
        report_progress(0, stage="sanity check")
        sanity = _run_sanity(model, cams, np.concatenate(sanity_x), config, progress)
    report = _audit_report(model, config, names, cams, images, failed, sanity, boxes is not None)
    report["false_alarm"] = calibration
    report["insertion_margin"] = calibration["margin"]
    report["curves"] = {m: {k: _curve_stats(v) for k, v in c.items()} for m, c in curves.items()}
    report["notes"] = notes
    with out_dir.transaction(replace_previous=True) as tx:
        tx.write_json("metrics.json", report)
        tx.write_text("metrics.csv", _audit_csv(report))
        tx.write_text("report.html", render_audit(report, tiles))
        written = list(tx.written)
    return JobSummary(Path(out), report, written, time.perf_counter() - start, failed, notes)


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
                  random_insertion: tuple[float, float]) -> dict[str, Any]:
    top = top_predictions(probs[None], 3)[0]
    record: dict[str, Any] = {
        "file": str(p), "name": p.name, "size": [int(img.shape[1]), int(img.shape[0])],
        "predictions": [{"class": c, "label": task.label(c), "probability": pr} for c, pr in top],
        "near_tie": bool(near_tie(probs[None])[0]),
        "random_insertion_auc": _finite(sum(random_insertion) / 2),
        "random_insertion_aucs": [_finite(v) for v in random_insertion],
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
        dropped = [int(np.sum(~np.isfinite(row))) for row in res.per_image]
        verdict, text = sanity_verdict([float(v) for v in res.mean], dropped, int(x.shape[0]))
        methods[cam.name] = {
            "depths": res.depths, "randomized_nodes": res.randomized,
            "mean": [_finite(v) for v in res.mean],
            "per_image": [[_finite(v) for v in row] for row in res.per_image],
            "dropped": dropped,
            "suspicious": bool(math.isfinite(last) and last > SANITY_SUSPICIOUS),
            "verdict": verdict, "verdict_text": text,
            "notes": res.notes,
        }
    return {"images": int(x.shape[0]), "threshold": SANITY_SUSPICIOUS, "falls_to": SANITY_FALLS_TO,
            "methods": methods}


def sanity_verdict(mean: Sequence[float], dropped: Sequence[int], n_images: int) -> tuple[str, str]:
    """The sanity check's verdict on one method's curve of mean Spearman correlations.

    ``mean[s]``: mean correlation at randomisation depth ``s`` (NaN: undefined); ``dropped[s]``:
    images whose correlation was undefined there (a constant map). Verdicts: "falls" (ends at or
    below ``SANITY_FALLS_TO`` and never steps up by more than ``SANITY_RISE``), "rises" (a step up
    by more than ``SANITY_RISE``), "survives" (ends above ``SANITY_SUSPICIOUS``), "partial" (ends in
    between), "undefined" (no defined value, or the last depth lost more than half its images).
    """
    values = [float(v) if v is not None else float("nan") for v in mean]
    defined = [v for v in values if math.isfinite(v)]
    lost = [f"{d} of {n_images} at depth {i + 1}" for i, d in enumerate(dropped) if d]
    lost_text = f"; images dropped (constant map, correlation undefined): {', '.join(lost)}" if lost else ""
    if not defined or (dropped and dropped[-1] * 2 > n_images) or not math.isfinite(values[-1]):
        return "undefined", f"no verdict: too few images have a defined correlation{lost_text}"
    last = values[-1]
    rises = [(i, b) for i, (a, b) in enumerate(zip(values, values[1:]), 2)
             if math.isfinite(a) and math.isfinite(b) and b - a > SANITY_RISE]
    if rises:
        i, b = max(rises, key=lambda r: r[1])
        return "rises", (f"rises to {b:.2f} at depth {i} and ends at {last:.2f}: the maps do not follow the "
                         f"randomisation steadily{lost_text}")
    if last > SANITY_SUSPICIOUS:
        return "survives", (f"still correlated ({last:.2f} > {SANITY_SUSPICIOUS}) with every layer randomised: the "
                            f"maps may reflect the image more than the model{lost_text}")
    if last > SANITY_FALLS_TO:
        return "partial", (f"ends at {last:.2f}: falls, but not to {SANITY_FALLS_TO} or below; some structure "
                           f"survives the randomisation{lost_text}")
    return "falls", f"ends at {last:.2f}: falls as expected{lost_text}"


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


def _calibrate_flags(images: list[dict[str, Any]]) -> dict[str, Any]:
    """Set the low-insertion margin from the run's random maps and (re)compute every image's flags.

    Returns the calibration: the margin, the false-alarm rate it is set for and the one expected
    (normal approximation), and the rate measured on the random maps themselves (each random map
    against the other, with the same margin).
    """
    pairs = [tuple(item["random_insertion_aucs"]) for item in images
             if None not in item.get("random_insertion_aucs", [None])]
    first = np.array([a for a, _ in pairs], dtype=np.float64)
    second = np.array([b for _, b in pairs], dtype=np.float64)
    margin, expected = calibrate_insertion(first, second)
    for item in images:
        base = item.get("random_insertion_auc")
        for res in item["methods"].values():
            values = {k: float("nan") if v is None else float(v) for k, v in res["values"].items()}
            res["flags"] = review_flags(values, base, margin)
    hits = int(np.sum(first < second - margin) + np.sum(second < first - margin))
    return {"margin": margin, "target": FALSE_ALARM_TARGET, "expected": _finite(expected),
            "flagged": hits, "of": 2 * len(pairs), "rate": _finite(hits / (2 * len(pairs))) if pairs else None}


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


__all__ = ["AuditConfig", "CompareConfig", "JobSummary", "audit_units", "boxes_to_input", "compare_verdict",
           "read_boxes", "run_audit", "run_compare", "sanity_verdict"]
