"""Batch-agnostic gradient graphs: one graph for every batch size, from graphs built at fixed ones.

The builder works on a static head: shape inference, constant folding and the rules' own shape
arithmetic all need concrete dims, so a built graph bakes the batch ``n`` into some integer
constants (``Reshape`` targets ``[n, C*h*w]``, ``Expand`` shapes, flat sizes ``n*C``). Rather than
teaching every rule a symbolic batch, the graph is built at three batch sizes and compared:

* everything but integer constants must be identical (nodes, attributes, float constants, every
  constant's shape); a difference means the graph is not one function of the batch, and is refused;
* each integer constant element that differs must be an affine function ``a + b * n`` of the batch
  (fitted on two builds, checked exactly on the third); such a constant becomes the in-graph value
  ``a + b * N``, with ``N`` read off the first input's shape at run time;
* a constant of any dtype whose shape changes must be one batch-free value broadcast along the
  dims that change, each dim affine in the batch: a forward value folded at a fixed batch, such as a
  ViT's class token expanded over the batch, ``(n, 1, D)``. It becomes ``Expand(value, a + b * N)``.

Per-sample gradients are independent of the rest of the batch, so a graph that is one function of
``n`` at three sizes is the same function at every size; the export tests check 1, 3 and 16.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcam.errors import UnsupportedModelError
from onnxcam.graph.protos import opset_version

# Batch sizes the graph is built at. Odd and unlike common dims (channels, 7x7 maps, axes 2/3),
# so that a batch-dependent constant rarely equals an unrelated literal the emitter would share a
# name with (that would show up as a structural difference; the second triple is tried then).
BATCH_TRIPLES: tuple[tuple[int, int, int], ...] = ((5, 9, 11), (17, 19, 23))
BATCH_SYMBOL = "N"
_PREFIX = "onnxcam_batch/"


class BatchDependenceError(UnsupportedModelError):
    """The gradient graph is not one affine-shaped function of the batch size."""


def _tensor(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def _strip(node: onnx.NodeProto) -> bytes:
    """A node's bytes with Constant values left out (those are compared as constants)."""
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    if copy.op_type == "Constant":
        del copy.attribute[:]
    return copy.SerializeToString(deterministic=True)


