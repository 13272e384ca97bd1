"""``export_explainer``: one ONNX file returning the model's outputs and their CAMs.

The exported graph is the model, unchanged, plus: the explained class (argmax or a ``target``
input), its one-hot seed, onnxcam's gradient graph of the head (made batch-agnostic, sharing the
model's weights and forward nodes), and each method's arithmetic and post-processing as ONNX ops.
Any ONNX runtime runs it; no Python, no onnxcam at serving time.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcam.detection.task import DetectionTask
from onnxcam.errors import ArgumentError, HeadStructureError, LayerError, OutputError, UnsupportedModelError
from onnxcam.export import arithmetic as ar
from onnxcam.export._graph import GraphWriter, exported_model
from onnxcam.export.conditioning import check_conditioning
from onnxcam.export.detection import DETECTION_OUTPUTS, assemble_detector, check_detection_methods, resolve_options
from onnxcam.export.eigen import eigencam
from onnxcam.export.seed import explained_class, one_hot_seed
from onnxcam.export.splice import SpliceTarget
from onnxcam.gradients.dynamic import build_batch_agnostic
from onnxcam.graph.inspect_head import bias_layers, linear_head_weights
from onnxcam.graph.protos import opset_version
from onnxcam.model import LayerSpec, Model, load
from onnxcam.registry import get_method
from onnxcam.tasks import ClassificationTask, Task, detect_task
from onnxcam.views import FeatureView, ViewSpec

ExportTarget = Literal["top1", "input"]

# Methods whose whole computation is a fixed graph of the image (no sampling, no per-channel reruns).
EXPORTABLE: tuple[str, ...] = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "gradcam-elementwise",
                               "fullgrad", "cam", "eigencam")
_AT_LAYER_GRADIENT = frozenset(EXPORTABLE) - {"fullgrad", "cam", "eigencam"}
CLASS_OUTPUT = "explained_class"
TARGET_INPUT = "target"
# Protobuf cannot serialise a message over 2 GiB; weights go to a side file well before that.
EXTERNAL_DATA_BYTES = 1_800_000_000


def output_name(method: str) -> str:
    """The graph output of ``method``'s maps: ``cam_gradcam``, ``cam_gradcampp``, ``cam_gradcam_elementwise``."""
    return "cam_" + method.replace("++", "pp").replace("-", "_")


@dataclass(frozen=True)
class ExportedExplainer:
    """What ``export_explainer`` wrote: the file, its inputs, and which output holds what."""

    path: Path
    inputs: tuple[str, ...]
    maps: dict[str, str]  # method -> output name, (N, H, W) float32 in [0, 1]; a detector's (N, K, H, W)
    class_output: str
    layers: tuple[str, ...]  # the tensors explained (none for FullGrad alone, which reads every bias layer)
    model_outputs: tuple[str, ...]
    external_data: bool
    # tensor of the model -> the tensor of the exported graph holding d(score)/d(it) (the explained
    # layers; for FullGrad the input and every bias layer; for a detector "<layer>#<rank>"): make them
    # outputs to read what a runtime computed
    gradients: dict[str, str] = field(default_factory=dict)
    # a detector's: detection_boxes (N, K, 4), detection_scores (N, K), detection_classes (N, K); maps (N, K, H, W)
    detection_outputs: tuple[str, ...] = ()

    @property
    def layer(self) -> str | None:
        """The first explained layer (the only one unless several were fused)."""
        return self.layers[0] if self.layers else None


def parse_methods(methods: str | Sequence[str]) -> list[str]:
    """Canonical method names from ``"gradcam,layercam"`` or a list; ArgumentError for those that cannot be exported."""
    raw = methods.split(",") if isinstance(methods, str) else list(methods)
    names: list[str] = []
    for item in raw:
        if not item.strip():
            continue
        name = get_method(item).name
        if name not in EXPORTABLE:
            raise ArgumentError(
                f"method {name!r} cannot be exported into one ONNX graph (it samples noise or reruns the model "
                f"per channel); exportable methods: {', '.join(EXPORTABLE)}"
            )
        if name not in names:
            names.append(name)
    if not names:
        raise ArgumentError(f"no method given: choose from {', '.join(EXPORTABLE)}")
    return names


