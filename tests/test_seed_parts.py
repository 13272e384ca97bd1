"""Seeds moved onto the parts of a Concat-made output (onnxcam.graph.seed_parts, row by row: narrow_rows).

A YOLOv8-style head ends in Concat([box decoder, Sigmoid(classes)], axis=1); a class score's seed is
zero on the box rows. The engine then seeds the Sigmoid's output with the seed's class rows, and its
gradient graph holds no box decoder. The gradients must equal those of the graph seeded at the whole
output (the gradient builder on the unchanged head, run here directly).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxcam
from onnxcam.errors import TargetError
from onnxcam.gradients import build_gradient_model
from onnxcam.graph.protos import make_model
from onnxcam.graph.seed_parts import ConcatParts, concat_parts, narrow_rows, narrow_seeds
from onnxcam.graph.tensor_info import TensorInfo
from onnxcam.sparse_seed import SparseSeed
from onnxcam.targets import OutputTarget

A = 16  # predictions: a 4x4 grid


def _head_model(path: Path) -> Path:
    """x (N, 3, 4, 4) -> Conv -> feat (N, 8, 4, 4) -> Conv -> raw (N, 12, 4, 4) -> (N, 12, 16);
    rows 0-7: two 4-bin distributions -> Softmax -> expected bin (the DFL-like box part, (N, 2, 16));
    rows 8-11: Sigmoid (class probabilities) ; out = Concat([box, cls], axis=1) (N, 6, 16)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.4, (12, 8, 3, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array([0, 12, A], np.int64), "flat"),
        numpy_helper.from_array(np.array([8, 4], np.int64), "parts"),
        numpy_helper.from_array(np.array([0, 2, 4, A], np.int64), "bins_shape"),
        numpy_helper.from_array(np.arange(4, dtype=np.float32).reshape(1, 1, 4, 1), "bins"),
        numpy_helper.from_array(np.array([2], np.int64), "axis2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["feat_pre"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["feat_pre"], ["feat"], name="relu1"),
        helper.make_node("Conv", ["feat", "w2"], ["raw4"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Reshape", ["raw4", "flat"], ["raw"], name="flatten"),
        helper.make_node("Split", ["raw", "parts"], ["dist", "logits"], axis=1, name="split"),
        helper.make_node("Reshape", ["dist", "bins_shape"], ["dist4"], name="bins"),
        helper.make_node("Softmax", ["dist4"], ["prob4"], axis=2, name="softmax"),
        helper.make_node("Mul", ["prob4", "bins"], ["weighted"], name="weigh"),
        helper.make_node("ReduceSum", ["weighted", "axis2"], ["box"], keepdims=0, name="expect"),
        helper.make_node("Sigmoid", ["logits"], ["cls"], name="sigmoid"),
        helper.make_node("Concat", ["box", "cls"], ["out"], axis=1, name="concat"),
    ]
    graph = helper.make_graph(nodes, "seed_parts",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 6, A])], inits)
    model = make_model(graph, [helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


class _Element(OutputTarget):
    """The output's entries at ``(row, prediction)`` pairs, summed with weights."""

    def __init__(self, entries: list[tuple[int, int, float]]) -> None:
        self.entries = entries

    def score_output(self, output: np.ndarray) -> float:
        return float(sum(w * output[r, a] for r, a, w in self.entries))

    def output_gradient(self, output: np.ndarray) -> np.ndarray:
        g = np.zeros_like(output)
        for r, a, w in self.entries:
            g[r, a] += w
        return g

    def describe(self) -> str:
        return f"entries {self.entries}"


def _reference(model: onnxcam.Model, x: np.ndarray, target: _Element) -> np.ndarray:
    """d score / d feat from the gradient graph seeded at the whole output, on the unchanged head."""
    split = model.split(("feat",))
    head = onnx.ModelProto()
    head.CopyFrom(split.head)
    built = build_gradient_model(head, ["feat"], ["out"])
    sess = ort.InferenceSession(built.model.SerializeToString(), providers=["CPUExecutionProvider"])
    feat, out = model.run_body(x, ("feat",))
    seed = np.stack([target.output_gradient(o) for o in out[0]])
    feed = {"feat": feat["feat"], built.seed_inputs["out"]: seed}
    return sess.run([built.grad_outputs["feat"]], feed)[0]


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> onnxcam.Model:
    model = onnxcam.load(_head_model(tmp_path_factory.mktemp("seed_parts") / "head.onnx"), device="cpu")
    model.gradient_engine.local_crops = False  # the whole head's graph (the crop path's tail: test_local_gradients)
    return model


@pytest.mark.parametrize(("entries", "seeded"), [
    ([(3, 5, 1.0)], ("cls",)),  # one class score: only the Sigmoid branch is seeded
    ([(2, 0, 1.0), (5, 15, -0.5)], ("cls",)),
    ([(0, 7, 1.0)], ("box",)),  # a box coordinate: only the decoder
    ([(1, 9, 1.0), (4, 9, 2.0)], ("out",)),  # both parts: the output itself
])
def test_narrowed_seeds_give_the_whole_output_gradients(head: onnxcam.Model, entries: list, seeded: tuple) -> None:
    x = np.random.default_rng(1).normal(size=(2, 3, 4, 4)).astype(np.float32)
    target = _Element(entries)
    got = head.gradients_at(x, ["feat"], [target, target]).gradients["feat"]
    ref = _reference(head, x, target)
    assert np.abs(ref).max() > 0
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6 * float(np.abs(ref).max()))
    keys = [k for k in head.gradient_engine._graphs if k[0] == ("feat",)]
    assert keys[-1][2] == seeded
    head.gradient_engine.release()


def test_the_narrowed_graph_holds_only_the_reached_branch(head: onnxcam.Model) -> None:
    proto, seeds, _ = head.gradient_engine.gradient_model(("feat",), ("feat",), ("cls",), 1)
    ops = {n.op_type for n in proto.graph.node}
    assert "Softmax" not in ops and "ReduceSum" not in ops and "Sigmoid" in ops
    assert list(seeds) == ["cls"]


def test_concat_parts_reads_bounds_and_reached_parts() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5, 3])
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["x"], ["b"]),
        helper.make_node("Concat", ["a", "b", "a2"], ["y"], axis=-2), helper.make_node("Abs", ["x"], ["a2"]),
        helper.make_node("Concat", ["a", "c"], ["z"], axis=1),
    ]
    c = numpy_helper.from_array(np.zeros((1, 1, 3), np.float32), "c")
    graph = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 15, 3])], [c])
    infos = {n: TensorInfo(n, TensorProto.FLOAT, s) for n, s in
             {"x": (1, 5, 3), "a": (1, 5, 3), "b": (1, 5, 3), "a2": (1, 5, 3), "y": (1, 15, 3), "c": (1, 1, 3),
              "z": (1, 6, 3)}.items()}
    parts = concat_parts(graph, "y", infos)
    assert parts == ConcatParts("y", 1, ("a", "b", "a2"), (0, 5, 10, 15))
    assert concat_parts(graph, "z", infos) is None  # a constant part
    assert concat_parts(graph, "a", infos) is None  # not a Concat
    seed = np.zeros((1, 15, 3), np.float32)
    seed[0, 7, 1] = 1.0
    seed[0, 14, 0] = 2.0
    assert parts.reached(seed) == (1, 2)
    narrowed = narrow_seeds({"y": seed}, {"y": parts})
    assert narrowed is not None and sorted(narrowed) == ["a2", "b"]
    np.testing.assert_array_equal(narrowed["b"], seed[:, 5:10])
    full = np.ones_like(seed)
    assert narrow_seeds({"y": full}, {"y": parts}) is None  # every part reached: nothing narrows


