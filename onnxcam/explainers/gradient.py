"""Gradient-based CAMs: gradients from the ONNX gradient graph, maps from ``onnxcam.methods``."""

from __future__ import annotations

import warnings

import numpy as np

from onnxcam import methods
from onnxcam.engine import Gradients
from onnxcam.errors import GradientError, OnnxCamWarning
from onnxcam.explainers.base import BaseCAM, RawMaps
from onnxcam.method_specs import MethodOption, MethodSpec, method_spec
from onnxcam.postprocess import eigen_smooth
from onnxcam.targets import TargetSpec


def require_elementwise(g: Gradients, method: str, model: str) -> None:
    """Refuse channel-mean gradients (finite differences on a large layer) for a method that reads
    the gradient at each position: its map would be another method's under its name."""
    if g.kind != "elementwise":
        layers = ", ".join(repr(k) for k in g.layers)
        raise GradientError(
            f"{method} needs the gradient at every position, but the gradients of {model} at {layers} come from "
            "finite differences (an op without a gradient rule, or gradient mode 'finite'), which there give only "
            "each channel's mean gradient: use "
            "gradcam (exact with channel means), or a layer closer to the output (at most "
            "onnxcam.engine.ELEMENTWISE_LIMIT values per image get element-wise differences)"
        )


