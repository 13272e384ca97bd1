"""``Model``: one loaded ONNX model, its input contract, candidate layers, splits and sessions.

The data flow reads in one direction: load -> pick layer -> split -> run body -> run head or the
gradient graph. Shape probes, splits and the forward, body and head sessions are cached on the
``Model``; gradient graphs and their sessions on its ``gradient_engine`` (``onnxcam.engine``), which
calls the model and is never called by it except through ``gradients``. A method called repeatedly
builds nothing twice.
"""

from __future__ import annotations

import os
import warnings
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

# Imported for its effect: it registers the detection task with onnxcam.tasks.detect_task, so every
# loaded model can be recognised as a detector.
import onnxcam.detection  # noqa: F401
from onnxcam.detection.end2end import pre_nms
from onnxcam.engine import GradientEngine, GradientMode, Gradients
from onnxcam.errors import ArgumentError, InputError, OnnxCamWarning, OnnxRuntimeError, UnsupportedModelError
from onnxcam.gradients.quant_ops import integer_op_count
from onnxcam.graph.const_fold import shape_skeleton, value_infos
from onnxcam.graph.cost import graph_macs
from onnxcam.graph.fold import fold_shape_computations
from onnxcam.graph.fuse import fuse_attention
from onnxcam.graph.inputs import fixed_inputs
from onnxcam.graph.outputs import ExplainedGraph, explained_graph
from onnxcam.graph.quant_taps import expose_int8_activations
from onnxcam.graph.select_early import select_early
from onnxcam.graph.shapes import Dim, TensorInfo, format_shape, tensor_infos, with_static_inputs
from onnxcam.graph.split import Split, split_model, upstream_frontier
from onnxcam.layers import Layer, LayerFacts, layer_facts, resolve_layer, viewed_layer
from onnxcam.loading import read_model
from onnxcam.runtime import Device, check_device, make_session, run_batched, session_device
from onnxcam.targets import TargetSpec
from onnxcam.tasks import OutputShapes, Task, detect_task
from onnxcam.views import ViewSpec, as_maps

LayerSpec = str | Sequence[str]
# Integer element types an image input may have (pixel values, e.g. uint8 0..255).
IMAGE_INT_TYPES = frozenset({onnx.TensorProto.UINT8, onnx.TensorProto.INT8, onnx.TensorProto.UINT16,
                             onnx.TensorProto.INT32})
# One view for every layer, or a view per layer name (layers without one are NCHW).
ViewsSpec = ViewSpec | Mapping[str, ViewSpec]


@dataclass(frozen=True)
class InputSpec:
    """The model's image input: name, layout, (C, H, W) size and batch constraint."""

    name: str
    layout: str  # "NCHW" or "NHWC"
    channels: int
    height: int
    width: int
    batch: Dim  # an int for a fixed-batch model, else its symbol
    elem_type: int

    @property
    def size(self) -> tuple[int, int]:
        return (self.height, self.width)

    def shape(self, n: int) -> tuple[int, ...]:
        if self.layout == "NCHW":
            return (n, self.channels, self.height, self.width)
        return (n, self.height, self.width, self.channels)

    @property
    def max_batch(self) -> int | None:
        return self.batch if isinstance(self.batch, int) else None


def _guess_layout(shape: tuple[Dim, ...], layout: str | None) -> str:
    if layout is not None:
        if layout not in ("NCHW", "NHWC"):
            raise ArgumentError(f"unknown layout {layout!r}: use NCHW or NHWC")
        return layout
    c_first, c_last = shape[1], shape[3]
    small = (1, 3, 4)
    if c_last in small and c_first not in small:
        return "NHWC"
    return "NCHW"


