"""The numpy constant folder and the weightless shape skeleton: values equal onnxruntime's, shapes
equal full inference's, and EfficientNet's padded layers need no onnxruntime probe any more."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper
from onnx import helper as h

from onnxcam.graph.const_fold import MAX_ELEMENTS, fold_constants, shape_skeleton
from onnxcam.graph.protos import make_model
from onnxcam.graph.shapes import tensor_infos, with_static_inputs

I64 = np.int64


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    return h.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value), name + "_v"))


# (op, constant inputs, attributes, opset): every evaluator against onnxruntime on the same constants.
CASES = [
    ("Reshape", [np.arange(12, dtype=np.float32), np.array([3, 0, -1], I64)[[0, 2]]], {}, 17),
    ("Reshape", [np.arange(12, dtype=np.float32).reshape(3, 4), np.array([0, 2, 2], I64)], {}, 17),
    ("Transpose", [np.arange(24, dtype=np.float32).reshape(2, 3, 4)], {"perm": [2, 0, 1]}, 17),
    ("Concat", [np.array([1, 2], I64), np.array([3], I64)], {"axis": 0}, 17),
    ("Slice", [np.arange(10, dtype=I64), np.array([-3], I64), np.array([2**62], I64), np.array([0], I64),
               np.array([1], I64)], {}, 17),
    ("Slice", [np.arange(10, dtype=I64), np.array([8], I64), np.array([1], I64), np.array([0], I64),
               np.array([-2], I64)], {}, 17),
    ("Slice", [np.arange(12, dtype=I64).reshape(3, 4)], {"starts": [1], "ends": [3], "axes": [1]}, 9),
    ("Unsqueeze", [np.array([1, 2], I64), np.array([0, -1], I64)], {}, 17),
    ("Unsqueeze", [np.array([1, 2], I64)], {"axes": [1]}, 11),
    ("Squeeze", [np.zeros((1, 3, 1), np.float32), np.array([2], I64)], {}, 17),
    ("Gather", [np.array([5, 6, 7], I64), np.array(1, I64)], {"axis": 0}, 17),
    ("Gather", [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([2, 0], I64)], {"axis": 1}, 17),
    ("Cast", [np.array([1.7, -2.2], np.float32)], {"to": TensorProto.INT64}, 17),
    ("Div", [np.array([7, -7, 9], I64), np.array([2, 2, -4], I64)], {}, 17),
    ("Div", [np.array([7.0, 1.0], np.float32), np.array([2.0, 3.0], np.float32)], {}, 17),
    ("Add", [np.array([1, 2], I64), np.array(3, I64)], {}, 17),
    ("Sub", [np.array([1, 2], I64), np.array([5, 1], I64)], {}, 17),
    ("Mul", [np.array([1.5, 2.0], np.float32), np.array(2.0, np.float32)], {}, 17),
    ("Neg", [np.array([1, -2], I64)], {}, 17),
    ("Ceil", [np.array([1.2, -1.2], np.float32)], {}, 17),
    ("Floor", [np.array([1.2, -1.2], np.float32)], {}, 17),
    ("Max", [np.array([1, 5], I64), np.array([3, 2], I64), np.array([0, 9], I64)], {}, 17),
    ("Min", [np.array([1, 5], I64), np.array([3, 2], I64)], {}, 17),
    ("Equal", [np.array([1, 5], I64), np.array([1, 2], I64)], {}, 17),
    ("Where", [np.array([True, False]), np.array([1, 2], I64), np.array([8, 9], I64)], {}, 17),
    ("Range", [np.array(2, I64), np.array(11, I64), np.array(3, I64)], {}, 17),
    ("Expand", [np.array([[1], [2]], np.float32), np.array([2, 3], I64)], {}, 17),
    ("ConstantOfShape", [np.array([2, 3], I64)], {"value": numpy_helper.from_array(np.array([7], I64))}, 17),
    ("Shape", [np.zeros((2, 5, 3), np.float32)], {}, 17),
    ("Flatten", [np.zeros((2, 5, 3), np.float32)], {"axis": 2}, 17),
]


@pytest.mark.parametrize(("op", "inputs", "attrs", "opset"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_each_op_folds_to_onnxruntime_value(op: str, inputs: list[np.ndarray], attrs: dict[str, object],
                                            opset: int) -> None:
    names = [f"c{k}" for k in range(len(inputs))]
    nodes = [_const(n, v) for n, v in zip(names, inputs)]
    nodes.append(h.make_node(op, names, ["y"], **attrs))
    graph = h.make_graph(nodes, "g", [], [h.make_empty_tensor_value_info("y")])
    model = make_model(graph, [h.make_opsetid("", opset)])
    constants: dict[str, np.ndarray] = {}
    folded, produced = fold_constants(model.graph, constants, opset)
    assert len(folded) == len(nodes), f"{op} was not folded"
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = sess.run(["y"], {})[0]
    got = produced["y"]
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_unknown_ops_and_large_results_are_left_alone() -> None:
    nodes = [
        _const("a", np.array([4.0], np.float32)),
        h.make_node("Sqrt", ["a"], ["b"]),  # no evaluator: stays, and so does everything after it
        h.make_node("Add", ["b", "a"], ["c"]),
        _const("s", np.array([MAX_ELEMENTS + 1], I64)),
        h.make_node("ConstantOfShape", ["s"], ["big"]),
    ]
    graph = h.make_graph(nodes, "g", [], [h.make_empty_tensor_value_info("c"), h.make_empty_tensor_value_info("big")])
    constants: dict[str, np.ndarray] = {}
    folded, produced = fold_constants(graph, constants, 17)
    assert folded == {0, 3}
    assert set(produced) == {"a", "s"}


def _padded_conv_model() -> onnx.ModelProto:
    """torch's F.pad export feeding a convolution: the chain onnx's inference does not evaluate."""
    w = numpy_helper.from_array(np.ones((64, 3, 3, 3), np.float32), "w")
    nodes = [
        _const("p", np.array([1, 1, 1, 1], I64)),
        _const("shape4", np.array([4], I64)),
        h.make_node("ConstantOfShape", ["shape4"], ["zeros"], value=numpy_helper.from_array(np.array([0], I64))),
        h.make_node("Concat", ["p", "zeros"], ["p8"], axis=0),
        _const("r", np.array([-1, 2], I64)),
        h.make_node("Reshape", ["p8", "r"], ["p42"]),
        _const("st", np.array([-1], I64)), _const("en", np.array([-(2**62)], I64)),
        _const("ax", np.array([0], I64)), _const("sp", np.array([-1], I64)),
        h.make_node("Slice", ["p42", "st", "en", "ax", "sp"], ["rev"]),
        h.make_node("Transpose", ["rev"], ["t"], perm=[1, 0]),
        _const("flat", np.array([-1], I64)),
        h.make_node("Reshape", ["t", "flat"], ["pads_i"]),
        h.make_node("Cast", ["pads_i"], ["pads"], to=TensorProto.INT64),
        h.make_node("Pad", ["x", "pads"], ["xp"]),
        h.make_node("Conv", ["xp", "w"], ["y"]),
    ]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 10, 12])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    return make_model(graph, [h.make_opsetid("", 17)])


def test_padding_chain_is_folded_and_shapes_are_known() -> None:
    model = _padded_conv_model()
    plain = tensor_infos(onnx.shape_inference.infer_shapes(model, data_prop=True))
    assert plain["y"].shape is None or None in plain["y"].shape or any(isinstance(d, str) and d != "N"
                                                                     for d in plain["y"].shape)
    skeleton, values = shape_skeleton(model)
    # The weight is declared, not copied: the skeleton carries no weight bytes.
    assert [i.name for i in skeleton.graph.initializer if i.name == "w"] == []
    assert "w" in {i.name for i in skeleton.graph.input}
    np.testing.assert_array_equal(values["pads"], [0, 0, 1, 1, 0, 0, 1, 1])
    infos = tensor_infos(onnx.shape_inference.infer_shapes(skeleton, data_prop=True))
    assert infos["xp"].shape == ("N", 3, 12, 14)
    assert infos["y"].shape == ("N", 64, 10, 12)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"x": np.zeros((2, 3, 10, 12), np.float32)})[0].shape == (2, 64, 10, 12)


def test_with_static_inputs_keeps_the_weights_and_adds_shapes() -> None:
    model = _padded_conv_model()
    fixed = with_static_inputs(model, {"x": (4, 3, 10, 12)})
    infos = tensor_infos(fixed)
    assert infos["y"].shape == (4, 64, 10, 12)
    assert infos["pads"].shape == (8,)
    assert [i.name for i in fixed.graph.initializer] == ["w"]
    np.testing.assert_array_equal(numpy_helper.to_array(fixed.graph.initializer[0]), np.ones((64, 3, 3, 3)))
    assert len(fixed.graph.node) == len(model.graph.node)  # the model itself is not folded


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite0_int8"])
def test_efficientnet_load_needs_no_onnxruntime_probe(build_model, monkeypatch: pytest.MonkeyPatch,
                                                      name: str) -> None:
    import onnxcam.model as model_module

    def no_session(*args: object, **kwargs: object) -> None:
        raise AssertionError("loading built an onnxruntime session to probe shapes")

    monkeypatch.setattr(model_module, "make_session", no_session)
    model = model_module.load(build_model(name), device="cpu")
    layers = model.layers()
    assert all(layer.shape is not None and all(isinstance(d, int) for d in layer.shape[1:]) for layer in layers)
    assert any(layer.shape[1:] == (1280, 7, 7) for layer in layers)  # type: ignore[index]
