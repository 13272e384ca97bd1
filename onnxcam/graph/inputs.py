"""Fix a model's extra inputs to given values, so it takes the image alone.

Detectors exported from Paddle take ``im_shape`` and ``scale_factor`` beside the image. onnxcam
runs, splits and differentiates single-input graphs, so each extra input becomes a constant: an
initializer, or - when its first axis is the batch - the value broadcast to the image batch's size
by ``Expand(value, [N, ...])`` with ``N`` read off the image, so every batch size still runs.

Passes never edit the caller's model: they return a new protobuf.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

from onnxcam.errors import ArgumentError
from onnxcam.graph.shapes import tensor_infos

PREFIX = "onnxcam_inputs"


def fixed_inputs(model: onnx.ModelProto, values: Mapping[str, np.ndarray], image: str) -> onnx.ModelProto:
    """``model`` with each input named in ``values`` replaced by that value (see the module doc).

    ``image``: the image input, whose batch size an extra with a dynamic first dim follows.
    Values are cast to the input's element type; a value for a batch-first input may omit the
    batch axis or give it as 1.
    """
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    declared = {i.name: i for i in graph.input if i.name not in inits}
    infos = tensor_infos(model)
    unknown = [n for n in values if n not in declared]
    if unknown:
        names = ", ".join(n for n in declared if n != image) or "none"
        raise ArgumentError(f"the model has no input {unknown[0]!r} to fix (its inputs beside the image: {names})")
    if image in values:
        raise ArgumentError(f"{image!r} is the image input: fix only the other inputs")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    keep = [i for i in out.graph.input if i.name not in values]
    del out.graph.input[:]
    out.graph.input.extend(keep)
    h = onnx.helper
    nodes: list[onnx.NodeProto] = []
    shape_of_image = f"{PREFIX}/image_shape"
    batch_of_image = f"{PREFIX}/image_batch"
    need_batch = False
    for name, raw in values.items():
        info = infos[name]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(info.elem_type)
        value = np.asarray(raw, dtype=dtype)
        shape = info.shape or ()
        follows = len(shape) >= 1 and not isinstance(shape[0], int)
        if follows:
            rest = tuple(int(d) if isinstance(d, int) else -1 for d in shape[1:])
            if all(d > 0 for d in rest) and value.size == int(np.prod(rest, dtype=np.int64)):
                value = value.reshape((1, *rest))
            elif value.ndim == len(shape) - 1:
                value = value[None]
            if value.ndim != len(shape) or value.shape[0] != 1:
                raise ArgumentError(
                    f"input {name!r} has shape {shape}: give one value of shape {rest} for every image"
                )
            const = f"{PREFIX}/{name}/value"
            out.graph.initializer.append(onnx.numpy_helper.from_array(value, const))
            dims = f"{PREFIX}/{name}/dims"
            nodes += [
                h.make_node("Constant", [], [dims + "_rest"], name=dims + "_rest",
                            value=onnx.numpy_helper.from_array(np.asarray(value.shape[1:], dtype=np.int64))),
                h.make_node("Concat", [batch_of_image, dims + "_rest"], [dims], axis=0, name=dims),
                h.make_node("Expand", [const, dims], [name], name=f"{PREFIX}/{name}/expand"),
            ]
            need_batch = True
        else:
            fixed = [d for d in shape if isinstance(d, int)]
            if shape and len(fixed) == len(shape) and value.size == int(np.prod(fixed)):
                value = value.reshape(fixed)
            elif shape and len(shape) != value.ndim:
                raise ArgumentError(f"input {name!r} has shape {shape} but the value given has shape {value.shape}")
            out.graph.initializer.append(onnx.numpy_helper.from_array(value, name))
    if need_batch:
        nodes = [
            h.make_node("Shape", [image], [shape_of_image], name=shape_of_image),
            h.make_node("Constant", [], [f"{PREFIX}/zero"], name=f"{PREFIX}/zero",
                        value=onnx.numpy_helper.from_array(np.asarray([0], dtype=np.int64))),
            h.make_node("Constant", [], [f"{PREFIX}/one"], name=f"{PREFIX}/one",
                        value=onnx.numpy_helper.from_array(np.asarray([1], dtype=np.int64))),
            h.make_node("Slice", [shape_of_image, f"{PREFIX}/zero", f"{PREFIX}/one"], [batch_of_image],
                        name=batch_of_image),
        ] + nodes
        old = list(out.graph.node)
        del out.graph.node[:]
        out.graph.node.extend(nodes + old)
    return out


def parse_value(text: str) -> np.ndarray:
    """``"640,640"`` or ``"1.0"`` -> a float64 vector (or scalar) for ``fixed_inputs``."""
    parts = [p for p in text.replace(" ", "").split(",") if p]
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        raise ArgumentError(f"input value {text!r} must be comma-separated numbers, e.g. 640,640") from None
    if not numbers:
        raise ArgumentError(f"input value {text!r} is empty: give comma-separated numbers, e.g. 640,640")
    return np.asarray(numbers[0] if len(numbers) == 1 else numbers, dtype=np.float64)
