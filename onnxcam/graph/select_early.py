"""Compute only the rows a constant selection keeps: move ``Gather`` up through row-wise ops.

A transformer classifier reads one token: timm's ``x[:, 0]`` exports as ``Gather(axis=1, indices=0)``
after the last block and the final LayerNorm, so the last block's MLP, attention projection and
queries run on every token and all but one row is thrown away. Selecting first is the same function
for every op that treats the selected axis as independent rows (element-wise ops, MatMul's row or
batch axes, a LayerNorm or Softmax over other axes, Transpose / Reshape / Squeeze that carry the axis
through): ``select(op(x)) == op(select(x))``. The pass repeats that rewrite while it applies, so the
selection stops at the first tensor something else reads in full (the keys and values of the last
attention, a residual stream that is a graph output or a protected layer).

ViT-S/16 at 224: the last block shrinks to its LayerNorm, the key/value projection and one query row,
about 70% of that block saved in the forward, and more in a gradient graph of the head.

Exact up to float summation order (a MatMul over fewer rows may block its sums differently). A pass
in the onnx-graphsurgeon manner: a function from a model to a new model, the caller's object never
edited; tensors named in ``keep``, graph inputs and graph outputs keep their names and values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcam.graph.const_fold import constant_value
from onnxcam.graph.protos import opset_version
from onnxcam.graph.tensor_info import Dim, TensorInfo
from onnxcam.graph.toposort import ancestors, topological_order

Shape = tuple[Dim, ...]

# Ops whose output element depends only on the input elements at the same (broadcast) position.
ELEMENTWISE = frozenset({
    "Abs", "Acos", "Acosh", "Add", "And", "Asin", "Asinh", "Atan", "Atanh", "BitShift", "Cast", "Ceil", "Celu",
    "Clip", "Cos", "Cosh", "Div", "Elu", "Equal", "Erf", "Exp", "Floor", "Gelu", "Greater", "GreaterOrEqual",
    "HardSigmoid", "HardSwish", "Identity", "IsInf", "IsNaN", "LeakyRelu", "Less", "LessOrEqual", "Log", "Max",
    "Mean", "Min", "Mish", "Mod", "Mul", "Neg", "Not", "Or", "Pow", "PRelu", "Reciprocal", "Relu", "Round",
    "Selu", "Sigmoid", "Sign", "Sin", "Sinh", "Softplus", "Softsign", "Sqrt", "Sub", "Sum", "Tan", "Tanh",
    "ThresholdedRelu", "Where", "Xor",
})  # fmt: skip
REDUCTIONS = frozenset({
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd",
    "ReduceSum", "ReduceSumSquare",
})  # fmt: skip
# The opset from which each reduction takes its axes as an input instead of an attribute.
AXES_INPUT_SINCE = {op: (13 if op == "ReduceSum" else 18) for op in REDUCTIONS}


@dataclass(frozen=True)
class Route:
    """How a selection of an op's output along one axis is made on its inputs: the axis of each input
    to select along (None: that input is used whole) and an optional edit of the rebuilt node."""

    axes: tuple[int | None, ...]
    edit: Callable[[onnx.NodeProto, int], list[onnx.NodeProto]] | None = None


class _Graph:
    """The mutable state of one run of the pass: nodes, constants, shapes and fresh names."""

    def __init__(self, model: onnx.ModelProto, infos: Mapping[str, TensorInfo], keep: Iterable[str]) -> None:
        g = model.graph
        self.opset = opset_version(model)
        self.nodes: list[onnx.NodeProto] = list(g.node)
        self.initializers: dict[str, onnx.TensorProto] = {i.name: i for i in g.initializer}
        self.added: list[onnx.TensorProto] = []
        self.infos = infos
        self.protected = {o.name for o in g.output} | {i.name for i in g.input} | set(keep)
        self.constants: dict[str, np.ndarray] = {}
        for node in self.nodes:
            value = constant_value(node) if node.op_type == "Constant" else None
            if value is not None:
                self.constants[node.output[0]] = value
        self._names = {o for n in self.nodes for o in n.output} | set(self.initializers) | {i.name for i in g.input}
        self._count = 0

    def fresh(self, base: str) -> str:
        while True:
            self._count += 1
            name = f"{base}/rows{self._count}"
            if name not in self._names:
                self._names.add(name)
                return name

    def value(self, name: str) -> np.ndarray | None:
        if name in self.constants:
            return self.constants[name]
        init = self.initializers.get(name)
        return None if init is None else numpy_helper.to_array(init)

    def shape(self, name: str) -> Shape | None:
        init = self.initializers.get(name)
        if init is not None:
            return tuple(int(d) for d in init.dims)
        if name in self.constants:
            return tuple(int(d) for d in self.constants[name].shape)
        info = self.infos.get(name)
        return None if info is None else info.shape

    def int_const(self, base: str, values: Iterable[int]) -> str:
        name = self.fresh(base)
        value = np.asarray(list(values), dtype=np.int64)
        self.constants[name] = value
        self.added.append(numpy_helper.from_array(value, name))
        return name


def _ints(node: onnx.NodeProto, name: str) -> list[int] | None:
    for a in node.attribute:
        if a.name == name:
            return list(a.ints)
    return None


def _int(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def _same_dim(d: Dim, n: int) -> bool:
    return isinstance(d, int) and d == n


def _broadcast(g: _Graph, node: onnx.NodeProto, axis: int, out: Shape) -> Route | None:
    """Inputs broadcast to the output: select each along its aligned axis unless it is 1 (or absent) there."""
    n = out[axis]
    axes: list[int | None] = []
    for name in node.input:
        if not name:
            axes.append(None)
            continue
        shape = g.shape(name)
        if shape is None:
            return None
        aligned = axis - (len(out) - len(shape))
        if aligned < 0 or shape[aligned] == 1:
            axes.append(None)
        elif _same_dim(shape[aligned], n):  # type: ignore[arg-type]
            axes.append(aligned)
        else:
            return None
    return Route(tuple(axes))


def _matmul(g: _Graph, node: onnx.NodeProto, axis: int, out: Shape) -> Route | None:
    a, b = (g.shape(x) for x in node.input)
    if a is None or b is None or len(a) < 2 or len(b) < 2:
        return None
    rank = len(out)
    if axis == rank - 2:
        return Route((len(a) - 2, None))
    if axis == rank - 1:
        return Route((None, len(b) - 1))
    return _broadcast(g, node, axis, out)  # a batch axis: broadcast like an element-wise op


def _gemm(g: _Graph, node: onnx.NodeProto, axis: int, out: Shape) -> Route | None:
    c: int | None = None
    if len(node.input) > 2 and node.input[2]:
        shape = g.shape(node.input[2])
        if shape is None:
            return None
        aligned = axis - (2 - len(shape))
        if aligned >= 0 and shape[aligned] != 1:
            if not _same_dim(shape[aligned], out[axis]):  # type: ignore[arg-type]
                return None
            c = aligned
    if axis == 0:
        return Route((1 if _int(node, "transA", 0) else 0, None, c)[: len(node.input)])
    return Route((None, 0 if _int(node, "transB", 0) else 1, c)[: len(node.input)])


def _layernorm(g: _Graph, node: onnx.NodeProto, axis: int, out: Shape) -> Route | None:
    first = _int(node, "axis", -1) % len(out)
    if axis >= first:
        return None
    return Route((axis,) + (None,) * (len(node.input) - 1))


def _softmax(g: _Graph, node: onnx.NodeProto, axis: int, out: Shape) -> Route | None:
    if g.opset >= 13:
        rows = axis != _int(node, "axis", -1) % len(out)
    else:  # before opset 13 the input is seen as 2-D [prod(:axis), prod(axis:)]
        rows = axis < _int(node, "axis", 1) % len(out)
    return Route((axis,)) if rows else None


def _transpose(g: _Graph, node: onnx.NodeProto, axis: int, out: Shape) -> Route | None:
    perm = _ints(node, "perm") or list(reversed(range(len(out))))
    return Route((perm[axis],))


def _product(dims: Iterable[Dim]) -> tuple[int, tuple[str, ...]] | None:
    """A product of dims as (integer part, sorted symbols), or None if a dim is unknown."""
    value, symbols = 1, []
    for d in dims:
        if isinstance(d, int):
            value *= d
        elif isinstance(d, str):
            symbols.append(d)
        else:
            return None
    return value, tuple(sorted(symbols))


def _reshape(g: _Graph, node: onnx.NodeProto, axis: int, out: Shape) -> Route | None:
    src = g.shape(node.input[0])
    if src is None or _int(node, "allowzero", 0):
        return None
    n = out[axis]
    before = _product(out[:axis])
    # The selected axis must pass through whole: same size, the same number of elements before it.
    found = [b for b in range(len(src)) if _same_dim(src[b], n) and _product(src[:b]) == before]  # type: ignore[arg-type]
    if before is None or not found:
        return None
    b = found[0]
    shape = g.value(node.input[1])
    if shape is not None:
        shape = shape.astype(np.int64).reshape(-1)
        # A 0 copies the input's dim at its own position; at the selected input axis it would copy the
        # new (smaller) size into a place that kept the full one.
        if len(shape) != len(out) or any(int(v) == 0 and j == b and j != axis for j, v in enumerate(shape)):
            return None
    elif b != axis and b < len(out) and out[b] == n:
        return None  # a computed shape might hold such a 0: not provable here

    def edit(new: onnx.NodeProto, k: int) -> list[onnx.NodeProto]:
        if shape is not None:
            fixed = shape.copy()
            fixed[axis] = k
            new.input[1] = g.int_const(node.input[1], fixed.tolist())
            return []
        # shape * mask + k at the selected position: the other entries (0, -1, computed) unchanged.
        mask = g.int_const(node.input[1], [0 if j == axis else 1 for j in range(len(out))])
        size = g.int_const(node.input[1], [k if j == axis else 0 for j in range(len(out))])
        kept, made = g.fresh(node.input[1]), g.fresh(node.input[1])
        new.input[1] = made
        return [helper.make_node("Mul", [node.input[1], mask], [kept]),
                helper.make_node("Add", [kept, size], [made])]

    return Route((b, None), edit)


def _axes_of(g: _Graph, node: onnx.NodeProto, since: int) -> list[int] | None:
    if g.opset >= since:
        if len(node.input) < 2 or not node.input[1]:
            return None
        value = g.value(node.input[1])
        return None if value is None else [int(v) for v in value.reshape(-1)]
    return _ints(node, "axes")


def _squeeze(g: _Graph, node: onnx.NodeProto, axis: int, out: Shape) -> Route | None:
    src = g.shape(node.input[0])
    if src is None:
        return None
    axes = _axes_of(g, node, 13)
    if axes is None:  # squeeze every 1: which dims those are must be known
        if any(not isinstance(d, int) for d in src):
            return None
        axes = [j for j, d in enumerate(src) if d == 1]
    squeezed = {a % len(src) for a in axes}
    kept = [j for j in range(len(src)) if j not in squeezed]
    return Route((kept[axis],) + (None,) * (len(node.input) - 1))


def _unsqueeze(g: _Graph, node: onnx.NodeProto, axis: int, out: Shape) -> Route | None:
    axes = _axes_of(g, node, 13)
    if axes is None:
        return None
    inserted = {a % len(out) for a in axes}
    if axis in inserted:
        return None
    return Route((axis - sum(1 for a in inserted if a < axis),) + (None,) * (len(node.input) - 1))


def _reduce(g: _Graph, node: onnx.NodeProto, axis: int, out: Shape) -> Route | None:
    src = g.shape(node.input[0])
    axes = _axes_of(g, node, AXES_INPUT_SINCE[node.op_type])
    if src is None or not axes:  # no axes: every axis is reduced
        return None
    reduced = {a % len(src) for a in axes}
    kept = list(range(len(src))) if _int(node, "keepdims", 1) else [j for j in range(len(src)) if j not in reduced]
    if kept[axis] in reduced:
        return None
    return Route((kept[axis],) + (None,) * (len(node.input) - 1))


def _concat(g: _Graph, node: onnx.NodeProto, axis: int, out: Shape) -> Route | None:
    if _int(node, "axis", 0) % len(out) == axis:
        return None
    return Route((axis,) * len(node.input))


RULES: dict[str, Callable[[_Graph, onnx.NodeProto, int, Shape], Route | None]] = {
    **{op: _broadcast for op in ELEMENTWISE},
    **{op: _reduce for op in REDUCTIONS},
    "MatMul": _matmul, "Gemm": _gemm, "LayerNormalization": _layernorm, "Softmax": _softmax,
    "LogSoftmax": _softmax, "Hardmax": _softmax, "Transpose": _transpose, "Reshape": _reshape,
    "Squeeze": _squeeze, "Unsqueeze": _unsqueeze, "Concat": _concat,
}  # fmt: skip


def _selection(g: _Graph, node: onnx.NodeProto) -> tuple[int, np.ndarray] | None:
    """(axis, 1-D row indices) of a node that selects rows by constants along one axis (a Gather with
    1-D indices, a Slice of one axis with step 1), else None."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in ("Gather", "Slice") or not node.input[0]:
        return None
    shape = g.shape(node.input[0])
    if shape is None:
        return None
    if node.op_type == "Slice":
        return _slice_rows(g, node, shape)
    idx = g.value(node.input[1])
    if idx is None or idx.ndim != 1:
        return None
    axis = _int(node, "axis", 0) % len(shape)
    n = shape[axis]
    if not isinstance(n, int) or idx.size == 0 or np.any(idx < -n) or np.any(idx >= n):
        return None
    return axis, idx.astype(np.int64) % n


