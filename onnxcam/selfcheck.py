"""Self-check of the gradients onnxcam computes: the gradient graph against central finite
differences of the head along random directions (``onnxcam check-gradients``)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from onnxcam.backprop import head_score_fn
from onnxcam.errors import OnnxCamWarning
from onnxcam.gradients.straight_through import straight_through_note
from onnxcam.model import Model
from onnxcam.targets import TargetSpec

# Central differences of a float32 head agree with exact gradients to ~1e-3 along random
# directions; a wrong rule is off by O(1).
DEFAULT_TOLERANCE = 1e-2


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
    from onnxcam.gradients.finite_diff import directional_check

    name = model.layer(layer).name
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", OnnxCamWarning)
        g = model.gradients(x, name, targets)
    notes += [str(w.message) for w in caught if issubclass(w.category, OnnxCamWarning)]
    notes += g.notes
    feeds, _ = model.run_body(x, (name,))
    straight = g.source == "gradient graph" and straight_through_note(model.split((name,)).head) is not None
    if straight:
        notes.append("finite differences are taken on the head with its activation Q/DQ pairs removed: the "
                     "function straight-through gradients are exact for")
    score_fn = head_score_fn(model, name, g.targets, feeds, 64, straight)
    err = directional_check(score_fn, g.activations[name], g.gradients[name], directions,
                            np.random.default_rng(seed))
    return GradientCheck(name, err, tolerance, g.source, directions, notes)
