"""Multiply-accumulate counts on hand-built graphs, and the remainder batch re-using a built gradient graph."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from onnx import helper as h

from onnxcam.graph.cost import graph_macs, node_macs
from onnxcam.graph.protos import make_model
from onnxcam.graph.shapes import tensor_infos, with_static_inputs


def _net() -> onnx.ModelProto:
    inits = [
        numpy_helper.from_array(np.ones((8, 3, 3, 3), np.float32), "w1"),        # dense 3x3
        numpy_helper.from_array(np.ones((8, 1, 3, 3), np.float32), "w2"),        # depthwise 3x3
        numpy_helper.from_array(np.ones((10, 8), np.float32), "fc"),
    ]
    nodes = [
        h.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
        h.make_node("Conv", ["a", "w2"], ["b"], group=8, strides=[2, 2], pads=[1, 1, 1, 1]),
        h.make_node("GlobalAveragePool", ["b"], ["g"]),
        h.make_node("Flatten", ["g"], ["f"]),
        h.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
    ]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    return make_model(graph, [h.make_opsetid("", 17)])


def test_macs_of_dense_depthwise_and_gemm() -> None:
    model = with_static_inputs(_net(), {"x": ("N", 3, 16, 16)})
    infos = tensor_infos(model)
    nodes = list(model.graph.node)
    assert node_macs(nodes[0], infos) == 8 * 16 * 16 * (3 * 9)
    assert node_macs(nodes[1], infos) == 8 * 8 * 8 * (1 * 9)
    assert node_macs(nodes[2], infos) == 0
    assert node_macs(nodes[4], infos) == 10 * 8
    assert graph_macs(nodes, infos) == 8 * 16 * 16 * 27 + 8 * 8 * 8 * 9 + 80


def test_remainder_batch_pads_into_the_built_graph_only_when_the_head_is_cheap(build_model) -> None:
    from onnxcam.model import load

    model = load(build_model("resnet_small"), device="cpu")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, *model.input.shape(1)[1:])).astype(np.float32)
    last = model.layer("auto").name
    first = model.layers()[0].name
    assert model.head_share((last,)) < 0.05 < 0.5 < model.head_share((first,))

    for layer, reused in ((last, True), (first, False)):
        model.gradients(x[:16], layer)
        rest = model.gradients(x[16:], layer)
        batches = model.gradient_engine.built_batches((layer,), (layer,), (model.outputs[0],))
        assert batches == ([16] if reused else [4, 16])
        alone = load(build_model("resnet_small"), device="cpu").gradients(x[16:], layer)
        np.testing.assert_allclose(rest.gradients[layer], alone.gradients[layer], rtol=1e-5,
                                   atol=1e-6 * float(np.abs(alone.gradients[layer]).max()))


def test_prune_keeps_only_what_the_outputs_need() -> None:
    from onnxcam.graph.prune import prune_to_outputs

    model = _net()
    model.graph.output.append(h.make_tensor_value_info("a", TensorProto.FLOAT, None))
    pruned = prune_to_outputs(model, ["a"])
    assert [n.op_type for n in pruned.graph.node] == ["Conv"]
    assert [i.name for i in pruned.graph.initializer] == ["w1"]
    assert [o.name for o in pruned.graph.output] == ["a"]
    assert [i.name for i in pruned.graph.input] == ["x"]
    assert len(model.graph.node) == 5  # the input model is untouched
    import onnxruntime as ort

    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    full = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    small = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(small.run(["a"], {"x": x})[0], full.run(["a"], {"x": x})[0])
