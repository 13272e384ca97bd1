"""The README's "Extending onnxcam" example, run exactly as written (the code blocks marked
``<!-- tested: tests/test_extending.py -->``) on a small hand-built model."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from graphs import residual_net, save

import onnxcam
from onnxcam.errors import ArgumentError
from onnxcam.method_specs import forget, option_mismatches
from onnxcam.registry import METHODS, is_slow, method_info, parse_method_options, spec_of

README = Path(__file__).resolve().parents[1] / "README.md"
MARK = "<!-- tested: tests/test_extending.py -->"


def readme_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(re.escape(MARK) + r"\s*```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == text.count(MARK) == 2, "every marked block must be a ```python block"
    return blocks


@pytest.fixture()
def example(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The README's blocks executed in order, with ``model`` and ``x`` as the README's Python API has them."""
    model = onnxcam.load(save(residual_net(), tmp_path / "res.onnx"))
    x = np.random.default_rng(0).normal(0, 1, (2, 3, 8, 8)).astype(np.float32)
    namespace: dict[str, Any] = {"model": model, "x": x, "__name__": "readme_example"}
    try:
        for block in readme_blocks():
            exec(compile(block, str(README), "exec"), namespace)  # noqa: S102  # the documented example itself
        yield namespace
    finally:
        forget("maxgradcam")


def test_the_example_method_explains(example: dict[str, Any]) -> None:
    maps = example["maps"]
    assert maps.shape == (2, 8, 8) and np.isfinite(maps).all() and 0.0 <= maps.min() and maps.max() <= 1.0
    assert example["cam"].power == 2.0 and type(example["cam"]) is METHODS["maxgradcam"]


def test_the_example_maps_are_what_its_formula_says(example: dict[str, Any]) -> None:
    model, x, cam = example["model"], example["x"], example["cam"]
    layer = cam.layers[0]
    g = model.gradients(x, layer, None)
    w = g.gradients[layer].max(axis=(2, 3))
    expected = (np.sign(w) * np.abs(w) ** 2)[:, :, None, None] * g.activations[layer]
    np.testing.assert_allclose(cam.explain(x).raw[layer], expected.sum(axis=1), rtol=1e-5, atol=1e-6)


def test_the_example_declaration_is_registered_like_a_built_in(example: dict[str, Any]) -> None:
    cls = example["MaxGradCAM"]
    assert option_mismatches(spec_of(cls), cls) == []
    assert "maxgradcam" in {r.name for r in method_info()} and not is_slow(["maxgradcam"])
    with pytest.raises(ArgumentError, match="maxgradcam.power must be >= 0"):
        parse_method_options(["power=-1"], ["maxgradcam"])


def test_forgetting_the_example_removes_it(example: dict[str, Any]) -> None:
    forget("maxgradcam")
    with pytest.raises(ArgumentError, match="unknown method 'maxgradcam'"):
        onnxcam.get_method("maxgradcam")
