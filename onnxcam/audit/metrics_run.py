"""Per-image metric values for one method's maps, and the flags a reviewer should look at.

All forwards go through ``predict(images) -> (M, K)`` probabilities (``model_predict`` builds it
from an ``onnxcam.Model``), so this module is plain numpy around ``onnxcam.metrics``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
from numpy.typing import NDArray

from onnxcam.errors import OnnxCamWarning
from onnxcam.metrics import (
    average_drop_increase,
    cam_box_iou,
    deletion_insertion,
    energy_pointing_game,
    pointing_game,
    road_combined,
)
from onnxcam.metrics._common import Predict
from onnxcam.model import Model
from onnxcam.tasks import to_probabilities

#: Thresholds behind the review flags (documented in the report). A map is flagged for low insertion
#: only when its insertion AUC is below the image's random-map baseline (the mean of two seeded random
#: maps) by more than a margin calibrated on those random maps (``calibrate_insertion``), so that a map
#: carrying no information is flagged at about ``FALSE_ALARM_TARGET``; the report states the rate.
#: No absolute floor: a low-confidence image has low insertion AUCs whatever the map.
INSERTION_MARGIN = 0.05  # the smallest margin, whatever the random maps' spread
FALSE_ALARM_TARGET = 0.05
BORDER_BAND = 0.10  # outer band, as a fraction of the height / width on each side
BORDER_ENERGY = 0.5
NEAR_TIE_GAP = 0.05

#: Per-image metric keys in report order; the box metrics exist only when a box is known.
BASE_METRICS = ("average_drop", "increase", "deletion_auc", "insertion_auc", "border_energy")
BOX_METRICS = ("pointing_game", "energy_pointing_game", "cam_box_iou")
ROAD_METRIC = "road"


def model_predict(model: Model, batch_size: int = 16) -> Predict:
    """``predict(images (M, ...)) -> (M, K)`` probabilities of ``model``'s first output."""

    def predict(images: NDArray[np.float32]) -> NDArray[np.float64]:
        return to_probabilities(model.forward(images, batch_size)[0])

    return predict


def random_maps(
    n: int, size: tuple[int, int], seed: int = 0, grid: tuple[int, int] | None = (7, 7)
) -> NDArray[np.float32]:
    """``(n, H, W)`` seeded random maps: the baseline a method's AUCs should beat.

    ``grid``: uniform noise at that resolution, bilinearly upsampled, so the baseline has a CAM's
    spatial smoothness (``None``: per-pixel noise, which deletes like salt noise and is a much
    harder baseline for deletion than any real explanation).
    """
    rng = np.random.default_rng(seed)
    if grid is None:
        return rng.random((n, size[0], size[1])).astype(np.float32)
    low = rng.random((n, grid[0], grid[1])).astype(np.float32)
    return np.stack([cv2.resize(m, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for m in low])


def border_energy(maps: NDArray[np.floating], band: float = BORDER_BAND) -> NDArray[np.float64]:
    """``(N,)`` share of each map's mass in the outer ``band`` of the image (NaN for a zero map).

    The band is ``ceil(band * H)`` rows at top and bottom and ``ceil(band * W)`` columns at left
    and right; a uniform map puts ``1 - (1 - 2 band)^2`` (36 % for 10 %) of its mass there.
    """
    m = np.clip(np.asarray(maps, dtype=np.float64), 0.0, None)
    n, h, w = m.shape
    by, bx = int(np.ceil(band * h)), int(np.ceil(band * w))
    inner = np.zeros((h, w), dtype=bool)
    inner[by: h - by, bx: w - bx] = True
    total = m.reshape(n, -1).sum(axis=1)
    outer = m[:, ~inner].sum(axis=1)
    return np.divide(outer, total, out=np.full(n, np.nan), where=total > 0)


def top_predictions(probs: NDArray[np.float64], k: int = 3) -> list[list[tuple[int, float]]]:
    """Per image, the ``k`` most probable classes as ``(class, probability)``."""
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(int(c), float(probs[i, c])) for c in row] for i, row in enumerate(order)]


