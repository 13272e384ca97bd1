"""Copies of a head's local region in which every tensor runs on its own window.

``LocalRegion.crop_model`` crops every tensor to one image window, the one the finest tensor's
gradient support needs: for a stride-32 detection of YOLOv8n that is 384 px, twelve positions of
each stride-32 map whose gradient support is five to nine. Here each tensor gets the box its own
consumers read (``LocalRegion.reach``, unclipped), so the coarse levels run on what they need:

* every sliding-window node becomes a "valid" one (no padding) that reads exactly the input box
  its output box needs, sliced from its input's box;
* a box may reach past the map's edge. Positions there are zeros, the model's own zero padding:
  each computed tensor goes through ``Where(inside, t, 0)``, ``inside`` an input per stride and box
  (``WindowMask``: computed in numpy from each row's window origin), so one graph serves every
  position of the image (the masks used to be computed in the graph, a third of an edge graph's
  nodes for a few thousand booleans: 0.9 ms of a stride-32 detection's 3.9 ms);
* nothing is approximate: every value in every box is the whole model's, so the gradients are too.

Pooling nodes pad with something other than zeros; a region holding one keeps ``crop_model``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcam.graph.local import Box, LocalRegion, constants_of
from onnxcam.graph.protos import make_model, opset_version
from onnxcam.graph.shapes import TensorInfo, make_value_info
from onnxcam.graph.toposort import topological_order

# Ops that can turn finite values into Inf or NaN (a log of a negative, a division by zero).
_RISKY = frozenset("Log Sqrt Reciprocal Div Pow Exp".split())
_PREFIX = "onnxcam_window/"


@dataclass(frozen=True)
class WindowMask:
    """A bool input ``(n, 1, h, w)`` of a windowed graph: which positions of a tensor's box lie on its
    map. ``box`` is in the tensor's grid relative to the window origin, ``stride`` its stride in image
    pixels, ``size`` its map's ``(height, width)``."""

    stride: tuple[int, int]
    box: Box
    size: tuple[int, int]

    def values(self, origins: np.ndarray) -> np.ndarray:
        """The mask for windows at ``origins (n, 2)`` (image pixels, multiples of the stride)."""
        origins = np.asarray(origins, dtype=np.int64)
        inside = []
        for axis in (0, 1):
            at = origins[:, axis:axis + 1] // self.stride[axis] + np.arange(self.box[axis], self.box[axis + 2] + 1)
            inside.append((at >= 0) & (at < self.size[axis]))
        return inside[0][:, None, :, None] & inside[1][:, None, None, :]


def windowed_model(region: LocalRegion, source: onnx.ModelProto, boxes: Mapping[str, Box], n: int,
                   infos: Mapping[str, TensorInfo], outputs: Sequence[str],
                   edge: bool) -> tuple[onnx.ModelProto, dict[str, WindowMask]]:
    """The region's nodes that ``outputs`` read, each tensor ``t`` computed on ``boxes[t]`` (its grid,
    relative to the window origin), at batch ``n``, and the mask inputs it reads by name.

    Inputs: the region inputs on their boxes (zeros past the map's edge) and, for a graph that may
    meet the map's ``edge``, its masks (``WindowMask``; a row's window origin is a multiple of every
    stride involved, a tensor of stride ``s`` covering ``origin / s + box``). Outputs: ``outputs``
    on their boxes. ``boxes`` comes from ``region.reach`` of the seeds' boxes. Without ``edge`` every
    box must lie on its map: no masks."""
    needed = set(outputs)
    kept: list[onnx.NodeProto] = []
    for node in reversed(region.nodes):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i in region.strides)
    kept.reverse()
    produced = {o for node in kept for o in node.output if o}
    # Past the edge, what a sliding window reads must be the padding's zeros. The values other nodes
    # compute there are never read, and their gradients there are zero, as long as they are finite:
    # where an op could make them Inf or NaN, every computed tensor is masked.
    risky = any(node.op_type in _RISKY for node in kept)
    masked_inputs = {i for node in kept if node.name in region.kernels for i in node.input if i in produced}
    graph = source.graph
    opset = opset_version(source)
    b = _Builder(region, boxes, infos, opset)
    nodes: list[onnx.NodeProto] = []
    for node in kept:
        kernel = region.kernels.get(node.name)
        box = boxes[next(o for o in node.output if o in boxes)]
        new_inputs = []
        for name in node.input:
            if name not in region.strides:
                new_inputs.append(name)
                continue
            src = b.masked(name) if edge and name in produced and (risky or name in masked_inputs) else name
            need = kernel.reads(box) if kernel is not None else box
            new_inputs.append(b.slice(src, boxes[name], need))
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        del copy.input[:]
        copy.input.extend(new_inputs)
        if kernel is not None:  # the slice holds the padding's zeros: a valid window from here
            attrs = [a for a in copy.attribute if a.name not in ("pads", "auto_pad")]
            del copy.attribute[:]
            copy.attribute.extend(attrs)
            copy.attribute.append(helper.make_attribute("pads", [0, 0, 0, 0]))
        nodes.append(copy)
    inputs = [make_value_info(name, onnx.TensorProto.BOOL, (n, 1, m.box[2] - m.box[0] + 1, m.box[3] - m.box[1] + 1))
              for name, m in b.masks.items()]
    for name in region.cut:
        if name in needed and name not in produced:
            inputs.append(_info(name, infos, boxes[name], n))
    const_nodes, initializers = constants_of(source, {i for node in kept for i in node.input
                                                       if i and i not in region.strides})
    outs = [_info(name, infos, boxes[name], n) for name in outputs]
    g = helper.make_graph(topological_order(const_nodes + b.nodes + nodes), f"{graph.name or 'model'}_windows",
                          inputs, outs, initializers + b.initializers)
    model = make_model(g, source.opset_import, ir_version=source.ir_version)
    model.functions.extend(source.functions)
    return model, dict(b.masks)


