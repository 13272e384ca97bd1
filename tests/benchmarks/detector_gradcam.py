"""Grad-CAM for detections of the YOLOv8n-style detector at 640x640 against one forward.

    PYTHONPATH=. python tests/benchmarks/detector_gradcam.py [--repeats 5] [--detections 5]

Prints: one forward (batch 1, as ultralytics exports); Grad-CAM of the top detection at the default
layers (the three maps feeding the head, fused) and its ratio to the forward (target <= 1.3); K
detections explained from one body run (``GradientEngine.repeat``, what ``onnxcam explain`` does)
and the cost of each extra one in forwards (target <= 0.1), next to K calls one after another.
Each ratio is taken against forwards run alternately with it, in one run; on a loaded machine they
move, absolute seconds more so.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import THREADS, best_pair, photos

import onnxcam  # noqa: E402
from models.build import build  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--detections", type=int, default=5)
    args = p.parse_args()
    path = build("yolov8n_det_640")
    model = onnxcam.load(path, device="cpu", threads=THREADS)
    pp = onnxcam.get_preset("yolo", model.input.size)
    x = onnxcam.preprocess(photos(1), pp)
    task = model.task
    dets = task.detections(model.forward(x))[0]  # type: ignore[attr-defined]
    if len(dets) < args.detections:
        raise SystemExit(f"only {len(dets)} detections on the photo")
    targets = [task.detection_target(d) for d in dets[: args.detections]]  # type: ignore[attr-defined]
    cam = onnxcam.GradCAM(model)
    t = time.perf_counter()
    cam(x, targets=targets[:1])
    first = time.perf_counter() - t
    engine = model.gradient_engine
    cam(engine.repeat(x, len(targets)), targets=targets)  # builds what the batched rows use

    def forward() -> object:
        return model.forward(x)

    # Each measurement alternates with a forward (best_pair): this host's speed drifts by tens of
    # per cent between seconds, and a ratio of two minima taken apart would carry that drift.
    one, fwd_one = best_pair(lambda: cam(x, targets=targets[:1]), forward, args.repeats)
    many, fwd_many = best_pair(lambda: cam(engine.repeat(x, len(targets)), targets=targets), forward, args.repeats)
    apart, fwd_apart = best_pair(lambda: [cam(x, targets=[t]) for t in targets], forward, args.repeats)
    fwd = min(fwd_one, fwd_many, fwd_apart)
    k = len(targets) - 1
    rows = [
        ("forward (batch 1, 640x640)", fwd, 1.0, ""),
        ("Grad-CAM, one detection", one, one / fwd_one, "target <= 1.3"),
        (f"Grad-CAM, {len(targets)} detections, one body run", many, many / fwd_many, ""),
        ("each extra detection", (many - one) / k, (many / fwd_many - one / fwd_one) / k, "target <= 0.1"),
        (f"Grad-CAM, {len(targets)} detections, one call each", apart, apart / fwd_apart, "(before)"),
        ("each extra detection, one call each", (apart - one) / k, (apart / fwd_apart - one / fwd_one) / k, ""),
        ("first call (builds the gradient graph)", first, first / fwd, ""),
    ]
    cut = model.frontier(tuple(cam.layers))
    print(f"layers: {', '.join(cam.layers)}; head share of the MACs: {model.head_share(cut):.2f}")
    print(f"{'what':42} {'seconds':>9} {'x forward':>10}")
    for what, s, r, note in rows:
        print(f"{what:42} {s:9.4f} {r:10.2f}  {note}")
    return 0 if np.isfinite(one) else 1


if __name__ == "__main__":
    raise SystemExit(main())
