"""``explain_detections``: the explain job for detectors - one map per detection.

Per image: one forward, decoding + NMS, then for each of its top ``detections`` a CAM of that
detection (``DetectionTask.detection_target``), all of them from one body run (the engine's
``repeat``: the head's gradient graph runs once per detection, the body once), placed back on the
original image (the letterbox undone), with the detection's box, label and score drawn; a grid of
them per image; every kept detection (not only the explained ones) in summary.json. An image with no detection above
``conf`` gets its plain image and an empty list. Everything is written in one output transaction.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from onnxcam.blas_threads import one_blas_thread
from onnxcam.detection.decode import Detection, check_options, to_image_boxes
from onnxcam.detection.task import DetectionTask
from onnxcam.errors import ArgumentError
from onnxcam.image import Preprocess, crop_box, get_preset, load_image, preprocess
from onnxcam.model import LayerSpec, Model
from onnxcam.output import OutputDir
from onnxcam.overlay import draw_boxes, make_grid, show_cam_on_image
from onnxcam.registry import get_method
from onnxcam.tasks import detect_task


@dataclass
class DetectionConfig:
    """What ``explain_detections`` does: ``methods``, ``detections`` explained per image (best first),
    ``conf``/``iou`` for decoding, ``preprocess`` (None: the ``yolo`` preset), overlay ``alpha`` and
    ``colormap``, ``inside_box``: renormalise each map inside its detection's box."""

    methods: Sequence[str] = ("gradcam",)
    layer: LayerSpec = "auto"
    detections: int = 5
    conf: float = 0.25
    iou: float = 0.45
    preprocess: Preprocess | None = None
    alpha: float = 0.5
    colormap: str = "jet"
    inside_box: bool = False
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def check(self) -> None:
        if self.detections < 1:
            raise ArgumentError(f"--detections must be >= 1, got {self.detections}: the number of detections "
                                "explained per image")
        check_options(self.conf, self.iou, 1)
        if not self.methods:
            raise ArgumentError("no method given: pass --method gradcam (see `onnxcam methods`)")


def detection_task(model: Model, conf: float, iou: float, task: str | None = None) -> DetectionTask:
    """The model's detection task with ``conf``/``iou`` (``task="detect"`` forces reading the
    outputs as a detector's; the layout error names the shapes and options when they cannot be)."""
    found = model.task if task in (None, "auto") else detect_task(
        model.output_shapes, task, metadata={"imgsz": str(list(model.input.size)), **model.metadata})
    if not isinstance(found, DetectionTask):
        raise ArgumentError(f"{model.name}'s outputs {model.output_shapes} are not a detector's: pass --task detect "
                            "to read them as one")
    return DetectionTask(found.layout, found.labels, conf=conf, iou=iou, max_det=found.options.max_det,
                         target=found.target_kind)


def _to_image(cam: np.ndarray, region: tuple[float, float, float, float], hw: tuple[int, int]) -> np.ndarray:
    """A map at input resolution ``(h, w)`` resampled onto the original ``hw`` image."""
    h_in, w_in = cam.shape
    x0, y0, x1, y1 = region
    sx, sy = (x1 - x0) / w_in, (y1 - y0) / h_in
    m = np.array([[sx, 0, x0], [0, sy, y0]], dtype=np.float64)  # input pixel -> original pixel
    return cv2.warpAffine(cam.astype(np.float32), m, (hw[1], hw[0]), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)


def _inside(cam: np.ndarray, box: np.ndarray) -> np.ndarray:
    h, w = cam.shape
    x0, y0 = max(int(box[0]), 0), max(int(box[1]), 0)
    x1, y1 = min(int(np.ceil(box[2])), w), min(int(np.ceil(box[3])), h)
    out = np.zeros_like(cam)
    if x1 > x0 and y1 > y0:
        part = cam[y0:y1, x0:x1]
        span = float(part.max() - part.min())
        out[y0:y1, x0:x1] = (part - part.min()) / span if span > 0 else 0.0
    return out


