"""Maps read from a transformer's attention: attention rollout (gradient-free) and gradient-weighted
attention (Chefer et al. 2021). Neither exists in pytorch-grad-cam.

They read each block's attention probabilities, the output of its ``Softmax`` (found in the graph by
``onnxcam.graph.layout.attention_softmaxes``). Only *global* attention is used: the trailing blocks
whose probabilities are ``(N, heads, T, T)`` over one token sequence of the image (prefix tokens plus
a square grid). Windowed attention (Swin's early stages, MobileViT's unfolded patches) attends over
windows of several images' worth of rows and is skipped; a model with no global attention is refused.
"""

from __future__ import annotations

import os
import weakref
from typing import Any, cast

import numpy as np
import onnx

from onnxcam import methods
from onnxcam.errors import ArgumentError, LayerShapeError, UnsupportedModelError
from onnxcam.explainers.base import BaseCAM, RawMaps
from onnxcam.method_specs import MethodOption, MethodSpec, Requirement, method_spec
from onnxcam.methods.attention import HeadFusion
from onnxcam.model import LayerSpec, Model
from onnxcam.runtime import run_batched
from onnxcam.targets import TargetSpec, target_scores
from onnxcam.views import FeatureView, view_for


class _Attention:
    """A model's attention probabilities: the softmaxes, a session returning them with the outputs,
    and (after the first run) the trailing run of global blocks and their token view."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.softmaxes: tuple[str, ...] = tuple(b.softmax for b in model.layer_facts().blocks)
        self._session: Any = None
        self.chosen: tuple[str, ...] | None = None
        self.view: FeatureView | None = None
        self.refusal = ""

    def session(self) -> Any:
        if self._session is None:
            proto = onnx.ModelProto()
            proto.CopyFrom(self.model.proto)
            known = {o.name for o in proto.graph.output}
            proto.graph.output.extend(onnx.helper.make_empty_tensor_value_info(s) for s in self.softmaxes
                                      if s not in known)
            self._session = self.model.new_session(proto, f"attention of {self.model.name}")
        return self._session

    def run(self, x: np.ndarray, batch_size: int) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
        """The model outputs and every softmax's output for the checked batch ``x``."""
        names = list(self.model.outputs) + [s for s in self.softmaxes if s not in self.model.outputs]
        values = run_batched(self.session(), {self.model.input.name: x}, names, batch_size,
                             what=f"model {self.model.name}", fixed_batch=self.model.input.max_batch)
        found = dict(zip(names, values))
        return values[: len(self.model.outputs)], {s: found[s] for s in self.softmaxes}

    def select(self, n: int, attentions: dict[str, np.ndarray]) -> tuple[str, ...]:
        """The trailing run of blocks whose attention ``(n, heads, T, T)`` spans one image's tokens
        (prefix + square grid), the same ``T`` in each; () with ``refusal`` set when there is none."""
        if self.chosen is None:
            chosen: list[str] = []
            tokens = None
            for name in reversed(self.softmaxes):
                a = attentions[name]
                ok = a.ndim == 4 and a.shape[0] == n and a.shape[2] == a.shape[3]
                if not ok or (tokens is not None and a.shape[2] != tokens):
                    break
                tokens = a.shape[2]
                chosen.append(name)
            if not chosen or tokens is None:
                last = attentions[self.softmaxes[-1]]
                self.refusal = (
                    f"{self.model.name}'s last attention {self.softmaxes[-1]!r} has probabilities of shape "
                    f"{tuple(last.shape)} for a batch of {n}: it attends within windows or patches, not over the "
                    "image's tokens")
            else:
                try:
                    self.view = view_for((n, tokens, 1), "tokens", f"the attention of {self.model.name}")
                except LayerShapeError as e:
                    self.refusal = str(e)
            self.chosen = tuple(reversed(chosen)) if not self.refusal else ()
        return self.chosen


# One probe per model, shared by the requirement check and the explainers (the session it builds is
# the one they run).
_PROBES: weakref.WeakKeyDictionary[Model, _Attention] = weakref.WeakKeyDictionary()


def attention_of(model: Model) -> _Attention:
    probe = _PROBES.get(model)
    if probe is None:
        probe = _PROBES[model] = _Attention(model)
    return probe


def has_global_attention(model: Model) -> bool:
    """Whether ``model`` has attention over the image's tokens (the requirement of the attention
    methods). Free for models without an attention ``Softmax``; otherwise one forward of one image
    (the shapes of the probabilities tell global from windowed attention), cached."""
    probe = attention_of(model)
    if not probe.softmaxes:
        return False
    if probe.chosen is None:
        x = np.zeros(model.input.shape(1), dtype=np.float32)
        probe.select(1, probe.run(model.check_input(x), 1)[1])
    return bool(probe.chosen)


GLOBAL_ATTENTION = Requirement(
    "global attention",
    "self-attention over the image's tokens (an attention Softmax (N, heads, T, T) with T = prefix + a square "
    "grid, as in ViT, DeiT or Swin's last stage)",
    has_global_attention,
)


