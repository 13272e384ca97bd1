"""A model onnxruntime can load is explained even if onnx's checker complains (issue #13 item 8).

onnx's checker requires a shape on every graph input and output; exporters sometimes leave an
output's shape out, and onnxruntime runs such a model fine. onnxcam warns (naming what the checker
said) and goes on; a model onnxruntime cannot load either is still refused.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from graphs import residual_net, save

import onnxcam
from onnxcam.errors import ModelLoadError, OnnxCamWarning
from onnxcam.loading import read_model


def _shapeless_output(tmp_path: Path) -> Path:
    model = residual_net()
    model.graph.output[0].type.tensor_type.ClearField("shape")
    return save(model, tmp_path / "shapeless_output.onnx")


def test_checker_rejects_what_onnxruntime_runs(tmp_path: Path) -> None:
    # The premise: if either side changes its mind, the tests below no longer test the fallback.
    import onnxruntime as ort

    path = _shapeless_output(tmp_path)
    with pytest.raises(onnx.checker.ValidationError, match="shape"):
        onnx.checker.check_model(str(path))
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_model_failing_only_the_checker_loads_with_a_warning(tmp_path: Path) -> None:
    path = _shapeless_output(tmp_path)
    with pytest.warns(OnnxCamWarning, match=r"shapeless_output\.onnx fails the ONNX checker \(.*'shape'.*\) but "
                                            r"onnxruntime loads it"):
        proto = read_model(path)
    assert not proto.graph.output[0].type.tensor_type.HasField("shape")  # the file is read as it is


def test_model_failing_only_the_checker_is_explained(tmp_path: Path) -> None:
    reference = onnxcam.load(save(residual_net(), tmp_path / "ok.onnx"), device="cpu")
    with pytest.warns(OnnxCamWarning, match="fails the ONNX checker"):
        model = onnxcam.load(_shapeless_output(tmp_path), device="cpu")
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)
    got, want = model.gradients(x, "e", [1, 2]), reference.gradients(x, "e", [1, 2])
    np.testing.assert_allclose(got.gradients["e"], want.gradients["e"], rtol=1e-5, atol=1e-7)


def test_valid_model_loads_without_warning(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", OnnxCamWarning)
        read_model(save(residual_net(), tmp_path / "ok.onnx"))


def test_model_both_reject_is_refused_with_both_reasons(tmp_path: Path) -> None:
    model = residual_net()
    model.graph.output[0].type.tensor_type.ClearField("elem_type")  # ORT: "Invalid tensor data type 0"
    path = save(model, tmp_path / "untyped_output.onnx")
    with pytest.raises(ModelLoadError, match=r"untyped_output\.onnx fails the ONNX checker: .*elem_type.*"
                                             r"onnxruntime cannot load it either \(.*data type"):
        read_model(path)