@one_blas_thread()  # the whole job: see onnxcam.blas_threads
def explain_detections(model: Model, paths: Sequence[Path], out: Path, config: DetectionConfig,
                       task: str | None = None) -> dict[str, Any]:
    """Explain each image's top detections; returns (and writes) the summary."""
    config.check()
    det_task = detection_task(model, config.conf, config.iou, task)
    pp = config.preprocess or get_preset("yolo", model.input.size, model.input.layout)
    layer = config.layer
    if layer == "auto":
        # Forced (--task detect), the model's own task is not the detector's: its "auto" would be
        # a classifier's last feature map, not the maps feeding the detection head.
        picked = det_task.default_layers(model)
        layer = list(picked) if picked else layer
    cams = {name: get_method(name)(model, layer=layer, task=det_task, **config.method_options.get(name, {}))
            for name in config.methods}
    start = time.perf_counter()
    items: list[dict[str, Any]] = []
    out_dir = OutputDir(out, [model.path, *paths])
    with out_dir.transaction() as tx:
        for path in paths:
            img = load_image(path)
            hw = (img.shape[0], img.shape[1])
            region = crop_box(hw, pp.size, pp.resize_mode, pp.crop_fraction)
            x = preprocess([img], pp)
            dets = det_task.detections(model.forward(x))[0]
            boxes = to_image_boxes(np.array([d.box for d in dets]).reshape(-1, 4), region, pp.size)
            rows = [{**det_task.row(d), "box": [round(float(v), 1) for v in b], "box_input": det_task.row(d)["box"]}
                    for d, b in zip(dets, boxes, strict=True)]
            item: dict[str, Any] = {"file": str(path), "detections": rows, "outputs": {}}
            stem = path.stem
            if not dets:
                item["note"] = f"no detection above conf {config.conf}"
                tx.write_png(f"{stem}.png", img)
                items.append(item)
                continue
            explained = dets[: config.detections]
            targets = [det_task.detection_target(d) for d in explained]
            # All detections of the image from one body run: the engine recognises the repeated rows.
            batch = model.gradient_engine.repeat(x, len(targets))
            tiles, titles = [], []
            for name, cam in cams.items():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # a blank map of one detection is reported by its tile
                    maps = cam(batch, targets=targets)
                files = []
                for rank, (d, b, m) in enumerate(zip(explained, boxes, maps, strict=False)):
                    file = _overlay(m, d, b, det_task, region, hw, img, config)
                    rel = tx.write_png(f"{stem}_{name}_det{rank}.png", file)
                    files.append(rel.name)
                    tiles.append(file)
                    titles.append(f"{name} #{rank} {det_task.label(d.category)} {d.score:.2f}")
                item["outputs"][name] = files
            columns = min(len(explained), 5)
            item["grid"] = tx.write_png(f"{stem}_grid.png", make_grid(tiles, titles, columns)).name
            item["explained"] = len(explained)
            items.append(item)
        summary = {"model": model.name, "task": "detect", "layout": det_task.layout.describe(),
                   "methods": list(config.methods), "layers": list(next(iter(cams.values())).layers),
                   "conf": config.conf, "iou": config.iou, "detections": config.detections,
                   "preprocess": f"{pp.resize_mode} {pp.size[0]}x{pp.size[1]}", "images": items,
                   "seconds": round(time.perf_counter() - start, 3), "out": str(out)}
        tx.write_json("summary.json", summary)
    return summary


def _overlay(m: np.ndarray, d: Detection, box: np.ndarray, task: DetectionTask,
             region: tuple[float, float, float, float], hw: tuple[int, int], img: np.ndarray,
             config: DetectionConfig) -> np.ndarray:
    """Detection ``d``'s map ``m (H, W)`` (input resolution) on the original image, its box and label drawn."""
    on_image = _to_image(m, region, hw)
    if config.inside_box:
        on_image = _inside(on_image, box)
    shown = show_cam_on_image(img.astype(np.float32) / 255, on_image, config.alpha, config.colormap)
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    label = f"{task.label(d.category)} {d.score:.2f}"
    return draw_boxes(shown, [(x0, y0, x1, y1)], labels=[label])


def detection_report(summary: dict[str, Any]) -> str:
    """What the CLI prints: one line per image, then where the results are."""
    lines = []
    for item in summary["images"]:
        found = len(item["detections"])
        if not found:
            lines.append(f"{item['file']}: {item['note']}; wrote the plain image")
        else:
            lines.append(f"{item['file']}: {found} detection(s), explained the top {item['explained']}")
    lines.append(f"explained {len(summary['images'])} image(s) in {summary['seconds']:.2f} s; results in "
                 f"{summary['out']}/ (summary.json)")
    return "\n".join(lines)


__all__ = ["DetectionConfig", "detection_report", "detection_task", "explain_detections"]
