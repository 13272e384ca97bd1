"""``BaseCAM``: load -> pick layers -> run -> raw maps -> post-process, shared by every method.

A subclass implements ``raw_maps`` (per layer ``(N, h, w)`` maps for a batch); everything else
(target resolution through the task, feature views, aug_smooth, per-layer normalisation and
fusion, warnings for blank maps) lives here, once.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from onnxcam.engine import GradientMode, Gradients
from onnxcam.errors import ArgumentError, OnnxCamWarning
from onnxcam.methods.eigen import SignRule
from onnxcam.model import LayerSpec, Model, ViewsSpec, load
from onnxcam.postprocess import finish_single, fuse_layers, layer_to_image, zero_map_reasons
from onnxcam.targets import Target, TargetSpec, target_scores
from onnxcam.tasks import Task, detect_task
from onnxcam.views import IDENTITY, FeatureView, as_maps


@dataclass
class RawMaps:
    """What ``raw_maps`` returns: per layer ``(N, h, w)`` maps, and what produced them."""

    maps: dict[str, np.ndarray]
    targets: list[Target]
    scores: np.ndarray
    outputs: list[np.ndarray]
    activations: dict[str, np.ndarray] = field(default_factory=dict)
    gradients: dict[str, np.ndarray] = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class Explanation:
    """A batch explained: ``maps`` ``(N, H, W)`` in [0, 1] at input resolution.

    ``layer_maps[layer]`` are the per-layer maps at input resolution, ``raw[layer]`` the raw
    low-resolution maps ``(N, h, w)`` before ReLU/normalisation.
    """

    maps: np.ndarray
    layer_maps: dict[str, np.ndarray]
    raw: dict[str, np.ndarray]
    targets: list[Target]
    scores: np.ndarray
    outputs: list[np.ndarray]
    method: str
    notes: list[str] = field(default_factory=list)


class BaseCAM:
    """Base of every CAM method.

    ``model``: an ``onnxcam.Model`` or a path to an .onnx file. ``layer``: a tensor name, a list of
    names (maps fused as the mean of per-layer normalised maps), or ``"auto"``. ``view``: how the
    layer's tensor is seen as a feature map (``"NHWC"``, ``"tokens"``, ``"tokens:1"``, a
    ``FeatureView``, or a dict per layer name; see ``onnxcam.views``). ``task``: what the outputs
    mean (a ``Task`` or a name from ``onnxcam.tasks.TASKS``; default read from the output shapes).
    ``eigen_sign``: how EigenCAM, EigenGradCAM and ``eigen_smooth`` orient the principal component
    ("activation": with the plain map, deterministic; "reference": LAPACK's sign, as
    pytorch-grad-cam; see ``onnxcam.methods.eigen``).
    """

    name = "base"
    uses_gradients = True
    default_batch_size = 16
    # What ``prepare`` builds: "gradients" (``self.gradients``), "activations" (``self.activations``)
    # or "" for methods that run something else.
    prepares = ""

    def __init__(
        self,
        model: Model | str | os.PathLike[str],
        layer: LayerSpec = "auto",
        *,
        view: ViewsSpec = None,
        task: Task | str | None = None,
        batch_size: int | None = None,
        device: str = "auto",
        eigen_smooth: bool = False,
        aug_smooth: bool = False,
        gradient_mode: GradientMode = "auto",
        eigen_sign: SignRule = "activation",
    ) -> None:
        self.model = model if isinstance(model, Model) else load(model, device=device)
        chosen = self.model.select_layers(layer, view)
        self.layers: tuple[str, ...] = tuple(c.name for c in chosen)
        self.views: dict[str, FeatureView] = {c.name: c.view for c in chosen if not c.view.is_identity}
        self.task: Task = self.model.task if task is None else detect_task(self.model.output_shapes, task)
        self.batch_size = self.model.batch_limit(self.default_batch_size if batch_size is None else batch_size)
        self.eigen_smooth = eigen_smooth
        self.aug_smooth = aug_smooth
        self.gradient_mode: GradientMode = gradient_mode
        if eigen_sign not in ("activation", "reference"):
            raise ArgumentError(
                f"eigen_sign must be 'activation' or 'reference', got {eigen_sign!r}; 'reference' keeps "
                "LAPACK's singular-vector sign as pytorch-grad-cam does"
            )
        self.eigen_sign: SignRule = eigen_sign

    # -- to implement -------------------------------------------------------------------------------
    def raw_maps(self, x: np.ndarray, targets: TargetSpec) -> RawMaps:
        """Per-layer raw maps ``(N, h, w)`` for the preprocessed batch ``x``."""
        raise NotImplementedError

    def prepare(self, n: int) -> None:
        """Build ahead the sessions a first batch of ``n`` images will use (with default targets), so a
        caller can do it while images decode. Optional: every call builds what it lacks anyway."""
        if self.prepares == "gradients":
            self.model.gradient_engine.prepare(self.layers, n, self.task.default_reads(), self.batch_size,
                                               self.gradient_mode)
        elif self.prepares == "activations":
            self.model.session("body", tuple(self.layers))

    # -- shared helpers for subclasses --------------------------------------------------------------
    def gradients(self, x: np.ndarray, targets: TargetSpec, layers: Sequence[str] | None = None) -> Gradients:
        """Activations and gradients at ``layers`` (default: this CAM's), as feature maps through their views."""
        names = list(layers or self.layers)
        g = self.model.gradient_engine.compute(x, names, targets, self.task, self.batch_size, self.gradient_mode)
        if self.views:
            g.activations, g.gradients = as_maps(g.activations, self.views), as_maps(g.gradients, self.views)
        return g

    def activations(self, x: np.ndarray, targets: TargetSpec) -> tuple[dict[str, np.ndarray], list[Target],
                                                                      np.ndarray, list[np.ndarray]]:
        """One body run: feature maps at every layer, resolved targets, their scores, the outputs."""
        feeds, outputs = self.model.run_body(x, self.layers, self.batch_size)
        resolved = self.task.resolve(targets, outputs)
        acts = as_maps({k: feeds[k] for k in self.layers}, self.views)
        return acts, resolved, target_scores(resolved, outputs), outputs

    def view(self, layer: str) -> FeatureView:
        """How ``layer``'s tensor is seen as a feature map."""
        return self.views.get(layer, IDENTITY)

    # -- public API ---------------------------------------------------------------------------------
    def __call__(self, x: np.ndarray, targets: TargetSpec = None) -> np.ndarray:
        """Maps ``(N, H, W)`` float32 in [0, 1] at the input resolution."""
        return self.explain(x, targets).maps

    def explain(self, x: np.ndarray, targets: TargetSpec = None) -> Explanation:
        """Maps plus everything behind them (raw maps, targets, scores, outputs)."""
        x = self.model.check_input(x)
        if self.aug_smooth:
            return self._aug_smooth(x, targets)
        raw = self.raw_maps(x, targets)
        self._warn_blank(raw)
        return self._finish(raw)

    def _finish(self, raw: RawMaps) -> Explanation:
        """Per layer ReLU -> normalise -> resize, then fuse layers (pytorch-grad-cam's order)."""
        size = self.model.input.size
        layer_maps = {k: layer_to_image(v, size) for k, v in raw.maps.items()}
        maps = finish_single(next(iter(layer_maps.values()))) if len(layer_maps) == 1 else \
            fuse_layers(list(layer_maps.values()))
        return Explanation(maps, layer_maps, raw.maps, raw.targets, raw.scores, raw.outputs, self.name, raw.notes)

    def _aug_smooth(self, x: np.ndarray, targets: TargetSpec) -> Explanation:
        """pytorch-grad-cam's aug_smooth: horizontal flip x intensity (0.9, 1.0, 1.1); each
        augmentation's finished map is de-augmented, then the six are averaged."""
        first_raw = self.raw_maps(x, targets)
        self._warn_blank(first_raw)
        first = self._finish(first_raw)
        fixed = first.targets  # the targets chosen on the clean image, for every augmentation
        w_axis = 3 if self.model.input.layout == "NCHW" else 2
        maps = np.zeros_like(first.maps)
        layer_maps = {k: np.zeros_like(v) for k, v in first.layer_maps.items()}
        for flip in (False, True):
            for scale in (0.9, 1.0, 1.1):
                if not flip and scale == 1.0:
                    e = first
                else:
                    xa = np.flip(x, axis=w_axis) if flip else x
                    e = self._finish(self.raw_maps(np.ascontiguousarray(xa * np.float32(scale)), fixed))
                undo = (lambda m: np.flip(m, axis=2)) if flip else (lambda m: m)
                maps += undo(e.maps)
                for k, v in e.layer_maps.items():
                    layer_maps[k] += undo(v)
        maps /= 6
        layer_maps = {k: v / 6 for k, v in layer_maps.items()}
        return Explanation(maps.astype(np.float32), layer_maps, first.raw, first.targets, first.scores, first.outputs,
                           self.name, first.notes + ["aug_smooth: flip x (0.9, 1.0, 1.1), averaged"])

    def _warn_blank(self, raw: RawMaps) -> None:
        for layer, maps in raw.maps.items():
            reasons = zero_map_reasons(
                maps,
                activations=raw.activations.get(layer),
                gradients=raw.gradients.get(layer),
                weights=raw.weights.get(layer),
            )
            blank = [(i, r) for i, r in enumerate(reasons) if r]
            if blank:
                i, why = blank[0]
                more = f" (and {len(blank) - 1} more images)" if len(blank) > 1 else ""
                warnings.warn(
                    f"{self.name} map of image {i} at layer {layer!r} is all zeros: {why}{more}; "
                    "try another layer or method",
                    OnnxCamWarning,
                    stacklevel=4,
                )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model.name!r}, layer={list(self.layers)})"

