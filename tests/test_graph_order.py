"""Split heads and pruned graphs come out in topological order (issue #12 item 6).

The head of a model that flattens with ``x.view(x.size(0), -1)`` on a tensor upstream of the cut
rebuilds the batch dim inside the head (Shape -> Slice with Constant bounds). Those nodes used to be
emitted before the Constants they read: the full checker rejected the head, and prune_to_outputs,
which swept nodes backwards by position, dropped the Constants, so onnxruntime rejected the pruned head.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcam.errors import ArgumentError, ModelError
from onnxcam.graph.protos import make_model
from onnxcam.graph.prune import prune_to_outputs
from onnxcam.graph.shapes import tensor_infos
from onnxcam.graph.split import split_model
from onnxcam.graph.toposort import topological_order


def _i64(name: str, values: list[int]) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(values, np.int64), name),
                            name=f"{name}_node")


def view_net() -> onnx.ModelProto:
    """x -> Conv -> a -> Relu -> b -> Conv -> c -> Relu -> d; y = Gemm(d.view(a.size(0), -1)).

    The reshape target is computed from ``a``'s shape, upstream of a cut at ``b``: the head must
    recompute it from its own batch size.
    """
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["a"], ["b"], name="relu1"),
        helper.make_node("Conv", ["b", "w2"], ["c"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c"], ["d"], name="relu2"),
        helper.make_node("Shape", ["a"], ["a_shape"], name="shape_a"),
        _i64("zero", [0]),
        helper.make_node("Gather", ["a_shape", "zero"], ["batch"], axis=0, name="gather_batch"),
        _i64("minus_one", [-1]),
        helper.make_node("Concat", ["batch", "minus_one"], ["target"], axis=0, name="concat_target"),
        helper.make_node("Reshape", ["d", "target"], ["flat"], name="view"),
        helper.make_node("Gemm", ["flat", "wf"], ["y"], transB=1, name="fc"),
    ]
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.3, (2, 4, 3, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.normal(0, 0.2, (5, 2 * 6 * 6)).astype(np.float32), "wf"),
    ]
    graph = helper.make_graph(
        nodes, "view_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        inits,
    )
    return make_model(graph, [helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _is_sorted(graph: onnx.GraphProto) -> bool:
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    for node in graph.node:
        if any(n and n not in available for n in node.input):
            return False
        available.update(node.output)
    return True


@pytest.fixture(scope="module")
def view_split():
    model = onnx.shape_inference.infer_shapes(view_net())
    return model, split_model(model, ["b"], tensor_infos(model))


def test_split_head_with_rebuilt_batch_dim_is_sorted_and_valid(view_split) -> None:
    _, split = view_split
    ops = [n.op_type for n in split.head.graph.node]
    assert "Slice" in ops and "Constant" in ops  # the batch dim really is rebuilt in the head
    assert split.head_inputs == ("b",)  # ... rather than fed across the cut
    assert _is_sorted(split.head.graph)
    onnx.checker.check_model(split.head, full_check=True)


@pytest.mark.parametrize("n", [1, 3])
def test_pruned_head_runs_and_reproduces_the_model(view_split, n: int) -> None:
    model, split = view_split
    x = np.random.default_rng(n).normal(size=(n, 3, 6, 6)).astype(np.float32)
    (ref,) = _run(model, {"x": x})
    b = _run(split.body, {"x": x})[0]  # body outputs start with the head inputs
    pruned = prune_to_outputs(split.head, ["y"])
    onnx.checker.check_model(pruned, full_check=True)
    (y,) = _run(pruned, {"b": b})
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def _shuffled(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with its nodes in reverse order (invalid ONNX, but what a careless pass can produce)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    nodes = list(copy.graph.node)[::-1]
    del copy.graph.node[:]
    copy.graph.node.extend(nodes)
    return copy


def test_prune_follows_names_not_positions() -> None:
    model = view_net()
    model.graph.output.append(helper.make_tensor_value_info("target", TensorProto.INT64, [2]))
    shuffled = _shuffled(model)
    pruned = prune_to_outputs(shuffled, ["y", "target"])
    assert len(pruned.graph.node) == len(model.graph.node)  # every node feeds y
    assert _is_sorted(pruned.graph)
    assert len(shuffled.graph.node) == len(model.graph.node)  # the input model is untouched
    x = np.random.default_rng(0).normal(size=(2, 3, 6, 6)).astype(np.float32)
    ref = _run(model, {"x": x})
    for got, want in zip(_run(pruned, {"x": x}), ref):
        np.testing.assert_array_equal(got, want)
    only_target = prune_to_outputs(shuffled, ["target"])
    assert {n.op_type for n in only_target.graph.node} == {"Conv", "Shape", "Constant", "Gather", "Concat"}
    assert [i.name for i in only_target.graph.initializer] == ["w1"]


def test_prune_rejects_unknown_outputs() -> None:
    with pytest.raises(ArgumentError, match=r"'nope'.*not among its outputs"):
        prune_to_outputs(view_net(), ["nope"])


def test_topological_order_is_stable_and_detects_cycles() -> None:
    nodes = list(view_net().graph.node)
    assert topological_order(nodes) == nodes  # already sorted: unchanged
    resorted = topological_order(nodes[::-1])
    position = {n.name: k for k, n in enumerate(resorted)}
    for node in resorted:
        for other in resorted:
            if set(node.input) & set(other.output):
                assert position[other.name] < position[node.name]
    loop = [helper.make_node("Relu", ["q"], ["p"], name="p_node"),
            helper.make_node("Relu", ["p"], ["q"], name="q_node")]
    with pytest.raises(ModelError, match="cycle through node.*p_node"):
        topological_order(loop)


def _if_net() -> onnx.ModelProto:
    """y = If(cond) then Relu(t) else Neg(t), with t = x + 1 read by the branches from the outer scope."""
    then = helper.make_graph([helper.make_node("Relu", ["t"], ["r"])], "then", [],
                             [helper.make_tensor_value_info("r", TensorProto.FLOAT, [2])])
    other = helper.make_graph([helper.make_node("Neg", ["t"], ["s"])], "else", [],
                              [helper.make_tensor_value_info("s", TensorProto.FLOAT, [2])])
    nodes = [
        helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other, name="branch"),
        helper.make_node("Add", ["x", "one"], ["t"], name="add_one"),  # after its reader: out of order
    ]
    graph = helper.make_graph(
        nodes, "if_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.ones(2, np.float32), "one")],
    )
    return make_model(graph, [helper.make_opsetid("", 17)])


def test_subgraph_reads_of_outer_tensors_count_as_dependencies() -> None:
    pruned = prune_to_outputs(_if_net(), ["y"])
    assert [n.name for n in pruned.graph.node] == ["add_one", "branch"]
    assert [i.name for i in pruned.graph.initializer] == ["one"]
    onnx.checker.check_model(pruned, full_check=True)
    x = np.array([-2.0, 3.0], np.float32)
    np.testing.assert_array_equal(_run(pruned, {"x": x, "cond": np.array(True)})[0], [0.0, 4.0])
    np.testing.assert_array_equal(_run(pruned, {"x": x, "cond": np.array(False)})[0], [1.0, -4.0])
