"""A RetinaNet/SSD-style box/score pair detector (models/detectors.py ``boxscore_det``: boxes
``(N, A, 4)`` + scores ``(N, A, K)``, 3 anchors per cell at strides 8/16/32), with and without NMS
in the graph: recognised as pairs, default layers at the three level maps, every method runs,
gradients equal float64 autograd, and Grad-CAM / Grad-CAM++ / EigenCAM equal pytorch-grad-cam's.
(torchvision's SSDlite / RetinaNet cannot be exported here: torchvision does not import beside
this torch.)"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from models.torchvision_stub import install as _stub_torchvision  # noqa: E402

_stub_torchvision()
pgc = pytest.importorskip("pytorch_grad_cam")

from detection_checks import assert_every_method_runs  # noqa: E402

import onnxcam  # noqa: E402
from models.build import build  # noqa: E402
from models.detectors import PAIR_STAGES, box_score_net  # noqa: E402
from onnxcam.detection import DecodeOptions, DetectionScoreTarget, DetectionTask, decode, pre_nms  # noqa: E402

TOL = 1e-4
MIN_PEARSON = 0.999
LAYERS = tuple(f"/{s}/{s}.2/Relu_output_0" for s in PAIR_STAGES)


@cache
def _model(name: str = "boxscore_det") -> onnxcam.Model:
    return onnxcam.load(build(name), device="cpu")


@cache
def _torch() -> Any:
    torch.set_num_threads(2)
    return box_score_net().eval()


@pytest.fixture(autouse=True, scope="module")
def _release_models():
    """Drop this module's cached models (and their sessions) when it is done: the suite is long."""
    yield
    _model.cache_clear()
    _torch.cache_clear()


def _image(n: int = 1, seed: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:256, 0:256] / 256.0
    out = np.empty((n, 3, 256, 256), dtype=np.float32)
    for i in range(n):
        img = np.stack([xx, yy, 1 - xx]) * 0.4
        for _ in range(6):
            cy, cx, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.15)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
            img = img + blob[None] * rng.uniform(0.2, 0.6, (3, 1, 1))
        out[i] = np.clip(img, 0, 1)
    return out


def _top(model: onnxcam.Model, x: np.ndarray) -> list[Any]:
    return decode(model.task.layout, model.forward(x), DecodeOptions(max_det=500))  # type: ignore[attr-defined]


def test_recognised_as_pairs_with_the_level_maps_as_default_layers():
    model = _model()
    task = model.task
    assert isinstance(task, DetectionTask) and task.layout.kind == "pairs" and task.layout.num_classes == 20
    assert task.layout.outputs == (0, 1)
    assert model.resolve_layers("auto") == LAYERS


def test_every_method_runs_on_one_detection():
    model = _model()
    x = _image()
    dets = _top(model, x)[0]
    assert len(dets) >= 2
    assert_every_method_runs(model, x, dets[0].score, (256, 256))


def _autograd(x: np.ndarray, score_fn: Any) -> tuple[list[np.ndarray], list[np.ndarray]]:
    net = copy.deepcopy(_torch()).double()
    seen: list[Any] = []

    def hook(_m: Any, _i: Any, out: Any) -> None:
        out.retain_grad()
        seen.append(out)

    handles = [net.get_submodule(m).register_forward_hook(hook) for m in PAIR_STAGES]
    try:
        boxes, scores = net(torch.from_numpy(x.astype(np.float64)))
    finally:
        for h in handles:
            h.remove()
    score_fn(boxes, scores).backward()
    return [s.detach().numpy() for s in seen], [s.grad.numpy() for s in seen]


def test_gradients_match_float64_autograd():
    from test_detection_yolo import _assert_close

    model = _model()
    x = _image(2, seed=9)
    dets = _top(model, x)
    # Image 0 explains its top detection, image 1 its third: each seed must reach its own image.
    chosen = [dets[0][0], dets[1][2]]
    targets = [DetectionScoreTarget(model.task.layout, d.index, d.category)  # type: ignore[attr-defined]
               for d in chosen]
    g = model.gradients(x, "auto", targets=targets)
    ref_a, ref_g = _autograd(x, lambda _b, s: sum(s[i, d.index, d.category] for i, d in enumerate(chosen)))
    assert all(np.abs(r).max() > 0 for r in ref_g[:1])
    for k, name in enumerate(LAYERS):
        _assert_close(g.activations[name], g.gradients[name], ref_a[k], ref_g[k], f"score at {name}")


@pytest.mark.parametrize(("ours", "theirs"), [(onnxcam.GradCAM, "GradCAM"),
                                              (onnxcam.GradCAMPlusPlus, "GradCAMPlusPlus"),
                                              (onnxcam.EigenCAM, "EigenCAM")])
def test_maps_match_pytorch_grad_cam(ours, theirs):
    from test_detection_yolo import _pearson

    model = _model()
    x = _image(seed=11)
    det = _top(model, x)[0][0]
    target = DetectionScoreTarget(model.task.layout, det.index, det.category)  # type: ignore[attr-defined]
    kw = {"eigen_sign": "reference"} if theirs == "EigenCAM" else {}
    got = ours(model, **kw)(x, targets=[target])

    class Scores(torch.nn.Module):  # pytorch-grad-cam wants one output tensor
        def __init__(self, net: Any) -> None:
            super().__init__()
            self.net = net

        def forward(self, v: Any) -> Any:
            return self.net(v)[1]

    net = _torch()
    wrapped = Scores(net)
    cam = getattr(pgc, theirs)(model=wrapped, target_layers=[net.get_submodule(m) for m in PAIR_STAGES])
    try:
        expected = cam(input_tensor=torch.from_numpy(x), targets=[lambda out: out[det.index, det.category]])
    finally:
        cam.activations_and_grads.release()
    assert expected.max() - expected.min() > 0.5
    r = _pearson(got[0], np.asarray(expected)[0])
    assert r >= MIN_PEARSON, f"{theirs}: Pearson {r:.5f}"


def test_with_nms_in_the_graph_the_pre_nms_maps_equal_the_plain_detectors(tmp_path):
    found = pre_nms(onnx.load(str(build("boxscore_det_nms"))))
    assert found is not None and found.iou == pytest.approx(0.5) and found.score == pytest.approx(0.25)
    path = tmp_path / "pre.onnx"
    onnx.save(found.model, str(path))
    ours, plain = onnxcam.load(path, device="cpu"), _model()
    assert ours.task.layout.kind == "pairs" and ours.resolve_layers("auto") == LAYERS  # type: ignore[attr-defined]
    x = _image(seed=13)
    dets, ref = _top(ours, x)[0], _top(plain, x)[0]
    assert [(d.index, d.category) for d in dets[:10]] == [(d.index, d.category) for d in ref[:10]]
    for d in dets[:2]:
        got = onnxcam.GradCAM(ours)(x, targets=[ours.task.detection_target(d)])  # type: ignore[attr-defined]
        want = onnxcam.GradCAM(plain)(x, targets=[plain.task.detection_target(d)])  # type: ignore[attr-defined]
        np.testing.assert_allclose(got, want, atol=1e-4)
