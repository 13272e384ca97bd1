"""The README's tested code blocks: each is marked ``<!-- tested: tests/<file>.py -->`` and run as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from graphs import residual_net, save

import onnxcam

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_blocks(test_file: str, count: int) -> list[str]:
    """The ``count`` python blocks marked for ``test_file`` (e.g. ``tests/test_extending.py``), in order."""
    mark = f"<!-- tested: {test_file} -->"
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(re.escape(mark) + r"\s*```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == text.count(mark) == count, "every marked block must be a ```python block"
    return blocks


def run_blocks(blocks: list[str], tmp_path: Path) -> dict[str, Any]:
    """The blocks executed in order, with ``model`` and ``x`` as the README's Python API has them."""
    model = onnxcam.load(save(residual_net(), tmp_path / "res.onnx"))
    x = np.random.default_rng(0).normal(0, 1, (2, 3, 8, 8)).astype(np.float32)
    namespace: dict[str, Any] = {"model": model, "x": x, "__name__": "readme_example"}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102  # the documented example itself
    return namespace