class _AttentionCAM(BaseCAM):
    """Shared: find the attention softmaxes, run the model with their outputs, keep the global ones.

    ``layer`` is not used (the maps come from every global attention block); ``head_fusion`` and
    ``discard_ratio`` are attention rollout's options (see ``onnxcam.methods.attention``). BaseCAM
    refuses a model without global attention (this class's ``GLOBAL_ATTENTION`` requirement).
    """

    def __init__(self, model: Model | str | os.PathLike[str], layer: LayerSpec = "auto", *,
                 head_fusion: str = "mean", discard_ratio: float = 0.0, **kwargs: Any) -> None:
        super().__init__(model, layer, **kwargs)
        if head_fusion not in ("mean", "max", "min"):
            raise ArgumentError(f"{self.name}: head_fusion must be mean, max or min, got {head_fusion!r}")
        if not 0.0 <= discard_ratio < 1.0:
            raise ArgumentError(f"{self.name}: discard_ratio must be in [0, 1), got {discard_ratio}")
        self.head_fusion = cast(HeadFusion, head_fusion)
        self.discard_ratio = discard_ratio
        self.attention = attention_of(self.model)
        self.softmaxes = self.attention.softmaxes
        self.layers = (self.softmaxes[-1],)
        self.views = {}

    def run_attention(self, x: np.ndarray) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
        """One forward: the model outputs and the global attentions ``(N, heads, T, T)`` by Softmax name."""
        x = self.model.check_input(x)
        outputs, found = self.attention.run(x, self.batch_size)
        return outputs, {s: found[s] for s in self._select(len(x), found)}

    def _select(self, n: int, attentions: dict[str, np.ndarray]) -> tuple[str, ...]:
        chosen = self.attention.select(n, attentions)
        if not chosen:
            raise UnsupportedModelError(f"{self.attention.refusal}, so {self.name} cannot be read from it; use "
                                        "gradcam (it works on every layer `onnxcam layers` lists)")
        return chosen

    @property
    def _global(self) -> tuple[str, ...] | None:
        return self.attention.chosen or None

    @property
    def token_view(self) -> FeatureView:
        """Prefix and grid of the attended tokens (after the first call)."""
        view = self.attention.view
        assert view is not None and view.grid is not None
        return view

    def prepare(self, n: int) -> None:
        self.attention.session()


@method_spec(MethodSpec(
    "rollout", cost="1 forward", cost_class="forward", uses_gradients=False, aliases=("attentionrollout",),
    options=(
        MethodOption("head_fusion", str, "mean", "how the heads of a block are fused: mean, max or min"),
        MethodOption("discard_ratio", float, 0.0, "fraction of each fused attention's smallest entries set to 0 "
                                                  "(0: Abnar & Zuidema's original)", minimum=0.0),
    ),
    requires=(GLOBAL_ATTENTION,),
))
class AttentionRollout(_AttentionCAM):
    """Attention rollout (Abnar & Zuidema 2020): each block's attention with the residual, heads fused,
    multiplied through the blocks; the class token's row over the patches. Gradient-free, class-agnostic."""

    def raw_maps(self, x: np.ndarray, targets: TargetSpec) -> RawMaps:
        outputs, attentions = self.run_attention(x)
        resolved = self.task.resolve(targets, outputs)
        rolled = methods.attention_rollout(list(attentions.values()), self.head_fusion, self.discard_ratio)
        view = self.token_view
        assert view.grid is not None
        maps = {self.layers[0]: methods.token_map(rolled, view.prefix, view.grid)}
        return RawMaps(maps, resolved, target_scores(resolved, outputs), outputs,
                       notes=[f"attention rollout over {len(attentions)} blocks ({view.describe()}), "
                              f"heads {self.head_fusion}"])


@method_spec(MethodSpec(
    "gradattention", cost="1 forward + 1 backward through the attention blocks", cost_class="full backward",
    uses_gradients=True, aliases=("gradientattention", "chefer"),
    requires=(GLOBAL_ATTENTION,),
))
class GradientAttention(_AttentionCAM):
    """Gradient-weighted attention (Chefer, Gur & Wolf 2021): per block the positive part of
    attention x its gradient, heads averaged, accumulated as ``R += A_bar @ R``; the class token's row."""

    prepares = "gradients"

    def raw_maps(self, x: np.ndarray, targets: TargetSpec) -> RawMaps:
        if self._global is None:
            self.run_attention(x)
        assert self._global is not None
        g = self.model.gradients_at(x, self._global, targets, self.batch_size, self.gradient_mode, self.task)
        atts = [g.activations[s] for s in self._global]
        grads = [g.gradients[s] for s in self._global]
        relevance = methods.gradient_attention(atts, grads)
        view = self.token_view
        assert view.grid is not None
        maps = {self.layers[0]: methods.token_map(relevance, view.prefix, view.grid)}
        return RawMaps(maps, g.targets, g.scores, g.outputs,
                       notes=[f"gradients: {g.source}", f"gradient-weighted attention over {len(atts)} blocks "
                              f"({view.describe()})", *g.notes])
