"""Cost of an exported Grad-CAM graph (``onnxcam export``) against the plain model, per runtime.

    PYTHONPATH=. python tests/benchmarks/export_overhead.py [--models efficientnet_lite0 resnet50] [--repeats 10]

For each model: the exported graph (model outputs + explained class + Grad-CAM at the auto layer)
and the original model are run alternately on the same photos at batch 1 and 16, in onnxruntime
(CPU, all optimisations) and OpenVINO (CPU, f32), 2 threads each; prints the best times (of at
least 400 / batch runs), the median ratio of neighbouring runs (target <= 1.1), the file size
ratio (target <= 1.05) and the host's load average, since the ratios are only as steady as the host.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import THREADS, photos, preprocess

import onnxcam  # noqa: E402
from models.build import MODELS, build  # noqa: E402


def paired(fn: Callable[[], object], ref: Callable[[], object], repeats: int) -> tuple[float, float, float]:
    """``fn`` and ``ref`` run in pairs, the one going first alternating (so that neither always runs
    on the caches the other left): their best times and the median of the per-pair ratios. On a
    loaded host the best times are luck (one quiet moment each), the median of ratios of
    neighbouring runs is not: it is the ratio reported."""
    fn()
    ref()
    a, b = [], []
    for i in range(repeats):
        for run, times in ((fn, a), (ref, b)) if i % 2 == 0 else ((ref, b), (fn, a)):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
    ratios = sorted(x / y for x, y in zip(a, b))
    return min(a), min(b), ratios[len(ratios) // 2]


def ort_runner(path: Path):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    from onnxcam.runtime import session_options

    # onnxcam's own settings (workers spin within a run and stop at its end: a session's workers
    # spinning on would take the cores from the other session's next run).
    so = session_options(THREADS)
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return lambda feeds: sess.run(None, feeds)


def ov_runner(path: Path):  # type: ignore[no-untyped-def]
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {
        "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": THREADS, "NUM_STREAMS": 1})
    request = compiled.create_infer_request()
    return lambda feeds: request.infer(feeds)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["efficientnet_lite0", "resnet50"])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    args = p.parse_args()
    rows = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            spec = MODELS[name]
            path = build(name)
            model = onnxcam.load(path, device="cpu")
            out = Path(tmp) / f"{name}_cam.onnx"
            onnxcam.export_explainer(model, ["gradcam"], path=out)
            size = out.stat().st_size / path.stat().st_size
            for runtime, make in (("onnxruntime", ort_runner), ("openvino", ov_runner)):
                exported, plain = make(out), make(path)
                for n in args.batches:
                    x = preprocess(photos(n), spec.spatial, spec.mean, spec.std)
                    feeds = {model.input.name: x}
                    # short runs take more repeats: the median of a few ratios on a loaded host moves by 10 %
                    repeats = max(args.repeats, 400 // n)
                    t_exp, t_plain, ratio = paired(lambda f=feeds, r=exported: r(f),  # type: ignore[misc]
                                                   lambda f=feeds, r=plain: r(f), repeats)  # type: ignore[misc]
                    rows.append((name, runtime, n, t_plain * 1e3, t_exp * 1e3, ratio, size))
    # the ratios are only as steady as the host: a load above the core count means other jobs ran too
    print(f"load average (1 min) before / after: {load_before:.2f} / {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores")
    print(f"{'model':20} {'runtime':12} {'batch':>5} {'best fwd ms':>11} {'best +CAM ms':>13} {'ratio':>6} {'size':>6}")
    for name, runtime, n, a, b, r, s in rows:
        print(f"{name:20} {runtime:12} {n:5d} {a:11.1f} {b:13.1f} {r:6.3f} {s:6.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