def _slice_rows(g: _Graph, node: onnx.NodeProto, shape: Shape) -> tuple[int, np.ndarray] | None:
    if g.opset >= 10:
        given = [k < len(node.input) and bool(node.input[k]) for k in range(5)]
        starts, ends, axes, steps = (g.value(node.input[k]) if given[k] else None for k in range(1, 5))
        if starts is None or ends is None or (given[3] and axes is None) or (given[4] and steps is None):
            return None
    else:
        starts, ends, axes = (_ints(node, "starts"), _ints(node, "ends"), _ints(node, "axes"))  # type: ignore[assignment]
        steps = None
        if starts is None or ends is None:
            return None
    starts, ends = np.asarray(starts).reshape(-1), np.asarray(ends).reshape(-1)
    axes = np.arange(starts.size) if axes is None else np.asarray(axes).reshape(-1)
    if starts.size != 1 or (steps is not None and int(np.asarray(steps).reshape(-1)[0]) != 1):
        return None
    axis = int(axes[0]) % len(shape)
    n = shape[axis]
    if not isinstance(n, int):
        return None
    rows = np.arange(n)[int(starts[0]):int(ends[0])]
    return (axis, rows.astype(np.int64)) if rows.size else None


def _pick(g: _Graph, name: str, rows: np.ndarray, axis: int, output: str, label: str = "") -> onnx.NodeProto:
    """A node taking ``rows`` of ``name`` along ``axis``: a Slice where they are one run (its gradient is a
    Pad; a Gather's is a scatter through transposes), else a Gather."""
    start = int(rows[0])
    if not np.array_equal(rows, np.arange(start, start + rows.size)):
        return helper.make_node("Gather", [name, g.int_const(name, rows.tolist())], [output], name=label, axis=axis)
    if g.opset < 10:
        return helper.make_node("Slice", [name], [output], name=label, starts=[start], ends=[start + rows.size],
                                axes=[axis])
    bounds = [g.int_const(name, [v]) for v in (start, start + rows.size, axis)]
    return helper.make_node("Slice", [name, *bounds], [output], name=label)


