"""Maps read from a transformer's attention: attention rollout (gradient-free) and gradient-weighted
attention (Chefer et al. 2021). Neither exists in pytorch-grad-cam.

They read each block's attention probabilities, the output of its ``Softmax`` (found in the graph by
``onnxcam.graph.layout.attention_softmaxes``). Only *global* attention is used, attention whose
sequences span the whole image or map, in one of two forms:

- over the image's tokens: the trailing blocks whose probabilities are ``(N, heads, T, T)`` over one
  token sequence per image (prefix tokens plus a square grid): ViT, DeiT, Swin's last stage;
- over unfolded patches (MobileViT): a map ``(N, C, h, w)`` cut into ``ph x pw`` patches, attention
  over ``N x ph pw`` sequences, each the ``T`` places of one image at one offset inside their patch.
  The tokens must come from the map by rearranging ops alone (``onnxcam.graph.layout.TokenSource``);
  which place each token holds is learnt by running those ops on an index-coded map, and the
  sequences must each span the map (a lattice of stride ``ph x pw`` over all of it). The blocks used
  are the trailing ones over the same unfolded map: the last MobileViT block's transformer layers.
  Attention matrices of different maps (stages with convolutions between them) cannot be multiplied,
  and the deepest stage is the one the output reads, as Swin's last stage is for global tokens.
  Each sequence is rolled out on its own; with no class token its readout is the mean of its query
  rows (as for any transformer without a prefix token); the values are folded back onto the map.

Windowed attention (Swin's early stages: contiguous tiles, each covering a part of the map) is
skipped; a model with no global attention is refused.
"""

from __future__ import annotations

import os
import weakref
from typing import Any, cast

import numpy as np
import onnx

from onnxcam import methods
from onnxcam.errors import ArgumentError, LayerShapeError, OnnxCamError, UnsupportedModelError
from onnxcam.explainers.base import BaseCAM, RawMaps
from onnxcam.graph.layout import TokenSource, rearrangement_model
from onnxcam.method_specs import MethodOption, MethodSpec, Requirement, method_spec
from onnxcam.methods.attention import HeadFusion, fold_tokens, readout, token_places, unfolded_patch
from onnxcam.model import LayerSpec, Model
from onnxcam.runtime import chunks, run, run_batched
from onnxcam.targets import Target, TargetSpec, output_seeds, target_scores
from onnxcam.views import FeatureView, view_for


class _Unfolding:
    """Where the tokens of attention over unfolded patches sit on their map: ``source``'s
    rearrangement run on a map whose every channel at each place holds that place's index."""

    def __init__(self, model: Model, source: TokenSource) -> None:
        self.model = model
        self.source = source
        self.failure = ""
        self.patch: tuple[int, int] = (1, 1)
        self._session: Any = None
        self._places: dict[int, np.ndarray] = {}
        layer = next((c for c in model.layer_facts().layers if c.name == source.source), None)
        self.layout = layer.view.layout if layer is not None and not layer.guessed else ""
        shape = model.tensor_info(source.source).shape or ()
        dims = (shape[1:] if self.layout == "NCHW" else (shape[3], shape[1], shape[2])) if len(shape) == 4 else ()
        known = [d for d in dims if isinstance(d, int)]
        self.channels, self.h, self.w = (known[0], known[1], known[2]) if len(known) == 3 else (0, 0, 0)
        if self.layout not in ("NCHW", "NHWC") or not self.h:
            self.failure = f"the layout or size of the map {source.source!r} its tokens come from is not known"

    def places(self, n: int) -> np.ndarray | None:
        """``(rows, T)``: the place ``(i h + y) w + x`` of the map that each token of a batch of ``n`` holds
        (None, with ``failure`` set, when the rearrangement cannot be run or is not one)."""
        if self.failure:
            return None
        if n not in self._places:
            try:
                if self._session is None:
                    proto = rearrangement_model(self.model.graph, self.source)
                    if proto is None:
                        self.failure = f"the shapes that unfold {self.source.source!r} are read from other tensors"
                        return None
                    self._session = self.model.new_session(proto, f"token places of {self.model.name}")
                codes = np.arange(n * self.h * self.w, dtype=np.int64).reshape(n, self.h, self.w)
                coded = (np.broadcast_to(codes[:, None], (n, self.channels, self.h, self.w)) if self.layout == "NCHW"
                         else np.broadcast_to(codes[..., None], (n, self.h, self.w, self.channels)))
                tokens = run(self._session, {self.source.source: np.ascontiguousarray(coded)}, None,
                             f"token places of {self.model.name}")[0]
                self._places[n] = token_places(np.asarray(tokens), n * self.h * self.w)
            except (OnnxCamError, ValueError) as e:
                self.failure = f"tracing the tokens of {self.source.source!r} failed ({e})"
                return None
        return self._places[n]

    def fold(self, relevance: np.ndarray) -> np.ndarray:
        """Maps ``(n, h, w)`` from each sequence's relevance ``(n ph pw, T)``."""
        n = relevance.size // (self.h * self.w)
        places = self.places(n)
        assert places is not None and places.shape == relevance.shape
        return fold_tokens(relevance, places, (n, self.h, self.w))

    def describe(self) -> str:
        return f"{self.patch[0]}x{self.patch[1]} patches unfolded from {self.h}x{self.w} {self.source.source!r}"


