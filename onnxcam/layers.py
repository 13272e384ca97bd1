"""Candidate feature tensors of a model and how a user's layer name resolves to one."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import onnx

from onnxcam.errors import AmbiguousLayerError, ArgumentError, LayerNotFoundError, LayerShapeError
from onnxcam.graph.layout import AttentionBlock, attention_blocks, tensor_layouts
from onnxcam.graph.shapes import Dim, TensorInfo, format_shape
from onnxcam.views import IDENTITY, FeatureView, ViewSpec, view_for


@dataclass(frozen=True)
class Layer:
    """A feature tensor a CAM can be computed at, and how it is seen as a feature map.

    ``shape`` is the map's ``(N, C, h, w)`` at the model's input size; ``view`` turns the tensor
    (of ``tensor_shape``, which differs for channels-last or token tensors) into that map.
    ``guessed``: no op fixes the tensor's layout (see ``onnxcam.graph.layout``), so NCHW is assumed.
    ``block_input``: the input of an attention block (its first normalisation reads it).
    ``output_map``: a model output, or a tensor that reaches one through ops that only reshape,
    resize or activate it (a detector's score map): never picked by ``auto``.
    """

    index: int
    name: str
    op_type: str
    node_name: str
    shape: tuple[Dim, ...]
    view: FeatureView = IDENTITY
    tensor_shape: tuple[Dim, ...] | None = None
    guessed: bool = False
    block_input: bool = False
    output_map: bool = False

    @property
    def channels(self) -> int | None:
        c = self.shape[1]
        return c if isinstance(c, int) else None

    @property
    def spatial(self) -> tuple[int, int] | None:
        h, w = self.shape[2], self.shape[3]
        return (h, w) if isinstance(h, int) and isinstance(w, int) else None

    @property
    def grid(self) -> str:
        """How the tensor becomes a map, for listings: ``NCHW``, ``NHWC``, ``tokens 1+7x7``, ``NCHW?``."""
        return self.view.describe() + ("?" if self.guessed else "")


# Ops through which a tensor is still "the model's output": reshaping, resizing or activating it.
_OUTPUT_OPS = frozenset({
    "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Resize", "Upsample", "Sigmoid", "Softmax",
    "LogSoftmax", "Relu", "Clip", "Tanh", "Cast", "DequantizeLinear", "QuantizeLinear", "ArgMax", "TopK",
})
_AFFINE_OPS = frozenset({"Add", "Sub", "Mul", "Div"})


def _output_maps(model: onnx.ModelProto, dynamic: set[str]) -> set[str]:
    producers = {o: node for node in model.graph.node for o in node.output if o}
    found: set[str] = set()
    frontier = [o.name for o in model.graph.output]
    while frontier:
        name = frontier.pop()
        if name in found:
            continue
        found.add(name)
        node = producers.get(name)
        if node is None:
            continue
        if node.op_type in _OUTPUT_OPS:
            frontier.extend(n for n in node.input[:1] if n in dynamic)
        elif node.op_type in _AFFINE_OPS:
            # A bias or scale by a constant (exporters split ConvTranspose + bias this way) leaves
            # the map the output it was; a residual sum of two computed tensors does not.
            moving = [n for n in node.input if n in dynamic]
            if len(moving) == 1:
                frontier.append(moving[0])
    return found


@dataclass(frozen=True)
class LayerFacts:
    """Candidate layers of a model and the attention blocks that the listing leaves out."""

    layers: list[Layer]
    blocks: list[AttentionBlock]

    def block_of(self, tensor: str) -> AttentionBlock | None:
        """The attention block ``tensor`` is inside of, if any."""
        return next((b for b in self.blocks if tensor in b.inside), None)


def layer_facts(model: onnx.ModelProto, shapes: Mapping[str, TensorInfo], input_layout: str = "NCHW") -> LayerFacts:
    """Every feature map a CAM can read, in topological (graph) order.

    A candidate is a float tensor produced by a node from the input, seen through its layout
    (``onnxcam.graph.layout``): NCHW and channels-last maps, and token sequences ``(N, T, D)`` whose
    ``T`` is a prefix of 0..8 tokens plus a square grid; 4-D tensors of no known layout are listed as
    NCHW guesses. Tensors inside attention (heads split off, scores, windows) are left out, and so
    are constant subgraphs: a tensor that does not depend on the input cannot be explained.
    """
    graph = model.graph
    dynamic = {i.name for i in graph.input} - {init.name for init in graph.initializer}
    layouts = tensor_layouts(model, shapes, input_layout)
    blocks = attention_blocks(model, shapes)
    inside = set().union(*(b.inside for b in blocks)) if blocks else set()
    inputs = {b.x for b in blocks if b.x is not None}
    layers: list[Layer] = []
    for node in graph.node:
        if not any(name in dynamic for name in node.input if name):
            continue
        for out in node.output:
            if not out:
                continue
            dynamic.add(out)
            info = shapes.get(out)
            if info is None or not info.is_float or info.shape is None:
                continue
            lay = layouts.get(out)
            if out in inside and lay is None:
                continue
            guessed = lay is None or lay.guessed
            if lay is not None and lay.layout == "NTD":
                try:
                    view = view_for(info.shape, "tokens", out)
                except LayerShapeError:
                    continue
            elif lay is not None and lay.layout == "NHWC" and info.rank == 4:
                view = view_for(info.shape, "NHWC", out)
            elif info.rank == 4 and (lay is None or lay.layout == "NCHW"):
                view = IDENTITY
            else:
                continue
            shape = view.map_shape(info.shape)
            layers.append(Layer(len(layers), out, node.op_type, node.name, shape, view,  # type: ignore[arg-type]
                                tuple(info.shape), guessed, out in inputs))
    outputs = _output_maps(model, dynamic)
    layers = [dataclasses.replace(layer, output_map=True) if layer.name in outputs else layer for layer in layers]
    return LayerFacts(layers, blocks)


def candidate_layers(
    model: onnx.ModelProto, shapes: Mapping[str, TensorInfo], input_layout: str = "NCHW"
) -> list[Layer]:
    """The candidate layers of ``layer_facts``."""
    return layer_facts(model, shapes, input_layout).layers


def _wide(layer: Layer) -> bool:
    # A text recognizer's last maps are one row high (N, C, 1, W/4): a map along the line, which
    # is what its CAM should show. Only pooled (1, 1) maps carry no place.
    spatial = layer.spatial
    return spatial is not None and spatial[0] * spatial[1] > 1


def auto_layer(layers: Sequence[Layer], model_name: str = "model") -> Layer:
    """The layer ``layer='auto'`` picks.

    Transformers: the input of the last attention block (what its first normalisation reads; the
    class token's gradient w.r.t. the last block's own output patch tokens is zero). Hybrids whose
    convolutional stage follows the last attention block, and CNNs: the last map with spatial size
    > 1 whose layout the graph fixes, never a model output (or a map that only reshapes or activates
    into one); a layout guess only where there is nothing else.
    """
    usable = [layer for layer in layers if _wide(layer) and not layer.output_map]
    last_block = max((layer.index for layer in usable if layer.block_input), default=None)
    known = [layer for layer in usable if not layer.guessed]
    if last_block is not None and not any(
        layer.index > last_block and layer.view.is_identity for layer in known
    ):
        return next(layer for layer in usable if layer.index == last_block)
    for group in (known, usable):
        if group:
            return group[-1]
    raise LayerNotFoundError(
        f"{model_name} has no feature map with spatial size > 1 besides its outputs, so `layer='auto'` cannot pick "
        "one: name a layer explicitly (see `onnxcam layers MODEL`)"
    )


def would_work(layers: Sequence[Layer], block: AttentionBlock | None = None) -> str:
    """A layer to suggest in an error: the block's input if it is a candidate, else the auto layer."""
    chosen = next((layer for layer in layers if block is not None and layer.name == block.x), None)
    if chosen is None:
        try:
            chosen = auto_layer(layers)
        except LayerNotFoundError:
            return "a tensor listed by `onnxcam layers MODEL`"
    shape = format_shape(chosen.tensor_shape or chosen.shape)
    return f"{chosen.name!r} {shape} ({chosen.grid})"


def resolve_layer(
    name: str,
    layers: Sequence[Layer],
    shapes: Mapping[str, TensorInfo],
    model_name: str = "model",
    blocks: Sequence[AttentionBlock] = (),
) -> Layer:
    """Resolve ``name`` (exact tensor name, node name, unique suffix, or ``auto``) to a candidate layer."""
    if name == "auto":
        return auto_layer(layers, model_name)
    by_name = {layer.name: layer for layer in layers}
    if name in by_name:
        return by_name[name]
    info = shapes.get(name)
    block = next((b for b in blocks if name in b.inside), None)
    if info is not None and block is not None:
        raise LayerShapeError(
            f"tensor {name!r} of {model_name} {format_shape(info.shape)} is inside an attention block (heads, "
            f"scores or windows, not a feature map); use the block's input {would_work(layers, block)} or "
            "layer='auto'"
        )
    if info is not None:
        raise LayerShapeError(
            f"tensor {name!r} of {model_name} has shape {format_shape(info.shape)}, not a feature map CAMs can "
            f"read ((N, C, h, w), channels-last, or tokens (N, prefix + h*w, D)); a layer that would work: "
            f"{would_work(layers)}"
        )
    by_node = [layer for layer in layers if layer.node_name == name]
    if len(by_node) == 1:
        return by_node[0]
    matches = by_node or [layer for layer in layers if layer.name.endswith(name) or layer.node_name.endswith(name)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        listed = ", ".join(repr(m.name) for m in matches[:6]) + (" ..." if len(matches) > 6 else "")
        raise AmbiguousLayerError(
            f"layer {name!r} matches {len(matches)} tensors of {model_name}: {listed}; give the full tensor name"
        )
    close = difflib.get_close_matches(name, [layer.name for layer in layers], n=5, cutoff=0.4)
    hint = f"; close matches: {', '.join(repr(c) for c in close)}" if close else ""
    raise LayerNotFoundError(
        f"layer {name!r} not found among the {len(layers)} feature tensors of {model_name}{hint}; "
        "list them with `onnxcam layers MODEL` or use layer='auto'"
    )


def viewed_layer(
    name: str,
    model: onnx.ModelProto,
    layers: Sequence[Layer],
    shapes: Mapping[str, TensorInfo],
    view: ViewSpec,
    model_name: str = "model",
    blocks: Sequence[AttentionBlock] = (),
) -> Layer:
    """The layer ``name`` seen through ``view`` (see ``onnxcam.views.view_for``).

    ``name`` is a tensor name, a node name or a candidate layer's name; any float tensor produced
    by a node qualifies, whatever its rank, as long as the view can read its shape.
    """
    if name == "auto":
        raise ArgumentError(
            f"layer='auto' picks among {model_name}'s feature maps with their own views; with view={view!r} name the "
            "tensor to view (see `onnxcam layers MODEL`)"
        )
    nodes = {o: node for node in model.graph.node for o in node.output if o}
    tensor = name if name in nodes else None
    if tensor is None:
        by_node = [o for node in model.graph.node if node.name == name for o in node.output if o]
        tensor = by_node[0] if len(by_node) == 1 else None
    if tensor is None:
        tensor = resolve_layer(name, layers, shapes, model_name, blocks).name
    info = shapes.get(tensor)
    if info is None or info.shape is None or not info.is_float:
        raise LayerShapeError(
            f"tensor {tensor!r} of {model_name} has no known float shape, so no view can read it: pick a tensor "
            "listed by `onnxcam layers MODEL`"
        )
    block = next((b for b in blocks if tensor in b.inside), None)
    try:
        fv = view_for(info.shape, view, f"tensor {tensor!r} of {model_name} {format_shape(info.shape)}")
    except LayerShapeError as e:
        where = " (it is inside an attention block)" if block is not None else ""
        raise LayerShapeError(f"{e}{where}; a layer that would work: {would_work(layers, block)}") from None
    node = nodes[tensor]
    index = next((layer.index for layer in layers if layer.name == tensor), -1)
    return Layer(index, tensor, node.op_type, node.name, fv.map_shape(info.shape),  # type: ignore[arg-type]
                 fv, tuple(info.shape))
