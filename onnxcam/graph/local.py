"""The spatially local part of a head, and copies of it that run on crops.

A detector's head is mostly convolutions (the neck's last stages, the per-level box and class
branches) that end in a cheap decoder (reshapes over anchors, DFL, box arithmetic). One detection's
score depends on a small window of each feature map: its gradient is zero outside that window's
receptive field. Differentiating the whole head at full resolution for each detection wastes all
but a few percent of the work, so the gradient is taken in two parts:

* the *tail* (everything downstream of the local region's boundary) by an ordinary gradient graph,
  which yields the exact gradient at the boundary tensors;
* the *local region* (convolutions, pools, element-wise ops, channel concat/split, with explicit
  geometry) on crops: the boundary gradient's support, carried back through the region's kernels,
  fixes one window of the image; every tensor of the region is cropped to that window at its own
  stride and the region's gradient graph runs on the crops.

Exactness: a value in a crop is wrong only where its receptive field leaves the crop through an
edge that is not the map's own (there the crop's zero padding stands in for real values). The
window holds the support of every tensor's gradient, and the support of a tensor is closed under
"feeds": every value the backward pass reads lies inside its receptive field of the seed, hence
inside the window, hence is exact. Edges of the map coincide with the crop's, so padding there is
the model's own. Strided kernels stay aligned because windows start on multiples of the largest
stride in the region.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import onnx
from onnx import helper

from onnxcam.graph.protos import make_model
from onnxcam.graph.shapes import TensorInfo, make_value_info
from onnxcam.graph.toposort import topological_order

_UNARY = frozenset(
    "Relu LeakyRelu Sigmoid HardSigmoid HardSwish Tanh Elu Selu Celu Softplus Softsign Mish Gelu Erf Exp Log "
    "Neg Abs Sqrt Reciprocal Identity Clip ThresholdedRelu Sin Cos".split()
)
_ELEMENTWISE = frozenset("Add Sub Mul Div Pow Max Min Sum Mean PRelu".split())
_KERNEL = frozenset({"Conv", "MaxPool", "AveragePool", "LpPool"})


@dataclass(frozen=True)
class Kernel:
    """A sliding window along the two spatial axes: output ``p`` reads inputs ``p*s - pb .. p*s - pb + d*(k-1)``."""

    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilations: tuple[int, int]
    pads_begin: tuple[int, int]

    def input_box(self, box: tuple[int, int, int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
        """The input box ``(y0, x0, y1, x1)`` (inclusive, clipped to ``size``) an output box reads."""
        y0, x0, y1, x1 = box
        lo = [p * s - b for p, s, b in zip((y0, x0), self.strides, self.pads_begin)]
        hi = [p * s - b + d * (k - 1) for p, s, b, d, k in zip((y1, x1), self.strides, self.pads_begin,
                                                                self.dilations, self.kernel)]
        return (max(lo[0], 0), max(lo[1], 0), min(hi[0], size[0] - 1), min(hi[1], size[1] - 1))

    def reads(self, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """``input_box`` unclipped: the input positions (some past the map's edge, the padding) that
        the outputs in ``box`` read."""
        y0, x0, y1, x1 = box
        lo = [p * s - b for p, s, b in zip((y0, x0), self.strides, self.pads_begin)]
        hi = [p * s - b + d * (k - 1) for p, s, b, d, k in zip((y1, x1), self.strides, self.pads_begin,
                                                                self.dilations, self.kernel)]
        return (lo[0], lo[1], hi[0], hi[1])


Box = tuple[int, int, int, int]  # y0, x0, y1, x1 inclusive, in a tensor's own grid

# One node for support(): its outputs, its inputs inside the region, its window geometry (None: pointwise).
Step = tuple[tuple[str, ...], tuple[str, ...], Kernel | None]


@dataclass(frozen=True)
class LocalRegion:
    """The local part of a head cut at ``cut``.

    ``nodes``: the region's nodes in graph order; ``kernels``: geometry of its sliding-window nodes by
    node name; ``boundary``: region tensors (cut tensors included) read outside the region;
    ``strides``: every region tensor's (y, x) stride against the model input; ``sizes``: its (h, w);
    ``step``: the largest stride (windows start on its multiples); ``image``: the input's (H, W).
    """

    cut: tuple[str, ...]
    nodes: tuple[onnx.NodeProto, ...]
    kernels: Mapping[str, Kernel]
    boundary: tuple[str, ...]
    strides: Mapping[str, tuple[int, int]]
    sizes: Mapping[str, tuple[int, int]]
    step: tuple[int, int]
    image: tuple[int, int]

    @property
    def tensors(self) -> tuple[str, ...]:
        return tuple(self.strides)

    def support(self, seeds: Mapping[str, tuple[int, int, int, int]]) -> dict[str, tuple[int, int, int, int]]:
        """Boxes ``(y0, x0, y1, x1)`` where each region tensor's gradient can be non-zero, given the
        boxes of the boundary tensors' gradients ``seeds``; carried back through the kernels."""
        return self._carry(seeds, clip=True)

    def reach(self, seeds: Mapping[str, tuple[int, int, int, int]]) -> dict[str, tuple[int, int, int, int]]:
        """``support`` unclipped: the boxes a tensor's values are needed on, past the map's edge
        included, when every node computes exactly the outputs its consumers read (a node computes all
        its outputs on one box)."""
        return self._carry(seeds, clip=False)

    def _carry(self, seeds: Mapping[str, Box], clip: bool) -> dict[str, Box]:
        boxes: dict[str, Box] = dict(seeds)
        for outputs, inputs, kernel in self._steps_from(tuple(sorted(seeds))):
            outs = [boxes[o] for o in outputs if o in boxes]
            if not outs:
                continue
            box = _union(outs)
            if not clip:
                boxes.update({o: box for o in outputs if o in self.strides})
            for name in inputs:
                if kernel is None:
                    b = box
                else:
                    b = kernel.input_box(box, self.sizes[name]) if clip else kernel.reads(box)
                boxes[name] = _union([boxes[name], b]) if name in boxes else b
        return boxes

    def reached_from(self, seeded: Sequence[str]) -> set[str]:
        """The region tensors whose gradient seeds at ``seeded`` can reach (``seeded`` included)."""
        names = set(seeded)
        for outputs, inputs, _ in self._steps_from(tuple(sorted(seeded))):
            names.update(o for o in outputs if o in self.strides)
            names.update(inputs)
        return names

    @property
    def pooled(self) -> bool:
        """Whether the region holds a pooling node (its padding is not zeros: -inf for max pooling, left
        out of the count for average pooling), which per-tensor windows cannot reproduce at an edge."""
        return any(node.op_type != "Conv" for node in self.nodes if node.name in self.kernels)

    @cached_property
    def _backward_steps(self) -> tuple[Step, ...]:
        """The nodes in reverse order as plain tuples (outputs, region inputs, kernel): ``support`` runs
        per explained row, and reading protobuf fields costs more than the box arithmetic."""
        return tuple((tuple(node.output), tuple(i for i in node.input if i in self.strides),
                      self.kernels.get(node.name)) for node in reversed(self.nodes))

    def _steps_from(self, seeded: tuple[str, ...]) -> tuple[Step, ...]:
        """``_backward_steps`` that boxes from ``seeded`` reach (a stride-32 detection's seeds skip the
        other levels' branches), cached per seeded set."""
        cache = self.__dict__.setdefault("_steps_cache", {})
        if seeded not in cache:
            reached, kept = set(seeded), []
            for step in self._backward_steps:
                if any(o in reached for o in step[0]):
                    kept.append(step)
                    reached.update(step[1])
            cache[seeded] = tuple(kept)
        return cache[seeded]  # type: ignore[no-any-return]

    def window(self, boxes: Mapping[str, tuple[int, int, int, int]], quantum: int = 2) -> tuple[int, int, int, int]:
        """The image window ``(top, left, height, width)`` holding every box, on multiples of the largest
        stride, its size rounded up to ``quantum`` strides (few distinct crop shapes) and shifted, not
        clipped, where it would leave the image."""
        out: list[int] = []
        extents: list[int] = []
        for axis in (0, 1):
            lo = min(boxes[t][axis] * self.strides[t][axis] for t in boxes)
            hi = max((boxes[t][axis + 2] + 1) * self.strides[t][axis] for t in boxes)
            step, full = self.step[axis], self.image[axis]
            start = lo // step * step
            size = -(-(hi - start) // step) * step
            size = min(-(-size // (quantum * step)) * quantum * step, full)
            start = min(start, full - size)
            out.append(start)
            extents.append(size)
        return (out[0], out[1], extents[0], extents[1])

    def crop_model(self, source: onnx.ModelProto, window: tuple[int, int], n: int,
                   infos: Mapping[str, TensorInfo], outputs: Sequence[str]) -> onnx.ModelProto:
        """The region as a model over crops of ``window`` (height, width) image pixels at batch ``n``:
        inputs the cut tensors' crops, outputs ``outputs`` (region tensors), constants from ``source``."""
        needed_inputs = {i for node in self.nodes for i in node.input if i}
        produced = {o for node in self.nodes for o in node.output}
        inputs = []
        for name in self.cut:
            if name in needed_inputs and name not in produced:
                info = infos[name]
                assert info.shape is not None
                sy, sx = self.strides[name]
                shape = (n, info.shape[1], window[0] // sy, window[1] // sx)
                inputs.append(make_value_info(name, info.elem_type, shape))
        graph = source.graph
        const_nodes, initializers = constants_of(source, needed_inputs - produced - set(self.cut))
        outs = []
        for name in outputs:
            info = infos[name]
            assert info.shape is not None
            sy, sx = self.strides[name]
            outs.append(make_value_info(name, info.elem_type, (n, info.shape[1], window[0] // sy, window[1] // sx)))
        g = helper.make_graph(topological_order(const_nodes + list(self.nodes)), f"{graph.name or 'model'}_local",
                              inputs, outs, initializers)
        model = make_model(g, source.opset_import, ir_version=source.ir_version)
        model.functions.extend(source.functions)
        return model


def constants_of(source: onnx.ModelProto, names: set[str]) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The Constant nodes and initializers of ``source`` that give the tensors ``names`` (a region's
    weights, Split sizes, Slice arguments), for a model made of the region's nodes."""
    graph = source.graph
    producers = {o: node for node in graph.node for o in node.output}
    const_nodes = list({id(producers[c]): producers[c] for c in names if c in producers}.values())
    const_inputs = {i for node in const_nodes for i in node.input if i}
    return const_nodes, [init for init in graph.initializer if init.name in names | const_inputs]


def _union(boxes: Sequence[tuple[int, int, int, int]]) -> tuple[int, int, int, int]:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _spatial(info: TensorInfo | None) -> tuple[int, int] | None:
    """(h, w) of a static 4-D tensor (any batch dim), else None."""
    if info is None or info.shape is None or len(info.shape) != 4:
        return None
    h, w = info.shape[2], info.shape[3]
    if not isinstance(h, int) or not isinstance(w, int) or not isinstance(info.shape[1], int):
        return None
    return (h, w)


def _kernel(node: onnx.NodeProto, size_in: tuple[int, int], size_out: tuple[int, int],
            weights: Mapping[str, tuple[int, ...]]) -> Kernel | None:
    """The node's window geometry if cropping it is exact (see the module docstring), else None."""
    if node.op_type == "Conv":
        shape = weights.get(node.input[1])
        if shape is None or len(shape) != 4:
            return None
        kernel = (int(shape[2]), int(shape[3]))
    else:
        if int(_attr(node, "ceil_mode", 0)) or len([o for o in node.output if o]) != 1:  # type: ignore[call-overload]
            return None
        ks = list(_attr(node, "kernel_shape", []))  # type: ignore[call-overload]
        if len(ks) != 2:
            return None
        kernel = (int(ks[0]), int(ks[1]))
    strides = tuple(int(v) for v in _attr(node, "strides", [1, 1]))  # type: ignore[attr-defined]
    dilations = tuple(int(v) for v in _attr(node, "dilations", [1, 1]))  # type: ignore[attr-defined]
    if len(strides) != 2 or len(dilations) != 2:
        return None
    auto_pad = _attr(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    begin: list[int] = []
    for axis in (0, 1):
        s, d, k = strides[axis], dilations[axis], kernel[axis]
        if size_in[axis] % s or size_out[axis] != size_in[axis] // s:
            return None
        if auto_pad in ("NOTSET", ""):
            pads = list(_attr(node, "pads", [0, 0, 0, 0]))  # type: ignore[call-overload]
            pb, pe = int(pads[axis]), int(pads[axis + 2])
        elif auto_pad == "VALID":
            pb = pe = 0
        else:
            total = max((size_out[axis] - 1) * s + d * (k - 1) + 1 - size_in[axis], 0)
            pb = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            pe = total - pb
        # Every crop (a multiple of s) must come out at crop / s, as the whole map does.
        if not 1 - s <= pb + pe - d * (k - 1) <= 0:
            return None
        begin.append(pb)
    return Kernel(kernel, (strides[0], strides[1]), (dilations[0], dilations[1]), (begin[0], begin[1]))


def local_region(model: onnx.ModelProto, inputs: Sequence[str], infos: Mapping[str, TensorInfo],
                 image: tuple[int, int]) -> LocalRegion | None:
    """The local region of a head ``model`` whose inputs ``inputs`` (cut tensors, then the tensors that
    cross the cut beside them) are fed from the body (see the module docstring), or None when it is
    empty or a tensor's grid does not divide the ``image`` (H, W) evenly."""
    graph = model.graph
    weights = {init.name: tuple(int(d) for d in init.dims) for init in graph.initializer}
    values = _constant_values(graph)
    weights.update({k: tuple(int(d) for d in v.shape) for k, v in values.items() if k not in weights})
    constant = set(weights)
    graph_outputs = {o.name for o in graph.output}
    strides: dict[str, tuple[int, int]] = {}
    sizes: dict[str, tuple[int, int]] = {}

    def admit(name: str) -> bool:
        size = _spatial(infos.get(name))
        if size is None or infos[name].elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
            return False
        if image[0] % size[0] or image[1] % size[1]:
            return False
        strides[name] = (image[0] // size[0], image[1] // size[1])
        sizes[name] = size
        return True

    fed = tuple(name for name in inputs if admit(name))
    if not fed:
        return None
    nodes: list[onnx.NodeProto] = []
    kernels: dict[str, Kernel] = {}
    members: set[int] = set()
    for index, node in enumerate(graph.node):
        live = [i for i in node.input if i and i not in constant]
        if not live or not all(i in strides for i in live) or any(o in strides for o in node.output):
            continue
        outs = [o for o in node.output if o]
        if not _local_op(node, live, infos, weights, values):
            continue
        if node.op_type in _KERNEL:
            if len(live) != 1 or len(outs) != 1 or _spatial(infos.get(outs[0])) is None:
                continue
            k = _kernel(node, sizes[live[0]], _spatial(infos.get(outs[0])), weights)  # type: ignore[arg-type]
            if k is None:
                continue
        elif any(_spatial(infos.get(o)) != sizes[live[0]] for o in outs) or \
                any(sizes[i] != sizes[live[0]] for i in live):
            continue
        else:
            k = None
        if not all(admit(o) for o in outs):
            for o in outs:
                strides.pop(o, None)
                sizes.pop(o, None)
            continue
        if not node.name:
            node = _named(node, f"onnxcam_local/{outs[0]}")
        if k is not None:
            kernels[node.name] = k
        nodes.append(node)
        members.add(index)
    if not nodes:
        return None
    consumed_outside = {i for j, node in enumerate(graph.node) if j not in members for i in node.input if i}
    boundary = tuple(t for t in strides if t in consumed_outside or t in graph_outputs)
    step = (max(s[0] for s in strides.values()), max(s[1] for s in strides.values()))
    if any(step[0] % s[0] or step[1] % s[1] for s in strides.values()):
        return None
    return LocalRegion(fed, tuple(nodes), kernels, boundary, strides, sizes, step, image)


def _constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Small integer constants (initializers and Constant nodes) by name: Slice/Split arguments."""
    out: dict[str, np.ndarray] = {}
    for init in graph.initializer:
        if init.data_type == onnx.TensorProto.INT64 and int(np.prod(init.dims)) <= 16:
            out[init.name] = onnx.numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    out[node.output[0]] = onnx.numpy_helper.to_array(a.t)
    return out


def _named(node: onnx.NodeProto, name: str) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    copy.name = name
    return copy


def _local_op(node: onnx.NodeProto, live: Sequence[str], infos: Mapping[str, TensorInfo],
              weights: Mapping[str, tuple[int, ...]], constants: Mapping[str, np.ndarray]) -> bool:
    """Whether ``node`` maps each spatial position from the same position (or a fixed window) only."""
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        return False
    if op in _KERNEL:
        return op != "Conv" or len(live) == 1  # weights and bias are constants
    if op == "BatchNormalization":
        return len([o for o in node.output if o]) == 1 and len(live) == 1
    if op in _UNARY:
        return len(live) == 1
    if op in _ELEMENTWISE:
        # Constants may only vary along channels: one that varies over positions would need cropping.
        for name in node.input:
            if name and name not in live:
                shape = weights.get(name)
                if shape is None:
                    info = infos.get(name)
                    if info is None or info.shape is None or not all(isinstance(d, int) for d in info.shape):
                        return False
                    shape = tuple(int(d) for d in info.shape)  # type: ignore[arg-type]
                aligned = (1,) * (4 - len(shape)) + tuple(shape)
                if len(aligned) != 4 or aligned[2] != 1 or aligned[3] != 1:
                    return False
        return True
    if op == "Concat":
        axis = int(_attr(node, "axis", 0))  # type: ignore[call-overload]
        return axis in (1, -3) and len(live) == len([i for i in node.input if i])
    if op == "Split":
        axis = int(_attr(node, "axis", 0))  # type: ignore[call-overload]
        return axis in (1, -3)
    if op == "Slice":
        return len(live) == 1 and node.input[0] == live[0] and _slices_channels(node, constants)
    return False


def _slices_channels(node: onnx.NodeProto, constants: Mapping[str, np.ndarray]) -> bool:
    """A Slice along the channel axis only, with unit steps (C2f's chunk once shapes are folded)."""
    if len(node.input) == 1:  # opset < 10: attributes
        axes = list(_attr(node, "axes", []))  # type: ignore[call-overload]
        return [int(a) for a in axes] in ([1], [-3])
    if len(node.input) < 4 or node.input[3] not in constants:
        return False
    axes = [int(a) for a in constants[node.input[3]].reshape(-1)]
    if axes not in ([1], [-3]):
        return False
    if len(node.input) > 4 and node.input[4]:
        steps = constants.get(node.input[4])
        return steps is not None and bool(np.all(steps == 1))
    return True


__all__ = ["Kernel", "LocalRegion", "constants_of", "local_region"]
