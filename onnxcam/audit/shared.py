"""What the audit and compare jobs share: their configuration, checks, boxes, the per-image record
and the sanity check (``onnxcam.audit.job`` runs compare; ``onnxcam.jobs`` runs audits)."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from onnxcam.audit.randomize import sanity_run
from onnxcam.errors import ArgumentError, ImageError
from onnxcam.explainers.base import BaseCAM
from onnxcam.image import Preprocess, crop_box, load_image
from onnxcam.labels import LabelsSpec, resolve_labels
from onnxcam.model import LayerSpec, Model
from onnxcam.overlay import colormap_code, draw_boxes
from onnxcam.registry import get_method
from onnxcam.tasks import ClassificationTask, classifier_task, detect_task

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


def _with_boxes(rgb: np.ndarray, in_boxes: Sequence[NDArray[np.int64] | None] | None, i: int) -> np.ndarray:
    if in_boxes is None or in_boxes[i] is None:
        return rgb
    b = in_boxes[i]
    assert b is not None
    thickness = max(1, round(max(rgb.shape[:2]) / 112))  # visible after the tile is scaled to 224 px
    return draw_boxes(rgb, [(int(x0), int(y0), int(x1), int(y1)) for x0, y0, x1, y1 in b], (255, 255, 255), None,
                      thickness)


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


