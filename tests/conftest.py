"""Shared fixtures: the repo root on sys.path (for ``models``), built models, small ONNX graphs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def build_model():
    """``build_model(name) -> Path``: builds (or reuses the cached) ONNX file from models/."""
    from models.build import build

    return build
