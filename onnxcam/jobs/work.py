"""The per-batch work of an audit, the one function both engines call: load a chunk's images, explain
them with every method, compute the metrics, and return the per-image records and overlays.

A ``Worker`` builds the model's sessions and the explainers once (per process, or per Ray actor) and
then turns chunks into ``ChunkResult``s. Chunks are cut by the job (``chunks``), not by the engine: the
images of a chunk are run as one batch in either engine, so the records are the same bit for bit
(the random baseline maps are seeded per chunk, and onnxruntime's results depend on the batch).

Flags that depend on the whole run (the calibrated low-insertion margin) are set when the job
finishes (``onnxcam.jobs.finish``); the records carry the raw values they need.
"""

from __future__ import annotations

import itertools
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from onnxcam.audit.metrics_run import method_metrics, model_predict, near_tie, random_maps, top_predictions
from onnxcam.audit.shared import _audit_task, _finite, _make_cam, _with_boxes, boxes_to_input
from onnxcam.errors import ImageError, OutputError
from onnxcam.image import load_image, preprocess, to_display
from onnxcam.jobs.sources import Item
from onnxcam.jobs.spec import JobSpec
from onnxcam.metrics import deletion_insertion
from onnxcam.model import Model
from onnxcam.overlay import show_cam_on_image
from onnxcam.pipeline import warning_notes
from onnxcam.tasks import class_indices

__all__ = ["ChunkResult", "Worker", "chunks", "overlay_name"]

#: JPEG quality of the per-image overlays (a 224 x 224 overlay is ~15 kB; PNG would be ~100 kB).
OVERLAY_QUALITY = 90

#: ``progress(n)``: ``n`` more units (image x method) done, fractions while a batch runs.
Progress = Callable[[float], None]


def chunks(items: Iterable[Item], size: int) -> Iterator[tuple[int, list[Item]]]:
    """``(chunk index, items)`` of ``size`` consecutive items: the unit of work, of writing and of resuming."""
    it = iter(items)
    for index in itertools.count():
        batch = list(itertools.islice(it, size))
        if not batch:
            return
        yield index, batch


@dataclass
class ChunkResult:
    """``records``: one dict per image read (see ``Worker.run_chunk``); ``overlays``: ``(relative name,
    JPEG bytes)``; ``failed``: ``{"index", "file", "error"}`` per image that could not be read."""

    chunk: int
    records: list[dict[str, Any]] = field(default_factory=list)
    overlays: list[tuple[str, bytes]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    images: int = 0  # items in the chunk, read or not
    device: str = ""  # where the chunk ran (cpu, cuda)


def overlay_name(index: int, path: str, method: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem) or "image"
    return f"overlays/{index:07d}_{stem}_{method.replace('+', 'p')}.jpg"


def _jpeg(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, OVERLAY_QUALITY])
    if not ok:
        raise OutputError(f"OpenCV could not encode an overlay of shape {rgb.shape} as JPEG")
    return bytes(buf.tobytes())


