"""Move element-wise ops and Splits on another axis above a Concat: ``f(Concat(parts))`` becomes
``Concat(f(part) for part in parts)``.

A YOLOv8 decoder concatenates its three levels' predictions along the anchor axis, splits the
result along channels (box distributions, class logits) and applies a Sigmoid to the classes. A class
score's seed reaches one anchor, so one level, but a gradient graph seeded at the Sigmoid's output
runs it over all 8400 anchors. With the Split and the Sigmoid applied per level first, the Sigmoid's
output is itself a Concat of per-level parts, and ``onnxcam.graph.seed_parts`` seeds only the part
the detection's anchor is in (a stride-32 detection: 400 anchors instead of 8400).

The rewrite computes the same values (the ops act position-wise along the Concat's axis); the
rewritten tensors keep their names, each part gets ``<name>::part<i>``, the same in every graph the
pass is applied to (the engine builds gradient graphs from several copies of one head).
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx
from onnx import helper

from onnxcam.graph.tensor_info import TensorInfo

# Single-input ops that act on each element alone (their attributes are per-element constants).
_ELEMENTWISE = frozenset({
    "Abs", "Ceil", "Elu", "Erf", "Exp", "Floor", "HardSigmoid", "HardSwish", "Identity", "LeakyRelu", "Log",
    "Neg", "Reciprocal", "Relu", "Round", "Selu", "Sigmoid", "Sign", "Softplus", "Softsign", "Sqrt", "Tanh",
})


def part_name(name: str, i: int) -> str:
    return f"{name}::part{i}"


def hoist_concats(model: onnx.ModelProto, infos: Mapping[str, TensorInfo]) -> tuple[onnx.ModelProto,
                                                                                     dict[str, TensorInfo]]:
    """``model`` with element-wise ops and Splits along another axis moved above the Concats they
    read (repeatedly: a Sigmoid after a Split after a Concat ends above it), and the infos of the
    new part tensors. ``infos`` must give the rank of each Concat's output and the extent of each
    Concat input along its axis; a Concat without them is left alone. Returns ``model`` itself
    where nothing moves."""
    graph = model.graph
    nodes = list(graph.node)
    new_infos: dict[str, TensorInfo] = {}
    known = dict(infos)
    changed = True
    moved = False
    while changed:
        changed = False
        consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in nodes:
            for name in node.input:
                consumers.setdefault(name, []).append(node)
        for concat in nodes:
            if concat.op_type != "Concat" or concat.domain not in ("", "ai.onnx"):
                continue
            axis = _axis(concat, known)
            if axis is None:
                continue
            for user in consumers.get(concat.output[0], []):
                if _hoistable(user, axis, known):
                    nodes = _rewrite(nodes, concat, user, axis, known, new_infos)
                    changed = moved = True
                    break
            if changed:
                break
    if not moved:
        return model, {}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out, new_infos


def _axis(concat: onnx.NodeProto, infos: Mapping[str, TensorInfo]) -> int | None:
    info = infos.get(concat.output[0])
    axis = next((a.i for a in concat.attribute if a.name == "axis"), None)
    if info is None or info.shape is None or axis is None:
        return None
    axis = axis + len(info.shape) if axis < 0 else axis
    for name in concat.input:
        part = infos.get(name)
        if part is None or part.shape is None or len(part.shape) != len(info.shape):
            return None
        if not isinstance(part.shape[axis], int):
            return None
    return axis if axis > 0 else None  # the batch axis: rows are not parts


def _hoistable(user: onnx.NodeProto, axis: int, infos: Mapping[str, TensorInfo]) -> bool:
    if user.domain not in ("", "ai.onnx"):
        return False
    if user.op_type in _ELEMENTWISE:
        return len(user.input) == 1
    if user.op_type != "Split":
        return False
    info = infos.get(user.input[0])
    if info is None or info.shape is None:
        return False
    split_axis = next((a.i for a in user.attribute if a.name == "axis"), 0)
    split_axis = split_axis + len(info.shape) if split_axis < 0 else split_axis
    # Equal splits without sizes (num_outputs) divide each part alike only along another axis too.
    return split_axis != axis and all(o for o in user.output)


def _rewrite(nodes: list[onnx.NodeProto], concat: onnx.NodeProto, user: onnx.NodeProto, axis: int,
             infos: dict[str, TensorInfo], new_infos: dict[str, TensorInfo]) -> list[onnx.NodeProto]:
    """``nodes`` with ``user`` (reading ``concat``'s output) applied per part, and its outputs made
    Concats of the per-part outputs."""
    parts = list(concat.input)
    added: list[onnx.NodeProto] = []
    for i, part in enumerate(parts):
        copy = onnx.NodeProto()
        copy.CopyFrom(user)
        copy.input[0] = part
        del copy.output[:]
        copy.output.extend(part_name(o, i) for o in user.output)
        copy.name = part_name(user.name or user.output[0], i)
        added.append(copy)
        extent = infos[part].shape[axis]  # type: ignore[index]
        for o in user.output:
            whole = infos.get(o)
            if whole is not None and whole.shape is not None:
                shape = list(whole.shape)
                shape[axis] = extent
                info = TensorInfo(part_name(o, i), whole.elem_type, tuple(shape))
                infos[info.name] = new_infos[info.name] = info
    for o in user.output:
        added.append(helper.make_node("Concat", [part_name(o, i) for i in range(len(parts))], [o], axis=axis,
                                      name=f"{o}::concat"))
    index = next(k for k, node in enumerate(nodes) if node is user)
    return nodes[:index] + added + nodes[index + 1:]


__all__ = ["hoist_concats", "part_name"]