class _Attention:
    """A model's attention probabilities: the softmaxes, a session returning them with the outputs,
    and (after the first run) the trailing run of global blocks and their token view, or where the
    tokens of unfolded patches sit (``unfolding``)."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.softmaxes: tuple[str, ...] = tuple(b.softmax for b in model.layer_facts().blocks)
        self._session: Any = None
        self.chosen: tuple[str, ...] | None = None
        self.view: FeatureView | None = None
        self.unfolding: _Unfolding | None = None
        self._unfold_failure = ""
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
        (prefix + square grid), the same ``T`` in each, else the trailing run over one unfolded map
        (``unfolding`` set); () with ``refusal`` set when there is neither."""
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
                chosen = list(reversed(self._unfolded(n, attentions)))
                last = attentions[self.softmaxes[-1]]
                if not chosen and not self.refusal:
                    why = f" ({self._unfold_failure})" if self._unfold_failure else ""
                    self.refusal = (
                        f"{self.model.name}'s last attention {self.softmaxes[-1]!r} has probabilities of shape "
                        f"{tuple(last.shape)} for a batch of {n}: it attends within windows or patches, not over the "
                        f"image's tokens{why}")
            else:
                try:
                    self.view = view_for((n, tokens, 1), "tokens", f"the attention of {self.model.name}")
                except LayerShapeError as e:
                    self.refusal = str(e)
            self.chosen = tuple(reversed(chosen)) if not self.refusal else ()
        return self.chosen

    def _unfolded(self, n: int, attentions: dict[str, np.ndarray]) -> tuple[str, ...]:
        """The trailing blocks over the map the last block's tokens were unfolded from, when each of
        their sequences spans that map (see the module docstring); () otherwise."""
        blocks = {b.softmax: b for b in self.model.layer_facts().blocks}
        source = blocks[self.softmaxes[-1]].tokens_from
        shape = attentions[self.softmaxes[-1]].shape
        if source is None or len(shape) != 4 or shape[2] != shape[3]:
            return ()
        first = len(self.softmaxes) - 1
        while first > 0 and (blocks[self.softmaxes[first - 1]].tokens_from == source
                             and attentions[self.softmaxes[first - 1]].shape == shape):
            first -= 1
        unfolding = _Unfolding(self.model, source)
        places = unfolding.places(n)
        if places is None:
            self._unfold_failure = unfolding.failure
            return ()
        if places.shape != (shape[0], shape[2]):
            self._unfold_failure = (f"its {shape[0]} sequences of {shape[2]} tokens are not the {places.shape[0]} x "
                                    f"{places.shape[1]} tokens unfolded from {source.source!r}")
            return ()
        patch = unfolded_patch(places, (n, unfolding.h, unfolding.w))
        if patch is None:
            self.refusal = (f"{self.model.name}'s last attention {self.softmaxes[-1]!r} attends within windows of the "
                            f"{unfolding.h}x{unfolding.w} map {source.source!r}, not over the image's tokens nor over "
                            "patches that span the map")
            return ()
        unfolding.patch = patch
        self.unfolding = unfolding
        return self.softmaxes[first:]


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
    "grid, as in ViT, DeiT or Swin's last stage, or over patches unfolded from a map that each sequence spans, "
    "as in MobileViT)",
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

    def chunks(self, x: np.ndarray) -> list[tuple[np.ndarray, int]]:
        """``x`` as the batches the model runs, each with its count of real images (a fixed-batch model's
        last batch is padded with copies of its last image). Unfolded attention is read per batch: its
        rows are ``images x offsets`` in the model's order, which concatenating batches could break."""
        fixed = self.model.input.max_batch
        out = []
        for sl in chunks(len(x), self.model.batch_limit(self.batch_size)):
            part, m = x[sl], sl.stop - sl.start
            if fixed is not None and m < fixed:
                part = np.concatenate([part, np.repeat(part[-1:], fixed - m, axis=0)])
            out.append((part, m))
        return out

    def notes_on(self, what: str, blocks: int) -> str:
        if self.attention.unfolding is not None:
            return f"{what} over {blocks} blocks, per sequence of {self.attention.unfolding.describe()}"
        return f"{what} over {blocks} blocks ({self.token_view.describe()})"


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
        if self.attention.unfolding is not None:
            outputs, maps, blocks = self.unfolded_rollout(self.model.check_input(x))
        else:
            outputs, attentions = self.run_attention(x)
            rolled = methods.attention_rollout(list(attentions.values()), self.head_fusion, self.discard_ratio)
            view = self.token_view
            assert view.grid is not None
            maps, blocks = methods.token_map(rolled, view.prefix, view.grid), len(attentions)
        resolved = self.task.resolve(targets, outputs)
        return RawMaps({self.layers[0]: maps}, resolved, target_scores(resolved, outputs), outputs,
                       notes=[f"{self.notes_on('attention rollout', blocks)}, heads {self.head_fusion}"])

    def unfolded_rollout(self, x: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, int]:
        """The outputs, maps ``(N, h, w)`` and block count of rollout over unfolded patches."""
        unfolding = self.attention.unfolding
        assert unfolding is not None
        parts: list[list[np.ndarray]] = []
        maps = []
        blocks = 0
        for part, m in self.chunks(x):
            outputs, found = self.attention.run(part, len(part))
            chosen = self._select(len(part), found)
            rolled = methods.attention_rollout([found[s] for s in chosen], self.head_fusion, self.discard_ratio)
            maps.append(unfolding.fold(readout(rolled, 0))[:m])
            parts.append([o[:m] for o in outputs])
            blocks = len(chosen)
        outputs = [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]
        return outputs, np.concatenate(maps), blocks


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
        if self.attention.unfolding is not None:
            return self.unfolded_maps(self.model.check_input(x), targets)
        g = self.model.gradients_at(x, self._global, targets, self.batch_size, self.gradient_mode, self.task)
        atts = [g.activations[s] for s in self._global]
        grads = [g.gradients[s] for s in self._global]
        relevance = methods.gradient_attention(atts, grads)
        view = self.token_view
        assert view.grid is not None
        maps = {self.layers[0]: methods.token_map(relevance, view.prefix, view.grid)}
        return RawMaps(maps, g.targets, g.scores, g.outputs,
                       notes=[f"gradients: {g.source}", self.notes_on("gradient-weighted attention", len(atts)),
                              *g.notes])

    def unfolded_maps(self, x: np.ndarray, targets: TargetSpec) -> RawMaps:
        """Gradient-weighted attention over unfolded patches, per batch the model runs."""
        unfolding = self.attention.unfolding
        assert unfolding is not None
        batches, resolved, outputs = self.unfolded_gradients(x, targets)
        maps = [unfolding.fold(readout(methods.gradient_attention(atts, grads), 0))[:m] for m, atts, grads in batches]
        return RawMaps({self.layers[0]: np.concatenate(maps)}, resolved, target_scores(resolved, outputs), outputs,
                       notes=["gradients: gradient graph",
                              self.notes_on("gradient-weighted attention", len(batches[0][1]))])

    def unfolded_gradients(self, x: np.ndarray, targets: TargetSpec) -> tuple[
            list[tuple[int, list[np.ndarray], list[np.ndarray]]], list[Target], list[np.ndarray]]:
        """Per batch the model runs (see ``chunks``): its count of real images, the attention
        probabilities ``(rows, heads, T, T)`` of the chosen blocks and the gradients of each image's
        target score w.r.t. them; then the resolved targets and the model outputs.

        The gradients come from the engine's gradient graph of the head cut at the unfolded map: the
        probabilities are inside that head, and their gradients are outputs of the graph. The graph is
        run here because the probabilities have ``P`` rows per image where the engine's ``gradients_at``
        keeps one per image (it cuts its outputs to the image count); no finite-difference fallback.
        """
        unfolding = self.attention.unfolding
        assert unfolding is not None and self._global is not None
        if self.gradient_mode == "finite":
            raise ArgumentError(f"{self.name} over unfolded patches needs the gradient graph; use gradient mode "
                                "auto or graph")
        x = self.model.check_input(x)
        model, chosen = self.model, self._global
        names = (unfolding.source.source, *chosen)
        cut = model.frontier(names)
        split = model.split(cut)
        feeds, outputs = model.run_body(x, cut, self.batch_size)
        odd = [k for k, v in feeds.items() if v.shape[0] != len(x)]
        if odd:
            raise UnsupportedModelError(
                f"{model.name}: {odd[0]!r} crosses the cut at {cut[0]!r} with {feeds[odd[0]].shape[0]} rows for "
                f"{len(x)} images, so {self.name} cannot be read from its unfolded attention; use gradcam")
        resolved = self.task.resolve(targets, outputs)
        seeds = {split.model_outputs[k]: v for k, v in output_seeds(resolved, outputs).items()
                 if split.model_outputs[k] in split.head_outputs}
        seeded = tuple(name for name in split.model_outputs if name in seeds)
        batches, start = [], 0
        for part, m in self.chunks(x):
            graph = model.gradient_engine.graph(cut, names, seeded, len(part))
            sl = slice(start, start + m)
            start += m
            feed = {k: _padded(v[sl], len(part)) for k, v in feeds.items() if k in split.head_inputs}
            feed.update({seed: _padded(seeds[out][sl], len(part), zero=True)
                         for out, seed in graph.seed_inputs.items()})
            fetched = run(graph.session, feed, [graph.grad_outputs[s] for s in chosen] + list(chosen),
                          f"gradient graph of {model.name}")
            batches.append((m, fetched[len(chosen):], fetched[: len(chosen)]))
        return batches, resolved, outputs


def _padded(v: np.ndarray, n: int, zero: bool = False) -> np.ndarray:
    """``v`` padded to ``n`` rows: zeros (seeds) or copies of its last row (inputs)."""
    if len(v) == n:
        return v
    fill = np.zeros((n - len(v),) + v.shape[1:], v.dtype) if zero else np.repeat(v[-1:], n - len(v), axis=0)
    return np.concatenate([v, fill])