class Worker:
    """Sessions, explainers and metric runners of one job, built once; ``run_chunk`` does a chunk."""

    def __init__(self, spec: JobSpec, model: Model | None = None, threads: int | None = None) -> None:
        self.spec = spec
        self.model = model if model is not None else spec.load_model(threads)
        config = spec.config
        self.task = _audit_task(self.model, config.labels, "onnxcam audit")
        self.cams = [_make_cam(self.model, m, config.layer, config.batch_size, config.method_options, self.task)
                     for m in config.methods]
        self.predict = model_predict(self.model, config.batch_size)
        given = config.boxes if isinstance(config.boxes, Mapping) else {}  # spec_for has read any boxes file
        self.boxes = {k: np.asarray(v, dtype=np.float64) for k, v in given.items()}

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.cams]

    def true_class(self, item: Item) -> int | None:
        """The class an item's label names: an index, a class name, or the source's own numbering."""
        label = item.label
        if label is None:
            return None
        names = self.task.labels
        if names is not None and label in names:
            return names.index(label)
        if label.strip().isdigit():
            return int(label)
        return item.class_index

    def _boxes(self, item: Item, hw: tuple[int, int]) -> tuple[NDArray[np.int64] | None, str | None]:
        """The item's boxes in model-input pixels, or None with the reason."""
        raw = np.asarray(item.box, dtype=np.float64).reshape(-1, 4) if item.box is not None else \
            self.boxes.get(Path(item.path).name)
        if raw is None:
            return None, "no box for this image in the boxes file"
        mapped = boxes_to_input(raw, hw, self.spec.config.preprocess)
        return mapped, None if mapped is not None else \
            "the labelled box lies outside the region the model sees (center crop)"

    def run_chunk(self, chunk: int, items: list[Item], progress: Progress | None = None) -> ChunkResult:
        """Explain and measure one chunk; unreadable images go to ``failed``, never raise."""
        spec, config = self.spec, self.spec.config
        pp = config.preprocess
        result = ChunkResult(chunk, images=len(items))
        report: Progress = progress if progress is not None else (lambda n: None)
        loaded: list[tuple[Item, np.ndarray]] = []
        for item in items:
            try:
                loaded.append((item, load_image(item.path)))
            except ImageError as exc:
                result.failed.append({"index": item.index, "file": item.path, "error": str(exc)})
                report(len(self.cams))
        if not loaded:
            return result
        n = len(loaded)
        x = preprocess([img for _, img in loaded], pp)
        outputs = self.model.forward(x, config.batch_size)
        result.device = self.model.device
        self.task.check(outputs)
        probs = self.task.probabilities(outputs)
        targets = self.task.default_targets(outputs)
        classes = class_indices(self.task, targets)
        in_boxes: list[NDArray[np.int64] | None] | None = None
        notes: list[str | None] = [None] * n
        if spec.with_boxes:
            found = [self._boxes(item, (int(img.shape[0]), int(img.shape[1]))) for item, img in loaded]
            in_boxes, notes = [b for b, _ in found], [w for _, w in found]
        # Two independent random maps per image: the first is the baseline a map must beat, the second
        # measures how often a map with no information would be flagged (the false-alarm rate).
        rand_di = deletion_insertion(self.predict, x, random_maps(n, pp.size, config.seed), classes,
                                     steps=config.steps, batch_size=config.batch_size, layout=pp.layout)
        rand2 = deletion_insertion(self.predict, x, random_maps(n, pp.size, config.seed + 1), classes,
                                   steps=config.steps, batch_size=config.batch_size, layout=pp.layout).insertion_auc
        rand = (rand_di.insertion_auc + rand2) / 2
        ties = near_tie(probs)
        top = top_predictions(probs, 3)
        for i, (item, img) in enumerate(loaded):
            record: dict[str, Any] = {
                "index": item.index, "file": item.path, "name": Path(item.path).name,
                "size": [int(img.shape[1]), int(img.shape[0])],
                "predictions": [{"class": c, "label": self.task.label(c), "probability": p} for c, p in top[i]],
                "near_tie": bool(ties[i]),
                "random_insertion_auc": _finite((float(rand_di.insertion_auc[i]) + float(rand2[i])) / 2),
                "random_insertion_aucs": [_finite(rand_di.insertion_auc[i]), _finite(rand2[i])],
                "methods": {},
                "_curves": {"random": {"deletion": rand_di.deletion_curves[i].tolist(),
                                       "insertion": rand_di.insertion_curves[i].tolist()}},
            }
            if item.label is not None:
                k = self.true_class(item)
                record["true_label"] = item.label
                record["true_class"] = k
                record["correct"] = None if k is None else bool(top[i][0][0] == k)
            if in_boxes is not None:
                b = in_boxes[i]
                record["box"] = None if b is None else b.tolist()
                if b is None:
                    record["box_note"] = notes[i]
            result.records.append(record)
        views = [to_display(img, pp) for _, img in loaded]
        files = [item.path for item, _ in loaded]
        del loaded  # the decoded originals are not needed past this point
        for cam in self.cams:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                # Half of a batch's progress is the explanation, half its metrics.
                with cam.reporting(lambda f: report(0.5 * n * f)):
                    e = cam.explain(x, targets)
            result.notes += [t for t in warning_notes(caught, files) if t not in result.notes]
            res = method_metrics(self.predict, x, e.maps, classes, pp.layout, in_boxes, rand, config.steps,
                                 config.batch_size, config.road, cam.name)
            for i, record in enumerate(result.records):
                entry: dict[str, Any] = {
                    "class": int(classes[i]), "label": self.task.label(int(classes[i])),
                    "values": {k: _finite(v[i]) for k, v in res.values.items()}, "flags": res.flags[i],
                }
                if spec.overlays:
                    name = overlay_name(record["index"], record["file"], cam.name)
                    overlay = _with_boxes(show_cam_on_image(views[i], e.maps[i], config.alpha, config.colormap),
                                          in_boxes, i)
                    result.overlays.append((name, _jpeg(overlay)))
                    entry["overlay"] = name
                record["methods"][cam.name] = entry
                record["_curves"][cam.name] = {"deletion": res.curves["deletion"][i].tolist(),
                                               "insertion": res.curves["insertion"][i].tolist()}
            report(0.5 * n)
        return result
