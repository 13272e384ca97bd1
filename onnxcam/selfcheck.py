"""Self-check of the gradients onnxcam computes: the gradient graph against central finite
differences of the head along random directions (``onnxcam check-gradients``)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from onnxcam.errors import OnnxCamWarning
from onnxcam.gradients.straight_through import straight_through_note
from onnxcam.model import Model
from onnxcam.targets import TargetSpec

# Central differences of a float32 head agree with exact gradients to ~1e-3 along random
# directions; a wrong rule is off by O(1).
DEFAULT_TOLERANCE = 1e-2
# Finite-difference step for quantised heads: their clips' kinks bias larger steps (at EfficientNet
# int8's middle layer the error falls 1.4e-2 -> 6.8e-3 from step 1e-3 to 3e-4), and the clip surrogate
# runs in float32 without rounding noise, so the smaller step stays well above float32 resolution.
STRAIGHT_EPS = 3e-4


@dataclass
class GradientCheck:
    layer: str
    relative_error: float
    tolerance: float
    source: str
    directions: int
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.relative_error <= self.tolerance)


def check_gradients(
    model: Model,
    x: np.ndarray,
    layer: str = "auto",
    targets: TargetSpec = None,
    directions: int = 8,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
) -> GradientCheck:
    """Compare ``model.gradients`` at ``layer`` with finite differences along ``directions`` random
    directions per image; relative error = |FD - <g, d>| / max(|FD|, |<g, d>|) over all of them."""
    from onnxcam.gradients.finite_diff import DEFAULT_EPS, directional_check

    name = model.layer(layer).name
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", OnnxCamWarning)
        g = model.gradients(x, name, targets)
    notes += [str(w.message) for w in caught if issubclass(w.category, OnnxCamWarning)]
    notes += g.notes
    feeds, outputs = model.run_body(x, (name,))
    straight = g.source == "gradient graph" and straight_through_note(model.split((name,)).head) is not None
    if straight:
        notes.append("finite differences are taken on the head with its activation Q/DQ pairs replaced by clips to "
                     "their range (the function clipped straight-through gradients are exact for), along "
                     "per-channel directions: the clips' kinks would spoil element-wise differences")
    scorer = model.gradient_engine.head_scorer(name, g.targets, feeds, outputs, 64, straight)
    err = directional_check(scorer, g.activations[name], g.gradients[name], directions,
                            np.random.default_rng(seed), eps=STRAIGHT_EPS if straight else DEFAULT_EPS,
                            per_channel=straight)
    return GradientCheck(name, err, tolerance, g.source, directions, notes)
