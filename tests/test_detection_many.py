"""All detections of an image from one body run (``GradientEngine.repeat`` / ``compute_many``):
row k equals explaining detection k on its own, the body runs once, and a plain batch is untouched."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

import onnxcam
from models.build import build
from onnxcam.errors import ArgumentError


@cache
def _model(name: str) -> onnxcam.Model:
    return onnxcam.load(build(name), device="cpu")


@pytest.fixture(autouse=True, scope="module")
def _release_models():
    """Drop this module's cached models (and their sessions) when it is done: the suite is long."""
    yield
    _model.cache_clear()


def _image(seed: int = 5) -> np.ndarray:
    """Smooth blobs on a gradient ``(1, 3, 320, 320)`` in [0, 1] (as tests/test_detection_yolo.py)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:320, 0:320] / 320.0
    img = np.stack([xx, yy, 1 - xx]) * 0.4
    for _ in range(6):
        cy, cx, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.15)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        img = img + blob[None] * rng.uniform(0.2, 0.6, (3, 1, 1))
    return np.clip(img, 0, 1).astype(np.float32)[None]


@pytest.mark.parametrize("name", ["yolov8n_det", "yolov8n_det_dyn"])
def test_rows_equal_one_detection_at_a_time_and_the_body_runs_once(name, monkeypatch):
    model = _model(name)
    x = _image()
    task = model.task
    dets = task.detections(model.forward(x))[0]  # type: ignore[attr-defined]
    # Scores off the sigmoid's flat ends: a random head saturates some, whose gradients vanish.
    live = [d for d in dets if 0.3 < d.score < 0.97]
    assert len(live) >= 3, [d.score for d in dets]
    targets = [task.detection_target(d) for d in live[:3]]  # type: ignore[attr-defined]
    cam = onnxcam.GradCAM(model)
    engine = model.gradient_engine
    alone = [engine.compute(x, cam.layers, [t], task) for t in targets]
    calls = []
    real = model.run_body
    monkeypatch.setattr(model, "run_body", lambda v, *a, **k: calls.append(v.shape[0]) or real(v, *a, **k))
    many = engine.compute_many(x, cam.layers, targets, task)
    assert calls == [1]
    for k, g in enumerate(alone):
        np.testing.assert_allclose(many.scores[k], g.scores[0], rtol=1e-6)
        for layer in cam.layers:
            np.testing.assert_allclose(many.gradients[layer][k], g.gradients[layer][0], rtol=1e-5, atol=1e-7)
            np.testing.assert_array_equal(many.activations[layer][k], g.activations[layer][0])
    # Through an explainer: the repeated rows give each detection's own map.
    rows = engine.repeat(x, len(targets))
    maps = cam(rows, targets=targets)
    for k, t in enumerate(targets):
        np.testing.assert_allclose(maps[k], cam(x, targets=[t])[0], atol=1e-5)
    assert not np.allclose(maps[0], maps[1], atol=1e-3)


def test_a_copied_batch_is_run_row_by_row():
    model = _model("yolov8n_det_dyn")
    x = _image(4)
    engine = model.gradient_engine
    engine.repeat(x, 2)
    other = np.concatenate([x, x[:, :, ::-1, ::-1].copy()])  # not the repeated view: a real two-image batch
    t = model.task
    g = engine.compute(other, onnxcam.GradCAM(model).layers, 0, t)
    assert not np.allclose(g.outputs[0][0], g.outputs[0][1])


def test_repeat_takes_one_image():
    engine = _model("yolov8n_det").gradient_engine
    with pytest.raises(ArgumentError, match="one image"):
        engine.repeat(np.zeros((2, 3, 320, 320), np.float32), 3)


class _DenseOnly(onnxcam.Target):
    """A detection target that gives its seeds densely only (no ``sparse_seeds``): what a user's own
    Target subclass does."""

    def __init__(self, inner: onnxcam.Target) -> None:
        self.inner = inner

    def reads(self, n_outputs: int) -> tuple[int, ...]:
        return self.inner.reads(n_outputs)

    def score(self, outputs):  # type: ignore[no-untyped-def]
        return self.inner.score(outputs)

    def seeds(self, outputs):  # type: ignore[no-untyped-def]
        return self.inner.seeds(outputs)


@pytest.mark.parametrize("drise", [False, True])
def test_sparse_seeds_give_the_dense_seeds_gradients(drise):
    """The engine takes a detection's seeds as ``SparseSeed``s (one prediction's entries) and writes
    them out only for the parts they reach: the gradients equal those of the same seeds given densely,
    bit for bit, for the class score (one entry) and D-RISE (box and class entries)."""
    model = _model("yolov8n_det")
    x = _image()
    task = model.task
    dets = task.detections(model.forward(x))[0]  # type: ignore[attr-defined]
    targets = [onnxcam.DRiseTarget(task.layout, d.box, d.category) if drise  # type: ignore[attr-defined]
               else task.detection_target(d) for d in dets[:4]]  # type: ignore[attr-defined]
    assert all(t.sparse_seeds([o[0] for o in model.forward(x)]) is not None for t in targets)
    engine = model.gradient_engine
    layers = onnxcam.GradCAM(model).layers
    sparse = engine.compute_many(x, layers, targets, task)
    dense = engine.compute_many(x, layers, [_DenseOnly(t) for t in targets], task)
    for layer in layers:
        assert np.any(sparse.gradients[layer])
        np.testing.assert_array_equal(sparse.gradients[layer], dense.gradients[layer])
