"""The explain job behind ``onnxcam explain`` and ``onnxcam demo``: images in, overlays, maps,
CAM boxes and a JSON summary out.

Images are decoded and run in batches; an unreadable image is reported and skipped, never fatal
for the others, but a run in which no image could be read is an error and writes nothing.
Everything is written through one output transaction, so an error or Ctrl-C leaves no
half-written output behind, and a re-run into the same folder replaces the previous run's files.
Per-image records are streamed to a temp file as batches finish (``RecordLog``) and ``summary.json``
is written from it at the end (one image per line), so a run holds one batch in memory whatever the
number of images; ``ExplainSummary.images`` reads them back from summary.json when asked.

Overlays are drawn on the original image (its resolution and aspect; images above
``DISPLAY_MAX_SIDE`` pixels are shrunk for display), the map placed on the region the model saw:
with a center crop the cut-off borders are shown dimmed. The raw maps (``--save-npy``) stay at
model-input resolution, as the explainers return them.

Warnings raised while a batch is explained become ``notes`` of the summary, with the batch's
image indices replaced by file names.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, overload

import cv2
import numpy as np

from onnxcam.blas_threads import one_blas_thread
from onnxcam.boxes import Box, box_in_region, cam_to_boxes
from onnxcam.errors import ArgumentError, ImageError, OnnxCamWarning, TargetError
from onnxcam.explainers.base import BaseCAM
from onnxcam.image import Preprocess, crop_box, geometry, load_image, preprocess
from onnxcam.labels import LabelsSpec, labels_hint, resolve_labels
from onnxcam.labels import read_labels as read_labels
from onnxcam.model import LayerSpec, Model
from onnxcam.output import OutputDir, encode_png
from onnxcam.overlay import (
    add_caption,
    add_colorbar,
    box_covers,
    colormap_code,
    draw_boxes,
    make_grid,
    overlay_on_original,
)
from onnxcam.prefetch import Prefetcher
from onnxcam.registry import get_method
from onnxcam.targets import Target
from onnxcam.tasks import ClassificationTask, Task, detect_task


@dataclass
class ExplainConfig:
    """What to explain and how to draw it."""

    preprocess: Preprocess
    methods: Sequence[str] = ("gradcam",)
    layer: LayerSpec = "auto"
    target: int | None = None  # one class for every image; None = the model's own top classes
    top_k: int = 1  # explain this many top classes per image (when target is None)
    labels: LabelsSpec = None  # names, a file, "imagenet"; None: the model's metadata if it has names
    task: str | Task | None = None  # None: read from the model's outputs (see onnxcam.tasks)
    batch_size: int = 16
    alpha: float = 0.5
    colormap: str = "jet"
    boxes: bool = True
    box_threshold: float = 0.2
    colorbar: bool = False  # a colour scale beside each overlay
    captions: bool = True  # method, label and probability under each overlay
    save_npy: bool = False
    report_top: int = 5
    method_options: dict[str, Any] = field(default_factory=dict)


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _dumps(obj: Any, indent: int | None = None) -> str:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, default=_plain, indent=indent)


_IMAGES_OPEN = '  "images": ['


class RecordLog(Sequence[dict[str, Any]]):
    """Per-image records appended to a JSON Lines file as they are produced, read back from it on demand;
    once summary.json is written (``_write_summary``: an image per line), read back from there."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._n = 0
        self._in_summary = False
        self._file: IO[str] | None = open(path, "w", encoding="utf-8")

    def append(self, record: dict[str, Any]) -> None:
        if self._file is None:
            raise ValueError(f"{self.path} is closed")
        self._file.write(_dumps(record) + "\n")
        self._n += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def read_from_summary(self, summary: Path) -> None:
        """The records are in ``summary`` now: drop the log and read them from there."""
        self.discard()
        self.path, self._in_summary = summary, True

    def discard(self) -> None:
        self.close()
        with suppress(OSError):
            self.path.unlink()

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._file is not None:
            self._file.flush()
        with open(self.path, encoding="utf-8") as f:
            if not self._in_summary:
                for line in itertools.islice(f, self._n):
                    yield json.loads(line)
                return
            for line in f:
                if line.rstrip("\n") == _IMAGES_OPEN:
                    break
            for line in itertools.islice(f, self._n):
                yield json.loads(line.strip().rstrip(","))

    @overload
    def __getitem__(self, i: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, i: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, i: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(i, slice):
            return list(self)[i]
        k = i + self._n if i < 0 else i
        if not 0 <= k < self._n:
            raise IndexError(f"record {i} of {self._n}")
        return next(itertools.islice(iter(self), k, None))


def _write_summary(dest: Path, head: dict[str, Any], images: RecordLog, tail: dict[str, Any]) -> None:
    """summary.json streamed from the record log (one image per line), atomically."""
    tmp = dest.parent / f".{dest.name}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(_dumps(head, indent=2)[:-2] + ",\n" + _IMAGES_OPEN)
            for k, record in enumerate(images):
                f.write(("," if k else "") + "\n    " + _dumps(record))
            f.write("\n  ],\n" + _dumps(tail, indent=2)[2:] + "\n")
        os.replace(tmp, dest)
    except BaseException:
        with suppress(OSError):
            tmp.unlink()
        raise


@dataclass
class ExplainSummary:
    out_dir: Path
    images: Sequence[dict[str, Any]]  # a RecordLog over records.jsonl: read from disk, not held in memory
    failed: list[dict[str, str]]
    seconds: float
    device: str
    files: list[Path]
    notes: list[str] = field(default_factory=list)  # one line each: warnings (naming the file), hints


#: ``progress(n, stage=None)``: ``n`` more images done (fractions while a batch runs), ``stage`` when it changes.
Progress = Callable[..., None]

#: Overlays keep the original resolution up to this longest side (larger photos are shrunk for display,
#: aspect kept: a 12-megapixel photo's overlay would take a quarter of a second to encode, for a map of 7 x 7).
DISPLAY_MAX_SIDE = 1024
#: Longest side of a tile in a multi-method grid.
GRID_TILE_SIDE = 512


def _safe_stem(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem) or "image"


class _Job:
    def __init__(self, model: Model, config: ExplainConfig) -> None:
        self.model = model
        self.config = config
        if config.top_k < 1:
            raise ArgumentError(f"--top-k must be >= 1, got {config.top_k}")
        if config.batch_size < 1:
            raise ArgumentError(f"--batch-size must be >= 1, got {config.batch_size}")
        if not 0.0 <= config.alpha <= 1.0:
            raise ArgumentError(f"--alpha must be in [0, 1], got {config.alpha}")
        colormap_code(config.colormap)  # validates the name before any work
        pp = config.preprocess
        if pp.size != model.input.size or pp.layout != model.input.layout:
            raise ArgumentError(
                f"preprocessing gives {pp.layout} {pp.size[0]}x{pp.size[1]} but {model.name} takes "
                f"{model.input.layout} {model.input.height}x{model.input.width}: drop --size/--layout or fix them"
            )
        if pp.channels != model.input.channels:
            raise ArgumentError(
                f"preprocessing gives {pp.channels}-channel images but {model.name} takes {model.input.channels}: "
                f"pass channels={model.input.channels} to get_preset"
            )
        if not config.methods:
            raise ArgumentError("no method given: pass --method gradcam (see `onnxcam methods`)")
        if config.target is not None and config.target < 0:
            raise ArgumentError(f"--target must be a class index >= 0, got {config.target}")
        self.labels = resolve_labels(config.labels, model.proto)
        self.task: Task = detect_task(model.output_shapes, config.task or model.task.name, self.labels)
        if config.top_k > 1 and not isinstance(self.task, ClassificationTask):
            raise ArgumentError(f"--top-k ranks classes, but the model's task is {self.task.name}: drop --top-k")
        self.cams: list[BaseCAM] = []
        for name in config.methods:
            cls = get_method(name)
            options = config.method_options.get(cls.name, {})
            self.cams.append(cls(model, config.layer, batch_size=config.batch_size, task=self.task, **options))

    def prepare(self, n: int) -> None:
        """Build every method's sessions for a first batch of ``n`` images (see ``BaseCAM.prepare``)."""
        for cam in self.cams:
            cam.prepare(n)

    def check_outputs(self, outputs: Sequence[np.ndarray]) -> None:
        """The first outputs of a run against what the user said (labels, --target)."""
        if self.config.labels is None and self.labels is not None and isinstance(self.task, ClassificationTask) \
                and len(self.labels) != self.task.num_classes(outputs):
            # Names found in the metadata that do not fit the outputs are someone else's: ignore them.
            self.task.labels = self.labels = None
        self.task.check(outputs)
        target = self.config.target
        if target is not None and isinstance(self.task, ClassificationTask):
            k = self.task.num_classes(outputs)
            if not 0 <= target < k:
                raise TargetError(f"--target {target} is out of range: the model has {k} classes (0..{k - 1})")


@dataclass
class _Loaded:
    path: Path
    display: np.ndarray  # (H', W', 3) uint8: the original image, shrunk to DISPLAY_MAX_SIDE if larger
    original_hw: tuple[int, int]
    region: tuple[float, float, float, float]  # what the model saw, in ``display`` pixels


@one_blas_thread()  # the whole job: see onnxcam.blas_threads
def explain_images(
    model: Model,
    paths: Sequence[Path],
    out: str | Path,
    config: ExplainConfig,
    progress: Progress | None = None,
    input_folders: Sequence[str | Path] = (),
) -> ExplainSummary:
    """Explain every image in ``paths`` with every method of ``config``; write results under ``out``.

    ``progress(n, stage=None)`` is called as images are done (``n`` may be a fraction of an image
    while Score-CAM or Ablation-CAM work through a batch) and with ``n=0`` when the stage changes
    ("building sessions", "explaining"). ``input_folders``: folders the user named as inputs
    (before expansion to ``paths``); ``out`` may not be one of them or lie inside one, or results
    would mix with the inputs. Raises ``ImageError`` (and writes nothing) when no image could be read.
    """
    start = time.perf_counter()
    job = _Job(model, config)
    out_dir = OutputDir(out, inputs=[*paths, model.path, *input_folders])
    failed: list[dict[str, str]] = []
    notes: list[str] = []
    stems: dict[str, int] = {}
    pp = config.preprocess
    report: Progress = progress if progress is not None else (lambda n, stage=None: None)

    def read(p: Path) -> tuple[_Loaded, np.ndarray]:
        # The model's input tensor and the image for display: the resize is done once for the tensor,
        # and the full-size image is let go once a display copy exists.
        img = load_image(p)
        hw = (int(img.shape[0]), int(img.shape[1]))
        tensor = preprocess([geometry(img, pp.size, pp.resize_mode, pp.crop_fraction)], pp)[0]
        display = _shrink(img, DISPLAY_MAX_SIDE)
        sy, sx = display.shape[0] / hw[0], display.shape[1] / hw[1]
        x0, y0, x1, y1 = crop_box(hw, pp.size, pp.resize_mode, pp.crop_fraction)
        return _Loaded(p, display, hw, (x0 * sx, y0 * sy, x1 * sx, y1 * sy)), tensor

    with out_dir.transaction(replace_previous=True) as tx, Prefetcher(paths, read, config.batch_size) as batches:
        images_out = RecordLog(out_dir.target(f".records.{secrets.token_hex(4)}.tmp"))
        try:
            _run_batches(job, batches, tx, images_out, failed, notes, stems, report, len(paths))
            hint = _labels_hint(job, images_out)
            if hint:
                notes.append(hint)
            notes[:0] = [n for n in job.task.notes() if n not in notes]  # which score the maps explain
            head = {
                "model": str(model.path),
                "device": model.device,
                "methods": [c.name for c in job.cams],
                "layers": {c.name: list(c.layers) for c in job.cams},
            }
            # Through the transaction's writer, so that an error or Ctrl-C still removes it.
            summary = tx.write_with("summary.json", lambda p: _write_summary(p, head, images_out, {"failed": failed,
                                                                                                "notes": notes}))
        except BaseException:
            images_out.discard()
            raise
        images_out.read_from_summary(summary)
        files = list(tx.written)
    return ExplainSummary(Path(out), images_out, failed, time.perf_counter() - start, model.device, files, notes)


def _run_batches(job: _Job, batches: Any, tx: Any, images_out: RecordLog, failed: list[dict[str, str]],
             notes: list[str], stems: dict[str, int], report: Progress, n_paths: int) -> None:
    # Sessions and gradient graphs are built while the first images decode on the workers.
    report(0, stage="building sessions")
    job.prepare(min(n_paths, job.config.batch_size))
    report(0, stage="explaining")
    for batch in batches:
        loaded: list[_Loaded] = []
        tensors: list[np.ndarray] = []
        for p, item in batch:
            if isinstance(item, ImageError):
                failed.append({"file": str(p), "error": str(item)})
                report(1)
            else:
                loaded.append(item[0])
                tensors.append(item[1])
        if loaded:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                _explain_batch(job, loaded, np.stack(tensors), tx, images_out, stems, batches.map, report)
            notes += [n for n in warning_notes(caught, [str(item.path) for item in loaded]) if n not in notes]
    if not images_out:
        first = f"; {failed[0]['file']}: {failed[0]['error']}" if failed else ""
        raise ImageError(f"no image could be read ({len(failed)} of {n_paths} failed){first}; nothing was "
                         "written")


def _shrink(img: np.ndarray, side: int) -> np.ndarray:
    h, w = img.shape[:2]
    if max(h, w) <= side:
        return img
    s = side / max(h, w)
    return np.asarray(cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA))


