"""EigenCAM in ONNX ops: the first principal component of each image's activations by power
iteration (repeated squaring), oriented by onnxcam's deterministic "activation" sign rule.

``onnxcam.methods.eigen.principal_projection`` centres the pixels ``X`` (``hw x C``) and projects
them on the first right-singular vector. The projection ``X v1`` equals ``sigma1 u1`` for the top
eigenvector ``u1`` of ``X X^T`` (``hw x hw``), so the graph takes the smaller of the two Gram
matrices, squares it ``SQUARINGS`` times (the power ``2^SQUARINGS`` separates any eigengap down to
float32 resolution), each time divided by its largest entry to stay in range, and reads the eigenvector off
the column with the largest diagonal entry (never zero for the limiting ``u1 u1^T``). SVD signs are
arbitrary; the sign rule fixes it: the projection must correlate non-negatively with the channel
sum of the activations (a zero correlation: the larger extreme is made positive).
"""

from __future__ import annotations

from onnxcam.export._graph import GraphWriter

SQUARINGS = 40


def _unit(w: GraphWriter, v: str, axis: int) -> str:
    norm = w.op("Sqrt", [w.reduce("ReduceSum", w.op("Mul", [v, v]), [axis], keepdims=1)])
    return w.op("Div", [v, w.op("Max", [norm, w.f32(1e-30)])])


def _top_eigenvector(w: GraphWriter, gram: str, d: int) -> str:
    """``(N, d, 1)`` unit top eigenvector of the PSD ``(N, d, d)`` ``gram``."""
    m = gram
    for _ in range(SQUARINGS):
        # The largest entry of a PSD matrix is on its diagonal: dividing by it keeps the powers in range.
        top = w.reduce("ReduceMax", w.op("Abs", [m]), [1, 2], keepdims=1)
        m = w.op("Div", [m, w.op("Max", [top, w.f32(1e-30)])])
        m = w.op("MatMul", [m, m])
    # The identity is made in-graph (EyeLike), not stored: a d x d constant can outweigh a small model.
    eye = w.unsqueeze(w.op("EyeLike", [w.op("ConstantOfShape", [w.ints([d, d])])], dtype=1), [0])
    diag = w.reduce("ReduceSum", w.op("Mul", [m, eye]), [2], keepdims=1)  # (N, d, 1)
    column = w.op("ArgMax", [diag], axis=1, keepdims=1)  # (N, 1, 1)
    index = w.op("Expand", [column, w.op("Concat", [w.batch(m), w.ints([d, 1])], axis=0)])
    v = w.op("GatherElements", [m, index], axis=2)  # (N, d, 1): the picked column
    # One more power step with the Gram itself: what the squarings' rounding left of other components shrinks.
    v = _unit(w, v, 1)
    return _unit(w, w.op("MatMul", [gram, v]), 1)


def eigencam(w: GraphWriter, acts: str, channels: int, h: int, wd: int) -> str:
    """``(N, C, h, w)`` activations -> ``(N, h, w)`` principal projection (``methods.eigencam``, sign "activation")."""
    hw = h * wd
    pixels = w.op("Transpose", [w.op("Reshape", [acts, w.ints([0, channels, hw])])], perm=[0, 2, 1])  # (N, hw, C)
    centred = w.op("Sub", [pixels, w.reduce("ReduceMean", pixels, [1], keepdims=1)])
    centred_t = w.op("Transpose", [centred], perm=[0, 2, 1])  # (N, C, hw)
    if hw <= channels:
        gram = w.op("MatMul", [centred, centred_t])  # (N, hw, hw)
        u = _top_eigenvector(w, gram, hw)
        # X v1 = sigma1 u1, sigma1^2 = u1' X X' u1
        sigma = w.op("Sqrt", [w.op("Relu", [w.op("MatMul", [w.op("Transpose", [u], perm=[0, 2, 1]),
                                                               w.op("MatMul", [gram, u])])])])
        projection = w.op("Mul", [u, sigma])  # (N, hw, 1)
    else:
        gram = w.op("MatMul", [centred_t, centred])  # (N, C, C)
        v = _top_eigenvector(w, gram, channels)
        projection = w.op("MatMul", [centred, v])  # (N, hw, 1)
    projection = w.op("Reshape", [projection, w.ints([0, hw])])
    channel_sum = w.reduce("ReduceSum", pixels, [2], keepdims=0)  # (N, hw)
    p_c = w.op("Sub", [projection, w.reduce("ReduceMean", projection, [1], keepdims=1)])
    s_c = w.op("Sub", [channel_sum, w.reduce("ReduceMean", channel_sum, [1], keepdims=1)])
    corr = w.reduce("ReduceSum", w.op("Mul", [p_c, s_c]), [1], keepdims=1)  # (N, 1)
    low = w.op("Abs", [w.reduce("ReduceMin", projection, [1], keepdims=1)])
    high = w.op("Abs", [w.reduce("ReduceMax", projection, [1], keepdims=1)])
    zero = w.f32(0.0)
    flip = w.op("Or", [w.op("Less", [corr, zero]),
                       w.op("And", [w.op("Equal", [corr, zero]), w.op("Greater", [low, high])])])
    sign = w.op("Where", [flip, w.f32(-1.0), w.f32(1.0)])
    oriented = w.op("Mul", [projection, sign])
    return w.op("Reshape", [oriented, w.ints([0, h, wd])])
