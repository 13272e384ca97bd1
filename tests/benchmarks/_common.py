"""Shared by the benchmark scripts: the repo on sys.path, the torchvision stub, photos, timing."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's Score-CAM progress bars

THREADS = 2
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "cat", "hubble_deep_field", "immunohistochemistry",
          "retina", "colorwheel", "camera")


def stub_torchvision() -> None:
    from models.torchvision_stub import install

    install()


def photos(n: int) -> list[np.ndarray]:
    """``n`` RGB uint8 photos from scikit-image's data, extended with flips and centre crops."""
    from skimage import data

    base = []
    for name in PHOTOS:
        img = np.asarray(getattr(data, name)())
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        base.append(np.ascontiguousarray(img[:, :, :3]).astype(np.uint8))
    out: list[np.ndarray] = []
    k = 0
    while len(out) < n:
        img = base[k % len(base)]
        variant = k // len(base)
        if variant % 2 == 1:
            img = img[:, ::-1]
        if variant >= 2:
            h, w = img.shape[:2]
            img = img[h // 8: h - h // 8, w // 8: w - w // 8]
        out.append(np.ascontiguousarray(img))
        k += 1
    return out


def preprocess(images: list[np.ndarray], size: tuple[int, int], mean: tuple[float, float, float] | None = None,
               std: tuple[float, float, float] | None = None) -> np.ndarray:
    """Resize (bilinear), scale to [0, 1], normalise: ``(N, 3, H, W)`` float32."""
    import cv2

    m = np.asarray(mean or IMAGENET_MEAN, np.float32)
    s = np.asarray(std or IMAGENET_STD, np.float32)
    batch = [(cv2.resize(im, (size[1], size[0]), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255 - m) / s
             for im in images]
    return np.ascontiguousarray(np.stack(batch).transpose(0, 3, 1, 2))


def best(fn: Callable[[], object], repeats: int, warmup: bool = True) -> float:
    """Minimum wall time of ``repeats`` runs (after one untimed warm-up run)."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def alternate(fn: Callable[[], object], ref: Callable[[], object], repeats: int) -> tuple[list[float], list[float]]:
    """Wall times of ``fn`` and ``ref`` run alternately (after one warm-up each), so the two see the
    same machine: one that speeds up or slows down between measurements moves both alike."""
    fn()
    ref()
    a, b = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        a.append(time.perf_counter() - t)
        t = time.perf_counter()
        ref()
        b.append(time.perf_counter() - t)
    return a, b


def best_pair(fn: Callable[[], object], ref: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Minimum wall times of ``fn`` and ``ref`` run alternately (see ``alternate``)."""
    a, b = alternate(fn, ref, repeats)
    return min(a), min(b)


def steady_blocks(fns: dict[str, Callable[[], object]], rounds: int, per_block: int = 5) -> dict[str, np.ndarray]:
    """Per round, each of ``fns`` run ``per_block`` times in a row; the block's minimum (its first run,
    which follows another workload, left out). Returns ``(rounds,)`` seconds per name.

    Blocks measure each workload in its steady state, the way a loop over many images runs it; the
    rounds interleave the workloads, so a machine that drifts moves them alike and the per-round
    ratios cancel it. On a virtual machine a run that follows a stretch of one busy thread (Python
    between onnxruntime calls) can start slower; in a block that cost is part of the workload, where
    ``alternate`` would lay it on the reference instead."""
    out: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            times = []
            for _ in range(per_block + 1):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            out[name].append(min(times[1:]))
    return {name: np.asarray(v) for name, v in out.items()}
