"""Candidate feature tensors of a model and how a user's layer name resolves to one."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import onnx

from onnxcam.errors import AmbiguousLayerError, ArgumentError, LayerNotFoundError, LayerShapeError
from onnxcam.graph.shapes import Dim, TensorInfo, format_shape
from onnxcam.views import IDENTITY, FeatureView, ViewSpec, view_for


@dataclass(frozen=True)
class Layer:
    """A feature tensor a CAM can be computed at, and how it is seen as a feature map.

    ``shape`` is the map's ``(N, C, h, w)`` at the model's input size; ``view`` turns the tensor
    (of ``tensor_shape``, which differs for channels-last or token tensors) into that map.
    """

    index: int
    name: str
    op_type: str
    node_name: str
    shape: tuple[Dim, ...]
    view: FeatureView = IDENTITY
    tensor_shape: tuple[Dim, ...] | None = None

    @property
    def channels(self) -> int | None:
        c = self.shape[1]
        return c if isinstance(c, int) else None

    @property
    def spatial(self) -> tuple[int, int] | None:
        h, w = self.shape[2], self.shape[3]
        return (h, w) if isinstance(h, int) and isinstance(w, int) else None


def candidate_layers(model: onnx.ModelProto, shapes: Mapping[str, TensorInfo]) -> list[Layer]:
    """Every 4-D float tensor produced by a node, in topological (graph) order.

    Constant subgraphs are skipped: a tensor that does not depend on the input cannot be explained.
    """
    graph = model.graph
    dynamic = {i.name for i in graph.input} - {init.name for init in graph.initializer}
    layers: list[Layer] = []
    for node in graph.node:
        if not any(name in dynamic for name in node.input if name):
            continue
        for out in node.output:
            if not out:
                continue
            dynamic.add(out)
            info = shapes.get(out)
            if info is None or not info.is_float or info.rank != 4 or info.shape is None:
                continue
            layers.append(Layer(len(layers), out, node.op_type, node.name, info.shape))
    return layers


def auto_layer(layers: Sequence[Layer], model_name: str = "model") -> Layer:
    """The last candidate with spatial size > 1: usually the last convolutional stage."""
    for layer in reversed(layers):
        spatial = layer.spatial
        if spatial is not None and spatial[0] > 1 and spatial[1] > 1:
            return layer
    raise LayerNotFoundError(
        f"{model_name} has no 4-D feature tensor with spatial size > 1, so `layer='auto'` cannot pick one: "
        "name a layer explicitly (see `onnxcam layers MODEL`)"
    )


def resolve_layer(
    name: str,
    layers: Sequence[Layer],
    shapes: Mapping[str, TensorInfo],
    model_name: str = "model",
) -> Layer:
    """Resolve ``name`` (exact tensor name, node name, unique suffix, or ``auto``) to a candidate layer."""
    if name == "auto":
        return auto_layer(layers, model_name)
    by_name = {layer.name: layer for layer in layers}
    if name in by_name:
        return by_name[name]
    info = shapes.get(name)
    if info is not None:
        raise LayerShapeError(
            f"tensor {name!r} of {model_name} has shape {format_shape(info.shape)}, not a 4-D float feature map "
            "(N, C, h, w): CAMs need one; pick a tensor listed by `onnxcam layers MODEL`"
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
) -> Layer:
    """The layer ``name`` seen through ``view`` (see ``onnxcam.views.view_for``).

    ``name`` is a tensor name, a node name or a candidate layer's name; any float tensor produced
    by a node qualifies, whatever its rank, as long as the view can read its shape.
    """
    if name == "auto":
        raise ArgumentError(
            f"layer='auto' picks among {model_name}'s NCHW feature maps; with view={view!r} name the tensor to "
            "view (see `onnxcam layers MODEL`)"
        )
    nodes = {o: node for node in model.graph.node for o in node.output if o}
    tensor = name if name in nodes else None
    if tensor is None:
        by_node = [o for node in model.graph.node if node.name == name for o in node.output if o]
        tensor = by_node[0] if len(by_node) == 1 else None
    if tensor is None:
        tensor = resolve_layer(name, layers, shapes, model_name).name
    info = shapes.get(tensor)
    if info is None or info.shape is None or not info.is_float:
        raise LayerShapeError(
            f"tensor {tensor!r} of {model_name} has no known float shape, so no view can read it: pick a tensor "
            "listed by `onnxcam layers MODEL`"
        )
    fv = view_for(info.shape, view, f"tensor {tensor!r} of {model_name}")
    node = nodes[tensor]
    index = next((layer.index for layer in layers if layer.name == tensor), -1)
    return Layer(index, tensor, node.op_type, node.name, fv.map_shape(info.shape),  # type: ignore[arg-type]
                 fv, tuple(info.shape))
