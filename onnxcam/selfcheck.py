"""Self-check of the gradients onnxcam computes (``onnxcam check-gradients``): the gradient graph
against central finite differences of a float64 copy of the head, along random directions.

The reference is float64 (``onnxcam.gradients.reference``), so its rounding noise is ~1e-16 and
the step can be tiny (``REFERENCE_EPS`` of the activations' rms): truncation and the kinks of
ReLU/clips barely move it. The tolerance comes from the measured noise: differences at two step
sizes (h and 2h) estimate the reference's own error, and the verdict allows ``NOISE_FACTOR`` times
that, never less than ``MIN_TOLERANCE`` (what the float32 gradient graph's own rounding reaches on
deep heads). Two kinds of direction are checked: one normal value per channel spread over its
positions (the channel sums that Grad-CAM-type weights consume) and one per element (activations x
gradients, what element-wise methods consume). A quantised head is checked on its clipped
straight-through surrogate, the function its gradients are exact for.

Three outcomes: PASS, FAIL, and UNCHECKED when there is nothing to compare (the target does not
depend on the layer, both sides are zero) or the reference did not converge.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from onnxcam.errors import OnnxCamWarning, TargetError, UnsupportedOpError
from onnxcam.gradients.reference import Float64Runner
from onnxcam.gradients.straight_through import straight_through, straight_through_note
from onnxcam.model import Model
from onnxcam.targets import TargetSpec, output_seeds
from onnxcam.views import FeatureView

# The float32 gradient graph agrees with float64 differences to ~1e-6..1e-4 on deep heads; a wrong
# rule is off by O(1e-1) or more. Gradients that are themselves float32 finite differences (the
# fallback) are ~1e-3 accurate.
MIN_TOLERANCE = 1e-3
MIN_TOLERANCE_FINITE = 1e-2
NOISE_FACTOR = 10.0
# Above this measured noise the reference itself is not converged (a kink under most directions).
MAX_NOISE = 5e-2
REFERENCE_EPS = 1e-6
# For backward compatibility of callers that passed a fixed tolerance.
DEFAULT_TOLERANCE = MIN_TOLERANCE

Status = Literal["pass", "fail", "unchecked"]


@dataclass
class GradientCheck:
    """``relative_error``: the larger of the channel-direction and element-direction errors,
    |FD - <g, d>| / max(|FD|, |<g, d>|) over all (image, direction) pairs; ``noise``: the reference's
    own measured error (same norm, step h vs 2h); ``tolerance``: what the verdict allowed."""

    layer: str
    relative_error: float
    tolerance: float
    source: str
    directions: int
    notes: list[str] = field(default_factory=list)
    status: Status = "pass"
    reason: str = ""
    noise: float = 0.0
    channel_error: float = 0.0
    element_error: float = 0.0
    reference: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "pass"


def _untied(a: np.ndarray) -> np.ndarray:
    """Mask of the values of each image that occur once: an exactly repeated value (ReLU's zeros,
    a clip's limit) is where a downstream max or clip has a tie, the head is not differentiable and
    any subgradient is right, so element-wise directions leave those values still."""
    mask = np.ones(a.shape, dtype=bool)
    for i in range(a.shape[0]):
        values, inverse, counts = np.unique(a[i], return_inverse=True, return_counts=True)
        mask[i] = (counts[inverse] == 1).reshape(a.shape[1:])
    return mask


def _directions(a: np.ndarray, k: int, rng: np.random.Generator, per_channel: bool,
                untied: np.ndarray | None = None, view: FeatureView | None = None) -> np.ndarray:
    """``(k * N, ...)`` standard normal directions in ``a``'s layout, row ``j`` for image ``j % N``;
    per channel: one value per channel of ``view``'s feature map, spread over its positions (zero on
    a token tensor's prefix tokens)."""
    n = a.shape[0]
    view = view or FeatureView()
    shape = tuple(int(v) for v in view.map_shape(a.shape))  # type: ignore[call-overload]
    if per_channel and len(shape) == 4:
        maps = np.broadcast_to(rng.standard_normal((k * n, shape[1], 1, 1)), (k * n, *shape[1:]))
        return np.asarray(view.to_tensor(np.ascontiguousarray(maps), np.zeros((k * n, *a.shape[1:]))))
    d = rng.standard_normal((k * n, *a.shape[1:]))
    return d if untied is None else d * np.tile(untied, (k,) + (1,) * (a.ndim - 1))


def _central(scorer: Callable[[np.ndarray, np.ndarray], np.ndarray], a: np.ndarray, d: np.ndarray,
             samples: np.ndarray, h: np.ndarray, batch: int) -> np.ndarray:
    out = np.empty(samples.size)
    for start in range(0, samples.size, batch):
        rows = slice(start, start + batch)
        s = samples[rows]
        step = h[s].reshape(-1, *([1] * (a.ndim - 1)))
        plus = scorer(a[s] + step * d[rows], s)
        minus = scorer(a[s] - step * d[rows], s)
        out[rows] = (np.asarray(plus, np.float64) - np.asarray(minus, np.float64)) / (2 * h[s])
    return out


def _error(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(|x - y| / max(|x|, |y|), max(|x|, |y|))."""
    scale = max(float(np.linalg.norm(x)), float(np.linalg.norm(y)))
    return (0.0 if scale == 0.0 else float(np.linalg.norm(x - y) / scale)), scale


def check_gradients(
    model: Model,
    x: np.ndarray,
    layer: str = "auto",
    targets: TargetSpec = None,
    directions: int = 4,
    tolerance: float | None = None,
    seed: int = 0,
) -> GradientCheck:
    """Compare ``model.gradients`` at ``layer`` with float64 central differences of the head along
    ``directions`` random directions per image of each kind (per channel and per element).

    ``tolerance``: a fixed bound instead of the one derived from the measured noise."""
    chosen = model.layer(layer)
    name, view = chosen.name, chosen.view
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", OnnxCamWarning)
        try:
            # In the tensor's own layout: the head is fed perturbed copies of that very tensor.
            g = model.gradients_at(x, [name], targets)
        except TargetError as exc:
            return GradientCheck(name, float("nan"), float("nan"), "none", directions, status="unchecked",
                                 reason=f"the target does not depend on this layer ({exc})")
    notes += [str(w.message) for w in caught if issubclass(w.category, OnnxCamWarning)]
    notes += g.notes
    split = model.split((name,))
    head = split.head
    if straight_through_note(head) is not None:
        try:
            head = straight_through(head)[0]
            notes.append("the reference is the head with its int8 quantisers replaced by clips to their range (the "
                         "clipped straight-through surrogate its gradients are exact for)")
        except UnsupportedOpError as exc:
            notes.append(f"the reference is the int8 head itself, which is piecewise constant ({exc})")
    # The target's score is linearised at the image's outputs (d score = <seed, d output>, the seeds
    # the gradient graph starts from), so the whole difference stays in float64: targets score in
    # float32, which would bring back the rounding noise this reference exists to remove.
    seeds = output_seeds(g.targets, g.outputs)
    by_head = {split.head_outputs.index(split.model_outputs[k]): v.astype(np.float64) for k, v in seeds.items()
               if split.model_outputs[k] in split.head_outputs}
    runner = Float64Runner(head, [split.head_outputs[k] for k in by_head])
    feeds, _ = model.run_body(x, (name,))
    feeds64 = {k: (v.astype(np.float64) if v.dtype.kind == "f" else v) for k, v in feeds.items()}

    limit = model.batch_limit(max(2, 2 * x.shape[0]))  # a static-batch model's head takes that batch only

    def scorer(rows: np.ndarray, samples: np.ndarray) -> np.ndarray:
        total = np.zeros(samples.size)
        for start in range(0, samples.size, limit):
            part = slice(start, start + limit)
            s = samples[part]
            outs = runner({k: rows[part] if k == name else feeds64[k][s] for k in split.head_inputs})
            for out, seed in zip(outs, by_head.values(), strict=True):
                total[part] += np.sum((np.asarray(out, np.float64) * seed[s]).reshape(s.size, -1), axis=1)
        return total
    a = g.activations[name].astype(np.float64)
    grads = g.gradients[name].astype(np.float64)
    n = a.shape[0]
    rng = np.random.default_rng(seed)
    rms = np.sqrt(np.mean(a.reshape(n, -1) ** 2, axis=1))
    h = REFERENCE_EPS * np.where(rms > 0, rms, 1.0)
    errors: dict[str, float] = {}
    noises: list[float] = []
    scales: list[float] = []
    batch = max(2, 2 * n)
    untied = _untied(g.activations[name])
    if not untied.all():
        notes.append(f"element-wise directions leave the {1 - untied.mean():.1%} of values that repeat exactly (ReLU "
                     "zeros, clip limits: ties of a downstream max or clip, where any subgradient is right) still")
    for kind in ("channel", "element"):
        d = _directions(a, directions, rng, kind == "channel", untied, view)
        samples = np.tile(np.arange(n), directions)
        fd = _central(scorer, a, d, samples, h, batch)
        fd2 = _central(scorer, a, d, samples, 2 * h, batch)
        predicted = np.sum(grads[samples].reshape(samples.size, -1) * d.reshape(samples.size, -1), axis=1)
        errors[kind], scale = _error(fd, predicted)
        noise, _ = _error(fd, fd2)
        noises.append(noise)
        scales.append(scale)
    score_scale = float(np.max(np.abs(g.scores))) if g.scores.size else 0.0
    result = GradientCheck(name, max(errors.values()), 0.0, g.source, directions, notes,
                           noise=max(noises), channel_error=errors["channel"], element_error=errors["element"],
                           reference=f"central differences of a float64 copy of the head ({runner.what})")
    floor = MIN_TOLERANCE_FINITE if g.source == "finite differences" else MIN_TOLERANCE
    result.tolerance = tolerance if tolerance is not None else max(floor, NOISE_FACTOR * result.noise)
    if max(scales) <= 1e-12 * max(1.0, score_scale):
        result.status = "unchecked"
        result.reason = ("both the gradients and the reference's differences are zero: the target does not depend "
                         "on this layer here (disconnected, or every path is clipped or saturated)")
    elif tolerance is None and result.noise > MAX_NOISE:
        result.status = "unchecked"
        result.reason = (f"the float64 reference is not converged (step h vs 2h differ by {result.noise:.1e}): "
                         "the head is too kinked at these activations; try another image or layer")
    else:
        result.status = "pass" if result.relative_error <= result.tolerance else "fail"
    return result
