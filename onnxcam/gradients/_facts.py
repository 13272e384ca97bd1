"""What the rules need to know about the forward graph: shapes, element types and constant values.

ONNX shape inference alone leaves gaps that rules cannot work around: exporters compute paddings
from chains of constant ops (torch's ``F.pad`` export: ConstantOfShape -> Concat -> Reshape ->
Slice -> Transpose -> Cast), which inference does not evaluate, so the ``Pad`` output and
everything downstream lose their spatial dims; quantised (QDQ) graphs and custom exports lose
others. Inference therefore runs on ``graph.const_fold``'s weightless skeleton, whose constant
chains numpy has already evaluated; two onnxruntime fallbacks close what is left:

1. constant-only subgraphs with ops the numpy folder does not know are evaluated once (they need
   no input), their values become known constants, and shapes are re-inferred with them folded in;
2. shapes still unknown are read off one run on zero inputs, when every graph input is static
   (the case for the heads onnxcam differentiates: their batch is fixed before building).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcam.gradients._emit import Shape
from onnxcam.graph.const_fold import constant_value, shape_skeleton
from onnxcam.runtime import make_session

# Ops whose value is not a function of their inputs: never folded.
_NONDETERMINISTIC = frozenset(
    "RandomNormal RandomUniform RandomNormalLike RandomUniformLike Bernoulli Multinomial".split()
)
# Folded values above this many elements are not kept (no rule needs a big constant's value).
_MAX_FOLDED = 1 << 16


def collect_consts(graph: onnx.GraphProto, max_elements: int | None = None) -> dict[str, np.ndarray]:
    """Values of initializers (those of at most ``max_elements`` when given) and ``Constant`` node outputs."""
    consts = {init.name: numpy_helper.to_array(init) for init in graph.initializer
              if max_elements is None or int(np.prod(init.dims)) <= max_elements}
    for node in graph.node:
        value = constant_value(node)
        if value is not None:
            consts[node.output[0]] = value
    return consts


def _infer(model: onnx.ModelProto) -> tuple[dict[str, Shape | None], dict[str, int], dict[str, np.ndarray]]:
    """Shapes and element types by inference on a weightless skeleton, and the constants it folded."""
    # Weightless: inference never needs weight values, and serialising them costs more than inferring.
    skeleton, folded = shape_skeleton(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, strict_mode=False, data_prop=True)
    except Exception:  # inference is best effort: rules that need a shape say so by name
        inferred = skeleton
    shapes: dict[str, Shape | None] = {}
    dtypes: dict[str, int] = {}
    for name, value in folded.items():
        shapes[name] = [int(d) for d in value.shape]
        if value.dtype.kind in "fiub":
            dtypes[name] = helper.np_dtype_to_tensor_dtype(value.dtype)
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        if t.elem_type:
            dtypes[vi.name] = t.elem_type
        if t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    for init in model.graph.initializer:
        dtypes[init.name] = init.data_type
        shapes[init.name] = list(init.dims)
    return shapes, dtypes, folded


def _session(model: onnx.ModelProto) -> object | None:
    try:
        return make_session(model, "cpu", what="gradient builder probe")
    except Exception:  # a probe that does not load leaves the gap for the rule to report
        return None


def _constant_nodes(graph: onnx.GraphProto, consts: dict[str, np.ndarray]) -> list[onnx.NodeProto]:
    """Nodes (in graph order) whose every input is a known constant or computed from constants only."""
    known = set(consts)
    folded: list[onnx.NodeProto] = []
    for node in graph.node:
        outs = [o for o in node.output if o]
        if not outs or all(o in known for o in outs):
            continue
        ins = [i for i in node.input if i]
        if not ins or node.domain not in ("", "ai.onnx") or node.op_type in _NONDETERMINISTIC:
            continue
        if all(i in known for i in ins):
            folded.append(node)
            known.update(outs)
    return folded


def _fold_constants(model: onnx.ModelProto, consts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Values of the constant-only tensors that feed the rest of the graph (small ones)."""
    graph = model.graph
    nodes = _constant_nodes(graph, consts)
    if not nodes:
        return {}
    produced = {o for n in nodes for o in n.output if o}
    inside = {id(n) for n in nodes}
    consumed = {i for n in graph.node if id(n) not in inside for i in n.input}
    wanted = sorted(produced & (consumed | {o.name for o in graph.output}))
    needed = {i for n in nodes for i in n.input if i and i not in produced}
    sub = helper.make_graph(
        nodes, "fold", [], [helper.make_empty_tensor_value_info(n) for n in wanted],
        [numpy_helper.from_array(np.asarray(consts[n]), n) for n in sorted(needed)],
    )  # fmt: skip
    from onnxcam.graph.protos import make_model

    sess = _session(make_model(sub, model.opset_import))
    if sess is None or not wanted:
        return {}
    try:
        values = sess.run(wanted, {})  # type: ignore[attr-defined]
    except Exception:
        return {}
    return {n: np.asarray(v) for n, v in zip(wanted, values, strict=True) if np.size(v) <= _MAX_FOLDED}


