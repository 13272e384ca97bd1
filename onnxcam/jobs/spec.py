"""The job description: everything a worker needs to rebuild the model, methods and metrics on its own,
in this process or in a Ray actor on another machine, so that both engines compute the same records.

A spec holds plain data only (the model's path and load options, the audit configuration with labels
and boxes already read), pickles cheaply, and has a fingerprint: a resumed job must be the same job.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxcam.audit.shared import AuditConfig, read_boxes
from onnxcam.labels import resolve_labels
from onnxcam.model import Model, load

__all__ = ["JobSpec", "spec_for"]


@dataclass
class JobSpec:
    """``model``: the .onnx path; ``load``: ``onnxcam.load`` keyword arguments (not ``threads``: each
    engine sets its own); ``config``: with ``labels`` a list of names or None and ``boxes`` a mapping
    ``{file name: [[x0, y0, x1, y1], ...]}`` or None; ``with_boxes``: the box metrics are computed
    (a boxes file, or a manifest with a ``box`` column); ``overlays``: write one JPEG per image and
    method."""

    model: str
    load: dict[str, Any]
    config: AuditConfig
    with_boxes: bool = False
    overlays: bool = True

    def load_model(self, threads: int | None = None) -> Model:
        return load(self.model, threads=threads, **self.load)

    def fingerprint(self) -> str:
        """A hash of what decides the records (not the device, threads or engine: they do not change them)."""
        cfg = dataclasses.asdict(self.config)
        for key in ("sanity", "sanity_images", "sanity_steps"):  # the report's sanity check, not the records
            cfg.pop(key, None)
        load = {k: v for k, v in self.load.items() if k != "device"}
        text = json.dumps({"model": str(Path(self.model).resolve()), "size": Path(self.model).stat().st_size,
                           "load": load, "config": cfg, "with_boxes": self.with_boxes, "overlays": self.overlays},
                          sort_keys=True, default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


def spec_for(model: Model, config: AuditConfig, boxed_source: bool = False, overlays: bool = True) -> JobSpec:
    """The spec of auditing with ``model`` (as loaded) and ``config``: labels and boxes read once, here."""
    boxes = None
    if config.boxes is not None:
        boxes = {name: arr.tolist() for name, arr in read_boxes(config.boxes).items()}
    labels = resolve_labels(config.labels, model.proto) if config.labels is not None else None
    cfg = dataclasses.replace(config, labels=labels, boxes=boxes, methods=tuple(config.methods))
    load_args: dict[str, Any] = {
        "device": model.requested_device, "input_size": tuple(model.input.size), "layout": model.input.layout,
        "extra_inputs": {k: v.tolist() for k, v in model.extra_inputs.items()} or None,
    }
    return JobSpec(str(model.path), load_args, cfg, boxes is not None or boxed_source, overlays)
