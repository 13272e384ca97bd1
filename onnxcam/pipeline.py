"""The explain job behind ``onnxcam explain`` and ``onnxcam demo``: images in, overlays, maps,
CAM boxes and a JSON summary out.

Images are decoded and run in batches; an unreadable image is reported and skipped, never fatal
for the others. Everything is written through one output transaction, so an error or Ctrl-C
leaves no half-written output behind.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxcam.boxes import cam_to_boxes, scale_box
from onnxcam.errors import ArgumentError, ImageError, TargetError
from onnxcam.explainers.base import BaseCAM
from onnxcam.image import Preprocess, geometry, load_image, preprocess
from onnxcam.model import LayerSpec, Model
from onnxcam.output import OutputDir, encode_png
from onnxcam.overlay import colormap_code, draw_boxes, make_grid, show_cam_on_image
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
    labels: Sequence[str] | None = None
    task: str | Task | None = None  # None: read from the model's outputs (see onnxcam.tasks)
    batch_size: int = 16
    alpha: float = 0.5
    colormap: str = "jet"
    boxes: bool = True
    box_threshold: float = 0.2
    save_npy: bool = False
    report_top: int = 5
    method_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExplainSummary:
    out_dir: Path
    images: list[dict[str, Any]]
    failed: list[dict[str, str]]
    seconds: float
    device: str
    files: list[Path]


def read_labels(path: str | Path) -> list[str]:
    """One label per line (blank lines kept out); ``ArgumentError`` if unreadable or empty."""
    p = Path(path)
    try:
        lines = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ArgumentError(f"cannot read labels file {p}: {exc}; pass a UTF-8 text file, one label per line") from exc
    labels = [line for line in lines if line]
    if not labels:
        raise ArgumentError(f"labels file {p} is empty: it needs one class name per line")
    return labels


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
        self.task: Task = detect_task(model.output_shapes, config.task or model.task.name, config.labels)
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
        self.task.check(outputs)
        target = self.config.target
        if target is not None and isinstance(self.task, ClassificationTask):
            k = self.task.num_classes(outputs)
            if not 0 <= target < k:
                raise TargetError(f"--target {target} is out of range: the model has {k} classes (0..{k - 1})")


def explain_images(
    model: Model,
    paths: Sequence[Path],
    out: str | Path,
    config: ExplainConfig,
    progress: Callable[[int], None] | None = None,
    input_folders: Sequence[str | Path] = (),
) -> ExplainSummary:
    """Explain every image in ``paths`` with every method of ``config``; write results under ``out``.

    ``progress(n)`` is called after each batch with the number of images done in it.
    ``input_folders``: folders the user named as inputs (before expansion to ``paths``); ``out``
    may not be one of them or lie inside one, or results would mix with the inputs.
    """
    start = time.perf_counter()
    job = _Job(model, config)
    out_dir = OutputDir(out, inputs=[*paths, model.path, *input_folders])
    images_out: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    stems: dict[str, int] = {}
    pp = config.preprocess

    def read(p: Path) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        # The model's view of the image (h, w, 3) uint8, its input tensor and the original (H, W): the
        # resize is done once, for both the tensor and the overlay, and the full-size image is let go.
        img = load_image(p)
        view = geometry(img, pp.size, pp.resize_mode, pp.crop_fraction)
        return view, preprocess([view], pp)[0], (int(img.shape[0]), int(img.shape[1]))

    with out_dir.transaction() as tx, Prefetcher(paths, read, config.batch_size) as batches:
        # Sessions and gradient graphs are built while the first images decode on the workers.
        job.prepare(min(len(paths), config.batch_size))
        for batch in batches:
            loaded: list[tuple[Path, np.ndarray, tuple[int, int]]] = []
            tensors: list[np.ndarray] = []
            for p, item in batch:
                if isinstance(item, ImageError):
                    failed.append({"file": str(p), "error": str(item)})
                else:
                    loaded.append((p, item[0], item[2]))
                    tensors.append(item[1])
            if loaded:
                _explain_batch(job, loaded, np.stack(tensors), tx, images_out, stems, batches.map)
            if progress is not None:
                progress(len(batch))
        summary = {
            "model": str(model.path),
            "device": model.device,
            "methods": [c.name for c in job.cams],
            "layers": {c.name: list(c.layers) for c in job.cams},
            "images": images_out,
            "failed": failed,
        }
        notes = job.task.notes()
        if notes:
            summary["notes"] = notes
        tx.write_json("summary.json", summary)
        files = list(tx.written)
    return ExplainSummary(Path(out), images_out, failed, time.perf_counter() - start, model.device, files)


def _explain_batch(job: _Job, loaded: list[tuple[Path, np.ndarray, tuple[int, int]]], x: np.ndarray, tx: Any,
                   images_out: list[dict[str, Any]], stems: dict[str, int],
                   parallel_map: Callable[[Callable[[Any], Any], Sequence[Any]], list[Any]]) -> None:
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
    results: dict[tuple[int, int], np.ndarray] = {}  # (method index, rank) -> maps (N, H, W)
    for m, cam in enumerate(job.cams):
        for r in range(ranks):
            targets = [t[r] for t in explain_targets] if explain_targets else None
            e = cam.explain(x, targets)
            if outputs is None:
                outputs = e.outputs
                job.check_outputs(outputs)
            if not explain_targets:
                explain_targets = [[t] for t in e.targets]
            results[(m, r)] = e.maps
    assert outputs is not None
    predictions = task.predictions(outputs, config.report_top)
    pp = config.preprocess
    ranks_done = list(results.items())

    def render(i: int) -> list[tuple[np.ndarray, bytes, tuple[int, int, int, int] | None]]:
        """Image ``i``'s overlays, their PNG bytes and CAM boxes, one per (method, rank)."""
        view = loaded[i][1].astype(np.float32) / np.float32(255)
        rendered = []
        for _, maps in ranks_done:
            cmap = maps[i]
            overlay = show_cam_on_image(view, cmap, config.alpha, config.colormap)
            found = cam_to_boxes(cmap, config.box_threshold) if config.boxes else None
            box = found if isinstance(found, tuple) else None
            if box is not None:
                overlay = draw_boxes(overlay, [box], (255, 255, 255), None)
            rendered.append((overlay, encode_png(overlay), box))
        return rendered

    for i, per_image in enumerate(parallel_map(render, range(len(loaded)))):
        path, _, original_hw = loaded[i]
        stem = _safe_stem(path)
        n = stems.get(stem, 0)
        stems[stem] = n + 1
        if n:
            stem = f"{stem}-{n + 1}"
        record: dict[str, Any] = {
            "file": str(path),
            "size": [original_hw[1], original_hw[0]],
            "predictions": predictions[i],
            "explanations": [],
        }
        tiles, titles = [], []
        for ((m, r), maps), (overlay, png, box) in zip(ranks_done, per_image):
            cam = job.cams[m]
            target = explain_targets[i][r]
            cmap = maps[i]
            suffix = f"_top{r + 1}" if ranks > 1 else ""
            name = f"{stem}_{cam.name.replace('+', 'p')}{suffix}"
            tx.write_bytes(f"{name}.png", png)
            entry: dict[str, Any] = {
                "method": cam.name, "layers": list(cam.layers), **task.describe(target), "overlay": f"{name}.png",
            }
            peak = np.unravel_index(int(np.argmax(cmap)), cmap.shape)
            entry["peak_xy"] = [int(peak[1]), int(peak[0])]
            if box is not None:
                entry["box"] = [int(v) for v in box]
                if pp.resize_mode == "stretch":
                    hw = (int(cmap.shape[0]), int(cmap.shape[1]))
                    entry["box_original"] = [int(v) for v in scale_box(box, hw, original_hw)]
            if config.save_npy:
                tx.write_npy(f"{name}.npy", cmap.astype(np.float32))
                entry["npy"] = f"{name}.npy"
            record["explanations"].append(entry)
            tiles.append(overlay)
            titles.append(f"{cam.name} {task.caption(target)}"[:40])
        if len(tiles) > 1:
            tx.write_png(f"{stem}_grid.png", make_grid(tiles, titles, columns=min(len(tiles), 4)))
            record["grid"] = f"{stem}_grid.png"
        images_out.append(record)
