"""The README's "Extending onnxcam" example, run exactly as written (the code blocks marked
``<!-- tested: tests/test_extending.py -->``) on a small hand-built model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from readme_examples import readme_blocks, run_blocks

import onnxcam
from onnxcam.errors import ArgumentError
from onnxcam.method_specs import forget, option_mismatches
from onnxcam.registry import METHODS, is_slow, method_info, parse_method_options, spec_of


@pytest.fixture()
def example(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The README's blocks executed in order, with ``model`` and ``x`` as the README's Python API has them."""
    try:
        yield run_blocks(readme_blocks("tests/test_extending.py", 2), tmp_path)
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
