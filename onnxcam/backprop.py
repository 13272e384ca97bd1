"""Per-sample gradients of target scores w.r.t. feature tensors, through an ONNX gradient graph.

One call runs the body once (activations, crossing tensors and model outputs), turns each image's
target into a seed d(score)/d(output) evaluated at that output, and runs the cached gradient graph
of the head (built once per model x layers x batch size). A head with an op that has no gradient
rule falls back to central finite differences, with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import onnx

from onnxcam.errors import ArgumentError, GradientError, OnnxCamWarning, TargetError, UnsupportedOpError
from onnxcam.gradients.straight_through import straight_through, straight_through_note
from onnxcam.graph.prune import prune_to_outputs
from onnxcam.graph.shapes import make_value_info
from onnxcam.runtime import chunks, run, run_batched
from onnxcam.targets import Target, TargetSpec, resolve_targets

if TYPE_CHECKING:
    import onnxruntime as ort

    from onnxcam.model import Model

GradientMode = Literal["auto", "graph", "finite"]


@dataclass
class Gradients:
    """Result of ``Model.gradients``: everything a gradient method consumes, for a batch of N images.

    ``activations[layer]`` and ``gradients[layer]`` are ``(N, C, h, w)``; ``scores`` is ``(N,)``;
    ``outputs`` are the model outputs; ``source`` says how the gradients were obtained.
    """

    layers: tuple[str, ...]
    activations: dict[str, np.ndarray]
    gradients: dict[str, np.ndarray]
    outputs: list[np.ndarray]
    targets: list[Target]
    scores: np.ndarray
    source: str = "gradient graph"
    notes: list[str] = field(default_factory=list)


def target_scores(targets: Sequence[Target], outputs: Sequence[np.ndarray]) -> np.ndarray:
    """``(N,)`` scores of each image's target on the model outputs."""
    return np.array([t.score(outputs[t.output_index][i]) for i, t in enumerate(targets)], dtype=np.float32)


def output_seeds(targets: Sequence[Target], outputs: Sequence[np.ndarray]) -> dict[int, np.ndarray]:
    """Seeds d(score)/d(output) per model output index that some target reads, ``(N, ...)`` each."""
    seeds: dict[int, np.ndarray] = {}
    for i, t in enumerate(targets):
        k = t.output_index
        if not 0 <= k < len(outputs):
            raise TargetError(f"target reads model output #{k} but the model has {len(outputs)} outputs")
        if k not in seeds:
            seeds[k] = np.zeros(outputs[k].shape, dtype=np.float32)
        seeds[k][i] = t.output_gradient(outputs[k][i])
    return seeds


def _gradient_proto(model: Model, cut: tuple[str, ...], wrt: tuple[str, ...], seeded: tuple[str, ...],
                    n: int) -> tuple[onnx.ModelProto, dict[str, str], dict[str, str]]:
    from onnxcam.gradients import build_gradient_model

    head = model.static_head(cut, n)
    if straight_through_note(head) is not None:
        # Differentiate the clip surrogate of the quantised head: its gradient is exact for a stated
        # function (what check-gradients verifies), and its clip masks are taken on values free of
        # the rounding noise that accumulates through a deep quantised head.
        head = straight_through(head)[0]
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


def compute_gradients(
    model: Model,
    x: np.ndarray,
    layers: Sequence[str],
    targets: TargetSpec = None,
    batch_size: int = 16,
    mode: GradientMode = "auto",
) -> Gradients:
    """Activations, exact gradients and scores at ``layers`` for the preprocessed batch ``x``."""
    if mode not in ("auto", "graph", "finite"):
        raise ArgumentError(f"unknown gradient mode {mode!r}: use auto, graph or finite")
    names = tuple(dict.fromkeys(layers))
    cut = model.frontier(names)
    split = model.split(cut)
    feeds, outputs = model.run_body(x, cut, batch_size)
    resolved = resolve_targets(targets, outputs[0] if outputs else np.zeros((0,)))
    resolved = [_check_output(t, split.head_outputs, split.model_outputs, model.name) for t in resolved]
    scores = target_scores(resolved, outputs)
    seeds = output_seeds(resolved, outputs)
    seeded = tuple(split.model_outputs[k] for k in sorted(seeds))
    if mode != "finite":
        try:
            acts, grads = _graph_gradients(model, cut, names, seeded, seeds, feeds, batch_size)
            note = straight_through_note(split.head)
            return Gradients(names, acts, grads, outputs, resolved, scores, notes=[note] if note else [])
        except UnsupportedOpError as exc:
            if mode == "graph":
                raise
            warnings.warn(f"{exc}; using central finite differences instead (slower, ~1e-3 accurate)",
                          OnnxCamWarning, stacklevel=3)
    acts, grads, how = _finite_gradients(model, cut, names, resolved, feeds, batch_size)
    return Gradients(names, acts, grads, outputs, resolved, scores, source="finite differences", notes=[how])


