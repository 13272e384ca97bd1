"""``BaseCAM``: load -> pick layers -> run -> raw maps -> post-process, shared by every method.

A subclass implements ``raw_maps`` (per layer ``(N, h, w)`` maps for a batch); everything else
(target resolution through the task, feature views, aug_smooth, per-layer normalisation and
fusion, warnings for blank maps) lives here, once.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np

from onnxcam.blas_threads import one_blas_thread
from onnxcam.engine import GradientMode, Gradients
from onnxcam.errors import ArgumentError, InputError, OnnxCamWarning, UnsupportedModelError
from onnxcam.image import Preprocess, get_preset, preprocess
from onnxcam.method_specs import requirement_error
from onnxcam.methods.eigen import SignRule
from onnxcam.model import LayerSpec, Model, ViewsSpec, load
from onnxcam.postprocess import LayerMaps, fuse_to_image, live_maps, zero_map_reasons
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

    ``layer_maps[layer]`` are the per-layer maps at input resolution (made when first read),
    ``raw[layer]`` the raw
    low-resolution maps ``(N, h, w)`` before ReLU/normalisation.
    """

    maps: np.ndarray
    layer_maps: Mapping[str, np.ndarray]
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

    For pytorch-grad-cam users: ``target_layers=[names]`` is ``layer``; ``cam(input_tensor=x,
    targets=[ClassifierOutputTarget(281)])`` works; torch tensors (anything with ``.detach()``) and,
    with ``preprocess=`` (a ``Preprocess`` or a preset name such as ``"imagenet"``), PIL images are
    accepted as inputs; ``with GradCAM(...) as cam:`` releases the onnxruntime sessions on exit.
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
        target_layers: Sequence[str] | None = None,
        preprocess: Preprocess | str | None = None,
    ) -> None:
        self.model = model if isinstance(model, Model) else load(model, device=device)
        refusal = requirement_error(type(self), self.model)
        if refusal:
            raise UnsupportedModelError(refusal)
        if target_layers is not None:
            layer = _target_layers(layer, target_layers)
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
        self.preprocess: Preprocess | None = (
            get_preset(preprocess, self.model.input.size, self.model.input.layout) if isinstance(preprocess, str)
            else preprocess)
        self._progress: Callable[[float], None] | None = None
        self._progress_done = 0.0

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
        # A method whose weights are the gradients' channel means (Grad-CAM) lets a head differentiated
        # on crops hand over just those, spread over the positions.
        g = self.model.gradient_engine.compute(x, names, targets, self.task, self.batch_size, self.gradient_mode,
                                               means_only=not getattr(self, "elementwise", True))
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

    def report_progress(self, fraction: float) -> None:
        """Tell the caller of ``explain(progress=...)`` that ``fraction`` more of the call is done
        (methods that loop over channels call it per chunk; the rest is reported at the end)."""
        if self._progress is None:
            return
        step = min(float(fraction), 1.0 - self._progress_done)
        if step > 0:
            self._progress_done += step
            self._progress(step)

    # -- public API ---------------------------------------------------------------------------------
    def __call__(self, x: Any = None, targets: TargetSpec = None, *, input_tensor: Any = None,
                 aug_smooth: bool | None = None, eigen_smooth: bool | None = None) -> np.ndarray:
        """Maps ``(N, H, W)`` float32 in [0, 1] at the input resolution.

        ``input_tensor`` is pytorch-grad-cam's name for ``x``; ``aug_smooth`` / ``eigen_smooth``
        override the constructor's settings for this call.
        """
        if input_tensor is not None:
            if x is not None:
                raise ArgumentError("pass the input once: either x or input_tensor=, not both")
            x = input_tensor
        if x is None:
            raise ArgumentError("no input given: call cam(x) or cam(input_tensor=x) with a preprocessed batch")
        saved = self.aug_smooth, self.eigen_smooth
        self.aug_smooth = saved[0] if aug_smooth is None else aug_smooth
        self.eigen_smooth = saved[1] if eigen_smooth is None else eigen_smooth
        try:
            return self.explain(x, targets).maps
        finally:
            self.aug_smooth, self.eigen_smooth = saved

    def explain(self, x: Any, targets: TargetSpec = None,
                progress: Callable[[float], None] | None = None) -> Explanation:
        """Maps plus everything behind them (raw maps, targets, scores, outputs).

        ``progress(fraction)``: called as the work advances, the fractions of this call summing to 1
        (``with cam.reporting(progress):`` does the same around a call).
        """
        if progress is not None:
            with self.reporting(progress):
                return self.explain(x, targets)
        x = self.model.check_input(self._as_input(x))
        # BLAS on one thread: its idle workers would spin through the next onnxruntime run (see
        # onnxcam.blas_threads).
        with one_blas_thread():
            if self.aug_smooth:
                return self._aug_smooth(x, targets)
            raw = self.raw_maps(x, targets)
            self._warn_blank(raw)
            return self._finish(raw)

    @contextlib.contextmanager
    def reporting(self, progress: Callable[[float], None] | None) -> Iterator[None]:
        """Within the block, ``explain`` reports its progress to ``progress(fraction)`` (fractions of
        one call summing to 1; what the method did not report itself is reported when it returns)."""
        saved = self._progress, self._progress_done
        self._progress, self._progress_done = progress, 0.0
        try:
            yield
        finally:
            self.report_progress(1.0)
            self._progress, self._progress_done = saved

    def _as_input(self, x: Any) -> Any:
        """numpy from torch tensors (duck-typed: onnxcam never imports torch) and PIL images."""
        if hasattr(x, "detach") and hasattr(x, "cpu") and hasattr(x, "numpy"):
            return x.detach().cpu().numpy()
        pil = [x] if _is_pil(x) else list(x) if isinstance(x, (list, tuple)) and x and all(map(_is_pil, x)) else []
        if not pil:
            return x
        if self.preprocess is None:
            raise InputError(
                f"{type(self).__name__} got a PIL image but does not know the model's preprocessing: pass "
                "preprocess='imagenet' (or another preset, or an onnxcam.Preprocess) when creating it, or give "
                "a preprocessed array: onnxcam.preprocess([np.asarray(img.convert('RGB'))], pp)"
            )
        return preprocess([np.asarray(img.convert("RGB")) for img in pil], self.preprocess)

    def release(self) -> None:
        """Drop the onnxruntime sessions and gradient graphs built so far (they are rebuilt if needed)."""
        self.model.release()

    def __enter__(self) -> BaseCAM:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # Exceptions propagate (pytorch-grad-cam's __exit__ swallows them).
        self.release()

    def _finish(self, raw: RawMaps) -> Explanation:
        """Per layer ReLU -> normalise -> resize, then fuse layers (pytorch-grad-cam's order)."""
        size = self.model.input.size
        maps = fuse_to_image(list(raw.maps.values()), size)
        return Explanation(maps, LayerMaps(raw.maps, size), raw.maps, raw.targets, raw.scores, raw.outputs, self.name,
                           raw.notes)

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
        """Warn about the images whose map will display as blank: blank at every layer. With several
        layers a blank one among live ones is no problem (a detection at one stride has no gradient
        at the coarser maps: they are not on its path), so only a blank fused map is reported, with
        the first layer's reason."""
        layers = list(raw.maps)
        if not layers:
            return
        blank = ~live_maps(raw.maps[layers[0]])
        for layer in layers[1:]:
            if blank.any():
                blank &= ~live_maps(raw.maps[layer])
        if not blank.any():
            return
        layer = layers[0]
        reasons = zero_map_reasons(raw.maps[layer], activations=raw.activations.get(layer),
                                   gradients=raw.gradients.get(layer), weights=raw.weights.get(layer), only=blank)
        rows = np.flatnonzero(blank)
        i, why = int(rows[0]), reasons[int(rows[0])]
        more = f" (and {len(rows) - 1} more images)" if len(rows) > 1 else ""
        if len(layers) == 1:
            what = f"at layer {layer!r} is all zeros: {why}{more}"
        else:
            what = f"is all zeros at every layer ({', '.join(map(repr, layers))}){more}; at {layer!r}: {why}"
        warnings.warn(f"{self.name} map of image {i} {what}; try another layer or method",
                      OnnxCamWarning, stacklevel=4)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model.name!r}, layer={list(self.layers)})"


def _is_pil(x: Any) -> bool:
    return hasattr(x, "convert") and hasattr(x, "mode") and hasattr(x, "size") and not isinstance(x, np.ndarray)


def _target_layers(layer: LayerSpec, target_layers: Sequence[str]) -> list[str]:
    """``target_layers`` (pytorch-grad-cam's keyword) as a ``layer`` list of tensor names."""
    if layer != "auto":
        raise ArgumentError("pass the layers once: either layer= or target_layers=, not both")
    names = [target_layers] if isinstance(target_layers, str) else list(target_layers)
    bad = [n for n in names if not isinstance(n, str)]
    if bad or not names:
        got = type(bad[0]).__name__ if bad else "an empty list"
        raise ArgumentError(
            f"target_layers takes ONNX tensor names (strings), got {got}: list them with `onnxcam layers MODEL` "
            "or onnxcam.load(path).layers(); 'auto' picks the last spatial feature map"
        )
    return names