class Model:
    """An ONNX model ready for CAMs. Create with ``onnxcam.load``."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        device: str = "auto",
        input_size: tuple[int, int] | None = None,
        layout: str | None = None,
        threads: int | None = None,
        extra_inputs: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.name = self.path.name
        self.requested_device: Device = check_device(device)
        self.threads = threads
        self.proto = read_model(self.path)
        self.proto = self._before_nms(self.proto)
        # QOperator int8 models pass uint8 tensors between ops: float views of them (which leave the
        # computation bit for bit as it was) are the feature maps a CAM can use.
        self.proto, self.int8_views = expose_int8_activations(self.proto)
        self.extra_inputs = {k: np.asarray(v) for k, v in (extra_inputs or {}).items()}
        self.input = self._find_input(input_size, layout)
        if self.extra_inputs:
            # An in-memory copy with the extras as constants: the file is never touched.
            self.proto = fixed_inputs(self.proto, self.extra_inputs, self.input.name)
        skeleton, folded = shape_skeleton(self.proto)
        shaped = with_static_inputs(skeleton, {self.input.name: self._input_dims(self.input.batch)})
        self._infos: dict[str, TensorInfo] = {**tensor_infos(shaped), **value_infos(folded)}
        self._probe_missing_shapes()
        # What every run, split and gradient graph works on: the model plus the logits behind a final
        # Softmax / Sigmoid, with every output batch-first (see onnxcam.graph.outputs).
        self.explained: ExplainedGraph = explained_graph(self.proto, self._infos, self.input.batch)
        self.graph: onnx.ModelProto = self.explained.proto
        self._infos = self.explained.infos
        self.outputs: tuple[str, ...] = self.explained.names
        self._facts: LayerFacts | None = None
        self._warned_layouts: set[str] = set()
        # What the exporter wrote (ultralytics: task, imgsz, names, stride), for the task's reading.
        self.metadata: dict[str, str] = {p.key: p.value for p in self.proto.metadata_props}
        self._splits: dict[tuple[str, ...], Split] = {}
        self._frontiers: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._costs: dict[tuple[str, ...], float] = {}
        self._last_checked: weakref.ref[np.ndarray] | None = None
        self._sessions: dict[tuple[Any, ...], ort.InferenceSession] = {}
        self._device: str | None = None
        self._task: Task | None = None
        self.gradient_engine = GradientEngine(self)
        # onnxruntime fuses QuantizeLinear/DequantizeLinear around convolutions into int8 kernels
        # only when the whole pattern is in one session; a split would change the arithmetic by up to
        # a quantisation step. Basic optimisation keeps QDQ as float simulation in every session, so
        # the forward, the body/head and the gradient graph compute exactly the same function.
        self.quantized = integer_op_count(self.proto) > 0 or any(
            n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in self.proto.graph.node)
        self.optimization = "basic" if self.quantized else "all"
        # Body and head sessions and gradient graphs run a transformer's last ops on the class token
        # only, body and head its attention as one kernel (exact up to float summation order); off,
        # they run the graph as exported (parity tests compare both).
        self.select_rows = True

    def _before_nms(self, proto: onnx.ModelProto) -> onnx.ModelProto:
        """An end2end detector (NonMaxSuppression inside) as the tensors its NMS reads.

        After NMS the kept boxes are gathered by index: how many depends on the image, and a kept score
        has no gradient to the predictions NMS compared it with. Decoding and NMS then run in numpy
        (``onnxcam.detection.decode``), where every kept detection keeps its gradients.
        """
        found = pre_nms(proto)
        if found is None:
            return proto
        said = ", ".join(f"{k} {v:g}" for k, v in (("iou", found.iou), ("score", found.score)) if v is not None)
        warnings.warn(
            f"{self.name} ends in NonMaxSuppression: explained through the boxes and scores it reads, with NMS "
            f"run by onnxcam (set its thresholds with --conf / --iou{'; the graph used ' + said if said else ''})",
            OnnxCamWarning, stacklevel=3,
        )
        return found.model

    # -- input contract -------------------------------------------------------------------------
    def _find_input(self, input_size: tuple[int, int] | None, layout: str | None) -> InputSpec:
        graph = self.proto.graph
        inits = {i.name for i in graph.initializer}
        inputs = [i for i in graph.input if i.name not in inits]
        if not inputs:
            raise UnsupportedModelError(f"{self.name} has no graph input: onnxcam explains models that take an image")
        infos = tensor_infos(self.proto)
        images = [i for i in inputs if infos[i.name].rank == 4 and (infos[i.name].is_float or
                                                                    infos[i.name].elem_type in IMAGE_INT_TYPES)]
        unknown = [n for n in self.extra_inputs if n not in {i.name for i in inputs}]
        if unknown:
            raise ArgumentError(
                f"{self.name} has no input {unknown[0]!r} to fix: its inputs are "
                f"{', '.join(i.name for i in inputs)}"
            )
        extras = [i for i in inputs if i.name in self.extra_inputs]
        inputs = [i for i in inputs if i.name not in self.extra_inputs]
        images = [i for i in images if i.name not in self.extra_inputs]
        if len(inputs) > 1:
            names = ", ".join(f"{i.name}{format_shape(infos[i.name].shape)}" for i in inputs)
            others = ", ".join(f"{i.name}=..." for i in inputs if i not in images[:1])
            raise UnsupportedModelError(
                f"{self.name} has {len(inputs)} inputs ({names}); onnxcam explains image models with one varying "
                f"input: give the others fixed values with extra_inputs= (CLI: --input NAME=VALUE, e.g. {others})"
            )
        if not inputs:
            raise UnsupportedModelError(f"{self.name}: extra_inputs fixes every input ({len(extras)}); leave the image")
        if not images:
            info = infos[inputs[0].name]
            raise UnsupportedModelError(
                f"{self.name}'s input {info.name!r} has shape {format_shape(info.shape)}, not an image batch "
                "(N, C, H, W) or (N, H, W, C) of floats or uint8: onnxcam explains vision models with one image input"
            )
        info = infos[images[0].name]
        assert info.shape is not None
        lay = _guess_layout(info.shape, layout)
        c, h, w = (info.shape[1], info.shape[2], info.shape[3]) if lay == "NCHW" else (
            info.shape[3], info.shape[1], info.shape[2])
        if not isinstance(c, int):
            raise UnsupportedModelError(
                f"{self.name}'s input {info.name!r} has shape {format_shape(info.shape)} with an unknown channel "
                "count: pass layout= to say where the channels are"
            )
        if input_size is not None:
            h, w = input_size
        if not isinstance(h, int) or not isinstance(w, int):
            raise ArgumentError(
                f"{self.name}'s input {info.name!r} has a dynamic spatial size {format_shape(info.shape)}: "
                "pass input_size=(H, W) (CLI: --size HxW)"
            )
        batch = info.shape[0]
        if batch is None or (isinstance(batch, int) and batch <= 0):
            batch = "N"
        return InputSpec(info.name, lay, c, h, w, batch, info.elem_type)

    def _input_dims(self, batch: Dim) -> tuple[Dim, ...]:
        spec = self.input
        if spec.layout == "NCHW":
            return (batch, spec.channels, spec.height, spec.width)
        return (batch, spec.height, spec.width, spec.channels)

    def _probe_missing_shapes(self) -> None:
        """Shapes that inference could not derive are read off one onnxruntime run at batch 1."""
        def unknown(name: str) -> bool:
            info = self._infos.get(name)
            if info is None or info.shape is None:
                return True
            return not all(isinstance(d, int) for d in info.shape[1:])

        missing = [o for n in self.proto.graph.node for o in n.output if o and unknown(o)]
        if not missing:
            return
        probe = onnx.ModelProto()
        probe.CopyFrom(self.proto)
        probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in missing)
        # Basic optimisation: the probe runs once on one image, so session build time dominates.
        sess = make_session(probe, "cpu", self.threads, what=f"shape probe of {self.name}", optimization="basic")
        x = np.zeros(self.input.shape(1), dtype=np.float32)
        values = sess.run(missing, {self.input.name: x.astype(_np_dtype(self.input.elem_type))})
        batch = self.input.batch
        for name, value in zip(missing, values):
            arr = np.asarray(value)
            if arr.dtype.kind not in "fiub":
                continue
            shape: tuple[Dim, ...] = tuple(int(d) for d in arr.shape)
            if len(shape) >= 1 and not isinstance(batch, int) and shape[0] == 1:
                shape = (batch,) + shape[1:]
            self._infos[name] = TensorInfo(name, onnx.helper.np_dtype_to_tensor_dtype(arr.dtype), shape)

    # -- device -----------------------------------------------------------------------------------
    @property
    def device(self) -> str:
        """Where sessions actually run: ``cuda`` or ``cpu`` (``auto`` resolved on first use)."""
        if self._device is None:
            self.session("forward")
        assert self._device is not None
        return self._device

    # -- layers -----------------------------------------------------------------------------------
    def layer_facts(self) -> LayerFacts:
        """Candidate layers and attention blocks (see ``onnxcam.layers.layer_facts``), cached."""
        if self._facts is None:
            facts = layer_facts(self.proto, self._infos, self.input.layout)
            # The logits the explained graph adds are outputs, never a layer to explain.
            logits = {o.name for o in self.explained.outputs if o.logits_of is not None}
            if logits:
                kept = [c for c in facts.layers if c.name not in logits]
                facts = LayerFacts([replace(c, index=k) for k, c in enumerate(kept)], facts.blocks)
            self._facts = facts
        return self._facts

    def layers(self) -> list[Layer]:
        """Candidate feature tensors, each with its view (NCHW, channels-last, tokens), in graph order."""
        return self.layer_facts().layers

    def layer(self, name: str = "auto", view: ViewSpec = None) -> Layer:
        """Resolve a layer name (exact tensor, node name, unique suffix or ``auto``).

        ``view``: how the tensor is seen as a feature map (``"NHWC"``, ``"tokens"``, ``"tokens:1"``
        or a ``FeatureView``; see ``onnxcam.views``); None for the view ``layers()`` lists with it.
        Warns (once per layer) when the layer's layout is a guess.
        """
        facts = self.layer_facts()
        if view is None:
            picked = self.task.default_layers(self) if name == "auto" else None
            found = resolve_layer(picked[0] if picked else name, facts.layers, self._infos, self.name, facts.blocks)
            if found.guessed and found.name not in self._warned_layouts:
                self._warned_layouts.add(found.name)
                shape = format_shape(found.tensor_shape or found.shape)
                warnings.warn(
                    f"{self.name}: the layout of layer {found.name!r} {shape} "
                    "is a guess (no convolution, transpose or normalisation fixes it), read as NCHW: check the map, "
                    "or pass view='NHWC' / 'tokens' if its channels are elsewhere",
                    OnnxCamWarning,
                    stacklevel=3,
                )
            return found
        return viewed_layer(name, self.proto, facts.layers, self._infos, view, self.name, facts.blocks)

    def select_layers(self, layer: LayerSpec, view: ViewsSpec = None) -> tuple[Layer, ...]:
        """The layers named by ``layer`` (one spec or a list), each with its view, duplicates dropped."""
        # A task may mean several layers by "auto" (a detector: the maps feeding its head, one per stride).
        picked = self.task.default_layers(self) if layer == "auto" and view is None else None
        names = list(picked) if picked else [layer] if isinstance(layer, str) else list(layer)
        if not names:
            raise ArgumentError("no layer given: pass a layer name, a list of names, or 'auto'")
        chosen: dict[str, Layer] = {}
        for n in names:
            spec = view.get(n) if isinstance(view, Mapping) else view
            found = self.layer(n, spec)
            chosen.setdefault(found.name, found)
        return tuple(chosen.values())

    def resolve_layers(self, layer: LayerSpec, view: ViewsSpec = None) -> tuple[str, ...]:
        """Tensor names of the layers named by ``layer``."""
        return tuple(found.name for found in self.select_layers(layer, view))

    @property
    def output_shapes(self) -> OutputShapes:
        """Per-image shapes of the explained outputs (batch axis dropped; unknown ones empty), with
        the logits behind each final activation (see ``onnxcam.graph.outputs``)."""
        shapes = []
        for name in self.outputs:
            info = self._infos.get(name)
            shapes.append(tuple(info.shape[1:]) if info is not None and info.shape else ())
        activations = {k: o.activation for k, o in enumerate(self.explained.outputs) if o.activation}
        return OutputShapes(shapes, self.explained.logits(), activations)

    @property
    def task(self) -> Task:
        """What the outputs mean, read from their shapes (see ``onnxcam.tasks.detect_task``)."""
        if self._task is None:
            self._task = detect_task(self.output_shapes, metadata={
                "imgsz": str(list(self.input.size)), **self.metadata})
        return self._task

    def tensor_info(self, name: str) -> TensorInfo:
        return self._infos[name]

    def release(self) -> None:
        """Drop every onnxruntime session, split and gradient graph built so far (rebuilt when next
        needed): frees their memory between jobs without reloading the model."""
        self._sessions.clear()
        self._splits.clear()
        self.gradient_engine.release()

    # -- splits and sessions ----------------------------------------------------------------------
    def split(self, cut: Sequence[str]) -> Split:
        """The body/head split at ``cut`` (tensor names), cached."""
        key = tuple(cut)
        if key not in self._splits:
            self._splits[key] = split_model(self.graph, key, self._infos, batch_dim=self.input.batch)
        return self._splits[key]

    def head_share(self, cut: Sequence[str]) -> float:
        """The head's share of the model's multiply-accumulates (0..1) at ``cut``, cached."""
        key = ("head_share",) + tuple(cut)
        if key not in self._costs:
            total = graph_macs(self.graph.graph.node, self._infos)
            head = graph_macs(self.split(cut).head.graph.node, self._infos)
            self._costs[key] = head / total if total else 1.0
        return self._costs[key]

    def frontier(self, names: tuple[str, ...]) -> tuple[str, ...]:
        """The tensors of ``names`` no other of them feeds (where to cut for gradients at all), cached."""
        if names not in self._frontiers:
            self._frontiers[names] = upstream_frontier(self.graph, names)
        return self._frontiers[names]

    def session(self, kind: str, cut: tuple[str, ...] = ()) -> ort.InferenceSession:
        """A cached session: ``forward`` (the model), or ``body`` / ``head`` of the split at ``cut``."""
        cache_key = (kind,) + tuple(cut)
        sess = self._sessions.get(cache_key)
        if sess is None:
            if kind == "forward":
                proto: onnx.ModelProto = self.graph
            elif kind == "body":
                proto = self.split(cut).body
            elif kind == "head":
                proto = self.split(cut).head
            else:
                raise ArgumentError(f"unknown session kind {kind!r}: use forward, body or head")
            what = f"{kind} of {self.name}"
            if kind == "forward":
                # ``forward`` stays the graph as exported: predictions are onnxruntime's on the user's file.
                sess = self.new_session(proto, what)
            else:
                # The body and head run what explanations need faster (the body's graph outputs keep
                # their values anyway).
                proto = self._select_early(proto, cut)
                fused, n = (proto, 0)
                if self.select_rows:
                    try:
                        fused, n = fuse_attention(proto, self._infos, keep=self._asked(cut))
                    except Exception:  # an optimisation: a graph it misreads runs as it is
                        pass
                try:
                    sess = self.new_session(fused, what)
                except OnnxRuntimeError:
                    if not n:
                        raise
                    sess = self.new_session(proto, what)  # an onnxruntime build without the contrib kernel
            self._sessions[cache_key] = sess
        return sess

    def drop_session(self, kind: str, cut: tuple[str, ...] = ()) -> None:
        """Forget a cached session (``session(kind, cut)`` builds it again when next asked)."""
        self._sessions.pop((kind,) + tuple(cut), None)

    def _select_early(self, proto: onnx.ModelProto, keep: Sequence[str] | None) -> onnx.ModelProto:
        """``proto`` computing only the rows its constant selections keep (a transformer's class token:
        see ``onnxcam.graph.select_early``), or ``proto`` itself when nothing moves or ``select_rows``
        is off. ``keep`` keeps its full values; None: every layer asked for so far (``frontier``)."""
        if not self.select_rows:
            return proto
        try:
            return select_early(proto, self._infos, keep=self._asked(()) if keep is None else keep)[0]
        except Exception:  # an optimisation: a graph it misreads runs as it is
            return proto

    def _asked(self, cut: Sequence[str]) -> set[str]:
        """``cut`` and every layer asked for so far (``frontier``): tensors graph passes leave whole."""
        return {name for names in self._frontiers for name in names}.union(cut)

    def new_session(self, proto: onnx.ModelProto, what: str) -> ort.InferenceSession:
        """An uncached session of ``proto`` on the model's device, threads and optimisation level."""
        device: Device = self.requested_device if self._device is None else self._device  # type: ignore[assignment]
        sess = make_session(proto, device, self.threads, what=what, optimization=self.optimization)
        self._device = session_device(sess)
        return sess

    def batch_limit(self, batch_size: int) -> int:
        if batch_size < 1:
            raise ArgumentError(f"batch size must be >= 1, got {batch_size}")
        limit = self.input.max_batch
        return batch_size if limit is None else min(batch_size, limit)

    # -- running ----------------------------------------------------------------------------------
    def check_input(self, x: np.ndarray) -> np.ndarray:
        """Validate a preprocessed batch against the model's input; returns it in the model's dtype."""
        last = self._last_checked() if self._last_checked is not None else None
        if x is last:  # an explainer checks its batch, then runs the body on the very same array
            return x
        if (last is not None and isinstance(x, np.ndarray) and last.ndim == x.ndim >= 1 and last.strides[0] == 0
                and x.shape[0] == 1 and x.ctypes.data == last.ctypes.data and x.dtype == last.dtype
                and x.shape[1:] == last.shape[1:] and x.strides[1:] == last.strides[1:]):
            # The row a checked repeated batch repeats (GradientEngine.repeat runs the body on it).
            return x
        x = np.asarray(x)
        if x.dtype.kind not in "fiub":
            raise InputError(f"input array has dtype {x.dtype}; pass a numeric float32 batch {self.input.shape(1)}")
        if x.ndim >= 1 and x.shape[0] == 0:
            raise InputError(f"input batch {x.shape} is empty: pass at least one image")
        if x.ndim == 3:
            raise InputError(
                f"got one image of shape {x.shape}; {self.name} takes a batch {self.input.shape(1)}: add a batch axis "
                "(x[None])"
            )
        expected = self.input.shape(x.shape[0] if x.ndim == 4 else 1)
        if x.shape != expected:
            other = "NHWC" if self.input.layout == "NCHW" else "NCHW"
            hint = ""
            if x.ndim == 4 and tuple(np.transpose(np.empty(x.shape, dtype=np.uint8),
                                                  (0, 2, 3, 1) if other == "NCHW" else (0, 3, 1, 2)).shape) == expected:
                hint = f" (the array looks {other}; the model takes {self.input.layout})"
            raise InputError(
                f"input of shape {x.shape} does not fit {self.name}'s input {self.input.name!r} {expected}{hint}: "
                "preprocess with onnxcam.preprocess / the model's size and layout"
            )
        # A sum is NaN/Inf if some element is: a cheap screen, confirmed element-wise before failing.
        # Rows repeated by ``GradientEngine.repeat`` (a zero stride) are one image: screened once.
        screen = x[:1] if x.ndim >= 1 and x.strides[0] == 0 else x
        if not np.isfinite(screen.sum()) and not np.all(np.isfinite(screen)):
            raise InputError(f"input batch {x.shape} contains NaN or Inf values: check the preprocessing")
        dtype = _np_dtype(self.input.elem_type)
        if dtype.kind in "iu" and x.dtype.kind == "f":
            # An integer image input takes pixel values: round, and clip to the type's range.
            limits = np.iinfo(dtype)
            x = np.clip(np.rint(x), limits.min, limits.max)
        checked = x.astype(dtype, copy=False)
        self._last_checked = weakref.ref(checked)
        return checked

    def forward(self, x: np.ndarray, batch_size: int = 16) -> list[np.ndarray]:
        """All model outputs for a preprocessed batch ``x`` (see ``InputSpec.shape``)."""
        x = self.check_input(x)
        outs = run_batched(self.session("forward"), {self.input.name: x}, None, self.batch_limit(batch_size),
                           what=f"model {self.name}", fixed_batch=self.input.max_batch)
        _check_finite(outs, self.outputs, self.name)
        return outs

    def run_body(self, x: np.ndarray, cut: Sequence[str], batch_size: int = 16) -> tuple[dict[str, np.ndarray],
                                                                                       list[np.ndarray]]:
        """Run the body of the split at ``cut``: (head input tensors by name, model outputs)."""
        x = self.check_input(x)
        split = self.split(cut)
        crossing = [n for n in split.head_inputs if n != self.input.name]
        names = crossing + list(split.model_outputs)
        values = run_batched(self.session("body", tuple(cut)), {self.input.name: x}, names,
                             self.batch_limit(batch_size), what=f"body of {self.name}",
                             fixed_batch=self.input.max_batch)
        feeds = dict(zip(crossing, values[: len(crossing)]))
        if self.input.name in split.head_inputs:
            feeds[self.input.name] = x
        outputs = values[len(crossing):]
        _check_finite(outputs, split.model_outputs, self.name)
        return feeds, outputs

    def run_head(self, cut: Sequence[str], feeds: dict[str, np.ndarray], batch_size: int = 16) -> list[np.ndarray]:
        """Run the head of the split at ``cut`` on ``feeds`` (all head inputs); returns its outputs."""
        split = self.split(cut)
        return run_batched(self.session("head", tuple(cut)), {k: feeds[k] for k in split.head_inputs},
                           list(split.head_outputs), self.batch_limit(batch_size), what=f"head of {self.name}",
                           fixed_batch=self.input.max_batch)

    def static_head(self, cut: Sequence[str], n: int, keep: Sequence[str] | None = None) -> onnx.ModelProto:
        """The head of the split at ``cut`` with batch dim fixed to ``n`` (for the gradient builder),
        computing only the rows its outputs read (see ``_select_early``); the tensors of ``keep`` (the
        layers the gradients are taken at) keep their full values, by default every layer asked for."""
        split = self.split(cut)
        dims: dict[str, tuple[Dim, ...]] = {}
        for name in split.head_inputs:
            shape = self._infos[name].shape
            if shape is None:
                raise UnsupportedModelError(f"shape of tensor {name!r} in {self.name} is unknown")
            dims[name] = (n,) + tuple(shape[1:]) if shape and not isinstance(shape[0], int) else tuple(shape)
        return self._select_early(fold_shape_computations(with_static_inputs(split.head, dims)), keep)

    def gradients(
        self,
        x: np.ndarray,
        layer: LayerSpec = "auto",
        targets: TargetSpec = None,
        batch_size: int = 16,
        mode: GradientMode = "auto",
        *,
        view: ViewsSpec = None,
        task: Task | None = None,
    ) -> Gradients:
        """Activations ``(N, C, h, w)``, exact per-sample gradients of each image's target score w.r.t.
        them, and the scores ``(N,)``, at one layer or several (see ``onnxcam.engine``).

        ``targets``: None (the task's default, top-1 class for classifiers), an int, a ``Target``, or
        one entry per image. ``mode``: ``auto`` (gradient graph, finite differences if an op has no
        rule), ``graph``, ``finite``. ``view``: how each layer is seen as a feature map (see
        ``layer``); activations and gradients come back through it. ``task``: overrides ``self.task``.
        """
        chosen = self.select_layers(layer, view)
        g = self.gradient_engine.compute(x, [c.name for c in chosen], targets, task or self.task, batch_size, mode)
        views = {c.name: c.view for c in chosen}
        g.activations, g.gradients = as_maps(g.activations, views), as_maps(g.gradients, views)
        return g

    def gradients_at(
        self,
        x: np.ndarray,
        tensors: Sequence[str],
        targets: TargetSpec = None,
        batch_size: int = 16,
        mode: GradientMode = "auto",
        task: Task | None = None,
    ) -> Gradients:
        """Like ``gradients`` but at exact tensor names in their own layout, the model input included (FullGrad)."""
        return self.gradient_engine.compute(x, tuple(tensors), targets, task or self.task, batch_size, mode)

    def __repr__(self) -> str:
        spec = self.input
        return (f"Model({self.name!r}, input={spec.name!r} {spec.layout} {spec.channels}x{spec.height}x{spec.width}, "
                f"outputs={list(self.outputs)})")


