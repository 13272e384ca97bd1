"""What the model's outputs mean: the task decides default targets, labels, probabilities and the
fields a summary or report row carries, so the jobs (explain, audit, compare) never reason about
class indices themselves.

Tasks today: classification (``(N, K)`` scores, logits or probabilities), segmentation
(``(N, K, H, W)`` class maps), sequence (``(N, T, C)``: a text recognizer's per-position classes)
and embedding (``(N, D)`` vectors explained against a reference). ``detect_task`` picks one from
the output shapes; pass ``task=`` to force it.

An output made by a final Softmax / LogSoftmax / Sigmoid has its logits among the explained outputs
(``onnxcam.graph.outputs``); class and sequence targets differentiate those logits, as the Grad-CAM
paper and pytorch-grad-cam do: the gradient of a saturated probability vanishes (p(1 - p) -> 0).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxcam.errors import ArgumentError, TargetError
from onnxcam.labels import LabelsSpec, resolve_labels
from onnxcam.targets import (
    ClassTarget,
    SegmentationTarget,
    SequenceTarget,
    SoftmaxTarget,
    Target,
    TargetSpec,
    output_shapes,
)

if TYPE_CHECKING:
    from onnxcam.model import Model

TASKS: tuple[str, ...] = ("classification", "segmentation", "sequence", "embedding", "detect")
# Tasks living in their own package (onnxcam.detection) register ``(shapes, kind, labels, metadata)
# -> Task | None`` here; ``detect_task`` asks them first.
RECOGNISERS: list[Callable[[Sequence[tuple[Any, ...]], str | None, LabelsSpec,
                            Mapping[str, str] | None], Task | None]] = []


class OutputShapes(list[tuple[Any, ...]]):
    """Per-image shapes of a model's explained outputs (batch axis dropped), and what produced them.

    ``logits``: ``{output index: index of the logits before its final activation}``;
    ``activations``: ``{output index: that activation's op type}`` (Softmax, LogSoftmax, Sigmoid).
    """

    def __init__(self, shapes: Sequence[tuple[Any, ...]] = (), logits: Mapping[int, int] | None = None,
                 activations: Mapping[int, str] | None = None) -> None:
        super().__init__(tuple(s) for s in shapes)
        self.logits = dict(logits or {})
        self.activations = dict(activations or {})


def to_probabilities(outputs: np.ndarray) -> np.ndarray:
    """``(N, K)`` probabilities from a model output ``(N, K, ...)``.

    Outputs that already are probabilities (in [0, 1], rows summing to 1) are kept: applying a
    softmax twice would flatten them towards uniform and hide near-ties.
    """
    n = int(outputs.shape[0])
    flat = np.asarray(outputs, dtype=np.float64).reshape(n, -1)
    if flat.size and flat.min() >= 0.0 and flat.max() <= 1.0 and np.allclose(flat.sum(axis=1), 1.0, atol=1e-3):
        return flat
    z = flat - flat.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


class Task:
    """Base: turns a user's target spec into one ``Target`` per image, and outputs into summary rows.

    ``labels``: one name per class, ``"imagenet"`` (the built-in ImageNet-1k names) or a labels file
    path (``None``: class indices are their own names; see ``onnxcam.labels``).
    """

    name = "task"

    def __init__(self, labels: LabelsSpec = None, output: int = 0, logits_output: int | None = None,
                 activation: str | None = None) -> None:
        self.labels = resolve_labels(labels) if labels is not None else None
        self.output = output
        # The explained output holding the logits before ``output``'s final ``activation`` (if any).
        self.logits_output = logits_output
        self.activation = activation

    @property
    def score_output(self) -> int:
        """The output class targets differentiate: the logits where the model ends in an activation."""
        return self.output if self.logits_output is None else self.logits_output

    def notes(self) -> list[str]:
        """What a summary should say about how targets are scored."""
        if self.logits_output is None:
            return []
        return [f"the model's output #{self.output} ends in {self.activation}: class targets differentiate the "
                f"logits before it, as Grad-CAM does (SoftmaxTarget explains the probability)"]

    # -- targets ----------------------------------------------------------------------------------
    def resolve(self, spec: TargetSpec, outputs: Sequence[np.ndarray]) -> list[Target]:
        """One validated ``Target`` per image from ``spec`` and the batch's outputs.

        ``None`` gives each image the task's default target; an int applies the task's target for
        that class to every image; a sequence must have exactly one entry per image (a shorter list
        is an error, never a silent truncation).
        """
        n = int(outputs[0].shape[0]) if outputs else 0
        entries: list[int | Target]
        if spec is None:
            entries = list(self.default_targets(outputs))
        elif isinstance(spec, Target):
            entries = [spec] * n
        elif isinstance(spec, (int, np.integer)):
            if isinstance(spec, bool):
                raise TargetError(f"target {spec!r} is neither a class index nor a Target object")
            entries = [int(spec)] * n
        else:
            entries = list(spec)
            if len(entries) != n:
                raise TargetError(
                    f"got {len(entries)} targets for a batch of {n} images: give one target per image, "
                    "a single int for all, or None for each image's default target"
                )
        resolved: list[Target] = []
        for i, t in enumerate(entries):
            if isinstance(t, Target):
                resolved.append(self.bind(t, [o[i] for o in outputs]))
            elif isinstance(t, (int, np.integer)) and not isinstance(t, bool):
                resolved.append(self.bind(self.target(int(t)), [o[i] for o in outputs]))
            else:
                raise TargetError(f"target {t!r} is neither a class index nor a Target object")
        shapes = output_shapes(outputs)
        for t in resolved:
            t.validate(shapes)
        return resolved

    def bind(self, target: Target, outputs: Sequence[np.ndarray]) -> Target:
        """``target`` fitted to this model and image (one image's ``outputs``); kept as is by default."""
        return target

    def default_targets(self, outputs: Sequence[np.ndarray]) -> list[Target]:
        """The target of each image when the user names none."""
        raise NotImplementedError

    def target(self, k: int) -> Target:
        """The target an integer ``k`` stands for."""
        raise TargetError(f"a {self.name} model takes Target objects, not class index {k}")

    def default_reads(self) -> tuple[int, ...]:
        """Outputs the default targets seed (what gradient graphs are prepared for)."""
        return (self.score_output,)

    def default_layers(self, model: Model) -> tuple[str, ...] | None:
        """The tensors ``layer="auto"`` stands for with this task (None: the model's last feature map)."""
        return None

    def top_targets(self, outputs: Sequence[np.ndarray], k: int) -> list[list[Target]]:
        """The ``k`` best targets per image (for ``--top-k``)."""
        if k == 1:
            return [[t] for t in self.default_targets(outputs)]
        raise ArgumentError(f"a {self.name} model has no ranking of targets: explain one target per image")

    # -- reading outputs --------------------------------------------------------------------------
    def check(self, outputs: Sequence[np.ndarray]) -> None:
        """Raise when the outputs contradict what the user said (e.g. the number of labels)."""

    def label(self, k: int) -> str:
        labels = self.labels
        return labels[k] if labels is not None and 0 <= k < len(labels) else str(k)

    def predictions(self, outputs: Sequence[np.ndarray], top: int) -> list[list[dict[str, Any]]]:
        """Per image, its ``top`` predictions as summary rows (none for tasks without classes)."""
        return [[] for _ in range(int(outputs[0].shape[0]) if outputs else 0)]

    def describe(self, target: Target) -> dict[str, Any]:
        """The fields a summary row carries for an explained target."""
        return {"target": target.describe()}

    def caption(self, target: Target) -> str:
        """A short title for an overlay of ``target``."""
        return target.describe()


class ClassificationTask(Task):
    """Class scores ``(N, K)`` (logits or probabilities) in output ``output``; the default target is
    each image's top-1 class, as its raw score."""

    name = "classification"

    def class_scores(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        """``(N, K)`` class scores, the logits where the model ends in an activation (a class map's mean
        over its pixels)."""
        out = outputs[self.score_output]
        n = int(out.shape[0])
        return out.reshape(n, out.shape[1], -1).mean(axis=2) if out.ndim > 2 else out.reshape(n, -1)

    def num_classes(self, outputs: Sequence[np.ndarray]) -> int:
        return int(outputs[self.output].shape[1])

    def probabilities(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        """``(N, K)`` class probabilities (the model's own, where it ends in Softmax or Sigmoid)."""
        out = outputs[self.output]
        if self.activation in ("Softmax", "Sigmoid"):
            return np.asarray(out, dtype=np.float64).reshape(out.shape[0], -1)
        if self.activation == "LogSoftmax":
            return np.exp(np.asarray(out, dtype=np.float64).reshape(out.shape[0], -1))
        return to_probabilities(out)

    def target(self, k: int) -> Target:
        return ClassTarget(k, output_index=self.score_output)

    def bind(self, target: Target, outputs: Sequence[np.ndarray]) -> Target:
        # The probability of a Softmax model is the softmax of its logits: differentiating it there is
        # exact, and SoftmaxTarget on the probabilities themselves would apply a second softmax.
        if (isinstance(target, SoftmaxTarget) and target.output_index == self.output
                and self.logits_output is not None and self.activation in ("Softmax", "LogSoftmax")):
            return SoftmaxTarget(target.category, output_index=self.logits_output)
        return target

    def default_targets(self, outputs: Sequence[np.ndarray]) -> list[Target]:
        return [self.target(int(c)) for c in self.class_scores(outputs).argmax(axis=1)]

    def top_targets(self, outputs: Sequence[np.ndarray], k: int) -> list[list[Target]]:
        classes = self.num_classes(outputs)
        if not 1 <= k <= classes:
            raise ArgumentError(f"top-k {k} is out of range: the model has {classes} classes (use 1..{classes})")
        order = np.argsort(-self.class_scores(outputs), axis=1, kind="stable")[:, :k]
        return [[self.target(int(c)) for c in row] for row in order]

    def check(self, outputs: Sequence[np.ndarray]) -> None:
        self.check_classes(self.num_classes(outputs))

    def check_classes(self, k: int) -> None:
        """Raise when the labels given do not name the model's ``k`` classes."""
        if self.labels is not None and len(self.labels) != k:
            raise ArgumentError(
                f"the labels file has {len(self.labels)} names but the model outputs {k} classes: "
                "pass the labels file that belongs to this model"
            )

    def class_of(self, target: Target) -> int | None:
        """The class a target explains, or None for targets that are not about one class."""
        category = getattr(target, "category", None)
        return int(category) if isinstance(category, (int, np.integer)) else None

    def predictions(self, outputs: Sequence[np.ndarray], top: int) -> list[list[dict[str, Any]]]:
        probs = self.probabilities(outputs)
        scores = self.class_scores(outputs)
        rows = []
        for i in range(probs.shape[0]):
            best = np.argsort(-probs[i], kind="stable")[:top]
            rows.append([{"class": int(k), "label": self.label(int(k)), "probability": float(probs[i, k]),
                          "score": float(scores[i, k])} for k in best])
        return rows

    def describe(self, target: Target) -> dict[str, Any]:
        k = self.class_of(target)
        if k is None:
            return {"target": target.describe()}
        row: dict[str, Any] = {"class": k, "label": self.label(k)}
        if not isinstance(target, ClassTarget):
            row["target"] = target.describe()
        elif self.logits_output is not None and target.output_index == self.logits_output:
            row["score"] = f"logit before {self.activation}"
        return row

    def caption(self, target: Target) -> str:
        k = self.class_of(target)
        return self.label(k) if k is not None else target.describe()


class SegmentationTask(ClassificationTask):
    """Class maps ``(N, K, H, W)``; the default target is the class with the highest mean score,
    summed over every pixel (``SegmentationTarget`` restricts it to a mask)."""

    name = "segmentation"

    def probabilities(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        """``(N, K)``: each class's probability (softmax, or the model's own) averaged over the pixels."""
        out = np.asarray(outputs[self.output], dtype=np.float64)
        if self.activation in ("Softmax", "Sigmoid"):
            p = out
        elif self.activation == "LogSoftmax":
            p = np.exp(out)
        else:
            z = out - out.max(axis=1, keepdims=True)
            e = np.exp(z)
            p = e / e.sum(axis=1, keepdims=True)
        return np.asarray(p.reshape(p.shape[0], p.shape[1], -1).mean(axis=2))

    def bind(self, target: Target, outputs: Sequence[np.ndarray]) -> Target:
        if (isinstance(target, SegmentationTarget) and target.output_index == self.output
                and self.logits_output is not None):
            return SegmentationTarget(target.category, target.mask, output_index=self.logits_output)
        return super().bind(target, outputs)


class SequenceTask(Task):
    """A recognizer's per-position class scores ``(N, T, C)`` (a CTC head: C includes the blank).

    The default target is each image's best path (the top class at every position), its logits
    summed over the positions that read a character (not ``blank``; all positions if every one is
    blank). An int ``k`` explains position ``k`` of the best path. ``labels``: one name per class.
    """

    name = "sequence"

    def __init__(self, labels: LabelsSpec = None, output: int = 0, logits_output: int | None = None,
                 activation: str | None = None, blank: int | None = 0) -> None:
        super().__init__(labels, output, logits_output, activation)
        self.blank = blank

    def best_paths(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        """``(N, T)`` int64: the top class at each position."""
        return np.asarray(outputs[self.score_output]).argmax(axis=-1).astype(np.int64)

    def _path_target(self, path: np.ndarray, positions: tuple[int, ...] | None) -> SequenceTarget:
        if positions is None and self.blank is not None:
            read = tuple(int(t) for t in np.flatnonzero(path != self.blank))
            positions = read or None
        return SequenceTarget(tuple(int(c) for c in path), positions, output_index=self.score_output)

    def default_targets(self, outputs: Sequence[np.ndarray]) -> list[Target]:
        return [self._path_target(p, None) for p in self.best_paths(outputs)]

    def target(self, k: int) -> Target:
        if k < 0:
            raise TargetError(f"sequence position {k} is out of range: use a position >= 0")
        return SequenceTarget(None, (k,), output_index=self.score_output)

    def bind(self, target: Target, outputs: Sequence[np.ndarray]) -> Target:
        if isinstance(target, SequenceTarget) and target.path is None:
            path = np.asarray(outputs[self.score_output]).argmax(axis=-1)
            return SequenceTarget(tuple(int(c) for c in path), target.positions, output_index=target.output_index)
        return target

    def check(self, outputs: Sequence[np.ndarray]) -> None:
        c = int(outputs[self.output].shape[-1])
        if self.labels is not None and len(self.labels) not in (c, c - 1):
            raise ArgumentError(
                f"the labels file has {len(self.labels)} names but the model reads {c} classes per position: "
                "pass the model's character list"
            )

    def label(self, k: int) -> str:
        labels = self.labels
        if labels is not None and len(labels) > 0:
            # A character list usually leaves the blank out: class k is labels[k - 1] after a blank 0.
            j = k - 1 if self.blank == 0 and k > 0 and len(labels) >= 1 else k
            if self.blank == 0 and k == 0:
                return ""
            return labels[j] if 0 <= j < len(labels) else str(k)
        return str(k)

    def predictions(self, outputs: Sequence[np.ndarray], top: int) -> list[list[dict[str, Any]]]:
        """Per image, one row: the greedy (CTC) reading - repeats merged, blanks dropped."""
        out = np.asarray(outputs[self.output], dtype=np.float64)
        probs = np.exp(out) if self.activation == "LogSoftmax" else out
        rows = []
        for i, path in enumerate(self.best_paths(outputs)):
            keep = [t for t in range(path.size) if path[t] != self.blank and (t == 0 or path[t] != path[t - 1])]
            classes = [int(path[t]) for t in keep]
            row: dict[str, Any] = {"sequence": classes, "text": "".join(self.label(c) for c in classes)}
            if self.activation in ("Softmax", "LogSoftmax"):
                row["probability"] = float(np.mean([probs[i, t, path[t]] for t in keep])) if keep else 0.0
            rows.append([row])
        return rows

    def describe(self, target: Target) -> dict[str, Any]:
        row: dict[str, Any] = {"target": target.describe()}
        if self.logits_output is not None and getattr(target, "output_index", None) == self.logits_output:
            row["score"] = f"logits before {self.activation}"
        return row


class EmbeddingTask(Task):
    """Embedding vectors ``(N, D)``: explained against a reference with ``EmbeddingTarget``."""

    name = "embedding"

    def default_targets(self, outputs: Sequence[np.ndarray]) -> list[Target]:
        raise TargetError(
            "an embedding model has no default target: pass targets=EmbeddingTarget(reference) with a reference "
            "embedding from the same model output"
        )

    def target(self, k: int) -> Target:
        raise TargetError(f"an embedding model has no classes (got target {k}): pass EmbeddingTarget(reference)")


def classifier_task(task: Task, what: str) -> ClassificationTask:
    """``task`` as a classifier's, or an ``ArgumentError`` naming ``what`` needs one (audits rank
    class probabilities)."""
    if not isinstance(task, ClassificationTask):
        raise ArgumentError(f"{what} needs a classifier (class scores per image), but the model's task is {task.name}")
    return task


def class_indices(task: ClassificationTask, targets: Sequence[Target]) -> np.ndarray:
    """``(N,)`` int64 class of each target (class targets only: audits measure class probabilities)."""
    classes = [task.class_of(t) for t in targets]
    if any(c is None for c in classes):
        bad = next(t for t, c in zip(targets, classes) if c is None)
        raise TargetError(f"audits measure one class per image, got target {bad.describe()}: use class targets")
    return np.array(classes, dtype=np.int64)


def detect_task(shapes: Sequence[tuple[Any, ...]], kind: str | Task | None = None,
                labels: LabelsSpec = None, metadata: Mapping[str, str] | None = None) -> Task:
    """The task for a model whose outputs have per-image ``shapes`` (batch axis dropped).

    ``kind``: a ``Task`` (kept as is), a task name from ``TASKS``, or None/``"auto"``: a first
    output with a spatial class map (``(K, H, W)``, ``H * W > 1``) is segmentation, one with a
    ``(T, C)`` matrix (both > 1) a sequence, anything else classification (an embedding cannot be
    told from class scores by its shape). ``shapes`` may be ``OutputShapes``: the task then scores
    the logits before the first output's final activation.
    """
    if isinstance(kind, Task):
        return kind
    for recognise in RECOGNISERS:  # ``metadata``: the model's metadata_props, for them
        found = recognise(shapes, kind, labels, metadata)
        if found is not None:
            return found
    first = tuple(shapes[0]) if shapes else ()
    if kind in (None, "auto"):
        spatial = list(first[1:])
        is_map = len(first) == 3 and all(isinstance(d, int) for d in spatial) and int(np.prod(spatial)) > 1
        is_seq = len(first) == 2 and all(isinstance(d, int) and d > 1 for d in first)
        kind = "segmentation" if is_map else "sequence" if is_seq else "classification"
    classes: dict[str, type[Task]] = {"classification": ClassificationTask, "segmentation": SegmentationTask,
                                      "sequence": SequenceTask, "embedding": EmbeddingTask}
    if kind not in classes:
        raise ArgumentError(f"unknown task {kind!r}: use one of {', '.join(TASKS)} or 'auto'")
    logits = getattr(shapes, "logits", {})
    activations = getattr(shapes, "activations", {})
    if kind == "embedding":
        return EmbeddingTask(labels)
    return classes[kind](labels, 0, logits.get(0), activations.get(0) if 0 in logits else None)


__all__ = ["TASKS", "ClassificationTask", "EmbeddingTask", "OutputShapes", "SegmentationTask", "SequenceTask",
           "Task", "class_indices",
           "classifier_task", "detect_task", "to_probabilities"]