def near_tie(probs: NDArray[np.float64], gap: float = NEAR_TIE_GAP) -> NDArray[np.bool_]:
    """``(N,)`` True where the top-2 probabilities are closer than ``gap``."""
    if probs.shape[1] < 2:
        return np.zeros(probs.shape[0], dtype=bool)
    top2 = -np.sort(-probs, axis=1)[:, :2]
    return np.asarray(top2[:, 0] - top2[:, 1] < gap)


@dataclass
class MethodMetrics:
    """One method's per-image values ``values[key]`` ``(N,)`` (NaN where undefined or not computed)."""

    method: str
    values: dict[str, NDArray[np.float64]]
    flags: list[list[str]] = field(default_factory=list)  # per image, flag codes
    curves: dict[str, NDArray[np.float64]] = field(default_factory=dict)  # "deletion"/"insertion": (N, steps + 1)


def method_metrics(
    predict: Predict,
    x: NDArray[np.float32],
    maps: NDArray[np.float32],
    classes: NDArray[np.int64],
    layout: str,
    boxes: Sequence[NDArray[np.int64] | None] | None = None,
    random_insertion: NDArray[np.float64] | None = None,
    steps: int = 32,
    batch_size: int = 16,
    road: bool = False,
    method: str = "",
) -> MethodMetrics:
    """Metrics of ``maps`` ``(N, H, W)`` for the batch ``x`` and its explained ``classes`` ``(N,)``.

    ``boxes``: per image a ``(k, 4)`` box array in model-input pixels, or None (no box metrics).
    ``random_insertion``: ``(N,)`` insertion AUCs of random maps (the low-insertion baseline).
    """
    n = x.shape[0]
    nan = np.full(n, np.nan)
    adi = average_drop_increase(predict, x, maps, classes, batch_size=batch_size, layout=layout)
    di = deletion_insertion(predict, x, maps, classes, steps=steps, batch_size=batch_size, layout=layout)
    values: dict[str, NDArray[np.float64]] = {
        "average_drop": adi.drop.astype(np.float64),
        "increase": adi.increased.astype(np.float64),
        "deletion_auc": di.deletion_auc,
        "insertion_auc": di.insertion_auc,
        "border_energy": border_energy(maps),
    }
    if boxes is not None:
        for key in BOX_METRICS:
            values[key] = nan.copy()
        have = [i for i, b in enumerate(boxes) if b is not None]
        if have:
            sub_maps = maps[have]
            sub_boxes = [b for b in boxes if b is not None]
            with warnings.catch_warnings():
                # Blank maps are flagged in the report; the NaN they give is the honest value.
                warnings.simplefilter("ignore", OnnxCamWarning)
                values["pointing_game"][have] = pointing_game(sub_maps, sub_boxes).astype(np.float64)
                values["energy_pointing_game"][have] = energy_pointing_game(sub_maps, sub_boxes)
                values["cam_box_iou"][have] = cam_box_iou(sub_maps, sub_boxes)
    if road:
        values[ROAD_METRIC] = np.asarray(
            road_combined(predict, x, maps, classes, rng=0, batch_size=batch_size, layout=layout), dtype=np.float64
        ).reshape(n)
    flags = [review_flags({k: float(v[i]) for k, v in values.items()},
                          None if random_insertion is None else float(random_insertion[i])) for i in range(n)]
    return MethodMetrics(method, values, flags, {"deletion": di.deletion_curves, "insertion": di.insertion_curves})


