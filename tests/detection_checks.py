"""Shared by the detector tests: every method the model's specs allow runs on one detection."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

from onnxcam.errors import TargetError
from onnxcam.registry import get_method, methods_for

# Perturbation methods kept small: the point is that they run on a detection, not their cost.
SMALL: dict[str, dict[str, Any]] = {"scorecam": {"max_channels": 8}, "sscam": {"max_channels": 4, "num_samples": 2}}


def assert_every_method_runs(model: Any, x: np.ndarray, top_score: float, size: tuple[int, int]) -> None:
    """Each method explains the top detection (the task's default target): finite ``(1, *size)`` maps and
    the detection's own score; CAM refuses, naming the class logits it needs."""
    for name in methods_for(model):  # what the model has (no attention), read from the method specs
        cls = get_method(name)
        if name == "cam":
            with pytest.raises(TargetError, match="class logits"):
                cls(model)(x)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            e = cls(model, **SMALL.get(name, {})).explain(x)
        assert e.maps.shape == (1, *size) and np.isfinite(e.maps).all(), name
        assert float(e.scores[0]) == pytest.approx(top_score, abs=1e-5), name
