"""Multiply-accumulates per image of a graph's heavy ops: what a piece of a model costs to run.

Used to decide cheaply and deterministically whether re-using a batch-``n`` gradient graph for a
smaller batch (padding it) costs less than building another graph: that depends on how much of the
model the head is, which the convolutions and matrix products dominate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import onnx

from onnxcam.graph.shapes import TensorInfo


def _dims(infos: Mapping[str, TensorInfo], name: str, batch: bool = True) -> list[int] | None:
    """Static dims of ``name``, the first one (the batch) taken as 1 when ``batch``; None if unknown."""
    info = infos.get(name)
    if info is None or info.shape is None:
        return None
    dims = [d for d in info.shape[1:] if isinstance(d, int)] if batch else \
        [d for d in info.shape if isinstance(d, int)]
    if len(dims) != len(info.shape) - (1 if batch else 0):
        return None
    return [1, *dims] if batch else dims


def node_macs(node: onnx.NodeProto, infos: Mapping[str, TensorInfo]) -> int:
    """Multiply-accumulates of ``node`` for one image; 0 for ops that are not matrix work or have
    unknown shapes (they are memory-bound and cheap next to convolutions and products)."""
    op = node.op_type
    if op in ("Conv", "ConvTranspose", "QLinearConv", "ConvInteger"):
        w = _dims(infos, node.input[3 if op == "QLinearConv" else 1], batch=False)
        out = _dims(infos, node.output[0])
        inp = _dims(infos, node.input[0])
        if w is None or len(w) < 2 or out is None or inp is None:
            return 0
        kernel = int(np.prod(w[2:]))
        # w[1]: input channels per group (Conv) or output channels per group (ConvTranspose).
        return int(np.prod(inp if op == "ConvTranspose" else out)) * w[1] * kernel
    if op in ("Gemm", "MatMul", "QLinearMatMul", "MatMulInteger"):
        a = _dims(infos, node.input[0])
        out = _dims(infos, node.output[0])
        if a is None or out is None or len(a) < 2:
            return 0
        trans_a = any(at.name == "transA" and at.i for at in node.attribute)
        k = a[-2] if trans_a and op == "Gemm" else a[-1]
        return int(np.prod(out)) * k
    return 0


def graph_macs(nodes: Iterable[onnx.NodeProto], infos: Mapping[str, TensorInfo]) -> int:
    """Total multiply-accumulates per image of ``nodes``."""
    return sum(node_macs(node, infos) for node in nodes)


__all__ = ["graph_macs", "node_macs"]
