"""Graph split on hand-built graphs: body then head reproduces the model, skips cross the cut."""

from __future__ import annotations

import numpy as np
import pytest
from graphs import residual_net, save

import onnxcam
from onnxcam.errors import AmbiguousLayerError, LayerNotFoundError, LayerShapeError


@pytest.fixture()
def model(tmp_path):
    return onnxcam.load(save(residual_net(), tmp_path / "res.onnx"), device="cpu")


def test_layers_are_the_4d_tensors_in_order(model):
    names = [layer.name for layer in model.layers()]
    assert names == ["a", "b", "c", "d", "e", "g"]
    assert model.layer("auto").name == "e"  # g is 1x1: not a spatial map
    assert model.layers()[0].shape == ("N", 6, 8, 8)


@pytest.mark.parametrize("cut", [["a"], ["b"], ["c"], ["d"], ["e"], ["g"], ["c", "b"], ["a", "e"]])
@pytest.mark.parametrize("n", [1, 3])
def test_body_then_head_reproduces_outputs(model, cut, n):
    x = np.random.default_rng(1).normal(size=(n, 3, 8, 8)).astype(np.float32)
    (ref,) = model.forward(x)
    feeds, outputs = model.run_body(x, cut)
    assert np.abs(outputs[0] - ref).max() <= 1e-5  # fusions differ when extra outputs are requested
    (y,) = model.run_head(cut, feeds)
    assert np.abs(y - ref).max() <= 1e-5


def test_skip_connection_becomes_a_head_input(model):
    split = model.split(["c"])
    assert split.head_inputs == ("c", "b")  # b bypasses the cut through the Add
    assert [n.name for n in split.head.graph.node] == ["add", "relu2", "gap", "flatten", "fc"]


def test_multi_cut_drops_nodes_between_cuts(model):
    split = model.split(["a", "e"])
    assert split.head_inputs == ("a", "e")
    assert [n.name for n in split.head.graph.node] == ["gap", "flatten", "fc"]


def test_nhwc_input_is_recognised(tmp_path):
    m = onnxcam.load(save(residual_net(nhwc=True), tmp_path / "nhwc.onnx"), device="cpu")
    assert m.input.layout == "NHWC" and m.input.size == (8, 8) and m.input.channels == 3
    x = np.random.default_rng(2).normal(size=(2, 8, 8, 3)).astype(np.float32)
    (ref,) = m.forward(x)
    feeds, _ = m.run_body(x, ["d"])
    assert np.abs(m.run_head(["d"], feeds)[0] - ref).max() <= 1e-5


def test_fixed_batch_model_runs_in_chunks_of_its_batch(tmp_path):
    m = onnxcam.load(save(residual_net(batch=1), tmp_path / "b1.onnx"), device="cpu")
    x = np.random.default_rng(3).normal(size=(3, 3, 8, 8)).astype(np.float32)
    (y,) = m.forward(x, batch_size=16)
    for i in range(3):
        assert np.allclose(m.forward(x[i:i + 1])[0], y[i:i + 1], atol=1e-6)


def test_layer_resolution_errors(model):
    with pytest.raises(LayerNotFoundError, match="close matches"):
        model.layer("aa")
    with pytest.raises(LayerShapeError, match=r"'f'.*\(N, 6\)"):
        model.layer("f")
    assert model.layer("conv2").name == "c"  # node names resolve to their output
    with pytest.raises(AmbiguousLayerError, match="matches 2 tensors"):
        model.layer("1")  # suffix of node names conv1 and relu1


def test_unique_suffix_resolves(tmp_path):
    m = onnxcam.load(save(residual_net(), tmp_path / "r.onnx"), device="cpu")
    assert m.layer("ap").name == "g"  # node 'gap' ends with 'ap'