def _check_output(t: Target, head_outputs: Sequence[str], model_outputs: Sequence[str], name: str) -> Target:
    k = t.output_index
    if 0 <= k < len(model_outputs) and model_outputs[k] not in head_outputs:
        raise TargetError(
            f"{name}: the target reads output {model_outputs[k]!r}, which does not depend on the chosen layer; "
            "pick a layer upstream of that output"
        )
    return t


def _graph_gradients(
    model: Model,
    cut: tuple[str, ...],
    names: tuple[str, ...],
    seeded: tuple[str, ...],
    seeds: dict[int, np.ndarray],
    feeds: dict[str, np.ndarray],
    batch_size: int,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    split = model.split(cut)
    total = next(iter(feeds.values())).shape[0]
    n = _graph_batch(model, (cut, names, seeded), min(model.batch_limit(batch_size), total), total)
    sess, seed_inputs, grad_outputs = _gradient_session(model, cut, names, seeded, n)
    by_name = {split.model_outputs[k]: v for k, v in seeds.items()}
    inner = [w for w in names if w not in cut]
    fetch = [grad_outputs[w] for w in names] + inner
    parts: list[list[np.ndarray]] = []
    for sl in chunks(total, n):
        m = sl.stop - sl.start
        feed = {k: _pad(v[sl], n) for k, v in feeds.items() if k in split.head_inputs}
        for out_name, seed_name in seed_inputs.items():
            feed[seed_name] = _pad(by_name[out_name][sl], n, zero=True)
        values = run(sess, feed, fetch, what=f"gradient graph of {model.name}")
        parts.append([v[:m] for v in values])
    joined = parts[0] if len(parts) == 1 else [np.concatenate([p[i] for p in parts], axis=0)
                                              for i in range(len(fetch))]
    grads = {w: joined[i] for i, w in enumerate(names)}
    acts = {w: feeds[w] if w in cut else joined[len(names) + inner.index(w)] for w in names}
    for w, g in grads.items():
        if not np.isfinite(g.sum()) and not np.all(np.isfinite(g)):  # the sum screens in one cheap pass
            raise GradientError(f"gradients at {w!r} of {model.name} contain NaN/Inf: the head is numerically unstable "
                                "there; try another layer or gradient mode 'finite'")
    return acts, grads


def _gradient_session(model: Model, cut: tuple[str, ...], names: tuple[str, ...], seeded: tuple[str, ...],
                      n: int) -> tuple[ort.InferenceSession, dict[str, str], dict[str, str]]:
    """The cached gradient graph session for batch ``n``, its seed inputs and gradient outputs by name."""
    key = ("grad", cut, names, seeded, n)
    meta: dict[str, dict[str, str]] = {}

    def build() -> onnx.ModelProto:
        proto, seed_inputs, grad_outputs = _gradient_proto(model, cut, names, seeded, n)
        meta["seed"], meta["grad"] = seed_inputs, grad_outputs
        return proto

    sess = model.session("grad", key[1:], build)
    if key not in model._grad_meta:
        model._grad_meta[key] = (meta["seed"], meta["grad"])
    seed_inputs, grad_outputs = model._grad_meta[key]
    return sess, seed_inputs, grad_outputs


def prepare_gradients(model: Model, layers: Sequence[str], n: int, batch_size: int = 16,
                      mode: GradientMode = "auto") -> None:
    """Build ahead what ``compute_gradients`` will use for ``n`` images with default targets (the
    first model output): the body session and the gradient graph. Best effort: a head without
    gradient rules is left for the real call to report or fall back from."""
    if mode == "finite" or n < 1:
        return
    names = tuple(dict.fromkeys(layers))
    cut = model.frontier(names)
    split = model.split(cut)
    model.session("body", cut)
    if not split.model_outputs or split.model_outputs[0] not in split.head_outputs:
        return
    try:
        _gradient_session(model, cut, names, (split.model_outputs[0],), min(model.batch_limit(batch_size), n))
    except UnsupportedOpError:
        return


# Padding a batch up to an already built gradient graph is worth it while the padded rows cost at
# most this many images' worth of the whole model (building another graph and session costs more).
PAD_BUDGET_IMAGES = 1.0


def _graph_batch(model: Model, what: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]], n: int,
                 total: int) -> int:
    """The batch of the gradient graph to run ``total`` rows with: ``n``, or a larger one already
    built if padding to it is cheap (the last, smaller chunk of a run must not build a second graph)."""
    built = sorted(k[-1] for k in model._grad_meta if k[1:-1] == what and k[-1] > n)
    if n >= total and built:
        share = model.head_share(what[0])
        for k in built:
            if (k - total) * share <= PAD_BUDGET_IMAGES:
                return int(k)
    return n