def _constant_nodes(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    from onnxcam.graph.const_fold import constant_value

    out = {}
    for node in model.graph.node:
        if node.op_type == "Constant":
            value = constant_value(node)
            if value is None:
                raise BatchDependenceError(f"Constant node {node.name!r} has a value onnxcam cannot read")
            out[node.output[0]] = value
    return out


@dataclass(frozen=True)
class _Broadcast:
    """A constant that is ``value`` broadcast to the shape ``a + b * n`` at batch ``n``."""

    value: np.ndarray
    a: np.ndarray
    b: np.ndarray


def _refused(name: str, values: Sequence[np.ndarray]) -> BatchDependenceError:
    return BatchDependenceError(
        f"constant {name!r} of the gradient graph changes with the batch size in a way that cannot be computed "
        f"in-graph (dtype {values[0].dtype}, shapes {[v.shape for v in values]}); export at a fixed batch size "
        "(a model whose input batch is fixed)"
    )


def _broadcast(name: str, values: Sequence[np.ndarray], batches: Sequence[int]) -> _Broadcast:
    """``values`` as one batch-free value broadcast to shapes affine in the batch; raises if they are not."""
    if len({v.ndim for v in values}) != 1:
        raise _refused(name, values)
    fit = _affine(name, [np.array(v.shape, np.int64) for v in values], batches)
    assert fit is not None  # the shapes differ
    a, b = fit
    # Along each dim that grows with the batch the value must repeat one slice (size 1 there).
    index = tuple(slice(0, 1) if step else slice(None) for step in b)
    value = values[0][index]
    if any(not np.array_equal(v, np.broadcast_to(value, v.shape)) for v in values):
        raise _refused(name, values)
    return _Broadcast(value, a, b)


def _affine(name: str, values: Sequence[np.ndarray], batches: Sequence[int]) -> tuple[np.ndarray, np.ndarray] | None:
    """``(a, b)`` with ``values[i] == a + b * batches[i]`` exactly, None if the values do not differ."""
    first = values[0]
    if all(v.shape == first.shape and np.array_equal(first, v) for v in values[1:]):
        return None
    if any(v.shape != first.shape for v in values) or first.dtype.kind not in "iu":
        raise _refused(name, values)
    v0, v1 = (values[0].astype(np.int64), values[1].astype(np.int64))
    step = batches[1] - batches[0]
    diff = v1 - v0
    if np.any(diff % step):
        raise BatchDependenceError(f"constant {name!r} of the gradient graph is not affine in the batch size")
    b = diff // step
    a = v0 - b * batches[0]
    for v, n in zip(values[2:], batches[2:]):
        if not np.array_equal(a + b * n, v.astype(np.int64)):
            raise BatchDependenceError(f"constant {name!r} of the gradient graph is not affine in the batch size")
    return a, b


_Fit = tuple[np.ndarray, np.ndarray] | _Broadcast


def _fit(name: str, values: Sequence[np.ndarray], batches: Sequence[int]) -> _Fit | None:
    if any(v.shape != values[0].shape for v in values[1:]):
        return _broadcast(name, values, batches)
    return _affine(name, values, batches)


def _compare(models: Sequence[onnx.ModelProto], batches: Sequence[int]) -> dict[str, _Fit]:
    """Batch-dependent constants of ``models[0]``: ``{name: (a, b)}`` for integer values affine in the
    batch, a ``_Broadcast`` for values broadcast over it; raises on any other difference."""
    first = models[0]
    for m in models[1:]:
        if len(m.graph.node) != len(first.graph.node) or any(
            _strip(x) != _strip(y) for x, y in zip(first.graph.node, m.graph.node)
        ):
            raise BatchDependenceError("the gradient graph's nodes differ between batch sizes")
        if [t.name for t in m.graph.initializer] != [t.name for t in first.graph.initializer]:
            raise BatchDependenceError("the gradient graph's constants differ between batch sizes")
    affine: dict[str, _Fit] = {}
    inits = [_tensor(m) for m in models]
    for name, t0 in inits[0].items():
        others = [i[name] for i in inits[1:]]
        if all(o.SerializeToString() == t0.SerializeToString() for o in others):
            continue
        fit = _fit(name, [numpy_helper.to_array(t0)] + [numpy_helper.to_array(o) for o in others], batches)
        if fit is not None:
            affine[name] = fit
    consts = [_constant_nodes(m) for m in models]
    for name, v0 in consts[0].items():
        fit = _fit(name, [v0] + [c[name] for c in consts[1:]], batches)
        if fit is not None:
            affine[name] = fit
    return affine


def _weight_like(value: np.ndarray, weights: Sequence[onnx.TensorProto], name: str) -> onnx.TensorProto:
    """``value`` as an initializer: one of ``weights`` holding exactly it (dtype, shape, values), else ``name``."""
    for t in weights:
        if tuple(t.dims) == value.shape and t.data_type == helper.np_dtype_to_tensor_dtype(value.dtype) \
                and not t.external_data and np.array_equal(numpy_helper.to_array(t), value):
            return t
    return numpy_helper.from_array(value, name)


def _symbolic(infos: Sequence[onnx.ValueInfoProto], others: Sequence[Sequence[onnx.ValueInfoProto]]) -> None:
    """In place: dims of ``infos`` that differ between builds become the batch symbol."""
    for k, vi in enumerate(infos):
        dims = vi.type.tensor_type.shape.dim
        for d, dim in enumerate(dims):
            values = {o[k].type.tensor_type.shape.dim[d].dim_value for o in others}
            if dim.HasField("dim_value") and values != {dim.dim_value}:
                dim.Clear()
                dim.dim_param = BATCH_SYMBOL


def generalize_batch(models: Sequence[onnx.ModelProto], batches: Sequence[int], batch_source: str,
                     weights: Iterable[onnx.TensorProto] = ()) -> onnx.ModelProto:
    """One model computing what ``models`` (the same graph built at ``batches``) compute, at any batch.

    ``batch_source`` names a graph input whose first dim is the batch. Raises ``BatchDependenceError``
    when the builds differ in anything but integer constants affine in the batch and values broadcast
    over it. ``weights``: the model's initializers; a broadcast value equal to one of them (a class
    token) is read under that weight's name, so that a graph sharing the model's weights stores it once.
    """
    if len(models) < 3 or len(models) != len(batches):
        raise ValueError("generalize_batch needs three or more builds and their batch sizes")
    affine = _compare(models, batches)
    result = onnx.ModelProto()
    result.CopyFrom(models[0])
    g = result.graph
    _symbolic(g.input, [m.graph.input for m in models[1:]])
    _symbolic(g.output, [m.graph.output for m in models[1:]])
    del g.value_info[:]
    if not affine:
        return result
    dtypes = {t.name: t.data_type for t in g.initializer}
    keep = [t for t in g.initializer if t.name not in affine]
    del g.initializer[:]
    g.initializer.extend(keep)
    body = [n for n in g.node if not (n.op_type == "Constant" and n.output[0] in affine)]
    for name, value in _constant_nodes(result).items():
        dtypes[name] = helper.np_dtype_to_tensor_dtype(value.dtype)
    known = list(weights)
    shape = f"{_PREFIX}shape"
    batch = f"{_PREFIX}n"
    if opset_version(result) >= 15:
        head = [helper.make_node("Shape", [batch_source], [batch], name=batch, start=0, end=1)]
    else:
        head = [helper.make_node("Shape", [batch_source], [shape], name=shape),
                helper.make_node("Slice", [shape, f"{_PREFIX}zero", f"{_PREFIX}one"], [batch], name=batch)]
        g.initializer.extend([numpy_helper.from_array(np.array([0], np.int64), f"{_PREFIX}zero"),
                              numpy_helper.from_array(np.array([1], np.int64), f"{_PREFIX}one")])
    for k, (name, fit) in enumerate(sorted(affine.items())):
        tag = f"{_PREFIX}{k}"
        if isinstance(fit, _Broadcast):
            value = _weight_like(fit.value, known, f"{tag}/value")
            if value.name not in {t.name for t in g.initializer}:
                g.initializer.append(value)
            g.initializer.extend([numpy_helper.from_array(fit.a, f"{tag}/a"),
                                  numpy_helper.from_array(fit.b, f"{tag}/b")])
            head += [
                helper.make_node("Mul", [f"{tag}/b", batch], [f"{tag}/bn"], name=f"{tag}/bn"),
                helper.make_node("Add", [f"{tag}/a", f"{tag}/bn"], [f"{tag}/shape"], name=f"{tag}/shape"),
                helper.make_node("Expand", [value.name, f"{tag}/shape"], [name], name=f"{tag}/expand"),
            ]
            continue
        a, b = fit
        g.initializer.extend([numpy_helper.from_array(a.reshape(-1), f"{tag}/a"),
                              numpy_helper.from_array(b.reshape(-1), f"{tag}/b"),
                              numpy_helper.from_array(np.array(a.shape, np.int64), f"{tag}/shape")])
        head += [
            helper.make_node("Mul", [f"{tag}/b", batch], [f"{tag}/bn"], name=f"{tag}/bn"),
            helper.make_node("Add", [f"{tag}/a", f"{tag}/bn"], [f"{tag}/flat"], name=f"{tag}/flat"),
        ]
        dtype = dtypes.get(name, onnx.TensorProto.INT64)
        flat = f"{tag}/flat"
        if dtype != onnx.TensorProto.INT64:
            head.append(helper.make_node("Cast", [flat], [f"{tag}/cast"], name=f"{tag}/cast", to=dtype))
            flat = f"{tag}/cast"
        head.append(helper.make_node("Reshape", [flat, f"{tag}/shape"], [name], name=f"{tag}/value"))
    del g.node[:]
    g.node.extend(head + body)
    return result


def build_batch_agnostic(build: Callable[[int], onnx.ModelProto], batch_source: str,
                         weights: Iterable[onnx.TensorProto] = ()) -> onnx.ModelProto:
    """``build(n)`` (a graph at fixed batch ``n``) turned into one graph for every batch size
    (``weights``: see ``generalize_batch``).

    Tries each of ``BATCH_TRIPLES``; the last ``BatchDependenceError`` is raised if none fits.
    """
    known = list(weights)
    error: BatchDependenceError | None = None
    for batches in BATCH_TRIPLES:
        models = [build(n) for n in batches]
        try:
            return generalize_batch(models, batches, batch_source, known)
        except BatchDependenceError as exc:
            error = exc
    assert error is not None
    raise error
