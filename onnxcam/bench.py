"""Benchmark CAM methods on one model: time per image, ratio to one plain forward, peak memory.

How it measures (``bench``):

- Time: each method is built once, run once to warm up (that run builds its sessions and gradient
  graph, which are cached on the ``Model``), then run ``repeats`` times on the same batch; the
  *minimum* wall time is kept (the least disturbed by other processes) and divided by the number
  of images. The forward row times ``Model.forward`` the same way on the same batch, so
  ``ratio_to_forward`` compares like with like (same threads, same batch size).
- Memory (``memory=True``): every method runs in its own fresh Python process, so one method's
  sessions and onnxruntime arena cannot inflate another's numbers. The process loads the model and
  builds the input, reads its peak resident set size (``VmHWM`` in ``/proc/self/status``), runs
  the method (sessions included), and reads ``VmHWM`` again: the difference is the peak resident
  memory the method added, numpy buffers and onnxruntime's arena together. Where ``/proc`` is
  missing (not Linux) the peak is reported as ``None``. With ``memory=False`` everything runs in
  this process and no memory is reported.

Heavy methods (Score-CAM, SS-CAM, Ablation-CAM) cost hundreds of forwards per image, so they are
timed on at most ``heavy_images`` images; the table says how many images each row used.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxcam.errors import ArgumentError, OnnxCamError
from onnxcam.model import Model, load
from onnxcam.registry import get_method, is_slow

FORWARD = "forward"
DEFAULT_METHODS = ("gradcam", "gradcam++", "layercam", "ablationcam", "scorecam")


@dataclass(frozen=True)
class BenchRow:
    """One method's numbers. ``peak_mib``: peak resident memory added by the method (None: not measured)."""

    method: str
    images: int
    batch_size: int
    seconds: float  # best wall time for the whole batch of ``images``
    seconds_per_image: float
    ratio_to_forward: float  # seconds_per_image / the forward's seconds_per_image
    peak_mib: float | None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BenchResult:
    """What ``bench`` measured: the forward row first, then one row per method, in the order asked."""

    model: str
    layer: str
    device: str
    threads: int | None
    repeats: int
    forward: BenchRow
    rows: list[BenchRow]

    def table(self) -> list[dict[str, Any]]:
        """Rows as plain dicts (forward first), ready for JSON or printing."""
        return [asdict(r) for r in (self.forward, *self.rows)]


def bench_input(model: Model, n: int, seed: int = 0) -> np.ndarray:
    """A deterministic, image-like batch ``model.input.shape(n)``: smooth random blobs, roughly
    ImageNet-normalised. Smooth inputs (not white noise) give realistic sparsity at deep layers,
    which Score-CAM's constant-channel skipping depends on."""
    rng = np.random.default_rng(seed)
    h, w = model.input.size
    c = model.input.channels
    coarse = rng.standard_normal((n, c, 8, 8)).astype(np.float32)
    # Nearest-neighbour blocks, then a box blur along each axis: cheap and smooth enough.
    rep = np.repeat(np.repeat(coarse, -(-h // 8), axis=2), -(-w // 8), axis=3)[:, :, :h, :w]
    k = max(1, min(h, w) // 16)
    kernel = np.ones(k, dtype=np.float32) / k
    smooth = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="same"), 2, rep)
    smooth = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="same"), 3, smooth)
    x = smooth.astype(np.float32)
    if model.input.layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    return x


