"""``BaseCAM``: load -> pick layers -> run -> raw maps -> post-process, shared by every method.

A subclass implements ``raw_maps`` (per layer ``(N, h, w)`` maps for a batch); everything else
(target resolution, aug_smooth, per-layer normalisation and fusion, warnings for blank maps) lives
here, once.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from onnxcam.backprop import GradientMode, Gradients, prepare_gradients, target_scores
from onnxcam.errors import ArgumentError, OnnxCamWarning
from onnxcam.methods.eigen import SignRule
from onnxcam.model import LayerSpec, Model, load
from onnxcam.postprocess import finish_single, fuse_layers, layer_to_image, zero_map_reasons
from onnxcam.targets import Target, TargetSpec, resolve_targets


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
    names (maps fused as the mean of per-layer normalised maps), or ``"auto"``. ``eigen_sign``: how
    EigenCAM, EigenGradCAM and ``eigen_smooth`` orient the principal component ("activation": with
    the plain map, deterministic; "reference": LAPACK's sign, as pytorch-grad-cam; see
    ``onnxcam.methods.eigen``).
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
        batch_size: int | None = None,
        device: str = "auto",
        eigen_smooth: bool = False,
        aug_smooth: bool = False,
        gradient_mode: GradientMode = "auto",
        eigen_sign: SignRule = "activation",
    ) -> None:
        self.model = model if isinstance(model, Model) else load(model, device=device)
        self.layers = self.model.resolve_layers(layer)
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
            prepare_gradients(self.model, self.layers, n, self.batch_size, self.gradient_mode)
        elif self.prepares == "activations":
            self.model.session("body", tuple(self.layers))

    # -- shared helpers for subclasses --------------------------------------------------------------
    def gradients(self, x: np.ndarray, targets: TargetSpec, layers: Sequence[str] | None = None) -> Gradients:
        return self.model.gradients(x, list(layers or self.layers), targets, self.batch_size, self.gradient_mode)

    def activations(self, x: np.ndarray, targets: TargetSpec) -> tuple[dict[str, np.ndarray], list[Target],
                                                                      np.ndarray, list[np.ndarray]]:
        """One body run: activations at every layer, resolved targets, their scores, the outputs."""
        feeds, outputs = self.model.run_body(x, self.layers, self.batch_size)
        resolved = resolve_targets(targets, outputs[0])
        return {k: feeds[k] for k in self.layers}, resolved, target_scores(resolved, outputs), outputs

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


def check_positive(value: int, what: str) -> int:
    if value < 1:
        raise ArgumentError(f"{what} must be >= 1, got {value}")
    return value
