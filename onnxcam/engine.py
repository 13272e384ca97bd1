"""The gradient engine: per-sample gradients of target scores w.r.t. feature tensors.

One call runs the body once (activations, crossing tensors and model outputs), resolves each
image's target through the task, turns it into seeds d(score)/d(output) evaluated at those outputs,
and runs the gradient graph of the head. The engine owns those graphs and their sessions (built once
per cut x layers x seeded outputs x batch size) and the finite-difference fallback for heads with an
op that has no gradient rule. The ``Model`` it works for keeps graph facts, splits and the body and
head sessions; the engine only calls it, never the other way round.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import onnx

from onnxcam.crops import CropGradients
from onnxcam.errors import (
    ArgumentError,
    GradientError,
    OnnxCamWarning,
    TargetError,
    UnsupportedModelError,
    UnsupportedOpError,
)
from onnxcam.gradients.straight_through import straight_through, straight_through_note
from onnxcam.graph.hoist_concat import hoist_concats
from onnxcam.graph.local import local_region
from onnxcam.graph.prune import prune_to_outputs
from onnxcam.graph.seed_parts import ConcatParts, concat_parts, narrow_rows
from onnxcam.graph.shapes import make_value_info, tensor_infos
from onnxcam.graph.tensor_info import TensorInfo
from onnxcam.graph.toposort import ancestors
from onnxcam.runtime import chunks, run, run_batched
from onnxcam.scoring import HeadScorer
from onnxcam.sparse_seed import Seed
from onnxcam.targets import Target, TargetSpec, output_seed_rows, target_scores

if TYPE_CHECKING:
    import onnxruntime as ort

    from onnxcam.graph.split import Split
    from onnxcam.model import Model
    from onnxcam.tasks import Task

GradientMode = Literal["auto", "graph", "finite"]
GradientKind = Literal["elementwise", "channel-mean"]

# Padding a batch up to an already built gradient graph is worth it while the padded rows cost at
# most this many images' worth of the whole model (building another graph and session costs more).
PAD_BUDGET_IMAGES = 1.0

# A head whose local region (convolutions down to a cheap decoder, see onnxcam.graph.local) leaves at
# most this share of its multiply-accumulates to the tail is differentiated in two parts, the region
# on crops around each row's gradient support.
LOCAL_TAIL_SHARE = 0.2
# ... as long as the crops cover at most this share of the image per row on average (else one graph of the
# whole head does the same work in one run, with its built batch sizes reused).
LOCAL_MAX_COVER = 0.5

# Element-wise differences cost 2 head runs per activation value; above this many values per image
# only channel-wise directional derivatives are taken (exact for Grad-CAM-type channel weights).
ELEMENTWISE_LIMIT = 16384


@dataclass
class Gradients:
    """What a gradient method consumes, for a batch of N images.

    ``activations[layer]`` and ``gradients[layer]`` are ``(N, C, h, w)`` feature maps (each layer
    seen through its view); ``scores`` is ``(N,)``; ``outputs`` are the model outputs; ``source``
    says how the gradients were obtained; ``kind`` what they are: ``"elementwise"`` (d score / d A
    at every position) or ``"channel-mean"`` (finite differences above ``ELEMENTWISE_LIMIT``: each
    channel's gradient spread evenly over its positions, exact for Grad-CAM's weights only).
    """

    layers: tuple[str, ...]
    activations: dict[str, np.ndarray]
    gradients: dict[str, np.ndarray]
    outputs: list[np.ndarray]
    targets: list[Target]
    scores: np.ndarray
    source: str = "gradient graph"
    notes: list[str] = field(default_factory=list)
    kind: GradientKind = "elementwise"


@dataclass(frozen=True)
class GradientGraph:
    """A built gradient graph: its session, seed input per seeded model output, gradient output per layer."""

    session: ort.InferenceSession
    seed_inputs: dict[str, str]
    grad_outputs: dict[str, str]


GraphKey = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], int]


@dataclass(frozen=True)
class LocalPlan:
    """How a head with a local region is differentiated: the body is cut at ``cut`` (the head's
    inputs, the layers and the region's ``boundary``); the tail's gradient graph gives the gradients
    at ``boundary``, ``crops`` carries them back through the region."""

    cut: tuple[str, ...]
    boundary: tuple[str, ...]
    crops: CropGradients


class GradientEngine:
    """Gradients for one ``Model``; ``model.gradient_engine`` is the instance every method shares."""

    def __init__(self, model: Model) -> None:
        # A proxy, not a reference: the model owns its engine, and a reference cycle would keep every
        # dropped model's onnxruntime sessions (hundreds of MB each) alive until a full GC pass.
        self.model: Model = weakref.proxy(model)
        self._graphs: dict[GraphKey, GradientGraph] = {}
        self._straight: dict[tuple[str, ...], ort.InferenceSession] = {}
        self._repeated: weakref.ref[np.ndarray] | None = None
        self._local: dict[tuple[tuple[str, ...], tuple[str, ...]], LocalPlan | None] = {}
        self._parts: dict[tuple[tuple[str, ...], str], ConcatParts | None] = {}
        self._notes: dict[tuple[str, ...], str | None] = {}
        self._hoisted: dict[tuple[str, ...], tuple[onnx.ModelProto, dict[str, TensorInfo]]] = {}
        self._reads: dict[tuple[tuple[str, ...], tuple[str, ...]], frozenset[str]] = {}
        # Set False to differentiate every head as one graph (what the crop path is checked against).
        self.local_crops = True

    # -- public -----------------------------------------------------------------------------------
    def release(self) -> None:
        """Drop the gradient graphs' sessions built so far; they are rebuilt when next needed."""
        self._graphs.clear()
        self._straight.clear()
        self._local.clear()
        self._parts.clear()
        self._notes.clear()
        self._hoisted.clear()
        self._reads.clear()

    def compute(self, x: np.ndarray, layers: Sequence[str], targets: TargetSpec, task: Task,
                batch_size: int = 16, mode: GradientMode = "auto", means_only: bool = False) -> Gradients:
        """Activations, exact gradients and scores at ``layers`` (tensor names, in their own layout).

        ``means_only``: the caller reads only each channel's spatial mean of the gradients (Grad-CAM's
        weights). Where the head is differentiated on crops, the gradients then come back as those
        means spread over the positions (kind ``"channel-mean"``, read-only views), taken from the crops
        without full-size gradient maps per row; elsewhere they are element-wise as always."""
        if mode not in ("auto", "graph", "finite"):
            raise ArgumentError(f"unknown gradient mode {mode!r}: use auto, graph or finite")
        model = self.model
        names = tuple(dict.fromkeys(layers))
        cut = model.frontier(names)
        split = model.split(cut)
        local = self.local_plan(cut, names) if mode != "finite" else None
        feeds, outputs = self._run_body(x, local.cut if local is not None else cut, batch_size)
        resolved = task.resolve(targets, outputs)
        for t in resolved:
            self._check_reads(t, split, len(outputs))
        scores = target_scores(resolved, outputs)
        seeds = {k: v for k, v in output_seed_rows(resolved, outputs, sparse=True).items()
                 if split.model_outputs[k] in split.head_outputs}
        seeded = tuple(split.model_outputs[k] for k in sorted(seeds))
        if mode != "finite":
            try:
                cropped = self._local_gradients(local, names, seeded, seeds, feeds, batch_size,
                                                means_only) if local else None
                kind: GradientKind = "elementwise"
                if cropped is not None:
                    acts, grads = cropped
                    kind = "channel-mean" if means_only else "elementwise"
                else:
                    if local is not None:
                        # Dense gradients (a pooled head): the whole head's graph from now on, and the
                        # body session with the region's extra outputs goes.
                        self._local[(cut, names)] = None
                        model.drop_session("body", local.cut)
                    acts, grads = self._graph_gradients(cut, names, seeded, seeds, feeds, batch_size)
                note = self._straight_note(cut)
                return Gradients(names, acts, grads, outputs, resolved, scores, notes=[note] if note else [],
                                 kind=kind)
            except UnsupportedOpError as exc:
                if mode == "graph":
                    raise
                warnings.warn(f"{exc}; using central finite differences instead (slower, ~1e-3 accurate)",
                              OnnxCamWarning, stacklevel=4)
        acts, grads, kind, notes = self._finite_gradients(cut, names, resolved, feeds, outputs, batch_size)
        return Gradients(names, acts, grads, outputs, resolved, scores, source="finite differences", notes=notes,
                         kind=kind)

    def repeat(self, x: np.ndarray, k: int) -> np.ndarray:
        """One image ``x (1, ...)`` as a batch of ``k`` identical rows (a read-only view) that ``compute``
        recognises: it runs the body once for all of them and only the gradient graph per row, each
        row with its own target. Pass it to any explainer with ``k`` targets to explain several
        detections (or classes) of one image for one body run."""
        if x.shape[0] != 1 or k < 1:
            raise ArgumentError(f"repeat takes one image (1, ...) and k >= 1, got {x.shape} and k={k}")
        rows = np.broadcast_to(x, (k,) + x.shape[1:])
        self._repeated = weakref.ref(rows)
        return rows

    def compute_many(self, x: np.ndarray, layers: Sequence[str], targets: Sequence[Target], task: Task,
                     batch_size: int = 16, mode: GradientMode = "auto") -> Gradients:
        """``compute`` for one image ``x (1, ...)`` and several targets: row ``k`` of the result is
        target ``k``'s; the body runs once, the head's gradient graph once per target (batched)."""
        return self.compute(self.repeat(x, len(targets)), layers, list(targets), task, batch_size, mode)

    def prepare(self, layers: Sequence[str], n: int, reads: Sequence[int] = (0,), batch_size: int = 16,
                mode: GradientMode = "auto") -> None:
        """Build ahead what ``compute`` will use for ``n`` images whose targets seed the model outputs
        ``reads``: the body session and the gradient graph. Best effort: a head without gradient
        rules is left for the real call to report or fall back from."""
        if mode == "finite" or n < 1:
            return
        model = self.model
        names = tuple(dict.fromkeys(layers))
        cut = model.frontier(names)
        split = model.split(cut)
        local = self.local_plan(cut, names)
        model.session("body", local.cut if local is not None else cut)
        seeded = tuple(split.model_outputs[k] for k in sorted(set(reads))
                       if 0 <= k < len(split.model_outputs) and split.model_outputs[k] in split.head_outputs)
        target_cut = local.cut if local is not None else cut
        # A Concat-made output's seeds move onto the parts they reach (``narrow_rows``), which depend on
        # the targets: that graph is built on first use.
        if not seeded or any(self._parts_of(target_cut, o) is not None for o in seeded):
            return
        try:
            if local is not None:
                self.graph(local.cut, local.boundary, seeded, min(model.batch_limit(batch_size), n))
            else:
                self.graph(cut, names, seeded, min(model.batch_limit(batch_size), n))
        except UnsupportedOpError:
            return

    def local_plan(self, cut: tuple[str, ...], names: tuple[str, ...]) -> LocalPlan | None:
        """How the head at ``cut`` is differentiated on crops (see ``LocalPlan``), or None where it is
        one gradient graph: no local region, layers outside it, a heavy tail, a quantised head."""
        if not self.local_crops:
            return None
        key = (cut, names)
        if key not in self._local:
            self._local[key] = self._plan_local(cut, names)
        return self._local[key]

    def graph(self, cut: tuple[str, ...], names: tuple[str, ...], seeded: tuple[str, ...], n: int) -> GradientGraph:
        """The cached gradient graph of the head at ``cut`` for batch ``n`` (built on first use)."""
        key: GraphKey = (cut, names, seeded, n)
        built = self._graphs.get(key)
        if built is None:
            proto, seed_inputs, grad_outputs = self.gradient_model(cut, names, seeded, n)
            sess = self.model.new_session(proto, f"gradient graph of {self.model.name}")
            built = self._graphs[key] = GradientGraph(sess, seed_inputs, grad_outputs)
        return built

    def built_batches(self, cut: tuple[str, ...], names: tuple[str, ...], seeded: tuple[str, ...]) -> list[int]:
        """Batch sizes of the gradient graphs built so far for these layers and seeded outputs."""
        return sorted(k[3] for k in self._graphs if k[:3] == (cut, names, seeded))

    def gradient_model(self, cut: tuple[str, ...], wrt: tuple[str, ...], seeded: tuple[str, ...],
                       n: int) -> tuple[onnx.ModelProto, dict[str, str], dict[str, str]]:
        """The gradient graph's protobuf for batch ``n``, its seed inputs and gradient outputs by name."""
        from onnxcam.gradients import build_gradient_model

        model = self.model
        inner_seeds = tuple(s for s in seeded if s not in model.split(cut).head_outputs)
        _, infos = self._hoisted_head(cut)
        head = model.static_head(cut, n, keep=wrt + tuple(s for s in inner_seeds if s in model.explained.infos))
        produced = {o for node in head.graph.node for o in node.output}
        if any(s not in produced for s in inner_seeds):  # parts made by ``hoist_concats`` (see ``narrow_rows``)
            head = hoist_concats(head, infos)[0]
            produced = {o for node in head.graph.node for o in node.output}
            missing = [s for s in inner_seeds if s not in produced]
            if missing:
                raise GradientError(f"{model.name}: the head at this cut no longer computes {missing}, which the "
                                    "seeds were moved onto; report this model (onnxcam.graph.hoist_concat)")
        if straight_through_note(head) is not None:
            # Differentiate the clip surrogate of the quantised head: its gradient is exact for a stated
            # function (what check-gradients verifies), and its clip masks are taken on values free of
            # the rounding noise that accumulates through a deep quantised head.
            head = straight_through(head)[0]
        for name in inner_seeds:  # a Concat's part, seeded in place of the output (``narrow_rows``)
            info = infos[name]
            head.graph.output.append(make_value_info(name, info.elem_type, (n,) + tuple(info.shape[1:])
                                                     if info.shape else None))
        built = build_gradient_model(head, wrt, seeded)
        proto = built.model
        # Layers inside the head (downstream of the cut) are read from the gradient run itself.
        inner = [w for w in wrt if w not in cut]
        have = {o.name for o in proto.graph.output}
        for name in inner:
            if name not in have:
                info = model.tensor_info(name)
                shape = (n,) + tuple(info.shape[1:]) if info.shape else None
                proto.graph.output.append(make_value_info(name, info.elem_type, shape))
        proto = prune_to_outputs(proto, [*built.grad_outputs.values(), *inner])
        return proto, dict(built.seed_inputs), dict(built.grad_outputs)

    def head_scorer(self, layer: str, targets: Sequence[Target], feeds: dict[str, np.ndarray],
                    outputs: Sequence[np.ndarray], batch_size: int, straight: bool = False) -> HeadScorer:
        """The scorer of the head cut at ``layer`` (see ``onnxcam.scoring.HeadScorer``).

        ``straight``: run the head with its activation Q/DQ pairs replaced by clips (what clipped
        straight-through gradients differentiate; the quantised head itself is piecewise constant).
        """
        model = self.model
        cut = (layer,)
        split = model.split(cut)
        limit = model.batch_limit(batch_size)

        if straight:
            sess = self._straight_session(cut, split)

            def run_head(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
                return run_batched(sess, feed, list(split.head_outputs), limit,
                                   what=f"straight-through head of {model.name}")
        else:
            def run_head(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
                return model.run_head(cut, feed, batch_size)

        return HeadScorer(run_head, layer, split.head_inputs, split.head_outputs, split.model_outputs, targets,
                          feeds, outputs)

    # -- internals --------------------------------------------------------------------------------
    def _plan_local(self, cut: tuple[str, ...], names: tuple[str, ...]) -> LocalPlan | None:
        model = self.model
        split = model.split(cut)
        if straight_through_note(split.head) is not None:
            return None
        try:
            head = model.static_head(cut, 1, keep=names)
        except UnsupportedModelError:
            return None
        infos = tensor_infos(head)
        region = local_region(head, split.head_inputs, infos, model.input.size)
        if region is None or not all(w in region.strides for w in names):
            return None
        whole = tuple(dict.fromkeys(split.head_inputs + names + region.boundary))
        if model.head_share(whole) > LOCAL_TAIL_SHARE * model.head_share(cut):
            return None
        what = f"local gradient graph of {model.name}"
        crops = CropGradients(region, head, infos, names, lambda proto: model.new_session(proto, what))
        return LocalPlan(whole, region.boundary, crops)

    def _local_gradients(self, local: LocalPlan, names: tuple[str, ...], seeded: tuple[str, ...],
                         seeds: Mapping[int, Sequence[Seed]], feeds: dict[str, np.ndarray],
                         batch_size: int, means_only: bool = False,
                         ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None:
        """Gradients through the tail's graph and the region's crops; None where the crops would cover
        most of the image (a classifier's pooled head spreads every gradient over its whole map), and
        the whole head's graph is cheaper. ``means_only``: each channel's spatial mean, spread over
        the positions (a read-only view)."""
        model = self.model
        tail = model.split(local.cut)
        seeded_tail = tuple(o for o in seeded if o in tail.head_outputs)
        seeds_tail = {k: v for k, v in seeds.items() if tail.model_outputs[k] in seeded_tail}
        # The boundary gradients are screened where they end up: in the crops' gradients (a NaN seed
        # position is part of a crop's support) and in what passes straight through.
        boundary, reach = self._boundary_rows(local.cut, local.boundary, seeded_tail, seeds_tail, feeds, batch_size)
        found = local.crops.windows(boundary, reach)
        area = model.input.size[0] * model.input.size[1]
        if sum(local.crops.area(w) for w in found if w is not None) > LOCAL_MAX_COVER * area * len(found):
            return None
        what = f"local gradient graph of {model.name}"

        def check(g: dict[str, np.ndarray]) -> None:
            _check_gradients(g, model.name)

        # Crop graphs are onnxcam's own, free of the model's fixed batch (an ultralytics export's is 1):
        # crops of one shape run together, as many as fit in ``batch_size`` images.
        if means_only:
            sums = local.crops.sums(feeds, boundary, batch_size, what, check=check, found=found)
            grads = {}
            for w, total in sums.items():
                shape = feeds[w].shape
                mean = (total / (shape[2] * shape[3])).astype(feeds[w].dtype)
                grads[w] = np.broadcast_to(mean[:, :, None, None], (mean.shape[0],) + shape[1:])
        else:
            grads = local.crops.gradients(feeds, boundary, batch_size, what, check=check, found=found)
        return {w: feeds[w] for w in names}, grads

    def _run_body(self, x: np.ndarray, cut: tuple[str, ...],
                  batch_size: int) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
        """``model.run_body``, once per distinct image for a batch made by ``repeat``."""
        repeated = self._repeated() if self._repeated is not None else None
        if repeated is None or x is not repeated:
            return self.model.run_body(x, cut, batch_size)
        k = x.shape[0]
        feeds, outputs = self.model.run_body(np.ascontiguousarray(x[:1]), cut, batch_size)
        # Read-only views, not copies: the rows are one image's, and a detector's body outputs are
        # megabytes per row; what onnxruntime is fed is made contiguous per chunk (``_pad``).
        return ({name: np.broadcast_to(v, (k,) + v.shape[1:]) for name, v in feeds.items()},
                [np.broadcast_to(o, (k,) + o.shape[1:]) for o in outputs])

    def _straight_session(self, cut: tuple[str, ...], split: Split) -> ort.InferenceSession:
        sess = self._straight.get(cut)
        if sess is None:
            sess = self._straight[cut] = self.model.new_session(
                straight_through(split.head)[0], f"straight-through head of {self.model.name}")
        return sess

    def _check_reads(self, t: Target, split: Split, n_outputs: int) -> None:
        reads = [k for k in t.reads(n_outputs) if 0 <= k < len(split.model_outputs)]
        if reads and not any(split.model_outputs[k] in split.head_outputs for k in reads):
            names = ", ".join(repr(split.model_outputs[k]) for k in reads)
            raise TargetError(
                f"{self.model.name}: {t.describe()} reads output {names}, which does not depend on the chosen "
                "layer; pick a layer upstream of that output"
            )

    def _graph_gradients(self, cut: tuple[str, ...], names: tuple[str, ...], seeded: tuple[str, ...],
                         seeds: Mapping[int, Sequence[Seed]], feeds: dict[str, np.ndarray],
                         batch_size: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Activations and gradients at ``names`` through the head's gradient graph (per group of
        rows whose seeds reach the same parts, ``_gradient_groups``)."""
        runs = self._gradient_groups(cut, names, seeded, seeds, feeds, batch_size, reached_only=False)
        total = next(iter(feeds.values())).shape[0]
        acts, grads = runs[0][1][:2] if len(runs) == 1 else _scatter(runs, names, cut, feeds, total)
        _check_gradients(grads, self.model.name)
        return acts, grads

    def _boundary_rows(self, cut: tuple[str, ...], names: tuple[str, ...], seeded: tuple[str, ...],
                       seeds: Mapping[int, Sequence[Seed]], feeds: dict[str, np.ndarray],
                       batch_size: int) -> tuple[dict[str, list[np.ndarray]], dict[str, np.ndarray]]:
        """The tail's gradients at the cut tensors ``names`` row by row, and per name a boolean ``(N,)``:
        the rows whose gradient there may be non-zero. Rows, not a batch array: the groups' results
        are not copied into one (a detector's boundary is megabytes per row), and a row no seed
        reaches is a read-only zero view. Not screened for NaN/Inf: the crops' gradients are."""
        runs = self._gradient_groups(cut, names, seeded, seeds, feeds, batch_size, reached_only=True)
        total = next(iter(feeds.values())).shape[0]
        rows: dict[str, list[np.ndarray]] = {w: [] for w in names}
        reach = {w: np.zeros(total, dtype=bool) for w in names}
        where = np.empty((total, 2), dtype=np.int64)  # row -> (group, row in group)
        for j, (members, _) in enumerate(runs):
            where[members, 0] = j
            where[members, 1] = np.arange(len(members))
            for w in names:
                reach[w][members] = runs[j][1][2][w]
        for w in names:
            rows[w] = [runs[j][1][1][w][k] for j, k in where]
        return rows, reach

    def _gradient_groups(self, cut: tuple[str, ...], names: tuple[str, ...], seeded: tuple[str, ...],
                         seeds: Mapping[int, Sequence[Seed]], feeds: dict[str, np.ndarray], batch_size: int,
                         reached_only: bool) -> list[tuple[np.ndarray, tuple[dict[str, np.ndarray],
                                                                              dict[str, np.ndarray],
                                                                              dict[str, np.ndarray]]]]:
        """Seeds on a Concat-made output move onto the parts they reach, row by row
        (``narrow_rows``), and each group of rows runs its own graph: ``[(rows, (activations,
        gradients, reach))]``. ``reached_only``: ``names`` are cut tensors, and those a group's seeds
        cannot reach get zero gradients without being in its graph (a stride-32 detection's decoder
        gradient reaches one level's boundary)."""
        split = self.model.split(cut)
        total = next(iter(feeds.values())).shape[0]
        by_name = {split.model_outputs[k]: v for k, v in seeds.items()}
        runs = []
        for members, group_seeds in narrow_rows(by_name, lambda name: self._parts_of(cut, name)):
            group_seeded = seeded if set(group_seeds) == set(seeded) else tuple(sorted(group_seeds))
            sub = feeds if len(members) == total else {k: _rows(v, members) for k, v in feeds.items()}
            runs.append((members, self._group_gradients(cut, names, group_seeded, group_seeds, sub, batch_size,
                                                        reached_only)))
        return runs

    def _group_gradients(self, cut: tuple[str, ...], names: tuple[str, ...], seeded: tuple[str, ...],
                         by_name: dict[str, np.ndarray], feeds: dict[str, np.ndarray], batch_size: int,
                         reached_only: bool) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray],
                                                      dict[str, np.ndarray]]:
        """One group of ``_gradient_groups``: activations, gradients and the per-name boolean reach."""
        model = self.model
        split = model.split(cut)
        total = next(iter(feeds.values())).shape[0]
        skipped: tuple[str, ...] = ()
        if reached_only:
            key = (cut, seeded)
            if key not in self._reads:
                self._reads[key] = frozenset(ancestors(self._hoisted_head(cut)[0].graph.node, seeded)[1])
            kept = tuple(w for w in names if w in self._reads[key]) or names[:1]
            skipped, names = tuple(w for w in names if w not in kept), kept
        n = self._graph_batch(cut, names, seeded, min(model.batch_limit(batch_size), total), total)
        graph = self.graph(cut, names, seeded, n)
        inner = [w for w in names if w not in cut]
        fetch = [graph.grad_outputs[w] for w in names] + inner
        parts: list[list[np.ndarray]] = []
        for sl in chunks(total, n):
            m = sl.stop - sl.start
            feed = {k: _pad(v[sl], n) for k, v in feeds.items() if k in split.head_inputs}
            for out_name, seed_name in graph.seed_inputs.items():
                feed[seed_name] = _pad(by_name[out_name][sl], n, zero=True)
            values = run(graph.session, feed, fetch, what=f"gradient graph of {model.name}")
            parts.append([v[:m] for v in values])
        joined = parts[0] if len(parts) == 1 else [np.concatenate([p[i] for p in parts], axis=0)
                                                  for i in range(len(fetch))]
        grads = {w: joined[i] for i, w in enumerate(names)}
        acts = {w: feeds[w] if w in cut else joined[len(names) + inner.index(w)] for w in names}
        reached = {w: np.ones(total, dtype=bool) for w in names}
        for w in skipped:
            grads[w] = np.broadcast_to(np.zeros((1,) + feeds[w].shape[1:], feeds[w].dtype), feeds[w].shape)
            acts[w] = feeds[w]
            reached[w] = np.zeros(total, dtype=bool)
        return acts, grads, reached

    def _hoisted_head(self, cut: tuple[str, ...]) -> tuple[onnx.ModelProto, dict[str, TensorInfo]]:
        """The head at ``cut`` with element-wise ops and Splits moved above its Concats
        (``onnxcam.graph.hoist_concat``), and the infos of every tensor in it, cached."""
        if cut not in self._hoisted:
            infos = dict(self.model.explained.infos)
            proto, added = hoist_concats(self.model.split(cut).head, infos)
            infos.update(added)
            self._hoisted[cut] = (proto, infos)
        return self._hoisted[cut]

    def _straight_note(self, cut: tuple[str, ...]) -> str | None:
        if cut not in self._notes:  # read per call; a walk over the head's nodes
            self._notes[cut] = straight_through_note(self.model.split(cut).head)
        return self._notes[cut]

    def _parts_of(self, cut: tuple[str, ...], output: str) -> ConcatParts | None:
        key = (cut, output)
        if key not in self._parts:
            proto, infos = self._hoisted_head(cut)
            self._parts[key] = concat_parts(proto.graph, output, infos)
        return self._parts[key]

    def _graph_batch(self, cut: tuple[str, ...], names: tuple[str, ...], seeded: tuple[str, ...], n: int,
                     total: int) -> int:
        """The batch of the gradient graph to run ``total`` rows with: ``n``, or a larger one already
        built if padding to it is cheap (the last, smaller chunk of a run must not build a second graph)."""
        built = [k for k in self.built_batches(cut, names, seeded) if k > n]
        if n >= total and built:
            share = self.model.head_share(cut)
            for k in built:
                if (k - total) * share <= PAD_BUDGET_IMAGES:
                    return int(k)
        return n

    def _finite_gradients(self, cut: tuple[str, ...], names: tuple[str, ...], targets: Sequence[Target],
                          feeds: dict[str, np.ndarray], outputs: Sequence[np.ndarray],
                          batch_size: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], GradientKind,
                                                    list[str]]:
        from onnxcam.gradients.finite_diff import channel_gradients, elementwise_gradients

        if len(cut) != 1 or names != cut:
            raise GradientError(
                f"finite differences handle one layer at a time, got {list(names)}: explain layers one by one"
            )
        layer = cut[0]
        a = feeds[layer]
        notes: list[str] = []
        # A quantised head is piecewise constant: differences of it are zero or jumps. They are taken
        # on its straight-through surrogate, the function the gradient graph differentiates.
        straight = straight_through_note(self.model.split(cut).head) is not None
        if straight:
            try:
                self._straight_session(cut, self.model.split(cut))
                notes.append("finite differences of the head with its int8 quantisers replaced by clips to their "
                             "range (clipped straight-through surrogate; the int8 head itself is piecewise constant)")
            except UnsupportedOpError as exc:
                straight = False
                notes.append(f"finite differences of the int8 head itself (no float surrogate: {exc}); rounding "
                             "makes them zero or jumps")
        # Rows per head run: as many as cost one forward of the user's batch (the head is a share of the
        # model), at most 4x the batch: memory stays about that of one forward of the batch.
        share = max(self.model.head_share(cut), 0.25)
        rows = max(1, self.model.batch_limit(int(self.model.batch_limit(batch_size) / share)))
        scorer = self.head_scorer(layer, targets, feeds, outputs, rows, straight)
        per_image = int(np.prod(a.shape[1:]))
        if per_image <= ELEMENTWISE_LIMIT:
            grads = elementwise_gradients(scorer, a, batch_size=rows).astype(a.dtype)
            return {layer: a}, {layer: grads}, "elementwise", ["element-wise central differences", *notes]
        sums = channel_gradients(scorer, a, batch_size=rows)
        h, w = a.shape[2], a.shape[3]
        grads = np.broadcast_to((sums / (h * w))[:, :, None, None], a.shape).astype(a.dtype)
        return {layer: a}, {layer: grads}, "channel-mean", [
            f"channel-wise central differences ({per_image} values per image > {ELEMENTWISE_LIMIT}): each channel's "
            "gradient is its spatial mean, exact for Grad-CAM weights only", *notes]


def _check_gradients(grads: dict[str, np.ndarray], model_name: str) -> None:
    for w, g in grads.items():
        if not np.isfinite(g.sum()) and not np.all(np.isfinite(g)):  # the sum screens in one cheap pass
            raise GradientError(f"gradients at {w!r} of {model_name} contain NaN/Inf: the head is numerically "
                                "unstable there; try another layer or gradient mode 'finite'")


def _rows(v: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` of ``v (N, ...)``: a view where ``v`` repeats one row (``GradientEngine.repeat``)."""
    if v.shape[0] > 0 and v.strides[0] == 0:
        return np.broadcast_to(v[:1], (len(rows),) + v.shape[1:])
    return v[rows]


def _scatter(runs: list[tuple[np.ndarray, tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]]],
             names: tuple[str, ...], cut: tuple[str, ...], feeds: dict[str, np.ndarray],
             total: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The groups' activations and gradients put back in row order (every group computed every name)."""
    acts: dict[str, np.ndarray] = {}
    grads: dict[str, np.ndarray] = {}
    for w in names:
        first = runs[0][1][1][w]
        grads[w] = np.empty((total,) + first.shape[1:], first.dtype)
        for rows, (_, g, _) in runs:
            grads[w][rows] = g[w]
        if w in cut:
            acts[w] = feeds[w]
        else:
            acts[w] = np.empty((total,) + runs[0][1][0][w].shape[1:], runs[0][1][0][w].dtype)
            for rows, (a, _, _) in runs:
                acts[w][rows] = a[w]
    return acts, grads


def _pad(v: np.ndarray, n: int, zero: bool = False) -> np.ndarray:
    """Pad a chunk to the gradient graph's static batch ``n`` (zeros for seeds, last sample for inputs)."""
    m = v.shape[0]
    if m == n:
        return v if v.flags.c_contiguous else np.ascontiguousarray(v)
    fill = np.zeros((n - m,) + v.shape[1:], v.dtype) if zero else np.repeat(v[-1:], n - m, axis=0)
    return np.concatenate([v, fill], axis=0)
