"""The explained class and the seed d(score)/d(output), computed in-graph.

As the Python path (``ClassificationTask.default_targets`` and ``ClassTarget``): the class is the
argmax of the class scores (a class map's mean over its pixels), or the ``target`` input; the seed
is its one-hot, over every pixel of a class map. The scores are the task's ``score_output``: the
logits below a final Softmax / Sigmoid, the raw score Grad-CAM is defined on.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxcam.export._graph import GraphWriter


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