def _with_constants(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` with ``values`` as initializers and the nodes computing only them dropped."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    keep = [n for n in copy.graph.node if not all(o in values for o in n.output if o)]
    del copy.graph.node[:]
    copy.graph.node.extend(keep)
    have = {i.name for i in copy.graph.initializer}
    copy.graph.initializer.extend(numpy_helper.from_array(v, n) for n, v in values.items() if n not in have)
    return copy


def _static(shape: Shape | None) -> bool:
    return shape is not None and all(d is not None for d in shape)


def _probe_shapes(model: onnx.ModelProto, shapes: dict[str, Shape | None], dtypes: dict[str, int]) -> None:
    """Fill unknown shapes in place from one onnxruntime run on zero inputs (static inputs only)."""
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    missing = [o for n in graph.node for o in n.output if o and not _static(shapes.get(o))]
    if not missing:
        return
    feeds: dict[str, np.ndarray] = {}
    for inp in graph.input:
        if inp.name in inits:
            continue
        shape = shapes.get(inp.name)
        if not _static(shape) or inp.name not in dtypes:
            return  # a symbolic dim has no value to probe with
        dtype = helper.tensor_dtype_to_np_dtype(dtypes[inp.name])
        feeds[inp.name] = np.zeros([int(d or 0) for d in shape or []], dtype=dtype)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in missing)
    sess = _session(probe)
    if sess is None:
        return
    try:
        values = sess.run(missing, feeds)  # type: ignore[attr-defined]
    except Exception:
        return
    for name, value in zip(missing, values, strict=True):
        arr = np.asarray(value)
        if arr.dtype.kind not in "fiub":
            continue
        shapes[name] = [int(d) for d in arr.shape]
        dtypes.setdefault(name, helper.np_dtype_to_tensor_dtype(arr.dtype))


def collect_facts(model: onnx.ModelProto) -> tuple[dict[str, Shape | None], dict[str, int], dict[str, np.ndarray]]:
    """(shapes, element types, constant values) of the tensors of ``model``'s main graph."""
    consts = collect_consts(model.graph)
    shapes, dtypes, folded_here = _infer(model)
    consts.update(folded_here)
    gaps = any(not _static(shapes.get(o)) for n in model.graph.node for o in n.output if o)
    if not gaps:
        return shapes, dtypes, consts
    # Constant chains with ops the numpy folder does not know are left to onnxruntime.
    folded = _fold_constants(model, consts)
    consts.update(folded)
    if folded:
        shapes2, dtypes2, _ = _infer(_with_constants(model, folded))
        shapes.update({k: v for k, v in shapes2.items() if _static(v) or k not in shapes})
        for k, t in dtypes2.items():
            dtypes.setdefault(k, t)
    _probe_shapes(model, shapes, dtypes)
    return shapes, dtypes, consts