def _canonical_scalar_gathers(g: _Graph) -> None:
    """``Gather(x, c)`` with a scalar ``c`` (which drops the axis) as ``Squeeze(Slice(x, c, c + 1))``, so the
    selection keeps its axis and can move up through ops that need it; only where the producer of
    ``x`` is an op the pass can move through."""
    producer = {o: n for n in g.nodes for o in n.output if o}
    out: list[onnx.NodeProto] = []
    for node in g.nodes:
        idx = g.value(node.input[1]) if node.op_type == "Gather" and node.domain in ("", "ai.onnx") else None
        shape = g.shape(node.input[0]) if idx is not None else None
        src = producer.get(node.input[0]) if idx is not None else None
        if (idx is None or idx.ndim != 0 or shape is None or len(shape) < 2 or src is None
                or src.op_type not in RULES or node.input[0] in g.protected):
            out.append(node)
            continue
        axis = _int(node, "axis", 0) % len(shape)
        kept = g.fresh(node.output[0])
        n = shape[axis]
        if not isinstance(n, int) or not -n <= int(idx) < n:
            out.append(node)
            continue
        out.append(_pick(g, node.input[0], np.array([int(idx) % n]), axis, kept, node.name))
        if g.opset >= 13:
            out.append(helper.make_node("Squeeze", [kept, g.int_const(node.input[1], [axis])], list(node.output)))
        else:
            out.append(helper.make_node("Squeeze", [kept], list(node.output), axes=[axis]))
    g.nodes = out