def export_explainer(
    model: Model | str | os.PathLike[str],
    methods: str | Sequence[str],
    layer: LayerSpec = "auto",
    *,
    path: str | os.PathLike[str],
    target: ExportTarget = "top1",
    view: ViewSpec = None,
    detections: int = 5,
    conf: float | None = None,
    iou: float | None = None,
    task: Task | str | None = None,
) -> ExportedExplainer:
    """Write to ``path`` an ONNX model computing ``model``'s outputs and a CAM per method.

    Outputs: the model's outputs unchanged, ``cam_<method>`` ``(N, H, W)`` float32 in [0, 1] at the
    input size, and ``explained_class`` ``(N,)`` int64. ``target="top1"`` explains each image's top
    class (as onnxcam's default); ``"input"`` adds an int64 input ``target`` ``(N,)`` with the class
    to explain per image. ``layer``: a layer (name or ``"auto"``) or a list of layers, whose maps
    are fused as the Python path fuses them (mean of the per-layer normalised maps); ``view``: their
    layout (NCHW, NHWC, tokens; see ``onnxcam.views``). The batch size stays dynamic when the
    model's is. The file is written atomically; the weights are stored once, in a side file
    ``<name>.data`` when the model is over ~1.8 GB.

    A detector gets its top ``detections`` per image (decoded and NMS'd in the graph with ``conf`` /
    ``iou``, default the task's) and one map per detection: see ``onnxcam.export.detection``.
    ``task``: what the outputs mean, as the explainers' ``task=`` (default: read from the model).

    ``IllConditionedError`` (an ``ArgumentError``): HiResCAM or XGrad-CAM at a layer where float32
    rounding decides the map (a ViT's last block input, whose tokens reach the output only through a
    LayerNorm), measured on a seeded probe batch; the message names the fix (``onnxcam.export.conditioning``).
    """
    if target not in ("top1", "input"):
        raise ArgumentError(f"unknown target {target!r}: use 'top1' (each image's top class) or 'input'")
    names = parse_methods(methods)
    m = model if isinstance(model, Model) else load(model, device="cpu")
    task = m.task if task is None else detect_task(m.output_shapes, task)
    if isinstance(task, DetectionTask) and target == "top1":
        k, conf, iou = resolve_options(task, detections, conf, iou)
        check_detection_methods(names, m.name)
        if layer == "auto":  # the maps feeding the detection head, also where the task was given
            layer = list(task.default_layers(m) or ()) or layer
        proto, gradients = assemble_detector(m, task, names, _features(m, layer, view), _explained_base(m),
                                             _gradient_graph, _as_map, output_name, _batch_dim(m), k, conf, iou)
        saved = _save(proto, Path(path), m, names, m.resolve_layers(layer, view), gradients)
        return replace(saved, class_output=DETECTION_OUTPUTS[2], detection_outputs=DETECTION_OUTPUTS)
    if not isinstance(task, ClassificationTask):
        hint = " (a detector explains its own top detections: leave target='top1')" if task.name == "detect" else ""
        raise UnsupportedModelError(
            f"{m.name}: export explains class scores (N, K) or class maps (N, K, H, W); this model's task is "
            f"{task.name}{hint}"
        )
    # The score the Python path differentiates: the logits where the model ends in Softmax / Sigmoid
    # (onnxcam.graph.outputs adds them to the explained graph), the class picked from the same scores.
    score = m.outputs[task.score_output]
    info = m.tensor_info(score)
    if info.shape is None or len(info.shape) < 2 or not isinstance(info.shape[1], int):
        raise UnsupportedModelError(
            f"{m.name}: output {score!r} has shape {info.shape}; export needs a known class count (axis 1)")
    check_conditioning(m, names, layer, view)
    proto, gradients = _assemble(m, names, layer, view, target, score, len(info.shape), int(info.shape[1]))
    explained = () if names == ["fullgrad"] else m.resolve_layers(layer, view)
    return _save(proto, Path(path), m, names, explained, gradients)


@dataclass(frozen=True)
class _Feature:
    """One explained layer: its tensor, how it is seen as a map, the map's ``(C, h, w)``."""

    name: str
    view: FeatureView
    dims: tuple[int, int, int]


