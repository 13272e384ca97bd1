"""``onnxcam explain --method gradcam`` vs plain onnxruntime classification of the same 20 photos.

    PYTHONPATH=. python tests/benchmarks/explain_vs_classify.py [--repeats 3]

Both sides decode the files. The plain side: cv2 decode, resize, normalise, one onnxruntime run
per 16 images, argmax. The explain side: the whole command as the acceptance states it, without
--quiet (decode, preprocess, body + gradient graph, maps, overlays and summary.json written).

Two measurements. End to end (the target, < 1.5): a fresh process each, Python start-up, imports,
model loading, session creation and exit included; best of --repeats after one untimed run of each,
so both sides start from compiled bytecode and a warm page cache, as an installed package does.
Warm: in one process, sessions already built on both sides.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from _common import ROOT, THREADS, best, photos

from models.build import build  # noqa: E402

CLASSIFY = r'''
import sys, glob, numpy as np, cv2, onnxruntime as ort
folder, model, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
o = ort.SessionOptions(); o.intra_op_num_threads = threads
s = ort.InferenceSession(model, o, providers=["CPUExecutionProvider"])
mean = np.array([0.485, 0.456, 0.406], np.float32); std = np.array([0.229, 0.224, 0.225], np.float32)
files = sorted(glob.glob(folder + "/*"))
def prep(f):
    im = cv2.cvtColor(cv2.imread(f, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    im = cv2.resize(im, (224, 224), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255
    return ((im - mean) / std).transpose(2, 0, 1)
def classify():
    out = []
    for k in range(0, len(files), 16):
        x = np.stack([prep(f) for f in files[k:k + 16]])
        out.append(s.run(None, {s.get_inputs()[0].name: x})[0].argmax(1))
    return np.concatenate(out)
'''


def write_photos(folder: Path, n: int) -> list[Path]:
    paths = []
    for i, img in enumerate(photos(n)):
        p = folder / f"photo_{i:02d}.{'jpg' if i % 2 == 0 else 'png'}"
        cv2.imwrite(str(p), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        paths.append(p)
    return paths


def on_tty(cmd: list[str]) -> list[str]:
    return ["script", "-qec", shlex.join(cmd), "/dev/null"]


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    return time.perf_counter() - t


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--images", type=int, default=20)
    args = p.parse_args()
    model_path = build("efficientnet_lite0")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        write_photos(folder, args.images)
        out = Path(tmp) / "cams"
        runs = iter(range(1000))

        def explain_cmd() -> list[str]:  # a fresh output folder per run, as a first run has
            return [sys.executable, "-m", "cli.main", "explain", str(model_path), str(folder), "--method",
                    "gradcam", "--out", str(out.with_name(f"cams{next(runs)}")), "--device", "cpu"]

        classify_cmd = [sys.executable, "-c", CLASSIFY + "\nclassify()", str(folder), str(model_path),
                        str(THREADS)]
        # Bytecode as an installed package has it (pip compiles on install), whatever this shell says.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        timed(explain_cmd(), env), timed(classify_cmd, env)
        e2e_explain, e2e_classify = 1e9, 1e9
        for _ in range(args.repeats):  # alternated, so drift in the host's speed hits both sides
            e2e_explain = min(e2e_explain, timed(explain_cmd(), env))
            e2e_classify = min(e2e_classify, timed(classify_cmd, env))
        # The same on a terminal (util-linux `script` gives a pseudo-terminal), where explain may draw
        # its progress bar; both sides pay for the terminal.
        tty_explain = tty_classify = float("nan")
        if shutil.which("script"):
            tty_explain, tty_classify = 1e9, 1e9
            for _ in range(args.repeats):
                tty_explain = min(tty_explain, timed(on_tty(explain_cmd()), env))
                tty_classify = min(tty_classify, timed(on_tty(classify_cmd), env))

        # Warm: one process, sessions already built on both sides.
        ns: dict[str, object] = {}
        sys.argv = ["classify", str(folder), str(model_path), str(THREADS)]
        exec(CLASSIFY, ns)  # noqa: S102 - our own constant script, shared with the end-to-end run
        classify = ns["classify"]
        from onnxcam.image import get_preset
        from onnxcam.model import load
        from onnxcam.pipeline import ExplainConfig, explain_images

        m = load(model_path, device="cpu", threads=THREADS)
        pp = get_preset("imagenet", m.input.size, m.input.layout)
        config = ExplainConfig(preprocess=pp, methods=["gradcam"], batch_size=16)
        paths = sorted(folder.iterdir())
        warm_explain = best(lambda: explain_images(m, paths, out, config), args.repeats)
        warm_classify = best(classify, args.repeats)  # type: ignore[arg-type]
        summary = explain_images(m, paths, out, config)
        labels = np.asarray(classify())  # type: ignore[operator]
        ours = [item["predictions"][0]["class"] for item in summary.images]
        agree = int(np.sum(np.asarray(ours) == labels[: len(ours)]))
    print(f"EfficientNet-Lite0, {args.images} photos (JPEG/PNG), Grad-CAM, {THREADS} threads, best of {args.repeats}")
    print(f"  end to end (fresh process): explain {e2e_explain:.2f} s, classify {e2e_classify:.2f} s, "
          f"ratio {e2e_explain / e2e_classify:.2f}  (target < 1.5)")
    print(f"  end to end on a terminal:   explain {tty_explain:.2f} s, classify {tty_classify:.2f} s, "
          f"ratio {tty_explain / tty_classify:.2f}")
    print(f"  warm (sessions built):      explain {warm_explain:.2f} s, classify {warm_classify:.2f} s, "
          f"ratio {warm_explain / warm_classify:.2f}")
    print(f"  top-1 agreement between the two: {agree}/{len(ours)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
