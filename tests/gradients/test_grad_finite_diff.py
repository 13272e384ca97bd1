"""finite_diff against the exact gradient models on the composite heads (float32 ORT heads)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from gradients.grad_helpers import run_gradient
from gradients.test_grad_composite import C, K, _head_model

from onnxcam.errors import ArgumentError
from onnxcam.gradients import build_gradient_model
from onnxcam.gradients.finite_diff import channel_gradients, directional_check, elementwise_gradients


def _setup(name: str, batch: int, h: int = 6) -> tuple:
    model = _head_model(name, batch)
    rng = np.random.default_rng(batch + 10)
    a = rng.standard_normal((batch, C, h, h)).astype(np.float32)
    targets = rng.integers(0, K, batch)
    exact = run_gradient(build_gradient_model(model, ["A"]), {"A": a}, {"logits": np.eye(K)[targets]})["A"]
    free = _head_model(name, "N")
    session = ort.InferenceSession(free.SerializeToString(), providers=["CPUExecutionProvider"])

    def score_fn(rows: np.ndarray, samples: np.ndarray) -> np.ndarray:
        logits = session.run(["logits"], {"A": rows.astype(np.float32)})[0]
        return logits[np.arange(rows.shape[0]), targets[samples]]

    return a, exact, score_fn


@pytest.mark.parametrize("name", ["residual", "depthwise_se_hardswish", "split_shuffle_silu", "resize_head"])
def test_channel_gradients_match_spatial_sums(name: str) -> None:
    a, exact, score_fn = _setup(name, 3)
    fd = channel_gradients(score_fn, a, batch_size=16)
    assert fd.shape == (3, C)
    expected = exact.sum(axis=(2, 3))
    assert np.max(np.abs(fd - expected)) <= 2e-3 * np.max(np.abs(expected))


def test_elementwise_gradients_match_exact() -> None:
    a, exact, score_fn = _setup("depthwise_se_hardswish", 1)
    fd = elementwise_gradients(score_fn, a, batch_size=64)
    assert fd.shape == a.shape
    assert np.max(np.abs(fd - exact)) <= 2e-3 * np.max(np.abs(exact))


def test_directional_check_accepts_exact_and_rejects_wrong() -> None:
    a, exact, score_fn = _setup("residual", 3)
    rng = np.random.default_rng(0)
    assert directional_check(score_fn, a, exact, n_directions=4, rng=rng) < 1e-3
    wrong = exact.copy()
    wrong[1] *= -1.0  # one sample's gradient flipped
    assert directional_check(score_fn, a, wrong, n_directions=4, rng=rng) > 0.1


def test_finite_diff_argument_errors() -> None:
    a, exact, score_fn = _setup("residual", 1)
    with pytest.raises(ArgumentError):
        channel_gradients(score_fn, a, eps=0.0)
    with pytest.raises(ArgumentError):
        directional_check(score_fn, a, exact[:, :2])
