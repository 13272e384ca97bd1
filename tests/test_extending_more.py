"""The README's "Extending onnxcam" target and gradient-rule examples, run exactly as written (the
code blocks marked ``<!-- tested: tests/test_extending_more.py -->``)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from readme_examples import readme_blocks, run_blocks

import onnxcam
from onnxcam.errors import OnnxCamWarning, TargetError
from onnxcam.gradients import RULES
from onnxcam.graph.protos import make_model


@pytest.fixture()
def example(tmp_path: Path) -> Iterator[dict[str, Any]]:
    assert "Asinh" not in RULES  # the example's rule is the only one for it
    try:
        yield run_blocks(readme_blocks("tests/test_extending_more.py", 2), tmp_path)
    finally:
        RULES.pop("Asinh", None)


def test_the_example_target_is_the_difference_of_two_class_gradients(example: dict[str, Any]) -> None:
    model, x = example["model"], example["x"]
    assert example["maps"].shape == (2, 8, 8)
    margin = example["MarginTarget"](1, 2)
    layer = model.layer("auto").name
    g = model.gradients(x, layer, margin)
    g1, g2 = model.gradients(x, layer, 1), model.gradients(x, layer, 2)
    np.testing.assert_allclose(g.gradients[layer], g1.gradients[layer] - g2.gradients[layer], atol=1e-6)
    np.testing.assert_allclose(g.scores, g1.scores - g2.scores, rtol=1e-5, atol=1e-6)
    with pytest.raises(TargetError, match="the model has 4"):
        model.gradients(x, layer, example["MarginTarget"](1, 7))


def _asinh_head(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """input (N, 3, 6, 6) -> Conv -> Relu ("feat") -> Asinh -> GlobalAveragePool -> Flatten -> Gemm (N, 4)."""
    rng = np.random.default_rng(5)
    wc = rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32)
    wf = rng.normal(0, 1.0, (4, 8)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "wc"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["feat"]),
        helper.make_node("Asinh", ["feat"], ["t"]),
        helper.make_node("GlobalAveragePool", ["t"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "wf"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "asinh_head",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 6, 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(wc, "wc"), numpy_helper.from_array(wf, "wf")],
    )
    onnx.save(make_model(graph, [helper.make_opsetid("", 17)]), str(path))
    return wc, wf


def test_the_example_rule_makes_the_gradient_exact(example: dict[str, Any], tmp_path: Path) -> None:
    _, wf = _asinh_head(tmp_path / "asinh.onnx")
    model = onnxcam.load(tmp_path / "asinh.onnx", device="cpu")
    x = np.random.default_rng(1).normal(size=(2, 3, 6, 6)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", OnnxCamWarning)  # no finite-difference fallback
        g = model.gradients(x, "feat", [0, 3], mode="graph")
    feat = g.activations["feat"].astype(np.float64)
    truth = wf[[0, 3]][:, :, None, None] / np.sqrt(feat * feat + 1) / 36.0
    np.testing.assert_allclose(g.gradients["feat"], truth, rtol=1e-5, atol=1e-7)


def test_without_the_rule_the_same_head_falls_back(tmp_path: Path) -> None:
    """The control: the example rule is what made the gradient above a graph gradient."""
    _asinh_head(tmp_path / "asinh.onnx")
    model = onnxcam.load(tmp_path / "asinh.onnx", device="cpu")
    x = np.random.default_rng(1).normal(size=(2, 3, 6, 6)).astype(np.float32)
    with pytest.warns(OnnxCamWarning, match="Asinh"):
        g = model.gradients(x, "feat", [0, 3])
    assert g.source == "finite differences"
