"""Read structure from a graph: the GAP -> linear classifier after a layer (for CAM), and the
bias-carrying convolutions (for FullGrad). Returns numpy arrays; methods never see protobufs."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcam.errors import HeadStructureError

_PASS_THROUGH = {"Flatten", "Reshape", "Squeeze", "Identity", "Dropout", "Cast"}


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            if name:
                out.setdefault(name, []).append(node)
    return out


def _constant(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    for init in graph.initializer:
        if init.name == name:
            return np.asarray(numpy_helper.to_array(init))
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    return np.asarray(numpy_helper.to_array(attr.t))
    return None


def _is_spatial_mean(node: onnx.NodeProto, graph: onnx.GraphProto) -> bool:
    if node.op_type == "GlobalAveragePool":
        return True
    if node.op_type == "ReduceMean":
        axes: list[int] | None = None
        for attr in node.attribute:
            if attr.name == "axes":
                axes = list(attr.ints)
        if axes is None and len(node.input) > 1:
            arr = _constant(graph, node.input[1])
            axes = None if arr is None else [int(a) for a in arr.reshape(-1)]
        return axes is not None and sorted(a % 4 for a in axes) == [2, 3]
    return False


def linear_head_weights(model: onnx.ModelProto, layer: str, output: str, model_name: str = "model") -> np.ndarray:
    """The ``(K, C)`` weights of the linear layer fed by global average pooling of ``layer``.

    Accepts GlobalAveragePool or ReduceMean over (h, w), then reshapes, then Gemm or MatMul
    (optionally + Add), ending in ``output``. Anything else raises ``HeadStructureError``.
    """
    graph = model.graph
    consumers = _consumers(graph)

    def fail(why: str) -> HeadStructureError:
        return HeadStructureError(
            f"CAM needs layer -> global average pool -> linear -> output, but after {layer!r} in {model_name} {why}; "
            "use GradCAM (it equals CAM on such heads and works on any head)"
        )

    # Shape/Size read no values (``x.view(x.size(0), -1)`` adds them), so they do not count as users.
    def value_users(name: str) -> list[onnx.NodeProto]:
        return [u for u in consumers.get(name, []) if u.op_type not in ("Shape", "Size")]

    users = value_users(layer)
    if len(users) != 1 or not _is_spatial_mean(users[0], graph):
        raise fail("the layer is not (only) global-average-pooled")
    current = users[0].output[0]
    while True:
        users = value_users(current)
        if len(users) != 1:
            raise fail(f"tensor {current!r} feeds {len(users)} nodes")
        node = users[0]
        if node.op_type in _PASS_THROUGH:
            current = node.output[0]
            continue
        break
    if node.op_type == "Gemm":
        w = _constant(graph, node.input[1])
        if w is None:
            raise fail("the Gemm weight is not a constant")
        trans_b = any(a.name == "transB" and a.i == 1 for a in node.attribute)
        alpha = next((a.f for a in node.attribute if a.name == "alpha"), 1.0)
        weights = (w if trans_b else w.T) * alpha
        end = node.output[0]
    elif node.op_type == "MatMul":
        w = _constant(graph, node.input[1])
        if w is None or w.ndim != 2:
            raise fail("the MatMul weight is not a constant matrix")
        weights = w.T
        end = node.output[0]
        nxt = consumers.get(end, [])
        if len(nxt) == 1 and nxt[0].op_type == "Add":
            end = nxt[0].output[0]
    else:
        raise fail(f"the pooled features go to {node.op_type!r}, not a linear layer")
    if end != output:
        raise fail(f"the linear layer's result {end!r} is not the model output {output!r}")
    return np.asarray(weights, dtype=np.float32)


def bias_layers(model: onnx.ModelProto, dynamic: Mapping[str, object]) -> list[tuple[str, np.ndarray]]:
    """``(output tensor, bias (C,))`` for every Conv with a bias and every BatchNormalization whose
    output is a 4-D tensor listed in ``dynamic`` (the candidate layers), in graph order.

    A BatchNormalization's effective bias is ``beta - mean * scale / sqrt(var + eps)``, the same
    folding exporters apply, so folded and unfolded exports give the same FullGrad terms.
    """
    graph = model.graph
    found: list[tuple[str, np.ndarray]] = []
    for node in graph.node:
        out = node.output[0] if node.output else ""
        if out not in dynamic:
            continue
        if node.op_type == "Conv" and len(node.input) > 2 and node.input[2]:
            b = _constant(graph, node.input[2])
            if b is not None:
                found.append((out, b.astype(np.float32).reshape(-1)))
        elif node.op_type == "BatchNormalization":
            scale, beta, mean, var = (_constant(graph, n) for n in node.input[1:5])
            if scale is None or beta is None or mean is None or var is None:
                continue
            eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
            found.append((out, (beta - mean * scale / np.sqrt(var + eps)).astype(np.float32)))
    return found
