"""Build the zoo's ONNX files: ``python -m models.build [names...] [--force] [--list]``.

Files go to ``models/<name>.onnx``; an existing file is kept unless ``--force`` (the build is a cache).
With no names, builds every spec with ``default=True`` (all but ``resnet50``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from models.detectors import SPECS as DETECTOR_SPECS
from models.corpus_paddle import SPECS as CORPUS_PADDLE_SPECS
from models.corpus_tf import SPECS as CORPUS_TF_SPECS
from models.corpus_torch import SPECS as CORPUS_TORCH_SPECS
from models.efficientnet import SPECS as EFFICIENTNET_SPECS
from models.export import export_spec
from models.transformers import SPECS as TRANSFORMER_SPECS
from models.zoo import ZOO, ModelSpec

MODELS_DIR = Path(__file__).resolve().parent
MODELS: dict[str, ModelSpec] = {**ZOO, **EFFICIENTNET_SPECS, **TRANSFORMER_SPECS, **DETECTOR_SPECS,
                               **CORPUS_TORCH_SPECS, **CORPUS_PADDLE_SPECS, **CORPUS_TF_SPECS}
DEFAULT = tuple(name for name, spec in MODELS.items() if spec.default)


def model_path(name: str) -> Path:
    """Where ``name`` is (or will be) built."""
    return MODELS_DIR / f"{name}.onnx"


def build(name: str, force: bool = False) -> Path:
    """Build ``name`` (and what it requires) unless its file exists; returns the file's path."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    spec = MODELS[name]
    path = model_path(name)
    if path.is_file() and not force:
        return path
    deps = {dep: build(dep) for dep in spec.requires}
    if spec.make_onnx is None:
        export_spec(spec, path)
    else:
        spec.make_onnx(spec, path, deps)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.build", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"models to build (default: {' '.join(DEFAULT)})")
    parser.add_argument("--force", action="store_true", help="rebuild even if the file exists")
    parser.add_argument("--list", action="store_true", help="list the models and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, spec in MODELS.items():
            mark = "*" if spec.default else " "
            shape = "x".join(map(str, spec.input_shape))
            print(f"{mark} {name:26} {spec.layout} {shape:11} {spec.num_classes:5d}  {spec.description}")
        return 0
    unknown = [n for n in args.names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; see --list")
    start = time.perf_counter()
    for name in args.names or DEFAULT:
        t = time.perf_counter()
        existed = model_path(name).is_file()
        path = build(name, force=args.force)
        verb = "kept" if existed and not args.force else "wrote"
        print(f"{verb} {path} ({path.stat().st_size / 1e6:.2f} MB, {time.perf_counter() - t:.1f}s)")
    print(f"done in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