def _np_dtype(elem_type: int) -> np.dtype[Any]:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))


def _check_finite(outputs: Sequence[np.ndarray], names: Sequence[str], model_name: str) -> None:
    for name, value in zip(names, outputs):
        # One pass where all is well: a float64 sum of float32 values is finite exactly when every entry is.
        if value.dtype.kind != "f" or np.isfinite(value.sum(dtype=np.float64)):
            continue
        bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
        if bad:
            raise OnnxRuntimeError(
                f"{model_name} output {name!r} {tuple(value.shape)} contains {bad} NaN/Inf values: the model or its "
                "input is broken (check preprocessing, or the export); onnxcam will not normalise them away"
            )



def load(
    path: str | os.PathLike[str],
    device: str = "auto",
    input_size: tuple[int, int] | None = None,
    layout: str | None = None,
    threads: int | None = None,
    extra_inputs: Mapping[str, Any] | None = None,
) -> Model:
    """Load an ONNX model for explaining. The file is read, never modified.

    ``device``: ``auto`` (CUDA if a CUDA session really starts, else CPU, quietly), ``cpu`` or ``cuda``.
    ``input_size``: (H, W) for models with a dynamic spatial input size. ``layout``: force NCHW/NHWC.
    ``extra_inputs``: fixed values of the inputs beside the image (``{"im_shape": [640, 640],
    "scale_factor": [1, 1]}`` for a Paddle detector); a batch-first one is given for one image.
    """
    return Model(path, device=device, input_size=input_size, layout=layout, threads=threads,
                 extra_inputs=extra_inputs)


__all__ = ["InputSpec", "Model", "load"]