def _features(src: Model, layer: LayerSpec, view: ViewSpec) -> list[_Feature]:
    found = []
    for chosen in src.select_layers(layer, view):
        shape = chosen.shape
        if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
            raise LayerError(f"{src.name}: layer {chosen.name!r} is seen as a map of shape {shape}; export needs a "
                             "static (C, h, w)")
        if chosen.view.is_tokens and chosen.view.grid is None:
            raise LayerError(f"{src.name}: layer {chosen.name!r} is a token sequence without a known grid; pass "
                             "view='tokens:<prefix>' with the model's input size fixed")
        found.append(_Feature(chosen.name, chosen.view, (int(shape[1]), int(shape[2]), int(shape[3]))))  # type: ignore[arg-type]
    return found


def _gradient_graph(src: Model, wrt: tuple[str, ...], seeded: str) -> tuple[onnx.GraphProto, str, dict[str, str],
                                                                             tuple[str, ...]]:
    """The head's gradient graph w.r.t. ``wrt`` for any batch: (graph, seed input, grad outputs, head inputs)."""
    cut = src.frontier(wrt)
    split = src.split(cut)
    io: dict[str, dict[str, str]] = {}

    def build(n: int) -> onnx.ModelProto:
        proto, seeds, grads = src.gradient_engine.gradient_model(cut, wrt, (seeded,), n)
        io["seeds"], io["grads"] = seeds, grads
        return proto

    fixed = src.input.max_batch
    # A value broadcast over the batch (a class token) is read from the model's own weight of that value.
    proto = build(fixed) if fixed is not None else build_batch_agnostic(build, split.head_inputs[0],
                                                                        src.graph.graph.initializer)
    return proto.graph, io["seeds"][seeded], io["grads"], split.head_inputs


def _as_nchw(w: GraphWriter, name: str, layout: str) -> str:
    return name if layout == "NCHW" else w.op("Transpose", [name], perm=[0, 3, 1, 2])


def _as_map(w: GraphWriter, name: str, feature: _Feature) -> str:
    """``FeatureView.to_map`` in ONNX ops: the tensor as ``(N, C, h, w)``.

    Tokens ``(N, prefix + h*w, D)``: the prefix tokens (class, distillation, registers) are sliced
    off and the patch tokens, row-major over the grid, reshaped to ``(N, h, w, D)`` and transposed.
    """
    view = feature.view
    if not view.is_tokens:
        return _as_nchw(w, name, view.layout)
    c, h, wd = feature.dims
    patches = w.slice(name, view.prefix, view.prefix + h * wd, axis=1)
    grid = w.op("Reshape", [patches, w.ints([0, h, wd, c])])
    return w.op("Transpose", [grid], perm=[0, 3, 1, 2])


def _classifier_rows(w: GraphWriter, base: onnx.ModelProto, fc: np.ndarray, category: str) -> str:
    """``(N, C)`` rows of the ``(K, C)`` classifier weight for each image's class, read from the model's
    own initializer where it holds them (as is or transposed), so the weights are not stored twice."""
    for t in base.graph.initializer:
        if tuple(t.dims) not in (fc.shape, fc.shape[::-1]):
            continue
        value = numpy_helper.to_array(t)
        if value.shape == fc.shape and np.array_equal(value, fc):
            return w.op("Gather", [t.name, category], axis=0)
        if value.shape == fc.shape[::-1] and np.array_equal(value.T, fc):
            return w.op("Transpose", [w.op("Gather", [t.name, category], axis=1)], perm=[1, 0])
    return w.op("Gather", [w.const(fc.astype(np.float32)), category], axis=0)


def _pooled_linear_rows(m: Model, features: list[_Feature], seeded: str) -> np.ndarray | None:
    """The ``(K, C)`` classifier weights when the one explained layer is an NCHW map read only through
    global average pooling and a linear layer into ``seeded``; else None (the gradient graph is used)."""
    if len(features) != 1 or not features[0].view.is_identity or m.quantized:
        return None
    try:
        return linear_head_weights(m.graph, features[0].name, seeded, m.name)
    except HeadStructureError:
        return None


def _channel_scaled_sum(w: GraphWriter, terms: str) -> str:
    """``methods.fullgrad._channel_scaled_sum``: per-channel min-max (eps 1e-7), summed over channels."""
    return w.reduce("ReduceSum", ar.normalize(w, terms, (2, 3)), [1], keepdims=0)


