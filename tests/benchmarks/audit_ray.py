"""Issue #18 (d): images/s of an audit (Grad-CAM + deletion/insertion) on EfficientNet-Lite0, embedded and
on Ray Data with 2 local actors, and Ray's overhead at equal CPUs (goal: at most 15 %).

Equal CPUs: the embedded engine runs with 2 onnxruntime threads, Ray with 2 actors of 1 CPU (1 thread)
each on a local cluster of 2 CPUs. Both timings include building the sessions (in the actors for
Ray); Ray's own start-up (``ray.init``) is timed apart. The records of the two runs are compared too.

    python -m models.build efficientnet_lite0     # once
    python tests/benchmarks/audit_ray.py --images 48 --steps 8
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import _common
import cv2
import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--steps", type=int, default=8, help="deletion/insertion steps")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--model", default=str(_common.ROOT / "models" / "efficientnet_lite0.onnx"))
    args = parser.parse_args()
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    # The actors import onnxcam from this checkout, as the driver does.
    os.environ["PYTHONPATH"] = os.pathsep.join([str(_common.ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    from onnxcam import load
    from onnxcam.audit.job import AuditConfig, run_audit
    from onnxcam.image import get_preset
    from onnxcam.jobs.engine_ray import RayOptions, import_ray

    with tempfile.TemporaryDirectory(prefix="onnxcam-audit-ray-") as tmp:
        root = Path(tmp)
        folder = root / "images"
        folder.mkdir()
        for i, img in enumerate(_common.photos(args.images)):
            cv2.imwrite(str(folder / f"img{i:04d}.jpg"), np.ascontiguousarray(img[:, :, ::-1]))
        paths = sorted(folder.iterdir())

        def config(model: object) -> AuditConfig:
            pp = get_preset("imagenet", model.input.size, model.input.layout)  # type: ignore[attr-defined]
            return AuditConfig(preprocess=pp, methods=("gradcam",), steps=args.steps, sanity=False,
                               batch_size=args.batch_size)

        start = time.perf_counter()
        model = load(args.model, device="cpu", threads=2)
        run_audit(model, paths, root / "embedded", config(model))
        embedded = time.perf_counter() - start

        ray = import_ray()
        start = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=int(200e6), log_to_driver=False,
                 configure_logging=False)
        init = time.perf_counter() - start
        ray_model = load(args.model, device="cpu", threads=1)  # the driver's copy: the spec and the report
        start = time.perf_counter()
        run_audit(ray_model, paths, root / "ray", config(ray_model), engine="ray",
                  ray=RayOptions(actors=2, cpus_per_actor=1))
        on_ray = time.perf_counter() - start
        ray.shutdown()
        same = (root / "embedded" / "metrics.csv").read_text() == (root / "ray" / "metrics.csv").read_text()

    n = args.images
    print(f"\naudit of {n} images, Grad-CAM + deletion/insertion ({args.steps} steps), {Path(args.model).name}, "
          "2 CPUs each")
    print(f"{'engine':<28} {'seconds':>8} {'images/s':>9}")
    print(f"{'embedded (2 threads)':<28} {embedded:>8.1f} {n / embedded:>9.2f}")
    print(f"{'ray (2 actors x 1 CPU)':<28} {on_ray:>8.1f} {n / on_ray:>9.2f}")
    print(f"Ray overhead at equal CPUs: {on_ray / embedded - 1:+.1%} (goal: at most +15%); ray.init: {init:.1f} s "
          f"(once per cluster); records identical: {'yes' if same else 'no (thread counts differ: float sums)'}")


if __name__ == "__main__":
    main()
