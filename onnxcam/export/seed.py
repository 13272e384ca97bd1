"""The explained class and the seed d(score)/d(output), computed in-graph.

As the Python path (``ClassificationTask.default_targets`` and ``ClassTarget``): the class is the
argmax of the class scores (a class map's mean over its pixels), or the ``target`` input; the seed
is its one-hot, over every pixel of a class map. A model whose output is a Softmax is explained at
the logits below it (``final_softmax``), the raw score Grad-CAM is defined on.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxcam.export._graph import GraphWriter
from onnxcam.gradients._emit import attr


def final_softmax(model: onnx.ModelProto, output: str) -> str | None:
    """The input of the Softmax that produces ``output`` over its class axis, or None.

    Only a Softmax over axis 1 (or -1 of a 2-D output) qualifies: the logits below it have the
    output's shape, so the class index and the one-hot seed carry over unchanged.
    """
    producer = next((n for n in model.graph.node if output in n.output), None)
    if producer is None or producer.op_type not in ("Softmax", "LogSoftmax") or producer.domain not in ("", "ai.onnx"):
        return None
    axis = attr(producer, "axis", -1 if _opset(model) >= 13 else 1)
    rank = _rank(model, output)
    if axis == 1 or (axis == -1 and rank == 2):
        return str(producer.input[0])
    return None


def _opset(model: onnx.ModelProto) -> int:
    from onnxcam.graph.protos import opset_version

    return opset_version(model)


def _rank(model: onnx.ModelProto, name: str) -> int | None:
    for vi in list(model.graph.output) + list(model.graph.value_info):
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            return len(vi.type.tensor_type.shape.dim)
    return None


def explained_class(w: GraphWriter, scores: str, rank: int, target_input: str | None) -> str:
    """``(N,)`` int64: the ``target`` input, else the argmax of the class scores of ``scores``."""
    if target_input is not None:
        return w.op("Cast", [target_input], to=onnx.TensorProto.INT64)
    per_class = scores if rank == 2 else w.reduce("ReduceMean", scores, list(range(2, rank)), keepdims=0)
    return w.op("ArgMax", [per_class], axis=1, keepdims=0)


def one_hot_seed(w: GraphWriter, output: str, classes: int, rank: int, category: str) -> str:
    """The seed shaped like ``output`` ``(N, K, ...)``: 1 at the class (every pixel of its map), 0 elsewhere."""
    hot = w.op("OneHot", [category, w.const(np.array([classes], np.int64)), w.const(np.array([0, 1], np.float32))],
               axis=-1)
    if rank == 2:
        return hot
    hot = w.unsqueeze(hot, list(range(2, rank)))
    return w.op("Expand", [hot, w.op("Shape", [output])])