def _push_once(g: _Graph) -> bool:
    """Move one group of selections (every reader of one tensor, all selecting along one axis) above
    the tensor's producer. Returns whether anything moved."""
    producer = {o: k for k, n in enumerate(g.nodes) for o in n.output if o}
    readers: dict[str, list[int]] = {}
    for k, n in enumerate(g.nodes):
        for name in set(n.input):
            if name:
                readers.setdefault(name, []).append(k)
    selected = dict.fromkeys(n.input[0] for n in g.nodes if n.op_type in ("Gather", "Slice") and n.input)
    for tensor in selected:
        users = readers[tensor]
        if tensor in g.protected or tensor not in producer:
            continue
        picks = [_selection(g, g.nodes[k]) if g.nodes[k].input[0] == tensor else None for k in users]
        if any(p is None for p in picks) or len({p[0] for p in picks if p is not None}) != 1:
            continue
        axis = picks[0][0]  # type: ignore[index]
        out = g.shape(tensor)
        src = g.nodes[producer[tensor]]
        rule = RULES.get(src.op_type) if src.domain in ("", "ai.onnx") else None
        if out is None or rule is None or list(src.output).index(tensor) != 0:
            continue
        if any(o and (o in g.protected or o in readers) for o in src.output[1:]):
            continue  # a second output (LayerNorm's mean, ...) is read: the producer must stay whole
        rows = np.unique(np.concatenate([p[1] for p in picks if p is not None]))
        if not isinstance(out[axis], int) or rows.size >= out[axis]:  # type: ignore[operator]
            continue  # keeps every row: nothing to save
        route = rule(g, src, axis, out)
        if route is None:
            continue
        _rewrite(g, src, tensor, route, rows, [g.nodes[k] for k in users], axis)
        return True
    return False