def _info(name: str, infos: Mapping[str, TensorInfo], box: Box, n: int) -> onnx.ValueInfoProto:
    info = infos[name]
    assert info.shape is not None
    return make_value_info(name, info.elem_type, (n, info.shape[1], box[2] - box[0] + 1, box[3] - box[1] + 1))


class _Builder:
    """The masks and slices ``windowed_model`` adds, each made once."""

    def __init__(self, region: LocalRegion, boxes: Mapping[str, Box], infos: Mapping[str, TensorInfo],
                 opset: int) -> None:
        self.region, self.boxes, self.infos, self.opset = region, boxes, infos, opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.masks: dict[str, WindowMask] = {}
        self._made: dict[object, str] = {}

    def const(self, key: object, value: np.ndarray) -> str:
        if ("const", key) not in self._made:
            name = f"{_PREFIX}c{len(self._made)}"
            self.initializers.append(numpy_helper.from_array(value, name))
            self._made[("const", key)] = name
        return self._made[("const", key)]

    def node(self, op: str, inputs: list[str], **attrs: Any) -> str:
        out = f"{_PREFIX}{op.lower()}{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def masked(self, name: str) -> str:
        """``name`` with its values past the map's edge set to zero (``Where``: a NaN or Inf computed
        there stays out of every gradient, which a product with a 0/1 mask would not)."""
        key = ("masked", name)
        if key not in self._made:
            box = self.boxes[name]
            sy, sx = self.region.strides[name]
            h, w = self.region.sizes[name]
            mask = WindowMask((sy, sx), box, (h, w))
            mask_name = f"{_PREFIX}mask/{sy}x{sx}/{'_'.join(map(str, box))}/{h}x{w}".replace("-", "m")
            self.masks[mask_name] = mask
            # Where takes both branches in the tensor's own type: a float64 head gets a float64 zero.
            dtype = onnx.helper.tensor_dtype_to_np_dtype(self.infos[name].elem_type)
            zero = self.const(("zero", dtype.str), np.zeros((), dtype=dtype))
            self._made[key] = self.node("Where", [mask_name, name, zero])
        return self._made[key]

    def slice(self, src: str, have: Box, need: Box) -> str:
        """``src`` (laid out on ``have``) cut to ``need`` along the two spatial axes."""
        if need == have:
            return src
        key = ("slice", src, need)
        if key not in self._made:
            starts = [need[0] - have[0], need[1] - have[1]]
            ends = [need[2] - have[0] + 1, need[3] - have[1] + 1]
            if min(starts) < 0 or ends[0] > have[2] - have[0] + 1 or ends[1] > have[3] - have[1] + 1:
                raise ValueError(f"box {need} is not inside {have}")
            self._made[key] = self._slice(src, starts, ends, [2, 3])
        return self._made[key]

    def _slice(self, src: str, starts: list[int], ends: list[int], axes: list[int]) -> str:
        if self.opset < 10:
            return self.node("Slice", [src], starts=starts, ends=ends, axes=axes)
        return self.node("Slice", [src, self.const(("ints", tuple(starts)), np.array(starts, np.int64)),
                                   self.const(("ints", tuple(ends)), np.array(ends, np.int64)),
                                   self.const(("ints", tuple(axes)), np.array(axes, np.int64))])


__all__ = ["WindowMask", "windowed_model"]
