"""Issue #18 (a): peak RSS of `onnxcam audit` on growing image counts stays flat (goal: at most +20 %
from the first count to the last), and so does the report's size (`--command explain`: the same for
`onnxcam explain`, its summary.json in the last column).

Images are generated (crops and flips of the photos the tests use, at most 256 px, JPEG) into a temp
folder; each count runs as its own `onnxcam audit` process, whose peak RSS is read from wait4. A
cheap audit: Grad-CAM, 8 deletion/insertion steps, no sanity check, on the demo CNN (or --model).

    python tests/benchmarks/audit_memory.py --images 100,1000        # ~1 min on 2 cores
    python tests/benchmarks/audit_memory.py --images 100,1000,10000  # ~15 min
    python tests/benchmarks/audit_memory.py --images 100,1000 --command explain
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (the repo on sys.path)
import cv2
import numpy as np


def write_images(folder: Path, n: int) -> None:
    """``n`` JPEGs: the benchmark photos, flipped and cropped differently for each index."""
    from skimage import data

    base = []
    for name in _common.PHOTOS:
        img = np.asarray(getattr(data, name)())
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        img = np.ascontiguousarray(img[:, :, :3]).astype(np.uint8)
        s = 256 / max(img.shape[:2])
        base.append(cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA))
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = base[i % len(base)]
        v = i // len(base)
        if v % 2:
            img = img[:, ::-1]
        h, w = img.shape[:2]
        dy, dx = (v * 7) % (h // 4 + 1), (v * 13) % (w // 4 + 1)
        crop = img[dy: h - (h // 4 - dy), dx: w - (w // 4 - dx)]
        cv2.imwrite(str(folder / f"img{i:06d}.jpg"), np.ascontiguousarray(crop[:, :, ::-1]),
                    [cv2.IMWRITE_JPEG_QUALITY, 90])


def peak_rss_mb(cmd: list[str]) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of one process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(_common.ROOT), *sys.path])}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise SystemExit(f"audit failed: {err[-2000:]}")
    return usage.ru_maxrss / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default="100,1000", help="comma-separated image counts")
    parser.add_argument("--model", default=None, help="model (default: the demo CNN)")
    parser.add_argument("--methods", default="gradcam")
    parser.add_argument("--command", choices=("audit", "explain"), default="audit")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    counts = [int(c) for c in args.images.split(",")]
    from onnxcam.data import demo_files

    model = args.model or str(demo_files().model)
    rows = []
    with tempfile.TemporaryDirectory(prefix="onnxcam-audit-mem-") as tmp:
        root = Path(tmp)
        write_images(root / "images", max(counts))
        for n in counts:
            folder = root / f"in{n}"
            folder.mkdir()
            for i in range(n):  # hard links: the first n images, without copying them
                os.link(root / "images" / f"img{i:06d}.jpg", folder / f"img{i:06d}.jpg")
            out = root / f"out{n}"
            cmd = [sys.executable, "-m", "onnxcam_cli.main", args.command, model, str(folder), "--out", str(out),
                   "-m", args.methods, "--batch-size", str(args.batch_size), "--quiet"]
            if args.command == "audit":
                cmd += ["--steps", str(args.steps), "--no-sanity"]
            rss, seconds = peak_rss_mb(cmd)
            report = (out / ("report.html" if args.command == "audit" else "summary.json")).stat().st_size / 1e6
            rows.append((n, seconds, rss, report))
    first = rows[0][2]
    what = f"{args.steps} steps, " if args.command == "audit" else ""
    print(f"\n{args.command} peak RSS ({args.methods}, {what}batch {args.batch_size}, model {Path(model).name})")
    col = "report MB" if args.command == "audit" else "summary MB"
    print(f"{'images':>8} {'seconds':>8} {'img/s':>7} {'peak RSS MB':>12} {'vs first':>9} {col:>10}")
    for n, seconds, rss, report in rows:
        print(f"{n:>8} {seconds:>8.1f} {n / seconds:>7.1f} {rss:>12.1f} {rss / first - 1:>+9.1%} {report:>10.2f}")
    growth = rows[-1][2] / first - 1
    print(f"growth first -> last: {growth:+.1%} (goal: at most +20%)")


if __name__ == "__main__":
    main()