def _labels_hint(job: _Job, images: RecordLog) -> str | None:
    if not isinstance(job.task, ClassificationTask) or not images or not images[0]["predictions"]:
        return None
    shape = job.model.output_shapes[job.task.output]  # per image: (K,) for class scores
    k = shape[0] if len(shape) == 1 and isinstance(shape[0], int) else 0
    return labels_hint(int(k), job.task.labels is not None)


_IMAGE_INDEX = re.compile(r"\bimage (\d+)\b")


def warning_notes(caught: Sequence[warnings.WarningMessage], files: Sequence[str]) -> list[str]:
    """One line per distinct warning, the batch's "image i" replaced by that image's file."""
    def name(m: re.Match[str]) -> str:
        i = int(m.group(1))
        return f"image {files[i]}" if 0 <= i < len(files) else m.group(0)

    out: list[str] = []
    for w in caught:
        text = " ".join(str(w.message).split())
        if not issubclass(w.category, OnnxCamWarning):
            text = f"{w.category.__name__}: {text}"
        text = _IMAGE_INDEX.sub(name, text)
        if text not in out:
            out.append(text)
    return out


def _probability(task: Task, probs: np.ndarray | None, i: int, target: Target) -> float | None:
    if probs is None or not isinstance(task, ClassificationTask):
        return None
    k = task.class_of(target)
    return float(probs[i, k]) if k is not None and 0 <= k < probs.shape[1] else None


