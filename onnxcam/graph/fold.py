"""Fold shape arithmetic into constants once input shapes are fixed.

Exporters often compute paddings and reshape targets at run time from ``Shape`` ops (TF-style SAME
padding in EfficientNet exports, ``x.view(x.size(0), -1)``). With static input shapes those values
are constants; folding them lets shape inference see every dim, which the gradient builder needs.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcam.graph.shapes import tensor_infos
from onnxcam.runtime import make_session

_SHAPE_OPS = {"Shape", "Size"}


def static_tensors(graph: onnx.GraphProto) -> tuple[set[str], set[int]]:
    """Tensors computed from input *shapes* only (not values), and the nodes producing only those."""
    inits = {i.name for i in graph.initializer}
    data = {i.name for i in graph.input} - inits
    static: set[str] = set()
    nodes: set[int] = set()
    for k, node in enumerate(graph.node):
        ins = [n for n in node.input if n]
        if node.op_type in _SHAPE_OPS and ins and ins[0] in data:
            depends = False
        else:
            depends = any(n in data for n in ins)
        outs = [o for o in node.output if o]
        if depends:
            data.update(outs)
        elif any(n in static for n in ins) or (node.op_type in _SHAPE_OPS and ins and ins[0] in data | static):
            static.update(outs)
            nodes.add(k)
    return static, nodes


def fold_shape_computations(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` (static input shapes assumed) whose shape-only subgraphs are constants.

    Values are read off one onnxruntime run on zero inputs: shape arithmetic does not depend on
    the input values. Returns the model unchanged (a copy) if there is nothing to fold.
    """
    graph = model.graph
    static, nodes = static_tensors(graph)
    consumers_outside = {n for k, node in enumerate(graph.node) if k not in nodes for n in node.input}
    wanted = sorted(n for n in static if n in consumers_outside or n in {o.name for o in graph.output})
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    if not wanted:
        return copy
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in wanted)
    infos = tensor_infos(model)
    feeds = {}
    inits = {i.name for i in graph.initializer}
    for inp in graph.input:
        if inp.name in inits:
            continue
        info = infos[inp.name]
        if info.shape is None or not all(isinstance(d, int) for d in info.shape):
            return copy  # not static: nothing can be folded safely
        dtype = onnx.helper.tensor_dtype_to_np_dtype(info.elem_type)
        feeds[inp.name] = np.zeros([int(d) for d in info.shape], dtype=dtype)  # type: ignore[arg-type]
    sess = make_session(probe, "cpu", what="shape folding probe")
    values = sess.run(wanted, feeds)
    keep = [node for k, node in enumerate(copy.graph.node) if k not in nodes]
    del copy.graph.node[:]
    copy.graph.node.extend(keep)
    copy.graph.initializer.extend(numpy_helper.from_array(np.asarray(v), n) for n, v in zip(wanted, values))
    used = {n for node in copy.graph.node for n in node.input} | {o.name for o in copy.graph.output}
    kept_inits = [i for i in copy.graph.initializer if i.name in used]
    del copy.graph.initializer[:]
    copy.graph.initializer.extend(kept_inits)
    del copy.graph.value_info[:]
    try:
        return onnx.shape_inference.infer_shapes(copy, check_type=False, strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, RuntimeError, ValueError):
        return copy
