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
from typing import Any

import numpy as np
import onnx

from onnxcam import methods
from onnxcam.errors import LayerShapeError, UnsupportedModelError
from onnxcam.explainers.base import BaseCAM, RawMaps
from onnxcam.methods.attention import HeadFusion
from onnxcam.model import LayerSpec, Model
from onnxcam.runtime import run_batched
from onnxcam.targets import TargetSpec, target_scores
from onnxcam.views import FeatureView, view_for


class _AttentionCAM(BaseCAM):
    """Shared: find the attention softmaxes, run the model with their outputs, keep the global ones.

    ``layer`` is not used (the maps come from every global attention block); ``head_fusion`` and
    ``discard_ratio`` are attention rollout's options (see ``onnxcam.methods.attention``).
    """

    def __init__(self, model: Model | str | os.PathLike[str], layer: LayerSpec = "auto", *,
                 head_fusion: HeadFusion = "mean", discard_ratio: float = 0.0, **kwargs: Any) -> None:
        super().__init__(model, layer, **kwargs)
        self.head_fusion: HeadFusion = head_fusion
        self.discard_ratio = discard_ratio
        self.softmaxes: tuple[str, ...] = tuple(b.softmax for b in self.model.layer_facts().blocks)
        if not self.softmaxes:
            raise UnsupportedModelError(
                f"{self.model.name} has no attention Softmax (scores (..., T, T) feeding a MatMul), so {self.name} "
                "has nothing to read; use a CAM method (e.g. gradcam), or export the model without fused "
                "attention kernels"
            )
        self._session: Any = None
        self._global: tuple[str, ...] | None = None
        self._view: FeatureView | None = None
        self.layers = (self.softmaxes[-1],)
        self.views = {}

    def _attention_session(self) -> Any:
        if self._session is None:
            proto = onnx.ModelProto()
            proto.CopyFrom(self.model.proto)
            known = {o.name for o in proto.graph.output}
            proto.graph.output.extend(onnx.helper.make_empty_tensor_value_info(s) for s in self.softmaxes
                                      if s not in known)
            self._session = self.model.new_session(proto, f"attention of {self.model.name}")
        return self._session

    def run_attention(self, x: np.ndarray) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
        """One forward: the model outputs and the global attentions ``(N, heads, T, T)`` by Softmax name."""
        x = self.model.check_input(x)
        names = list(self.model.outputs) + [s for s in self.softmaxes if s not in self.model.outputs]
        values = run_batched(self._attention_session(), {self.model.input.name: x}, names, self.batch_size,
                             what=f"model {self.model.name}", fixed_batch=self.model.input.max_batch)
        outputs = values[: len(self.model.outputs)]
        found = dict(zip(names, values))
        chosen = self._select(len(x), {s: found[s] for s in self.softmaxes})
        return outputs, {s: found[s] for s in chosen}

    def _select(self, n: int, attentions: dict[str, np.ndarray]) -> tuple[str, ...]:
        """The trailing run of blocks with global attention over the same tokens, cached."""
        if self._global is None:
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
                raise UnsupportedModelError(
                    f"{self.model.name}'s last attention {self.softmaxes[-1]!r} has probabilities of shape "
                    f"{tuple(last.shape)} for a batch of {n}: it attends within windows or patches, not over the "
                    f"image's tokens, so {self.name} cannot be read from it; use gradcam (it works on every layer "
                    "`onnxcam layers` lists)"
                )
            try:
                self._view = view_for((n, tokens, 1), "tokens", f"the attention of {self.model.name}")
            except LayerShapeError as e:
                raise UnsupportedModelError(str(e)) from None
            self._global = tuple(reversed(chosen))
        return self._global

    @property
    def token_view(self) -> FeatureView:
        """Prefix and grid of the attended tokens (after the first call)."""
        assert self._view is not None and self._view.grid is not None
        return self._view

    def prepare(self, n: int) -> None:
        self._attention_session()


class AttentionRollout(_AttentionCAM):
    """Attention rollout (Abnar & Zuidema 2020): each block's attention with the residual, heads fused,
    multiplied through the blocks; the class token's row over the patches. Gradient-free, class-agnostic."""

    name = "rollout"
    uses_gradients = False

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


class GradientAttention(_AttentionCAM):
    """Gradient-weighted attention (Chefer, Gur & Wolf 2021): per block the positive part of
    attention x its gradient, heads averaged, accumulated as ``R += A_bar @ R``; the class token's row."""

    name = "gradattention"
    prepares = "gradients"

    def prepare(self, n: int) -> None:
        self._attention_session()

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
