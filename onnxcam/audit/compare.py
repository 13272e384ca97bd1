"""Comparing two versions of a model (fp32 vs int8 QDQ, an optimised export) on the same images.

Both models explain the *same* class per image, model A's top-1, so a change in the map measures
how the explanation moved, not that the prediction flipped (that is reported separately as
top-1 agreement). Map similarity: Pearson correlation and IoU of the top-20 % regions
(``onnxcam.metrics``); the explanation change used for ranking is ``1 - pearson``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from onnxcam.errors import ArgumentError, OnnxCamWarning
from onnxcam.explainers.base import BaseCAM
from onnxcam.metrics import pearson, top_region_iou
from onnxcam.model import Model
from onnxcam.tasks import class_indices, classifier_task

TOP_FRACTION = 0.2


def check_comparable(model_a: Model, model_b: Model) -> None:
    """Both models must take the same input, or the same preprocessed batch cannot feed both."""
    a, b = model_a.input, model_b.input
    if (a.layout, a.channels, a.size) != (b.layout, b.channels, b.size):
        raise ArgumentError(
            f"{model_a.name} takes {a.layout} {a.channels}x{a.height}x{a.width} but {model_b.name} takes "
            f"{b.layout} {b.channels}x{b.height}x{b.width}: compare two versions of the same model (same input)"
        )


def map_similarity(maps_a: NDArray[np.floating], maps_b: NDArray[np.floating],
                   fraction: float = TOP_FRACTION) -> tuple[NDArray[np.float64], NDArray[np.float64],
                                                            NDArray[np.float64]]:
    """Per image ``(pearson, top-region IoU, change)`` of two ``(N, H, W)`` map stacks.

    Pearson is undefined for a constant map; the change is then 0 when the two maps are equal
    and 1 (as for uncorrelated maps) otherwise, so a map that went blank is never ranked as
    unchanged.
    """
    if maps_a.shape != maps_b.shape:
        raise ArgumentError(f"map stacks have shapes {maps_a.shape} and {maps_b.shape}; they must match")
    n = maps_a.shape[0]
    r = np.empty(n)
    iou = np.empty(n)
    change = np.empty(n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OnnxCamWarning)
        for i in range(n):
            r[i] = pearson(maps_a[i], maps_b[i])
            iou[i] = top_region_iou(maps_a[i], maps_b[i], fraction)
            if np.isfinite(r[i]):
                change[i] = 1.0 - r[i]
            else:
                change[i] = 0.0 if np.array_equal(maps_a[i], maps_b[i]) else 1.0
    return r, iou, change


def rank_by_change(change: NDArray[np.float64], iou: NDArray[np.float64]) -> NDArray[np.int64]:
    """Image indices, most changed first (ties: lower top-region IoU first, then input order)."""
    idx = np.arange(change.shape[0])
    return np.asarray(np.lexsort((idx, iou, -change)), dtype=np.int64)


@dataclass
class CompareBatch:
    """One batch through both models: probabilities ``(N, K)``, maps ``(N, H, W)``, similarities ``(N,)``."""

    classes: NDArray[np.int64]
    probs_a: NDArray[np.float64]
    probs_b: NDArray[np.float64]
    maps_a: NDArray[np.float32]
    maps_b: NDArray[np.float32]
    pearson: NDArray[np.float64]
    top_iou: NDArray[np.float64]
    change: NDArray[np.float64]

    @property
    def top1_a(self) -> NDArray[np.int64]:
        return np.asarray(self.probs_a.argmax(axis=1), dtype=np.int64)

    @property
    def top1_b(self) -> NDArray[np.int64]:
        return np.asarray(self.probs_b.argmax(axis=1), dtype=np.int64)


def compare_batch(cam_a: BaseCAM, cam_b: BaseCAM, x: NDArray[np.float32]) -> CompareBatch:
    """Explain ``x`` with both CAMs, for model A's top-1 class, and compare the maps."""
    task_a = classifier_task(cam_a.task, "onnxcam compare")
    task_b = classifier_task(cam_b.task, "onnxcam compare")
    ea = cam_a.explain(x)
    classes = class_indices(task_a, ea.targets)
    eb = cam_b.explain(x, ea.targets)
    probs_a = task_a.probabilities(ea.outputs)
    probs_b = task_b.probabilities(eb.outputs)
    if probs_a.shape != probs_b.shape:
        raise ArgumentError(
            f"{cam_a.model.name} outputs {probs_a.shape[1]} classes but {cam_b.model.name} outputs "
            f"{probs_b.shape[1]}: compare two versions of the same classifier"
        )
    r, iou, change = map_similarity(ea.maps, eb.maps)
    return CompareBatch(classes, probs_a, probs_b, ea.maps, eb.maps, r, iou, change)


__all__ = ["CompareBatch", "check_comparable", "compare_batch", "map_similarity", "rank_by_change"]