def _pad(v: np.ndarray, n: int, zero: bool = False) -> np.ndarray:
    """Pad a chunk to the gradient graph's static batch ``n`` (zeros for seeds, last sample for inputs)."""
    m = v.shape[0]
    if m == n:
        return v
    fill = np.zeros((n - m,) + v.shape[1:], v.dtype) if zero else np.repeat(v[-1:], n - m, axis=0)
    return np.concatenate([v, fill], axis=0)


# Element-wise differences cost 2 head runs per activation value; above this many values per image
# only channel-wise directional derivatives are taken (exact for Grad-CAM-type channel weights).
ELEMENTWISE_LIMIT = 16384


def head_score_fn(model: Model, layer: str, targets: Sequence[Target], feeds: dict[str, np.ndarray],
                  batch_size: int, straight: bool = False) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``score_fn(A_rows (M, C, h, w), samples (M,)) -> (M,)``: each row's target score from the head,
    with the other head inputs of its sample (the finite-difference and self-check contract).
    ``straight``: run the head with its activation Q/DQ pairs removed (what straight-through
    gradients differentiate; the quantised head itself is piecewise constant)."""
    cut = (layer,)
    split = model.split(cut)
    sess = model.session("head_straight", cut, lambda: straight_through(split.head)[0]) if straight else None
    where = {name: k for k, name in enumerate(split.head_outputs)}
    dtype = feeds[layer].dtype

    def score_fn(rows: np.ndarray, samples: np.ndarray) -> np.ndarray:
        f = {k: v[samples] for k, v in feeds.items() if k != layer and k in split.head_inputs}
        f[layer] = rows.astype(dtype, copy=False)
        if sess is None:
            outs = model.run_head(cut, f, batch_size)
        else:
            outs = run_batched(sess, {k: f[k] for k in split.head_inputs}, list(split.head_outputs),
                               model.batch_limit(batch_size), what=f"straight-through head of {model.name}")
        scores = np.empty(len(samples), dtype=np.float64)
        for j, s in enumerate(samples):
            t = targets[int(s)]
            scores[j] = t.score(outs[where[split.model_outputs[t.output_index]]][j])
        return scores

    return score_fn


def _finite_gradients(
    model: Model,
    cut: tuple[str, ...],
    names: tuple[str, ...],
    targets: Sequence[Target],
    feeds: dict[str, np.ndarray],
    batch_size: int,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], str]:
    from onnxcam.gradients.finite_diff import channel_gradients, elementwise_gradients

    if len(cut) != 1 or names != cut:
        raise GradientError(
            f"finite differences handle one layer at a time, got {list(names)}: explain layers one by one"
        )
    layer = cut[0]
    a = feeds[layer]
    score_fn = head_score_fn(model, layer, targets, feeds, max(batch_size, 64))
    per_image = int(np.prod(a.shape[1:]))
    if per_image <= ELEMENTWISE_LIMIT:
        return {layer: a}, {layer: elementwise_gradients(score_fn, a, batch_size=max(batch_size, 64))}, \
            "element-wise central differences"
    sums = channel_gradients(score_fn, a, batch_size=max(batch_size, 64))
    h, w = a.shape[2], a.shape[3]
    grads = np.broadcast_to((sums / (h * w))[:, :, None, None], a.shape).astype(a.dtype)
    return {layer: a}, {layer: grads}, ("channel-wise central differences: each channel's gradient is its spatial "
                                        "mean (exact for Grad-CAM weights; element-wise methods see the mean)")