def test_narrow_rows_groups_rows_by_the_parts_they_reach() -> None:
    """Each row's seeds narrow on their own; rows reaching the same parts share a group (one graph),
    given as an array batch or as a list of rows; a NaN counts as reached."""
    inner = ConcatParts("s", 2, ("s0", "s1", "s2"), (0, 6, 8, 9))  # a per-level split along anchors
    outer = ConcatParts("y", 1, ("box", "s"), (0, 2, 5))
    parts = {"y": outer, "s": inner}
    seeds = np.zeros((5, 5, 9), np.float32)
    seeds[0, 3, 7] = 1.0  # class row, level 1
    seeds[1, 4, 2] = 2.0  # class row, level 0
    seeds[2, 2, 6] = 3.0  # level 1 again
    seeds[3, 0, 1] = 4.0  # a box row: box only
    seeds[4, 2, 8] = np.nan  # level 2
    sparse = [SparseSeed.of(row.shape, np.nonzero(row), row[np.nonzero(row)]) for row in seeds]
    mixed = [sparse[0], seeds[1], sparse[2], seeds[3], sparse[4]]
    for given in (seeds, list(seeds), sparse, mixed):
        groups = narrow_rows({"y": given}, parts.get)
        by_key = {tuple(sorted(g)): (rows.tolist(), g) for rows, g in groups}
        assert sorted(by_key) == [("box",), ("s0",), ("s1",), ("s2",)]
        rows, g = by_key[("s1",)]
        assert rows == [0, 2]
        np.testing.assert_array_equal(g["s1"], seeds[[0, 2], 2:5, 6:8])
        np.testing.assert_array_equal(by_key[("s0",)][1]["s0"], seeds[[1], 2:5, 0:6])
        np.testing.assert_array_equal(by_key[("box",)][1]["box"], seeds[[3], 0:2])
        assert by_key[("s2",)][0] == [4] and np.isnan(by_key[("s2",)][1]["s2"]).any()
    # Nothing to narrow (every part reached, or no Concat): the whole batch in one group, as an array.
    full = np.ones((3, 5, 9), np.float32)
    (rows, g), = narrow_rows({"y": list(full)}, parts.get)
    assert rows.tolist() == [0, 1, 2] and isinstance(g["y"], np.ndarray)
    np.testing.assert_array_equal(g["y"], full)
    (rows, g), = narrow_rows({"q": seeds}, parts.get)
    assert g["q"] is seeds
    # Sparse rows with nothing to narrow come back as one dense batch too.
    (rows, g), = narrow_rows({"q": sparse}, parts.get)
    assert isinstance(g["q"], np.ndarray)
    np.testing.assert_array_equal(g["q"], seeds)


