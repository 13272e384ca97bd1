"""Target scores of re-run rows: the one scorer behind Ablation-CAM (head runs on ablated
activations), Score-CAM and SS-CAM (whole-model runs on masked images), finite differences and
``check-gradients`` (head runs on perturbed activations).

A scorer is called with rows and, per row, the index of the image it belongs to; each row is
scored by that image's target on the outputs of the re-run. Outputs a head does not produce (they
do not depend on the layer) are taken from the image's own body run, so a target that reads
several outputs scores the same function everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from onnxcam.targets import Target, score_rows
from onnxcam.views import IDENTITY, FeatureView

Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


class HeadScorer:
    """``scorer(rows (M, ...), samples (M,)) -> (M,)`` float64 target scores of the head, with the
    ``layer`` tensor replaced by ``rows`` (in the tensor's own layout) and every other head input
    taken from each row's image.

    ``run_head(feeds)`` runs the head on all its inputs and returns ``head_outputs`` in order;
    ``feeds`` are the body's values of the head inputs and ``outputs`` the model outputs of the batch.
    """

    def __init__(self, run_head: Runner, layer: str, head_inputs: Sequence[str], head_outputs: Sequence[str],
                 model_outputs: Sequence[str], targets: Sequence[Target], feeds: Mapping[str, np.ndarray],
                 outputs: Sequence[np.ndarray]) -> None:
        self.run_head = run_head
        self.layer = layer
        self.head_inputs = tuple(head_inputs)
        self.targets = list(targets)
        self.feeds = feeds
        self.outputs = list(outputs)
        # where each model output comes from on a re-run: the head's k-th output, or the body's
        where = {name: k for k, name in enumerate(head_outputs)}
        self._from_head = [where.get(name) for name in model_outputs]

    def __call__(self, rows: np.ndarray, samples: np.ndarray) -> np.ndarray:
        samples = np.asarray(samples).reshape(-1)
        first = int(samples[0]) if samples.size else 0
        same = bool(samples.size) and bool(np.all(samples == first))
        feed: dict[str, np.ndarray] = {}
        for name in self.head_inputs:
            if name == self.layer:
                feed[name] = rows.astype(self.feeds[name].dtype, copy=False)
            else:
                v = self.feeds[name]
                feed[name] = np.repeat(v[first:first + 1], len(samples), axis=0) if same else v[samples]
        head = self.run_head(feed)
        full = [head[k] if k is not None else self.outputs[j][samples] for j, k in enumerate(self._from_head)]
        return score_rows(self.targets, full, samples)

    def per_image(self, view: FeatureView = IDENTITY) -> Callable[[np.ndarray, int], np.ndarray]:
        """``fn(maps (M, C, h, w), i) -> (M,)``: rows of one image given as feature maps through ``view``."""
        tensor = self.feeds[self.layer]

        def score(maps: np.ndarray, i: int) -> np.ndarray:
            m = maps.shape[0]
            rows = view.to_tensor(maps, np.repeat(tensor[i:i + 1], m, axis=0) if view.is_tokens else tensor)
            return self(rows, np.full(m, i))

        return score


class ForwardScorer:
    """``scorer(images (M, ...), samples (M,)) -> (M,)``: target scores of whole-model runs."""

    def __init__(self, forward: Callable[[np.ndarray], list[np.ndarray]], targets: Sequence[Target]) -> None:
        self.forward = forward
        self.targets = list(targets)

    def __call__(self, images: np.ndarray, samples: np.ndarray) -> np.ndarray:
        return score_rows(self.targets, self.forward(images), np.asarray(samples).reshape(-1))

    def per_image(self) -> Callable[[np.ndarray, int], np.ndarray]:
        """``fn(images (M, ...), i) -> (M,)``: rows that all belong to image ``i``."""
        return lambda images, i: self(images, np.full(images.shape[0], i))