def calibrate_insertion(first: NDArray[np.float64], second: NDArray[np.float64],
                        target: float = FALSE_ALARM_TARGET) -> tuple[float, float]:
    """``(margin, expected false-alarm rate)`` of the low-insertion flag from two random maps per image.

    ``first``/``second``: ``(N,)`` insertion AUCs of two independent random maps. Their differences
    give the spread ``s`` of one random map's AUC around its image's value (pooled over the images:
    ``s^2 = mean(d^2) / 2``). A map with no information, compared with the baseline (the mean of the
    two), then differs by about ``s * sqrt(1.5)``; the margin is the one-sided ``target`` quantile of
    that (normal approximation), and never below ``INSERTION_MARGIN``. The expected rate is the
    normal tail beyond the margin (below ``target`` when the floor applies).
    """
    d = np.asarray(first, dtype=np.float64) - np.asarray(second, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return INSERTION_MARGIN, float("nan")
    spread = math.sqrt(float(np.mean(d * d)) / 2 * 1.5)
    z = math.sqrt(2) * _erfc_inverse(2 * target)
    margin = max(INSERTION_MARGIN, z * spread)
    expected = 0.5 * math.erfc(margin / (spread * math.sqrt(2))) if spread > 0 else 0.0
    return margin, expected


def _erfc_inverse(y: float) -> float:
    """x with erfc(x) = y, for y in (0, 2), by bisection (math has no inverse)."""
    lo, hi = -6.0, 6.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if math.erfc(mid) > y:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


FLAG_TEXT = {
    "low_insertion": "insertion AUC below the same image's random-map baseline by more than the calibrated margin",
    "border": "more than {border:.0%} of the map's energy in the outer {band:.0%} band",
    "peak_outside_box": "the map's maximum lies outside the labelled box",
    "near_tie": "top-2 probabilities within {gap}",
    "blank_map": "the map is all zero",
}


def flag_text(code: str) -> str:
    return FLAG_TEXT.get(code, code).format(margin=INSERTION_MARGIN, border=BORDER_ENERGY, band=BORDER_BAND,
                                           gap=NEAR_TIE_GAP)


def flag_detail(code: str, values: dict[str, float | None], random_insertion: float | None,
                margin: float = INSERTION_MARGIN) -> str:
    """``flag_text`` with the numbers that raised it, for one image."""
    def num(v: float | None) -> str:
        return "n/a" if v is None or not np.isfinite(v) else f"{v:.3f}"

    if code == "low_insertion":
        return (f"insertion AUC {num(values.get('insertion_auc'))} against {num(random_insertion)} for a random "
                f"map (margin {margin:.3f})")
    if code == "border":
        return f"{num(values.get('border_energy'))} of the map's energy in the outer {BORDER_BAND:.0%} band"
    return flag_text(code)


def review_flags(values: dict[str, float], random_insertion: float | None,
                 margin: float = INSERTION_MARGIN) -> list[str]:
    """Flag codes (see ``FLAG_TEXT``) for one image's metric values; ``margin``: see ``calibrate_insertion``."""
    flags: list[str] = []
    ins = values.get("insertion_auc", float("nan"))
    if np.isfinite(ins) and random_insertion is not None and np.isfinite(random_insertion) \
            and ins < random_insertion - margin:
        flags.append("low_insertion")
    energy = values.get("border_energy", float("nan"))
    if np.isnan(energy):
        flags.append("blank_map")
    elif energy > BORDER_ENERGY:
        flags.append("border")
    pg = values.get("pointing_game", float("nan"))
    if np.isfinite(pg) and pg == 0.0:
        flags.append("peak_outside_box")
    return flags


__all__ = [
    "BASE_METRICS",
    "BOX_METRICS",
    "FALSE_ALARM_TARGET",
    "FLAG_TEXT",
    "INSERTION_MARGIN",
    "MethodMetrics",
    "border_energy",
    "calibrate_insertion",
    "flag_detail",
    "flag_text",
    "method_metrics",
    "model_predict",
    "near_tie",
    "random_maps",
    "review_flags",
    "to_probabilities",
    "top_predictions",
]