def test_sparse_seed_writes_what_a_dense_seed_holds() -> None:
    s = SparseSeed.of((3, 4), ([0, 2, 2, 1], [1, 3, 3, 0]), [1.5, 2.0, 0.25, 0.0])
    dense = np.zeros((3, 4), np.float32)
    dense[0, 1], dense[2, 3] = 1.5, 2.25  # entries at one index add up
    np.testing.assert_array_equal(s.dense(), dense)
    np.testing.assert_array_equal(np.asarray(s), dense)
    assert s.dense().dtype == np.float32 and s.astype(np.float16).dense().dtype == np.float16
    np.testing.assert_array_equal(s.reached(0), [0, 2, 2])  # the explicit zero reaches nothing
    np.testing.assert_array_equal(s.sliced(1, 1, 4).dense(), dense[:, 1:4])
    np.testing.assert_array_equal(s.batched().dense(), dense[None])
    np.testing.assert_array_equal((s + s).dense(), 2 * dense)
    nan = SparseSeed.of((5,), ([3],), [np.nan])
    assert nan.reached(0).tolist() == [3]
    assert ConcatParts("y", 0, ("a", "b"), (0, 3, 5)).reached(nan) == (1,)
    with pytest.raises(TargetError, match="out of range along axis 0"):
        SparseSeed.of((3, 4), ([3], [0]), [1.0])
    with pytest.raises(TargetError, match="index arrays"):
        SparseSeed.of((3, 4), ([1],), [1.0])


def test_hoist_concats_keeps_every_value_and_names_the_parts() -> None:
    from onnxcam.graph.hoist_concat import hoist_concats

    v = helper.make_tensor_value_info
    nodes = [
        helper.make_node("Concat", ["x0", "x1"], ["c"], axis=-1),
        helper.make_node("Split", ["c", "sizes"], ["s0", "s1"], axis=1),
        helper.make_node("Sigmoid", ["s1"], ["y1"]),
        helper.make_node("Relu", ["c"], ["y2"]),
        helper.make_node("Transpose", ["c"], ["y3"], perm=[0, 2, 1]),  # not hoistable: reads c itself
    ]
    sizes = numpy_helper.from_array(np.array([1, 2], np.int64), "sizes")
    graph = helper.make_graph(nodes, "h",
                              [v("x0", TensorProto.FLOAT, [1, 3, 4]), v("x1", TensorProto.FLOAT, [1, 3, 2])],
                              [v(o, TensorProto.FLOAT, None) for o in ("s0", "y1", "y2", "y3")], [sizes])
    model = make_model(graph, [helper.make_opsetid("", 17)])
    shapes = {"x0": (1, 3, 4), "x1": (1, 3, 2), "c": (1, 3, 6), "s0": (1, 1, 6), "s1": (1, 2, 6), "y1": (1, 2, 6),
              "y2": (1, 3, 6), "y3": (1, 6, 3)}
    infos = {n: TensorInfo(n, TensorProto.FLOAT, s) for n, s in shapes.items()}
    hoisted, added = hoist_concats(model, infos)
    producers = {o: n for n in hoisted.graph.node for o in n.output}
    assert producers["y1"].op_type == "Concat" and list(producers["y1"].input) == ["y1::part0", "y1::part1"]
    assert producers["y1::part1"].op_type == "Sigmoid" and producers["y2"].op_type == "Concat"
    assert added["y1::part1"].shape == (1, 2, 2) and added["s0::part0"].shape == (1, 1, 4)
    rng = np.random.default_rng(0)
    feed = {"x0": rng.normal(size=(1, 3, 4)).astype(np.float32), "x1": rng.normal(size=(1, 3, 2)).astype(np.float32)}
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
           for m in (model, hoisted)]
    for a, b in zip(*run, strict=True):
        np.testing.assert_array_equal(a, b)
    assert hoist_concats(hoisted, {**infos, **added})[0] is hoisted  # nothing left to move