class _ChannelWeightCAM(BaseCAM):
    """Map = sum_c w_c A_c, with weights from (activations, gradients)."""

    prepares = "gradients"
    # whether the weights need the gradient at each position (all but Grad-CAM's spatial mean)
    elementwise = True

    def weights(self, acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def raw_maps(self, x: np.ndarray, targets: TargetSpec) -> RawMaps:
        g = self.gradients(x, targets)
        if self.elementwise:
            require_elementwise(g, self.name, self.model.name)
        maps: dict[str, np.ndarray] = {}
        weights: dict[str, np.ndarray] = {}
        for layer in self.layers:
            a, d = g.activations[layer], g.gradients[layer]
            w = self.weights(a, d)
            weights[layer] = w
            maps[layer] = (eigen_smooth(w[:, :, None, None] * a, self.eigen_sign) if self.eigen_smooth
                           else methods.weighted_sum(a, w))
        return RawMaps(maps, g.targets, g.scores, g.outputs, g.activations, g.gradients, weights,
                       notes=[f"gradients: {g.source}", *g.notes])


@method_spec(MethodSpec(
    "gradcam", cost="1 forward + 1 head backward", cost_class="backward", uses_gradients=True,
))
class GradCAM(_ChannelWeightCAM):
    """Grad-CAM (Selvaraju et al. 2017): weights = spatial mean of the gradients."""

    elementwise = False

    def weights(self, acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
        return methods.gradcam_weights(grads)


@method_spec(MethodSpec(
    "gradcam++", cost="1 forward + 1 head backward", cost_class="backward", uses_gradients=True,
    aliases=("gradcampp", "gradcamplusplus"),
))
class GradCAMPlusPlus(_ChannelWeightCAM):
    """Grad-CAM++ (Chattopadhay et al. 2018): higher-order alpha weighting of positive gradients."""

    def weights(self, acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
        return methods.gradcam_plusplus_weights(acts, grads)


@method_spec(MethodSpec(
    "xgradcam", cost="1 forward + 1 head backward", cost_class="backward", uses_gradients=True,
))
class XGradCAM(_ChannelWeightCAM):
    """XGrad-CAM (Fu et al. 2020): gradients weighted by normalised activations."""

    def weights(self, acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
        return methods.xgradcam_weights(acts, grads)


# HiResCAM warns above this cancellation of its channel sum (float32 gradients then leave noise of about
# this times 1e-7 of the map; measured on models/: 1.4e6-2.7e6 at the ViTs' auto layer, 130 at Swin's,
# under 20 on convolutional layers).
CANCELLATION_LIMIT = 1e4


class _ElementWiseCAM(BaseCAM):
    """Map = sum_c f(A, dA) element-wise (no channel pooling of the gradients)."""

    prepares = "gradients"

    kind = ""

    def raw_maps(self, x: np.ndarray, targets: TargetSpec) -> RawMaps:
        g = self.gradients(x, targets)
        require_elementwise(g, self.name, self.model.name)
        maps = {}
        for layer in self.layers:
            a, d = g.activations[layer], g.gradients[layer]
            terms = methods.elementwise_products(a, d, self.kind)
            # The channel sum in float64: HiResCAM's terms cancel (by ~1e6 where the layer feeds a LayerNorm,
            # whose gradient is orthogonal to its normalised input); the exported graph sums in float64 too.
            maps[layer] = eigen_smooth(terms, self.eigen_sign) if self.eigen_smooth else \
                terms.sum(axis=1, dtype=np.float64).astype(np.float32)
            if self.kind == "hirescam":
                self._warn_cancellation(layer, terms)
        return RawMaps(maps, g.targets, g.scores, g.outputs, g.activations, g.gradients,
                       notes=[f"gradients: {g.source}", *g.notes])

    def _warn_cancellation(self, layer: str, terms: np.ndarray) -> None:
        """Say so when the signed channel sum cancels so far that float32 gradients (good to ~1e-7
        relative) leave visible noise in the map: at a layer that feeds a LayerNorm, whose gradient is
        orthogonal to its normalised input, the terms cancel 1e5-1e6-fold."""
        worst = float(np.max(methods.cancellation(terms)))
        if worst >= CANCELLATION_LIMIT:
            how = f"{worst:.0e}-fold" if np.isfinite(worst) else "exactly"
            warnings.warn(
                f"{self.name} at {layer!r} of {self.model.name}: the channel terms cancel {how}, so float32 "
                "rounding of the gradients shows in the map; gradcam, or a layer after the normalisation (a "
                "transformer block's norm1), gives a well-conditioned map", OnnxCamWarning, stacklevel=4)


@method_spec(MethodSpec(
    "layercam", cost="1 forward + 1 head backward", cost_class="backward", uses_gradients=True,
))
class LayerCAM(_ElementWiseCAM):
    """LayerCAM (Jiang et al. 2021): sum_c relu(dA) * A."""

    kind = "layercam"


@method_spec(MethodSpec(
    "hirescam", cost="1 forward + 1 head backward", cost_class="backward", uses_gradients=True,
))
class HiResCAM(_ElementWiseCAM):
    """HiResCAM (Draelos & Carin 2020): sum_c dA * A, faithful to the model's computation."""

    kind = "hirescam"


@method_spec(MethodSpec(
    "gradcam-elementwise", cost="1 forward + 1 head backward", cost_class="backward", uses_gradients=True,
))
class GradCAMElementWise(_ElementWiseCAM):
    """Grad-CAM element-wise (pytorch-grad-cam): sum_c relu(dA * A)."""

    kind = "gradcam_elementwise"


@method_spec(MethodSpec(
    "eigengradcam", cost="1 forward + 1 head backward + SVD", cost_class="backward", uses_gradients=True,
))
class EigenGradCAM(BaseCAM):
    """Eigen-Grad-CAM: first principal component of dA * A."""

    prepares = "gradients"

    def raw_maps(self, x: np.ndarray, targets: TargetSpec) -> RawMaps:
        g = self.gradients(x, targets)
        require_elementwise(g, self.name, self.model.name)
        maps = {k: methods.eigengradcam(g.activations[k], g.gradients[k], self.eigen_sign) for k in self.layers}
        return RawMaps(maps, g.targets, g.scores, g.outputs, g.activations, g.gradients,
                       notes=[f"gradients: {g.source}", *g.notes])


@method_spec(MethodSpec(
    "smoothgradcam++", cost="(1 + samples) x (forward + head backward)", cost_class="sampled backward",
    uses_gradients=True,
    aliases=("smoothgradcampp", "smoothgradcamplusplus"),
    options=(
        MethodOption("num_samples", int, 4, "noisy copies of the input", minimum=1),
        MethodOption("std", float, 0.3, "std of the Gaussian noise added to the input", minimum=0.0),
        MethodOption("seed", int, 0, "seed of each image's noise generator", minimum=0),
        MethodOption("torchcam_compat", bool, False, "reproduce torchcam (last noisy run only)"),
    ),
))
class SmoothGradCAMPlusPlus(BaseCAM):
    """Smooth Grad-CAM++ (Omeiza et al. 2019): Grad-CAM++ with gradient powers averaged over noisy
    copies of the input (torchcam's formulas). ``num_samples`` noisy runs, noise std ``std``.
    ``torchcam_compat=True`` reproduces torchcam's use of the last noisy run's gradient and
    activations (see ``onnxcam.methods.smooth_gradcam_plusplus``). Every image draws its noise
    from its own ``default_rng(seed)``, so its map does not depend on the rest of the batch."""

    prepares = "gradients"

    def __init__(self, *args: object, num_samples: int = 4, std: float = 0.3, seed: int = 0,
                 torchcam_compat: bool = False, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.num_samples = num_samples
        self.std = std
        self.seed = seed
        self.torchcam_compat = torchcam_compat

    def raw_maps(self, x: np.ndarray, targets: TargetSpec) -> RawMaps:
        clean = self.gradients(x, targets)
        require_elementwise(clean, self.name, self.model.name)
        fixed = clean.targets
        maps = {}
        for layer in self.layers:
            def grads_fn(noisy: np.ndarray, layer: str = layer) -> tuple[np.ndarray, np.ndarray]:
                r = self.gradients(noisy.astype(np.float32), fixed, [layer])
                return r.activations[layer], r.gradients[layer]

            maps[layer] = methods.smooth_gradcam_plusplus(
                clean.activations[layer], x, grads_fn, num_samples=self.num_samples, std=self.std,
                rng=[np.random.default_rng(self.seed) for _ in range(len(x))],
                torchcam_compat=self.torchcam_compat)
        return RawMaps(maps, clean.targets, clean.scores, clean.outputs, clean.activations, clean.gradients,
                       notes=[f"gradients: {clean.source}", f"{self.num_samples} noisy samples, std {self.std}"])
