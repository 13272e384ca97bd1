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


def _dims(infos: Mapping[str, TensorInfo], name: str) -> list[int] | None:
    info = infos.get(name)
    if info is None or info.shape is None or not all(isinstance(d, int) for d in info.shape[1:]):
        return None
    return [1] + [int(d) for d in info.shape[1:]]  # type: ignore[arg-type]


def node_macs(node: onnx.NodeProto, infos: Mapping[str, TensorInfo]) -> int:
    """Multiply-accumulates of ``node`` for one image; 0 for ops that are not matrix work or have
    unknown shapes (they are memory-bound and cheap next to convolutions and products)."""
    op = node.op_type
    if op in ("Conv", "ConvTranspose", "QLinearConv", "ConvInteger"):
        w = infos.get(node.input[3 if op == "QLinearConv" else 1])
        out = _dims(infos, node.output[0])
        inp = _dims(infos, node.input[0])
        if w is None or w.shape is None or out is None or inp is None:
            return 0
        kernel = int(np.prod([int(d) for d in w.shape[2:] if isinstance(d, int)]))
        if op == "ConvTranspose":
            return int(np.prod(inp)) * int(w.shape[1] or 0) * kernel  # type: ignore[arg-type]
        per_output = int(w.shape[1] or 0) * kernel  # type: ignore[arg-type]  # in-channels per group x kernel
        return int(np.prod(out)) * per_output
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