def _explained_base(m: Model) -> onnx.ModelProto:
    """The model's explained graph (its nodes, with the logits behind a final activation) returning
    the model's own outputs, unchanged."""
    base = onnx.ModelProto()
    base.CopyFrom(m.graph)
    del base.graph.output[:]
    base.graph.output.extend(m.proto.graph.output)
    return base


def _assemble(m: Model, names: list[str], layer: LayerSpec, view: ViewSpec, target: ExportTarget,
              seeded: str, rank: int, classes: int) -> tuple[onnx.ModelProto, dict[str, str]]:
    base = _explained_base(m)
    opset = opset_version(base)
    size = m.input.size
    spliced = SpliceTarget(base)
    taken = {o for n in base.graph.node for o in n.output} | {i.name for i in base.graph.input}
    for name in [CLASS_OUTPUT, *(output_name(k) for k in names)] + ([TARGET_INPUT] if target == "input" else []):
        if name in taken:
            raise OutputError(f"{m.name} already has a tensor named {name!r}; export cannot add its own of that name")

    head = GraphWriter("target", opset)
    category = explained_class(head, seeded, rank, TARGET_INPUT if target == "input" else None)
    head.op("Identity", [category], out=CLASS_OUTPUT)
    pre_nodes = list(head.nodes)
    maps = GraphWriter("maps", opset)
    seed: str | None = None

    def get_seed() -> str:
        nonlocal seed
        if seed is None:
            n0 = len(head.nodes)
            seed = one_hot_seed(head, seeded, classes, rank, CLASS_OUTPUT)
            pre_nodes.extend(head.nodes[n0:])
        return seed

    per_layer = [k for k in names if k != "fullgrad"]
    features = _features(m, layer, view) if per_layer else []
    acts = {f.name: _as_map(maps, f.name, f) for f in features}
    grads: dict[str, str] = {}
    gradients: dict[str, str] = {}  # tensor of the model -> its gradient's tensor in the exported graph
    pooled = _pooled_linear_rows(m, features, seeded)
    pooled_rows = ""
    if pooled is not None:
        # Layer -> global average pool -> linear: the logit's gradient is the classifier row / (h w)
        # at every position, so Grad-CAM's weights are that row, read in place, and no gradient graph
        # runs for them (the Python path's arithmetic up to rounding). The 1 / (h w) is left to the
        # normalisation (ar.finish's scale).
        pooled_rows = _classifier_rows(maps, base, pooled, CLASS_OUTPUT)
    if any(k in _AT_LAYER_GRADIENT and not (k == "gradcam" and pooled is not None) for k in per_layer):
        # one gradient graph for every layer (as the Python path: one backward, cut at their frontier)
        wrt = tuple(f.name for f in features)
        graph, seed_input, grad_outputs, head_inputs = _gradient_graph(m, wrt, seeded)
        bind = {hi: hi for hi in head_inputs} | {seed_input: get_seed()}
        rename = spliced.splice(graph, bind, "grad")
        gradients.update({f.name: rename[grad_outputs[f.name]] for f in features})
        grads = {f.name: _as_map(maps, gradients[f.name], f) for f in features}
    for k in names:
        if k == "fullgrad":
            raw = _fullgrad(m, spliced, maps, seeded, get_seed, gradients)
            ar.finish(maps, [(raw, size)], size, output_name(k))
            continue
        if k == "gradcam" and pooled is not None:
            h, wd = features[0].dims[1:]
            raw = ar.weighted_sum(maps, acts[features[0].name], pooled_rows)
            ar.finish(maps, [(raw, (h, wd))], size, output_name(k), scale=float(h * wd))
            continue
        raws = [(_raw_map(k, maps, f, acts[f.name], grads.get(f.name, ""), m, base, seeded), f.dims[1:])
                for f in features]
        ar.finish(maps, raws, size, output_name(k))

    g = base.graph
    inputs = list(g.input)
    if target == "input":
        inputs.append(helper.make_tensor_value_info(TARGET_INPUT, onnx.TensorProto.INT64, [_batch_dim(m)]))
    outputs = list(g.output) + [helper.make_tensor_value_info(CLASS_OUTPUT, onnx.TensorProto.INT64, [_batch_dim(m)])]
    outputs += [helper.make_tensor_value_info(output_name(k), onnx.TensorProto.FLOAT, [_batch_dim(m), *size])
                for k in names]
    proto = exported_model(base, list(g.node) + pre_nodes + spliced.nodes + maps.nodes, inputs, outputs,
                           list(g.initializer) + head.initializers + spliced.initializers + maps.initializers)
    return proto, gradients


