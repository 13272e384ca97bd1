"""CAMs read from the model's structure or activations alone: CAM (classifier weights), EigenCAM
(principal component), FullGrad (input and bias gradients at every bias-carrying layer)."""

from __future__ import annotations

import warnings

import numpy as np

from onnxcam import methods
from onnxcam.errors import HeadStructureError, OnnxCamWarning, TargetError
from onnxcam.explainers.base import BaseCAM, RawMaps
from onnxcam.graph.inspect_head import bias_layers, linear_head_weights
from onnxcam.method_specs import MethodSpec, method_spec
from onnxcam.targets import ClassTarget, TargetSpec


@method_spec(MethodSpec(
    "cam", cost="1 forward", cost_class="forward", uses_gradients=False,
))
class CAM(BaseCAM):
    """Class Activation Mapping (Zhou et al. 2016): weights = the classifier row of the target class,
    for models whose layer feeds global average pooling -> linear -> output."""

    prepares = "activations"

    def raw_maps(self, x: np.ndarray, targets: TargetSpec) -> RawMaps:
        acts, resolved, scores, outputs = self.activations(x, targets)
        classes = []
        for t in resolved:
            if not isinstance(t, ClassTarget):
                raise TargetError(f"CAM explains class logits only, got target {t.describe()}: use GradCAM")
            classes.append(t.category)
        maps, weights = {}, {}
        for layer in self.layers:
            if not self.view(layer).is_identity:
                raise HeadStructureError(
                    f"CAM reads the classifier after a global average pool of an NCHW feature map, but {layer!r} is "
                    f"seen through a {self.view(layer).describe()} view: use GradCAM (it equals CAM on such heads)"
                )
            fc = linear_head_weights(self.model.proto, layer, self.model.outputs[0], self.model.name)
            w = methods.cam_weights(fc, np.array(classes))
            weights[layer] = w
            maps[layer] = methods.weighted_sum(acts[layer], w)
        return RawMaps(maps, resolved, scores, outputs, acts, weights=weights)


@method_spec(MethodSpec(
    "eigencam", cost="1 forward + SVD", cost_class="forward", uses_gradients=False,
))
class EigenCAM(BaseCAM):
    """Eigen-CAM (Muhammad & Yeasin 2020): first principal component of the activations; class-agnostic."""

    prepares = "activations"

    def raw_maps(self, x: np.ndarray, targets: TargetSpec) -> RawMaps:
        acts, resolved, scores, outputs = self.activations(x, targets)
        maps = {k: methods.eigencam(acts[k], self.eigen_sign) for k in self.layers}
        return RawMaps(maps, resolved, scores, outputs, acts)


@method_spec(MethodSpec(
    "fullgrad", cost="1 forward + 1 full backward", cost_class="full backward", uses_gradients=True,
))
class FullGrad(BaseCAM):
    """FullGrad (Srinivas & Fleuret 2019): |input x input-gradient| plus |bias x gradient| at every
    bias-carrying convolution. It takes no layer: it reads the input and every such layer (a layer
    other than ``"auto"`` is reported, not silently dropped)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        layer = kwargs.get("layer", args[1] if len(args) > 1 else "auto")
        if layer != "auto":
            warnings.warn(f"FullGrad uses the input and every bias-carrying layer; layer={layer!r} is not used",
                          OnnxCamWarning, stacklevel=2)
        candidates = {layer.name: layer for layer in self.model.layers()}
        self.bias_terms = bias_layers(self.model.proto, candidates)
        self.layers = (self.model.input.name,)
        self.views = {}

    def raw_maps(self, x: np.ndarray, targets: TargetSpec) -> RawMaps:
        inp = self.model.input.name
        names = [inp] + [name for name, _ in self.bias_terms]
        g = self.model.gradients_at(x, names, targets, self.batch_size, self.gradient_mode, self.task)
        gxi = g.gradients[inp] * x
        terms = [(bias, g.gradients[name]) for name, bias in self.bias_terms]
        raw = methods.fullgrad(gxi, terms, self.model.input.size, self.model.input.layout)
        return RawMaps({inp: raw}, g.targets, g.scores, g.outputs,
                       notes=[f"{len(terms)} bias layers", f"gradients: {g.source}"])
