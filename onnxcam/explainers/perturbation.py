"""Gradient-free CAMs that re-run the model: Score-CAM, SS-CAM (whole model on masked images) and
Ablation-CAM (only the head, on ablated activations; the body runs once)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from onnxcam import methods
from onnxcam.explainers.base import BaseCAM, RawMaps
from onnxcam.method_specs import MethodOption, MethodSpec, method_spec
from onnxcam.scoring import ForwardScorer
from onnxcam.targets import Target, TargetSpec, target_scores


class _MaskingCAM(BaseCAM):
    uses_gradients = False
    default_batch_size = 32
    prepares = "activations"

    def prepare(self, n: int) -> None:
        super().prepare(n)
        self.model.session("forward")  # the masked copies run through the whole model

    def _score_fn(self, targets: list[Target], total: int) -> Callable[[np.ndarray, int], np.ndarray]:
        """``fn(masked images (M, ...), i) -> (M,)``: image ``i``'s target on whole-model runs; each call
        reports ``M / total`` of the explain call's progress."""
        def forward(images: np.ndarray) -> list[np.ndarray]:
            return self.model.forward(images.astype(np.float32, copy=False), self.batch_size)

        return _counted(self, ForwardScorer(forward, targets).per_image(), total)

    def _channels(self, acts: dict[str, np.ndarray], max_channels: int | None) -> int:
        """Channels scored per image over all layers (the unit of progress)."""
        return sum(min(a.shape[1], max_channels or a.shape[1]) for a in acts.values())


@method_spec(MethodSpec(
    "scorecam", cost="1 + C forwards (C = channels; constant channels once)", cost_class="per-channel forwards",
    uses_gradients=False,
    options=(
        MethodOption("max_channels", int, None, "score only the K most varied channels (Faster-Score-CAM)", minimum=1),
    ),
))
class ScoreCAM(_MaskingCAM):
    """Score-CAM (Wang et al. 2020): channel weights = softmax of the target scores of the input masked
    by each upsampled, normalised channel. Constant channels are scored once (exact).
    ``max_channels=k``: Faster-Score-CAM, only the k channels of highest variance."""

    def __init__(self, *args: object, max_channels: int | None = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.max_channels = max_channels

    def raw_maps(self, x: np.ndarray, targets: TargetSpec) -> RawMaps:
        acts, resolved, scores, outputs = self.activations(x, targets)
        score_fn = self._score_fn(resolved, len(x) * self._channels(acts, self.max_channels))
        maps, weights = {}, {}
        for layer in self.layers:
            w = methods.scorecam_weights(acts[layer], self.model.input.size, x, score_fn, self.batch_size,
                                         self.max_channels, self.model.input.layout)
            weights[layer] = w
            maps[layer] = methods.weighted_sum(acts[layer], w)
        return RawMaps(maps, resolved, scores, outputs, acts, weights=weights)


@method_spec(MethodSpec(
    "sscam", cost="1 + samples x C forwards", cost_class="per-channel forwards", uses_gradients=False,
    options=(
        MethodOption("num_samples", int, 35, "noisy copies of each mask", minimum=1),
        MethodOption("std", float, 2.0, "std of the Gaussian noise added to the masks", minimum=0.0),
        MethodOption("seed", int, 0, "seed of each image's noise generator", minimum=0),
        MethodOption("max_channels", int, None, "score only the K most varied channels (Faster-Score-CAM)", minimum=1),
    ),
))
class SSCAM(_MaskingCAM):
    """SS-CAM (Wang et al. 2020): Score-CAM with Gaussian noise on the masks, averaged (torchcam's
    formulas). ``num_samples`` rounds, noise std ``std``. Every image draws its noise from its own
    ``default_rng(seed)``, so its map does not depend on the rest of the batch. ``max_channels=k``
    scores only the k channels of highest variance (as Score-CAM's)."""

    def __init__(self, *args: object, num_samples: int = 35, std: float = 2.0, seed: int = 0,
                 max_channels: int | None = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.num_samples = num_samples
        self.std = std
        self.seed = seed
        self.max_channels = max_channels

    def raw_maps(self, x: np.ndarray, targets: TargetSpec) -> RawMaps:
        acts, resolved, scores, outputs = self.activations(x, targets)
        score_fn = self._score_fn(resolved, len(x) * self._channels(acts, self.max_channels) * self.num_samples)
        maps, weights = {}, {}
        for layer in self.layers:
            w = methods.sscam_weights(acts[layer], x, score_fn, self.batch_size, self.num_samples, self.std,
                                      [np.random.default_rng(self.seed) for _ in range(len(x))],
                                      self.model.input.layout, self.max_channels)
            weights[layer] = w
            maps[layer] = methods.weighted_sum(acts[layer], w)
        return RawMaps(maps, resolved, scores, outputs, acts, weights=weights)


@method_spec(MethodSpec(
    "ablationcam", cost="1 forward + C head runs", cost_class="per-channel head runs", uses_gradients=False,
))
class AblationCAM(BaseCAM):
    """Ablation-CAM (Desai & Ramaswamy 2020): channel weight = relative drop of the target score when
    the channel is ablated. Only the head re-runs, batched over channels."""

    default_batch_size = 64

    def raw_maps(self, x: np.ndarray, targets: TargetSpec) -> RawMaps:
        maps, weights = {}, {}
        acts_all: dict[str, np.ndarray] = {}
        resolved: list[Target] = []
        scores = np.zeros(0, np.float32)
        outputs: list[np.ndarray] = []
        for layer in self.layers:
            feeds, outputs = self.model.run_body(x, (layer,), self.batch_size)
            resolved = resolved or self.task.resolve(targets, outputs)
            scores = target_scores(resolved, outputs)
            view = self.view(layer)
            a = view.to_map(feeds[layer])
            acts_all[layer] = a
            scorer = self.model.gradient_engine.head_scorer(layer, resolved, feeds, outputs, self.batch_size)
            total = len(x) * a.shape[1] * len(self.layers)
            w = methods.ablation_weights(a, _counted(self, scorer.per_image(view), total), scores, self.batch_size)
            weights[layer] = w
            maps[layer] = methods.weighted_sum(a, w)
        return RawMaps(maps, resolved, scores, outputs, acts_all, weights=weights,
                       notes=["only the head re-ran; the body ran once"])


def _counted(cam: BaseCAM, fn: Callable[[np.ndarray, int], np.ndarray],
             total: int) -> Callable[[np.ndarray, int], np.ndarray]:
    """``fn`` reporting ``len(rows) / total`` of ``cam``'s explain call as done after each call, so a
    progress bar moves within a batch (the methods' loops never see it)."""
    def scored(rows: np.ndarray, i: int) -> np.ndarray:
        out = fn(rows, i)
        cam.report_progress(rows.shape[0] / max(1, total))
        return out

    return scored
