"""``onnxcam compare fp32.onnx int8.onnx photos/`` for the dynamic, QDQ and QOperator int8 copies of
EfficientNet-Lite0, against ``onnxcam explain`` on the fp32 model alone, on the same 16 photos.

    PYTHONPATH=. python tests/benchmarks/int8_compare.py [--photos 16] [--repeats 1]

Each command runs in a fresh process (imports, model loading, sessions, outputs written); its
wall time is the best of --repeats and its peak memory the child's maximum resident set size
(``ru_maxrss``). Acceptance (issue 13): each compare within 3x the time of explain, peak <= 2 GiB.
The table also gives each int8 copy's gradient source and the median Pearson of its Grad-CAM map
against the fp32 one (from the compare metrics.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
from _common import ROOT, THREADS, photos

from models.build import build  # noqa: E402

INT8 = {"dynamic": "efficientnet_lite0_int8_dyn", "QDQ": "efficientnet_lite0_int8",
        "QOperator": "efficientnet_lite0_int8_qop"}
TIME_RATIO = 3.0
PEAK_GB = 2.0


# The child reports its own peak resident set size (ru_maxrss, KiB on Linux) as its last line.
CHILD = """
import resource, sys
from onnxcam_cli.main import app
try:
    app(sys.argv[1:])
finally:
    print("PEAK_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def run(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) of ``onnxcam ARGS`` in a fresh process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / ".pp"), str(ROOT)]), "OMP_NUM_THREADS": str(THREADS)}
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): onnxcam {' '.join(args)}\n{proc.stderr[-2000:]}")
    peak = next(int(line.split()[1]) for line in reversed(proc.stderr.splitlines()) if line.startswith("PEAK_KB"))
    return wall, peak * 1024 / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--photos", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    fp32 = build("efficientnet_lite0")
    paths = {fmt: build(name) for fmt, name in INT8.items()}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for i, img in enumerate(photos(args.photos)):
            cv2.imwrite(str(folder / f"photo{i:02d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        common = ["--quiet", "--batch-size", "16"]
        explains = [run(["explain", str(fp32), str(folder), "--out", f"{tmp}/explain{r}", *common])
                    for r in range(args.repeats)]
        explain_t = min(t for t, _ in explains)
        print(f"photos: {args.photos}; onnxcam explain fp32: {explain_t:.1f} s, peak {explains[0][1]:.2f} GiB")
        print(f"{'int8 format':12} {'compare s':>10} {'x explain':>10} {'peak GiB':>8} {'median r':>9}  verdict")
        for fmt, path in paths.items():
            walls = []
            peak = 0.0
            for r in range(args.repeats):
                out = Path(tmp) / f"cmp_{fmt}_{r}"
                wall, peak = run(["compare", str(fp32), str(path), str(folder), "--out", str(out), *common])
                walls.append(wall)
            summary = json.loads((out / "metrics.json").read_text())
            rs = [img.get("pearson") for img in summary.get("images", []) if img.get("pearson") is not None]
            median_r = sorted(rs)[len(rs) // 2] if rs else float("nan")
            ratio = min(walls) / explain_t
            ok = ratio <= TIME_RATIO and peak <= PEAK_GB
            verdict = 'met' if ok else 'NOT met'
            print(f"{fmt:12} {min(walls):10.1f} {ratio:10.2f} {peak:8.2f} {median_r:9.3f}  {verdict}")


if __name__ == "__main__":
    main()
