"""Test/benchmark-only: let pytorch-grad-cam, torchcam and timm import without torchvision.

The torchvision wheel beside the CPU torch 2.13.0 fails to import ("operator torchvision::nms
does not exist"); the reference libraries only need its names at import time. timm imports many
of them (``torchvision.ops.misc.FrozenBatchNorm2d``, ``transforms.InterpolationMode`` members,
``datasets``) at import time, so every ``torchvision.*`` module resolves to a stand-in whose
missing names are inert placeholder classes.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from typing import Any


class _Placeholder(type):
    """A metaclass whose classes answer any attribute with another placeholder class."""

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(name, (_Inert,), {})


class _Inert:
    def __init__(self, *_a: Any, **_k: Any) -> None:
        pass


class _StubModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        full = f"{self.__name__}.{name}"
        if full in sys.modules:
            return sys.modules[full]
        return _Placeholder(name, (_Inert,), {})


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        mod = _StubModule(spec.name)
        mod.__path__ = []  # a package, so submodules import
        return mod

    def exec_module(self, module: types.ModuleType) -> None:
        return None


def install() -> None:
    """Put stand-in ``torchvision`` modules into ``sys.modules`` (idempotent)."""
    if "torchvision" in sys.modules and hasattr(sys.modules["torchvision"], "_onnxcam_stub"):
        return
    for name in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
        del sys.modules[name]
    if not any(isinstance(f, _StubFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _StubFinder())

    import torchvision  # type: ignore[import-not-found]  # the stand-in, via _StubFinder

    torchvision._onnxcam_stub = True