def _best_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: sessions and gradient graphs are built here, not in the timed runs
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _peak_kib() -> int | None:
    """This process's peak resident set size (``VmHWM``) in KiB, or None without /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _check_method(name: str) -> str:
    if name == FORWARD:
        return name
    cls = get_method(name)
    return cls.name


def parse_method_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"scorecam:max_channels=64"`` -> ``("scorecam", {"max_channels": 64})``; options are JSON
    values (numbers, true/false) or bare strings, comma-free, separated by ``:``."""
    name, *parts = spec.strip().split(":")
    opts: dict[str, Any] = {}
    for part in parts:
        key, eq, text = part.partition("=")
        if not eq or not key.strip():
            raise ArgumentError(f"method option {part!r} in {spec!r} is not key=value: write e.g. "
                                "scorecam:max_channels=64")
        try:
            opts[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            opts[key.strip()] = text
    return _check_method(name), opts


def measure(
    model_path: str | os.PathLike[str],
    method: str,
    images: int,
    batch_size: int,
    layer: str = "auto",
    repeats: int = 3,
    threads: int | None = None,
    device: str = "cpu",
    options: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Time ``method`` (a registry name, or ``forward``) in this process; returns
    ``{"seconds", "peak_kib", "device", "layer"}`` (``peak_kib``: VmHWM growth during the runs)."""
    model = load(model_path, device=device, threads=threads)
    x = model.check_input(bench_input(model, images, seed))
    before = _peak_kib()
    if method == FORWARD:
        seconds = _best_time(lambda: model.forward(x, batch_size), repeats)
        layer_name = model.layer(layer).name
    else:
        cam = get_method(method)(model, layer, batch_size=batch_size, **dict(options or {}))
        seconds = _best_time(lambda: cam(x), repeats)
        layer_name = ",".join(cam.layers)
    after = _peak_kib()
    peak = None if before is None or after is None else after - before
    return {"seconds": seconds, "peak_kib": peak, "device": model.device, "layer": layer_name}


def _measure_isolated(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``measure`` in a fresh interpreter (see the module docstring: honest per-method peaks)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, "-m", "onnxcam.bench", json.dumps(kwargs)], capture_output=True,
                          text=True, env=env, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise OnnxCamError(f"benchmark of {kwargs['method']!r} on {kwargs['model_path']} failed: {err}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def bench(
    model_path: str | os.PathLike[str],
    methods: Sequence[str] = DEFAULT_METHODS,
    batch_size: int = 16,
    images: int | None = None,
    heavy_images: int = 1,
    layer: str = "auto",
    repeats: int = 3,
    threads: int | None = None,
    device: str = "cpu",
    memory: bool = True,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> BenchResult:
    """Benchmark ``methods`` on ``model_path``; see the module docstring for what is measured.

    ``images``: batch timed per method (default ``batch_size``); Score-CAM, SS-CAM and
    Ablation-CAM use ``min(images, heavy_images)``. ``method_options``: per method name, extra
    constructor arguments (e.g. ``{"scorecam": {"max_channels": 64}}``). ``memory``: one fresh
    process per method, with peak memory (slower to start, honest); False: all in this process.
    """
    if repeats < 1:
        raise ArgumentError(f"repeats must be >= 1, got {repeats}")
    if batch_size < 1:
        raise ArgumentError(f"batch size must be >= 1, got {batch_size}")
    if heavy_images < 1:
        raise ArgumentError(f"heavy_images must be >= 1, got {heavy_images}")
    n = images if images is not None else batch_size
    if n < 1:
        raise ArgumentError(f"images must be >= 1, got {n}")
    by_name = {_check_method(k): dict(v) for k, v in (method_options or {}).items()}
    specs: list[tuple[str, dict[str, Any]]] = []
    for text in methods:
        name, extra = parse_method_spec(text)
        if name == FORWARD:
            raise ArgumentError("'forward' is always measured; list only CAM methods")
        specs.append((name, {**by_name.get(name, {}), **extra}))
    if not specs:
        raise ArgumentError("no methods given: pass at least one method name (see `onnxcam methods`)")
    # In one process VmHWM only grows, so a later method's delta would hide under an earlier peak.
    run = _measure_isolated if memory else (lambda kw: {**measure(**kw), "peak_kib": None})

    def one(method: str, count: int, options: dict[str, Any]) -> dict[str, Any]:
        if progress is not None:
            progress(method)
        kw = {"model_path": str(model_path), "method": method, "images": count, "batch_size": batch_size,
              "layer": layer, "repeats": repeats, "threads": threads, "device": device, "options": options}
        return run(kw)

    counts = [min(n, heavy_images) if is_slow([m]) else n for m, _ in specs]
    fwd = {c: one(FORWARD, c, {}) for c in sorted(set(counts) | {n})}

    def row(method: str, count: int, options: dict[str, Any], res: dict[str, Any]) -> BenchRow:
        per = res["seconds"] / count
        base = fwd[count]["seconds"] / count
        peak = None if res["peak_kib"] is None else res["peak_kib"] / 1024
        return BenchRow(method, count, batch_size, res["seconds"], per, per / base, peak, options)

    rows = [row(m, c, o, one(m, c, o)) for (m, o), c in zip(specs, counts)]
    main = fwd[n]
    return BenchResult(str(model_path), main["layer"], main["device"], threads, repeats,
                       row(FORWARD, n, {}, main), rows)


def format_table(result: BenchResult) -> str:
    """A plain-text table of ``result`` (one line per row)."""
    head = f"{'method':<28}{'images':>7}{'batch':>7}{'s/image':>11}{'x forward':>11}{'peak MiB':>10}"
    lines = [f"model {result.model}  layer {result.layer}  device {result.device}  threads "
             f"{result.threads or 'auto'}  best of {result.repeats}", head]
    for r in (result.forward, *result.rows):
        name = r.method + ("".join(f" {k}={v}" for k, v in r.options.items()))
        peak = "-" if r.peak_mib is None else f"{r.peak_mib:.0f}"
        lines.append(f"{name:<28}{r.images:>7}{r.batch_size:>7}{r.seconds_per_image:>11.4f}"
                     f"{r.ratio_to_forward:>11.2f}{peak:>10}")
    return "\n".join(lines)


def _main(argv: Sequence[str]) -> int:
    kwargs = json.loads(argv[0])
    print(json.dumps(measure(**kwargs)))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
