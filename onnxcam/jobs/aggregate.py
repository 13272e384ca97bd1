"""What the report says about all images, gathered one record at a time in bounded memory.

``Moments`` (count, sum, sum of squares) give the mean and standard deviation of each metric and of
each curve step; ``Sample`` keeps the report's images: per method the ``k`` worst and best by
insertion gain over the image's random-map baseline, ``k`` chosen at random (the smallest seeded
hashes of the image ids: the same images whatever the order records arrive in), and the flagged ones.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Aggregates", "Moments", "Sample"]


@dataclass
class Moments:
    n: int = 0
    total: float = 0.0
    squares: float = 0.0

    def add(self, value: Any) -> None:
        if value is None:
            return
        v = float(value)
        if math.isfinite(v):
            self.n += 1
            self.total += v
            self.squares += v * v

    def stats(self) -> dict[str, Any]:
        if not self.n:
            return {"mean": None, "std": None, "n": 0}
        mean = self.total / self.n
        return {"mean": mean, "std": math.sqrt(max(self.squares / self.n - mean * mean, 0.0)), "n": self.n}


@dataclass
class _Curve:
    n: int = 0
    total: np.ndarray | None = None
    squares: np.ndarray | None = None

    def add(self, curve: Sequence[float]) -> None:
        c = np.asarray(curve, dtype=np.float64)
        if self.total is None or self.squares is None:
            self.total, self.squares = np.zeros_like(c), np.zeros_like(c)
        self.n += 1
        self.total += c
        self.squares += c * c

    def stats(self) -> dict[str, list[float | None]]:
        if not self.n or self.total is None or self.squares is None:
            return {"mean": [], "std": []}
        mean = self.total / self.n
        std = np.sqrt(np.maximum(self.squares / self.n - mean * mean, 0.0))
        return {"mean": [float(v) if math.isfinite(v) else None for v in mean],
                "std": [float(v) if math.isfinite(v) else None for v in std]}


def _hash(seed: int, method: str, index: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{method}:{index}".encode(), digest_size=8).digest(), "big")


@dataclass
class Sample:
    """The report's images (see the module docstring), ``k`` of each kind per method."""

    methods: Sequence[str]
    k: int
    seed: int = 0
    flagged_limit: int = 50
    listed_limit: int = 5000  # flagged images beyond ``flagged_limit`` kept by name (the records have them all)
    flagged_count: int = 0
    _worst: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    _best: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    _random: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    flagged: list[int] = field(default_factory=list)  # the first ``flagged_limit`` flagged images, shown in full
    flagged_more: list[dict[str, Any]] = field(default_factory=list)  # the others: listed by name

    def add(self, record: dict[str, Any]) -> None:
        index = int(record["index"])
        base = record.get("random_insertion_auc")
        for m in self.methods:
            ins = record["methods"][m]["values"].get("insertion_auc")
            if ins is not None and base is not None:
                gain = float(ins) - float(base)
                # heapq keeps the smallest on top: the worst heap holds -gain so that its top is the best of the worst.
                _push(self._worst.setdefault(m, []), (-gain, -index), self.k)
                _push(self._best.setdefault(m, []), (gain, -index), self.k)
            _push(self._random.setdefault(m, []), (-_hash(self.seed, m, index), -index), self.k)
        flags = {c for res in record["methods"].values() for c in res["flags"]}
        if flags or record.get("near_tie"):
            self.flagged_count += 1
            if len(self.flagged) < self.flagged_limit:
                self.flagged.append(index)
            elif len(self.flagged_more) < self.listed_limit:
                self.flagged_more.append({"index": index, "file": record["file"], "flags": sorted(flags)})

    def chosen(self) -> dict[str, dict[str, list[int]]]:
        """Per method, the indices of its worst, best and random images (worst first, best first)."""
        out = {}
        for m in self.methods:
            worst = sorted(self._worst.get(m, []), reverse=True)
            best = sorted(self._best.get(m, []), reverse=True)
            rand = sorted(self._random.get(m, []), reverse=True)
            out[m] = {"worst": [-i for _, i in worst], "best": [-i for _, i in best], "random": [-i for _, i in rand]}
        return out

    def indices(self) -> set[int]:
        picked = {i for kinds in self.chosen().values() for ids in kinds.values() for i in ids}
        return picked | set(self.flagged)


def _push(heap: list[Any], entry: Any, k: int) -> None:
    if k <= 0:
        return
    if len(heap) < k:
        heapq.heappush(heap, entry)
    elif entry > heap[0]:
        heapq.heapreplace(heap, entry)


@dataclass
class Aggregates:
    """Per method and metric, per curve step, per true class: the run's statistics."""

    methods: Sequence[str]
    keys: Sequence[str]
    images: int = 0
    near_ties: int = 0
    labelled: int = 0
    correct: int = 0
    metrics: dict[str, dict[str, Moments]] = field(default_factory=dict)
    random: Moments = field(default_factory=Moments)
    curves: dict[str, dict[str, _Curve]] = field(default_factory=dict)
    flag_counts: dict[str, int] = field(default_factory=dict)
    classes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, record: dict[str, Any], curves: dict[str, dict[str, Sequence[float]]]) -> None:
        self.images += 1
        self.near_ties += int(bool(record["near_tie"]))
        self.random.add(record.get("random_insertion_auc"))
        for m in self.methods:
            res = record["methods"][m]
            per = self.metrics.setdefault(m, {k: Moments() for k in self.keys})
            for k in self.keys:
                per[k].add(res["values"].get(k))
            self.flag_counts[m] = self.flag_counts.get(m, 0) + int(bool(res["flags"]))
        for m, kinds in curves.items():
            for kind, curve in kinds.items():
                self.curves.setdefault(m, {}).setdefault(kind, _Curve()).add(curve)
        if record.get("true_label") is not None:
            label = str(record["true_label"])
            entry = self.classes.setdefault(label, {"class": record.get("true_class"), "n": 0, "correct": 0,
                                                    "metrics": {m: {"insertion_auc": Moments(),
                                                                    "deletion_auc": Moments()} for m in self.methods}})
            entry["n"] += 1
            if record.get("correct") is not None:
                self.labelled += 1
                self.correct += int(bool(record["correct"]))
                entry["correct"] += int(bool(record["correct"]))
            for m in self.methods:
                for k, mom in entry["metrics"][m].items():
                    mom.add(record["methods"][m]["values"].get(k))

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {m: {k: mom.stats() for k, mom in self.metrics.get(m, {}).items()} for m in self.methods}
        out["random"] = {"random_insertion_auc": self.random.stats()}
        return out

    def curve_stats(self) -> dict[str, dict[str, dict[str, list[float | None]]]]:
        return {m: {kind: c.stats() for kind, c in kinds.items()} for m, kinds in self.curves.items()}

    def per_class(self) -> list[dict[str, Any]]:
        rows = []
        for label in sorted(self.classes):
            e = self.classes[label]
            rows.append({"label": label, "class": e["class"], "images": e["n"],
                         "accuracy": e["correct"] / e["n"] if e["n"] and e["class"] is not None else None,
                         "metrics": {m: {k: mom.stats()["mean"] for k, mom in ks.items()}
                                     for m, ks in e["metrics"].items()}})
        return rows

    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None