def _rewrite(g: _Graph, src: onnx.NodeProto, tensor: str, route: Route, rows: np.ndarray,
             users: list[onnx.NodeProto], axis: int) -> None:
    added: list[onnx.NodeProto] = []
    new = onnx.NodeProto()
    new.CopyFrom(src)
    del new.output[:]
    for j, a in enumerate(route.axes):
        if a is None:
            continue
        name = src.input[j]
        init = g.initializers.get(name)
        picked = g.fresh(name)
        if init is not None:
            g.added.append(numpy_helper.from_array(np.take(numpy_helper.to_array(init), rows, axis=a), picked))
        else:
            added.append(_pick(g, name, rows, a, picked))
        new.input[j] = picked
    if route.edit is not None:
        added += route.edit(new, int(rows.size))
    whole = len(users) == 1 and np.array_equal(_selection(g, users[0])[1], rows)  # type: ignore[index]
    result = users[0].output[0] if whole else g.fresh(tensor)
    new.output.append(result)
    added.append(new)
    if not whole:  # each reader now picks its rows out of the kept ones
        position = {int(r): p for p, r in enumerate(rows)}
        for user in users:
            picked_rows = _selection(g, user)[1]  # type: ignore[index]
            added.append(_pick(g, result, np.array([position[int(r)] for r in picked_rows]), axis,
                               user.output[0], user.name))
    drop = {id(src)} | {id(u) for u in users}
    at = min(k for k, n in enumerate(g.nodes) if id(n) in drop)
    rest = [n for n in g.nodes if id(n) not in drop]
    g.nodes = rest[:at] + added + rest[at:]


def select_early(
    model: onnx.ModelProto, infos: Mapping[str, TensorInfo], keep: Iterable[str] = (), max_steps: int = 10_000
) -> tuple[onnx.ModelProto, int]:
    """``model`` with its constant row selections (``Gather`` along a non-reduced axis) moved up through
    row-wise ops as far as they go, and the number of ops moved past (0: ``model`` itself comes back).

    ``infos``: shapes of the model's tensors by name (a tensor without one stops the selection).
    ``keep``: tensors that must keep their full value (layers read from the graph), besides its inputs
    and outputs.
    """
    g = _Graph(model, infos, keep)
    _canonical_scalar_gathers(g)
    moved = 0
    while moved < max_steps and _push_once(g):
        moved += 1
    if not moved:
        return model, 0
    return _assemble(model, g), moved


def _assemble(model: onnx.ModelProto, g: _Graph) -> onnx.ModelProto:
    """A copy of ``model`` with the pass's nodes, less those no output needs (one copy of the weights:
    what is dropped is deleted in place)."""
    outputs = [o.name for o in model.graph.output]
    kept, needed = ancestors(g.nodes, outputs)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    del graph.node[:]
    graph.node.extend(topological_order([g.nodes[k] for k in sorted(kept)]))
    for field in (graph.initializer, graph.value_info):
        for k in reversed(range(len(field))):
            if field[k].name not in needed:
                del field[k]
    graph.initializer.extend(t for t in g.added if t.name in needed)
    return copy


__all__ = ["select_early"]