def _explain_batch(job: _Job, loaded: list[_Loaded], x: np.ndarray, tx: Any,
                   images_out: RecordLog, stems: dict[str, int],
                   parallel_map: Callable[[Callable[[Any], Any], Sequence[Any]], list[Any]],
                   report: Progress) -> None:
    """Explain one batch; ``parallel_map`` renders the overlays on the reader's worker threads."""
    config = job.config
    task = job.task
    outputs: list[np.ndarray] | None = None
    explain_targets: list[list[Target]]  # per image, one target per rank
    if config.target is not None:
        explain_targets = [[task.target(config.target)]] * len(loaded)
    elif config.top_k == 1:
        explain_targets = []  # the task's default, decided by the first method's own forward pass (no extra run)
    else:
        outputs = job.model.forward(x, config.batch_size)
        job.check_outputs(outputs)
        explain_targets = task.top_targets(outputs, config.top_k)

    ranks = config.top_k if config.target is None else 1
    share = len(loaded) / (len(job.cams) * ranks)  # images of progress per explain call
    results: dict[tuple[int, int], np.ndarray] = {}  # (method index, rank) -> maps (N, H, W)
    for m, cam in enumerate(job.cams):
        for r in range(ranks):
            targets = [t[r] for t in explain_targets] if explain_targets else None
            with cam.reporting(lambda f: report(f * share)):
                e = cam.explain(x, targets)
            if outputs is None:
                outputs = e.outputs
                job.check_outputs(outputs)
            if not explain_targets:
                explain_targets = [[t] for t in e.targets]
            results[(m, r)] = e.maps
    assert outputs is not None
    predictions = task.predictions(outputs, config.report_top)
    probs = task.probabilities(outputs) if isinstance(task, ClassificationTask) else None
    pp = config.preprocess
    # Grid order: rows are ranks (targets), columns methods.
    order = sorted(results, key=lambda mr: (mr[1], mr[0]))

    def render(i: int) -> list[tuple[np.ndarray, bytes, Box | None]]:
        """Image ``i``'s overlays, their PNG bytes and CAM boxes (input pixels), one per (method, rank)."""
        item = loaded[i]
        rendered = []
        for m, r in order:
            cmap = results[(m, r)][i]
            overlay = overlay_on_original(item.display, cmap, item.region, config.alpha, config.colormap)
            found = cam_to_boxes(cmap, config.box_threshold) if config.boxes else None
            box = found if isinstance(found, tuple) else None
            if box is not None and not box_covers(box, (int(cmap.shape[0]), int(cmap.shape[1]))):
                shown = box_in_region(box, (int(cmap.shape[0]), int(cmap.shape[1])), item.region,
                                      item.display.shape[:2])
                thickness = max(2, round(max(item.display.shape[:2]) / 300))
                overlay = draw_boxes(overlay, [shown], (255, 255, 255), None, thickness)
            if config.colorbar:
                overlay = add_colorbar(overlay, config.colormap)
            if config.captions:
                target = explain_targets[i][r]
                p = _probability(task, probs, i, target)
                text = f"{job.cams[m].name}: {task.caption(target)}" + (f"  p={p:.2f}" if p is not None else "")
                overlay = add_caption(overlay, text)
            rendered.append((overlay, encode_png(overlay), box))
        return rendered

    for i, per_image in enumerate(parallel_map(render, range(len(loaded)))):
        item = loaded[i]
        stem = _safe_stem(item.path)
        n = stems.get(stem, 0)
        stems[stem] = n + 1
        if n:
            stem = f"{stem}-{n + 1}"
        record: dict[str, Any] = {
            "file": str(item.path),
            "size": [item.original_hw[1], item.original_hw[0]],
            "predictions": predictions[i],
            "explanations": [],
        }
        tiles, titles = [], []
        by_method: dict[tuple[int, int], dict[str, Any]] = {}
        for (m, r), (overlay, png, box) in zip(order, per_image):
            cam = job.cams[m]
            target = explain_targets[i][r]
            cmap = results[(m, r)][i]
            suffix = f"_top{r + 1}" if ranks > 1 else ""
            name = f"{stem}_{cam.name.replace('+', 'p')}{suffix}"
            tx.write_bytes(f"{name}.png", png)
            entry: dict[str, Any] = {
                "method": cam.name, "layers": list(cam.layers), **task.describe(target), "overlay": f"{name}.png",
            }
            p = _probability(task, probs, i, target)
            if p is not None:
                entry["probability"] = p
            peak = np.unravel_index(int(np.argmax(cmap)), cmap.shape)
            entry["peak_xy"] = [int(peak[1]), int(peak[0])]
            if box is not None:
                hw = (int(cmap.shape[0]), int(cmap.shape[1]))
                entry["box"] = [int(v) for v in box]
                region = crop_box(item.original_hw, pp.size, pp.resize_mode, pp.crop_fraction)
                entry["box_original"] = [int(v) for v in box_in_region(box, hw, region, item.original_hw)]
                if box_covers(box, hw):
                    entry["box_note"] = "covers the whole image: not drawn"
            if config.save_npy:
                tx.write_npy(f"{name}.npy", cmap.astype(np.float32))
                entry["npy"] = f"{name}.npy"
            by_method[(m, r)] = entry
            tiles.append(_shrink(overlay, GRID_TILE_SIDE))
            titles.append(f"{cam.name}" + (f" top {r + 1}" if ranks > 1 else ""))
        # summary.json keeps its order: per method, its ranks.
        record["explanations"] = [by_method[k] for k in sorted(by_method)]
        if len(tiles) > 1:
            tx.write_png(f"{stem}_grid.png", make_grid(tiles, titles, columns=len(job.cams)))
            record["grid"] = f"{stem}_grid.png"
        images_out.append(record)
