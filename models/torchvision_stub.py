"""Test/benchmark-only: let pytorch-grad-cam and torchcam import without torchvision.

The torchvision wheel beside the CPU torch 2.13.0 fails to import ("operator torchvision::nms
does not exist"); the reference libraries only need its names at import time.
"""

from __future__ import annotations

import sys
import types
from typing import Any


def install() -> None:
    """Put stand-in ``torchvision`` modules into ``sys.modules`` (idempotent)."""
    if "torchvision" in sys.modules and hasattr(sys.modules["torchvision"], "_onnxcam_stub"):
        return

    def dummy(*_a: Any, **_k: Any) -> None:
        return None

    def stub(name: str, **attrs: Any) -> types.ModuleType:
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        sys.modules[name] = mod
        return mod

    tv = stub("torchvision", _onnxcam_stub=True)
    tv.transforms = stub("torchvision.transforms", Compose=dummy, Normalize=dummy, ToTensor=dummy)  # type: ignore[attr-defined]
    stub("torchvision.transforms.functional", resize=dummy)
    tv.ops = stub("torchvision.ops")  # type: ignore[attr-defined]