def _levels_model(path: Path) -> Path:
    """Two levels (4x4 and 2x2 maps, 12 channels each) flattened and concatenated along the
    predictions (16 + 4), split into a 2x4-bin box part (Softmax, expected bin) and 4 class logits
    (Sigmoid), concatenated along channels: YOLOv8's decoder in small."""
    rng = np.random.default_rng(2)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.4, (12, 8, 3, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.normal(0, 0.4, (12, 8, 3, 3)).astype(np.float32), "w3"),
        numpy_helper.from_array(np.array([0, 12, -1], np.int64), "flat"),
        numpy_helper.from_array(np.array([8, 4], np.int64), "parts"),
        numpy_helper.from_array(np.array([0, 2, 4, 20], np.int64), "bins_shape"),
        numpy_helper.from_array(np.arange(4, dtype=np.float32).reshape(1, 1, 4, 1), "bins"),
        numpy_helper.from_array(np.array([2], np.int64), "axis2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["feat_pre"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["feat_pre"], ["feat"]),
        helper.make_node("MaxPool", ["feat"], ["feat2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["feat", "w2"], ["p3"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["feat2", "w3"], ["p4"], pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["p3", "flat"], ["r3"]),
        helper.make_node("Reshape", ["p4", "flat"], ["r4"]),
        helper.make_node("Concat", ["r3", "r4"], ["raw"], axis=2),
        helper.make_node("Split", ["raw", "parts"], ["dist", "logits"], axis=1),
        helper.make_node("Reshape", ["dist", "bins_shape"], ["dist4"]),
        helper.make_node("Softmax", ["dist4"], ["prob4"], axis=2),
        helper.make_node("Mul", ["prob4", "bins"], ["weighted"]),
        helper.make_node("ReduceSum", ["weighted", "axis2"], ["box"], keepdims=0),
        helper.make_node("Sigmoid", ["logits"], ["cls"]),
        helper.make_node("Concat", ["box", "cls"], ["out"], axis=1),
    ]
    graph = helper.make_graph(nodes, "levels", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 6, 20])], inits)
    onnx.save(make_model(graph, [helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize(("entries", "seeded"), [
    ([(3, 5, 1.0)], ("cls::part0",)),  # a class score on the 4x4 level: only that level's Sigmoid
    ([(2, 17, 1.0)], ("cls::part1",)),  # on the 2x2 level
    ([(4, 2, 1.0), (5, 19, 0.5)], ("cls",)),  # both levels: the Sigmoid's whole output
    ([(0, 18, 1.0)], ("box",)),  # a box coordinate: the decoder, over both levels
])
def test_seeds_reach_one_levels_part_after_hoisting(tmp_path: Path, entries: list, seeded: tuple) -> None:
    model = onnxcam.load(_levels_model(tmp_path / "levels.onnx"), device="cpu")
    model.gradient_engine.local_crops = False
    x = np.random.default_rng(3).normal(size=(2, 3, 4, 4)).astype(np.float32)
    target = _Element(entries)
    cut = ("feat", "feat2")  # feat2 = MaxPool(feat) lies in the head: the engine cuts at feat alone
    got = model.gradients_at(x, list(cut), [target, target]).gradients
    split = model.split(model.frontier(cut))
    built = build_gradient_model(split.head, list(cut), ["out"])
    sess = ort.InferenceSession(built.model.SerializeToString(), providers=["CPUExecutionProvider"])
    feats, out = model.run_body(x, model.frontier(cut))
    feed = {c: feats[c] for c in split.head_inputs}
    feed[built.seed_inputs["out"]] = np.stack([target.output_gradient(o) for o in out[0]])
    ref = sess.run([built.grad_outputs[c] for c in cut], feed)
    for c, r in zip(cut, ref, strict=True):
        np.testing.assert_allclose(got[c], r, rtol=0, atol=1e-6 * float(np.abs(r).max()) + 1e-12)
    assert max(float(np.abs(r).max()) for r in ref) > 0
    assert [k[2] for k in model.gradient_engine._graphs][-1] == seeded
