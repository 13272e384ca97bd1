"""Cost of onnxcam's gradients on EfficientNet-Lite0 (batch 16, last stage, 1280 channels).

    PYTHONPATH=. python tests/benchmarks/gradient_overhead.py [--repeats 5]

Prints: one forward; body + gradient graph (``Model.gradients``, what every Grad-CAM-family method
pays); their ratio (target <= 1.15); the gradient graph's build time, ONNX graph and onnxruntime
session separately (target <= 2 s); and proof that the graph is built once per model x layer x batch
(the builder is wrapped with a call counter and the session cache is inspected).
"""

from __future__ import annotations

import argparse
import time

from _common import THREADS, best, photos, preprocess

import onnxcam  # noqa: E402
import onnxcam.gradients  # noqa: E402
from models.build import MODELS, build  # noqa: E402
from onnxcam.graph.split import upstream_frontier  # noqa: E402
from onnxcam.runtime import make_session  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=16)
    args = p.parse_args()
    spec = MODELS["efficientnet_lite0"]
    path = build("efficientnet_lite0")
    tensor = spec.layers["last"][1]
    x = preprocess(photos(args.batch), spec.spatial, spec.mean, spec.std)

    calls = {"n": 0}
    real = onnxcam.gradients.build_gradient_model

    def counting(*a, **k):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        return real(*a, **k)

    onnxcam.gradients.build_gradient_model = counting  # type: ignore[assignment]

    model = onnxcam.load(path, device="cpu", threads=THREADS)
    model.forward(x, args.batch)
    t = time.perf_counter()
    model.gradients(x, tensor, batch_size=args.batch)
    first = time.perf_counter() - t
    fwd = best(lambda: model.forward(x, args.batch), args.repeats)
    grad = best(lambda: model.gradients(x, tensor, batch_size=args.batch), args.repeats)
    body = best(lambda: model.run_body(x, (tensor,), args.batch), args.repeats)

    # Build cost on its own: ONNX gradient graph, then its onnxruntime session.
    fresh = onnxcam.load(path, device="cpu", threads=THREADS)
    cut = upstream_frontier(fresh.proto, (tensor,))
    fresh.split(cut)
    seeded = tuple(fresh.split(cut).model_outputs[:1])
    t = time.perf_counter()
    proto, _, _ = fresh.gradient_engine.gradient_model(cut, (tensor,), seeded, args.batch)
    graph_s = time.perf_counter() - t
    t = time.perf_counter()
    make_session(proto, "cpu", THREADS, what="gradient graph")
    session_s = time.perf_counter() - t
    calls_after_direct = calls["n"]

    print(f"EfficientNet-Lite0, batch {args.batch}, layer {tensor}, {THREADS} threads, best of {args.repeats}")
    print(f"  forward                         {fwd:8.3f} s")
    print(f"  body only (to the layer)        {body:8.3f} s")
    print(f"  forward + gradients             {grad:8.3f} s   ratio {grad / fwd:.3f}  (target <= 1.15)")
    print(f"  first gradients call            {first:8.3f} s   (includes split, graph build, session)")
    print(f"  gradient graph build: ONNX graph {graph_s:.3f} s + session {session_s:.3f} s = "
          f"{graph_s + session_s:.3f} s  (target <= 2 s)")

    # Built once per model x layer x effective batch (min(batch_size, N) of the call): repeated calls and
    # a call whose last chunk is short (padded) reuse it; a call with fewer images than batch_size
    # or another batch_size gets its own graph.
    before = calls["n"]
    for _ in range(3):
        model.gradients(x, tensor, batch_size=args.batch)
    model.gradients(x[: args.batch // 2 + 1], tensor, batch_size=args.batch // 2)  # 2 chunks, last padded
    model.gradients(x, tensor, batch_size=args.batch // 2)  # same batch size again
    after_repeats = calls["n"] - before
    cut = upstream_frontier(model.proto, (tensor,))
    grad_sessions = model.gradient_engine.built_batches(cut, (tensor,), tuple(model.split(cut).model_outputs[:1]))
    print(f"  builder calls: {calls_after_direct - 1} on the first call (+1 direct build above), "
          f"{after_repeats} over 5 more calls (batch {args.batch} x3, batch {args.batch // 2} x2, "
          f"one with a padded chunk); gradient sessions cached for batches {grad_sessions}")
    ok = calls_after_direct == 2 and after_repeats == 1 and grad_sessions == [args.batch // 2, args.batch]
    print(f"  built once per model x layer x batch: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