def _raw_map(k: str, w: GraphWriter, f: _Feature, acts: str, grads: str, m: Model, base: onnx.ModelProto,
             seeded: str) -> str:
    """Method ``k``'s raw map ``(N, h, w)`` at one layer (``acts``, ``grads``: its ``(N, C, h, w)`` maps)."""
    if k in ar.GRADIENT_MAPS:
        return ar.gradient_map(w, k, acts, grads)
    if k == "cam":
        if f.view.layout != "NCHW":
            raise HeadStructureError(f"CAM reads an NCHW layer after global average pooling, not {f.view.describe()} "
                                     f"({f.name!r}): use gradcam")
        # the explained graph: the logits behind a final activation are one of its outputs
        fc = linear_head_weights(m.graph, f.name, seeded, m.name)
        return ar.weighted_sum(w, acts, _classifier_rows(w, base, fc, CLASS_OUTPUT))
    return eigencam(w, acts, *f.dims)


def _batch_dim(m: Model) -> int | str:
    batch = m.input.batch
    return batch if batch is not None else "N"


def _fullgrad(m: Model, spliced: SpliceTarget, w: GraphWriter, seeded: str,
              get_seed: object, gradients: dict[str, str]) -> str:
    inp = m.input.name
    candidates = {layer.name: layer for layer in m.layers()}
    terms = bias_layers(m.proto, candidates)
    wrt = (inp, *(name for name, _ in terms))
    graph, seed_input, grad_outputs, head_inputs = _gradient_graph(m, wrt, seeded)
    bind = {hi: hi for hi in head_inputs} | {seed_input: get_seed()}  # type: ignore[operator]
    rename = spliced.splice(graph, bind, "fullgrad", reuse=False)
    gradients.update({name: rename[grad_outputs[name]] for name in wrt})
    size = m.input.size
    x = _as_nchw(w, inp, m.input.layout)
    gx = _as_nchw(w, rename[grad_outputs[inp]], m.input.layout)
    total = _channel_scaled_sum(w, w.op("Abs", [w.op("Mul", [gx, x])]))
    for name, bias in terms:
        shape = m.tensor_info(name).shape
        h, wd = int(shape[2]), int(shape[3])  # type: ignore[index, arg-type]  # bias_layers: 4-D NCHW candidates
        b = w.const(bias.astype(np.float32).reshape(1, -1, 1, 1))
        term = _channel_scaled_sum(w, w.op("Abs", [w.op("Mul", [b, rename[grad_outputs[name]]])]))
        total = w.op("Add", [total, ar.resize(w, term, (h, wd), size)])
    return total


def _save(proto: onnx.ModelProto, path: Path, m: Model, names: list[str], layers: tuple[str, ...],
          gradients: dict[str, str]) -> ExportedExplainer:
    path = path.expanduser()
    if path.resolve() == m.path.resolve():
        raise ArgumentError(f"refusing to overwrite the model itself ({m.path}): choose another output path")
    if not path.parent.exists():
        raise OutputError(f"output directory {path.parent} does not exist: create it first")
    external = proto.ByteSize() > EXTERNAL_DATA_BYTES
    data_name = path.name + ".data"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp_data = path.with_name(f".{data_name}.{os.getpid()}.tmp")
    try:
        if external:
            onnx.save_model(proto, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=tmp_data.name, size_threshold=1024)
            # the location recorded in the file must be the final name of the side file
            _relocate(tmp, tmp_data.name, data_name)
            os.replace(tmp_data, path.with_name(data_name))
        else:
            with open(tmp, "wb") as f:
                f.write(proto.SerializeToString())
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, tmp_data):
            if leftover.exists():
                leftover.unlink()
    inputs = tuple(i.name for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer})
    return ExportedExplainer(path, inputs, {k: output_name(k) for k in names}, CLASS_OUTPUT, layers,
                             tuple(m.outputs), external, gradients)


def _relocate(file: Path, old: str, new: str) -> None:
    model = onnx.load_model(str(file), load_external_data=False)
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location" and entry.value == old:
                entry.value = new
    with open(file, "wb") as f:
        f.write(model.SerializeToString())
