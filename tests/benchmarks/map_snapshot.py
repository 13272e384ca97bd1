"""Save every method's maps on every models/ architecture, or compare against a saved snapshot.

    python tests/benchmarks/map_snapshot.py save /tmp/maps_before.npz
    python tests/benchmarks/map_snapshot.py compare /tmp/maps_before.npz      # max |diff| per entry, <= 1e-6

Used to show that a refactor keeps every number: run ``save`` on the old tree, ``compare`` on the new one,
on the same machine (onnxruntime kernels differ between CPUs by more than 1e-6, so the snapshot is not
a committed test fixture). Inputs are seeded; slow methods run with small sample counts.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import onnxcam  # noqa: E402
from models.build import DEFAULT, build  # noqa: E402

OPTIONS = {
    "scorecam": {"max_channels": 24},
    "sscam": {"max_channels": 8, "num_samples": 2},
    "smoothgradcam++": {"num_samples": 2},
}
TOL = 1e-6


def snapshot() -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name in DEFAULT:
        model = onnxcam.load(build(name), device="cpu")
        rng = np.random.default_rng(0)
        x = rng.normal(0, 1, model.input.shape(3)).astype(np.float32)
        if model.input.max_batch == 1:
            x = x[:1]
        k = int(model.forward(x)[0].reshape(len(x), model.forward(x)[0].shape[1], -1).shape[1])
        for method, cls in onnxcam.METHODS.items():
            opts = OPTIONS.get(method, {})
            try:
                cam = cls(model, "auto", **opts)
            except onnxcam.errors.OnnxCamError as exc:
                print(f"{name:26} {method:20} not built: {exc}")
                continue
            for tag, targets in (("top1", None), ("class", [min(1, k - 1)] * len(x))):
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        e = cam.explain(x, targets)
                except onnxcam.errors.OnnxCamError as exc:
                    print(f"{name:26} {method:20} {tag}: {type(exc).__name__}")
                    continue
                out[f"{name}|{method}|{tag}|maps"] = e.maps
                for layer, raw in e.raw.items():
                    out[f"{name}|{method}|{tag}|raw|{layer}"] = raw
                out[f"{name}|{method}|{tag}|scores"] = np.asarray(e.scores)
        print(f"{name}: done")
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("save", "compare"):
        print(__doc__)
        return 2
    current = snapshot()
    if argv[0] == "save":
        np.savez_compressed(argv[1], **current)
        print(f"saved {len(current)} arrays to {argv[1]}")
        return 0
    saved = dict(np.load(argv[1]))
    worst = 0.0
    bad = []
    for key in sorted(set(saved) | set(current)):
        if key not in saved or key not in current:
            bad.append(f"{key}: only in {'saved' if key in saved else 'current'}")
            continue
        a, b = saved[key], current[key]
        if a.shape != b.shape:
            bad.append(f"{key}: shape {a.shape} vs {b.shape}")
            continue
        d = float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
        worst = max(worst, d)
        if d > TOL:
            bad.append(f"{key}: max |diff| {d:.3g}")
    print(f"{len(saved)} saved, {len(current)} now; worst max |diff| {worst:.3g}")
    for line in bad:
        print("  " + line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
