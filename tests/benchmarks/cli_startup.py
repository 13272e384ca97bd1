"""Start-up time of the ``onnxcam`` command: ``--help``, ``--version`` and ``layers MODEL``, each as a fresh
subprocess (best and median of --repeats), plus which heavy libraries ``--help`` imported.

    python tests/benchmarks/cli_startup.py [--repeats 5] [--model models/efficientnet_lite0.onnx]

Runs ``python -m onnxcam_cli.main`` when the ``onnxcam_cli`` package is importable, else ``python -m
cli.main`` from the repository root. Target: ``--help`` under 0.5 s (it must not import onnx,
onnxruntime, OpenCV or numpy; the commands import them when they run).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("onnx", "onnxruntime", "cv2", "numpy", "scipy")
TARGET_HELP_S = 0.5


def _entry() -> list[str]:
    module = "onnxcam_cli.main" if importlib.util.find_spec("onnxcam_cli") else "cli.main"
    return [sys.executable, "-m", module]


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (path, str(ROOT)) if p)}


def _time(args: list[str], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.run([*_entry(), *args], capture_output=True, text=True, env=_env(), cwd=ROOT)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise SystemExit(f"`onnxcam {' '.join(args)}` failed: {proc.stderr.strip()[-300:]}")
    return times


def _heavy_imports_of_help() -> list[str]:
    module = _entry()[-1]
    code = (f"import sys\nfrom {module} import app\ntry:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
            f"print('heavy:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), cwd=ROOT)
    line = out.stdout.strip().splitlines()[-1]
    if not line.startswith("heavy:"):
        raise SystemExit(f"could not import the CLI: {out.stderr.strip()[-300:]}")
    return [m for m in line.removeprefix("heavy:").split(",") if m]


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--model", type=Path, default=ROOT / "models" / "efficientnet_lite0.onnx")
    args = p.parse_args()
    cases = [["--help"], ["--version"], ["explain", "--help"]]
    if args.model.is_file():
        cases.append(["layers", str(args.model)])
    else:
        print(f"(no {args.model}: `layers` not timed; build it with `python -m models.build`)")
    print(f"{'command':<60}{'best s':>9}{'median s':>10}")
    results = {}
    for case in cases:
        times = _time(case, args.repeats)
        results[" ".join(case)] = min(times)
        print(f"{'onnxcam ' + ' '.join(case):<60}{min(times):>9.3f}{statistics.median(times):>10.3f}")
    heavy = _heavy_imports_of_help()
    print(f"heavy modules imported by --help: {', '.join(heavy) or 'none'}")
    ok = results["--help"] < TARGET_HELP_S and not heavy
    print(f"--help best {results['--help']:.3f} s (target < {TARGET_HELP_S} s): {'OK' if ok else 'TOO SLOW'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
