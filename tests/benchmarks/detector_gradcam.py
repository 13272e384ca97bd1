"""Grad-CAM for detections of the YOLOv8n-style detector at 640x640 against one forward.

    PYTHONPATH=. python tests/benchmarks/detector_gradcam.py [--rounds 8] [--detections 5]

Prints: one forward (batch 1, as ultralytics exports); Grad-CAM of the top detection at the default
layers (the three maps feeding the head, fused) and its ratio to the forward (target <= 1.3); K
detections explained from one body run (``GradientEngine.repeat``, what ``onnxcam explain`` does)
and the cost of each extra one in forwards (target <= 0.1), next to K calls one after another.
Each workload is timed in steady state (blocks of runs in a row), the blocks interleaved over
rounds; a ratio is the median over rounds of the ratio within a round (``steady_blocks``), the
seconds are medians too. On a loaded machine the ratios move, absolute seconds more so.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import THREADS, photos, steady_blocks

import onnxcam  # noqa: E402
from models.build import build  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=8)
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
    start = time.perf_counter()
    cam(x, targets=targets[:1])
    first = time.perf_counter() - start
    engine = model.gradient_engine
    cam(engine.repeat(x, len(targets)), targets=targets)  # builds what the batched rows use

    k = len(targets)
    t = steady_blocks({
        "forward": lambda: model.forward(x),
        "one": lambda: cam(x, targets=targets[:1]),
        "many": lambda: cam(engine.repeat(x, k), targets=targets),
        "apart": lambda: [cam(x, targets=[d]) for d in targets],
    }, args.rounds)
    fwd = t["forward"]

    def med(v: np.ndarray) -> float:
        return float(np.median(v))

    rows = [
        ("forward (batch 1, 640x640)", med(fwd), 1.0, ""),
        ("Grad-CAM, one detection", med(t["one"]), med(t["one"] / fwd), "target <= 1.3"),
        (f"Grad-CAM, {k} detections, one body run", med(t["many"]), med(t["many"] / fwd), ""),
        ("each extra detection", med((t["many"] - t["one"]) / (k - 1)),
         med((t["many"] - t["one"]) / (k - 1) / fwd), "target <= 0.1"),
        (f"Grad-CAM, {k} detections, one call each", med(t["apart"]), med(t["apart"] / fwd), "(before)"),
        ("each extra detection, one call each", med((t["apart"] - t["one"]) / (k - 1)),
         med((t["apart"] - t["one"]) / (k - 1) / fwd), ""),
        ("first call (builds the gradient graph)", first, first / med(fwd), ""),
    ]
    cut = model.frontier(tuple(cam.layers))
    print(f"layers: {', '.join(cam.layers)}; head share of the MACs: {model.head_share(cut):.2f}")
    print(f"{'what':42} {'seconds':>9} {'x forward':>10}")
    for what, s, r, note in rows:
        print(f"{what:42} {s:9.4f} {r:10.3f}  {note}")
    extra = (t["many"] - t["one"]) / (k - 1) / fwd
    print(f"per round: one detection {' '.join(f'{v:.2f}' for v in t['one'] / fwd)}; "
          f"each extra {' '.join(f'{v:.3f}' for v in extra)}")
    return 0 if np.isfinite(rows[1][1]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
