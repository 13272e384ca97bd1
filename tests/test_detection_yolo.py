"""The YOLOv8n- and YOLO11n-style detectors (models/detectors.py) end to end: recognised as
detectors, default layers at the head's feature maps (never the DFL conv, nor YOLO11's C2PSA
attention), every method runs on one detection, exact gradients against float64 torch autograd, and
Grad-CAM / Grad-CAM++ / EigenCAM parity with pytorch-grad-cam on the same weights."""

from __future__ import annotations

import copy
import warnings
from functools import cache
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from models.torchvision_stub import install as _stub_torchvision  # noqa: E402

_stub_torchvision()
pgc = pytest.importorskip("pytorch_grad_cam")

from detection_checks import assert_every_method_runs  # noqa: E402

import onnxcam  # noqa: E402
from models.build import build  # noqa: E402
from models.detectors import yolo11n, yolov8n  # noqa: E402
from onnxcam.detection import DecodeOptions, DetectionScoreTarget, DetectionTask, DRiseTarget, decode  # noqa: E402
from onnxcam.errors import UnsupportedModelError  # noqa: E402
from onnxcam.explainers.attention import has_global_attention  # noqa: E402
from onnxcam.registry import get_method, methods_for, spec_of  # noqa: E402

# The torch module each test model was exported from, and the neck's outputs at strides 8, 16, 32
# (YOLOv8's C2f, YOLO11's C3k2): the maps the Detect head reads.
ARCHS: dict[str, tuple[Any, tuple[str, ...]]] = {"yolov8n": (yolov8n, ("h15", "h18", "h21")),
                                                 "yolo11n": (yolo11n, ("h16", "h19", "h22"))}
TOL = 1e-4
MIN_PEARSON = 0.999


@cache
def _model(name: str = "yolov8n_det") -> onnxcam.Model:
    return onnxcam.load(build(name), device="cpu")


def _arch(name: str) -> str:
    return name.split("_")[0]


@cache
def _torch(arch: str = "yolov8n") -> Any:
    torch.set_num_threads(2)
    return ARCHS[arch][0](size=320).eval()


def _image(n: int = 1, seed: int = 5) -> np.ndarray:
    """Smooth random images (blobs on a gradient), values in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:320, 0:320] / 320.0
    out = np.empty((n, 3, 320, 320), dtype=np.float32)
    for i in range(n):
        img = np.stack([xx, yy, 1 - xx]) * 0.4
        for _ in range(6):
            cy, cx, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.15)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
            img = img + blob[None] * rng.uniform(0.2, 0.6, (3, 1, 1))
        out[i] = np.clip(img, 0, 1)
    return out


def _unsaturated(dets: list[Any], skip: int = 0) -> Any:
    """A detection whose score is off the sigmoid's flat ends (a random head saturates some to 1.0
    in float32, where the gradient vanishes while float64's does not)."""
    found = [d for d in dets if 0.3 < d.score < 0.97]
    assert len(found) > skip, [d.score for d in dets[:20]]
    return found[skip]


def _layer_names(arch: str) -> tuple[str, ...]:
    return tuple(f"/{m}/cv2/act/Mul_output_0" for m in ARCHS[arch][1])


@pytest.mark.parametrize("name", ["yolov8n_det", "yolov8n_det_op12", "yolov8n_det_dyn", "yolo11n_det",
                                  "yolo11n_det_op12"])
def test_recognised_with_head_feature_maps_as_default_layers(name):
    model = _model(name)
    task = model.task
    assert isinstance(task, DetectionTask) and task.layout.kind == "yolov8" and task.layout.num_classes == 80
    assert task.label(3) == "class3"  # from the metadata's names
    assert model.resolve_layers("auto") == _layer_names(_arch(name))
    assert model.layer("auto").name == _layer_names(_arch(name))[0]
    assert all(layer.spatial is not None for layer in model.select_layers("auto"))


@pytest.mark.parametrize("name", ["yolo11n_det", "yolo11n_det_op12"])
def test_c2psa_attention_is_not_taken_for_a_transformer(name):
    """YOLO11's C2PSA runs a Softmax (1, heads, HW, HW) over the stride-32 cells: a convolutional
    block with attention inside, not a token sequence; the attention methods refuse it."""
    model = _model(name)
    softmaxes = [n for n in model.proto.graph.node if n.op_type == "Softmax"]
    assert any(n.name.startswith("/b10/") for n in softmaxes)  # the attention is in the graph
    assert not has_global_attention(model)
    assert not any(spec_of(m).requires for m in methods_for(model))
    with pytest.raises(UnsupportedModelError, match="self-attention over the image's tokens"):
        get_method("rollout")(model)(_image())


@pytest.mark.parametrize("name", ["yolov8n_det", "yolo11n_det"])
def test_every_method_runs_on_one_detection(name):
    model = _model(name)
    x = _image()
    dets = model.task.detections(model.forward(x))[0]  # type: ignore[attr-defined]
    assert len(dets) >= 2
    assert_every_method_runs(model, x, dets[0].score, (320, 320))
    # The D-RISE target drives the perturbation methods too.
    drise = DRiseTarget(model.task.layout, dets[1].box, dets[1].category)  # type: ignore[attr-defined]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        e = onnxcam.AblationCAM(model).explain(x, targets=[drise])
    expected = drise.score([o[0] for o in model.forward(x)])
    assert np.isfinite(e.maps).all() and float(e.scores[0]) == pytest.approx(expected, abs=1e-5) and expected > 0


def _autograd(arch: str, x: np.ndarray, score_fn: Any,
              modules: tuple[str, ...] = ()) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """float64 torch activations and d(score)/d(activation) at ``modules`` (default: the three head
    feature maps)."""
    net = copy.deepcopy(_torch(arch)).double()
    seen: list[Any] = []

    def hook(_m: Any, _i: Any, out: Any) -> None:
        out.retain_grad()
        seen.append(out)

    handles = [net.get_submodule(m).register_forward_hook(hook) for m in modules or ARCHS[arch][1]]
    try:
        y = net(torch.from_numpy(x.astype(np.float64)))
    finally:
        for h in handles:
            h.remove()
    score_fn(y).backward()
    return [s.detach().numpy() for s in seen], [s.grad.numpy() for s in seen]


def _drise_torch(y: Any, image: int, j: int, box: tuple[float, ...], c: int) -> Any:
    col = y[image, :, j]
    cx, cy, w, h = col[0], col[1], col[2], col[3]
    x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    t = [torch.tensor(v, dtype=y.dtype) for v in box]
    iw = torch.clamp(torch.minimum(x2, t[2]) - torch.maximum(x1, t[0]), min=0)
    ih = torch.clamp(torch.minimum(y2, t[3]) - torch.maximum(y1, t[1]), min=0)
    inter = iw * ih
    union = (box[2] - box[0]) * (box[3] - box[1]) + w * h - inter
    p = col[4:]
    return inter / union * p[c] / torch.linalg.norm(p) * p.max()


def _assert_close(got_a: np.ndarray, got_g: np.ndarray, ref_a: np.ndarray, ref_g: np.ndarray, what: str) -> None:
    """Channel sums of the gradients and of activations x gradients: median relative error <= TOL."""
    assert np.abs(got_a - ref_a).max() <= TOL * np.abs(ref_a).max(), f"{what}: activations differ"
    for name, g, r in (("gradient sums", got_g.sum(axis=(-2, -1)), ref_g.sum(axis=(-2, -1))),
                       ("activation x gradient sums", (got_a * got_g).sum(axis=(-2, -1)),
                        (ref_a * ref_g).sum(axis=(-2, -1)))):
        scale = np.abs(r).max()
        if scale == 0:  # a prediction of a finer level does not depend on the coarser maps at all
            assert np.abs(g).max() == 0, f"{what}: {name} should be zero"
            continue
        rel = np.abs(g - r) / scale
        assert np.median(rel) <= TOL and rel.max() <= 100 * TOL, f"{what} {name}: median {np.median(rel):.2e}"


@pytest.mark.parametrize("target", ["score", "drise"])
@pytest.mark.parametrize("name", ["yolov8n_det_dyn", "yolo11n_det"])
def test_gradients_match_float64_autograd(name, target):
    model = _model(name)
    batch = 2 if model.input.max_batch is None else 1
    x = _image(batch, seed=9)
    outputs = model.forward(x)
    task = model.task
    dets = decode(task.layout, outputs, DecodeOptions(max_det=5000))  # type: ignore[attr-defined]
    # Image 0 explains its top detection, image 1 its second: each seed must reach its own image.
    chosen = [_unsaturated(dets[i], i) for i in range(batch)]
    if target == "score":
        targets = [DetectionScoreTarget(task.layout, d.index, d.category) for d in chosen]  # type: ignore[attr-defined]
    else:
        # Boxes off every prediction's own edges: at an edge IoU has a kink, where fp32 and fp64 part.
        boxes = [tuple(float(v) for v in np.asarray(d.box) + np.array([3.3, -2.7, 1.9, 4.1])) for d in chosen]
        targets = [DRiseTarget(task.layout, b, d.category)  # type: ignore[attr-defined]
                   for b, d in zip(boxes, chosen, strict=True)]
    g = model.gradients(x, "auto", targets=targets)

    def score(y: Any) -> Any:
        total = 0
        for i, (d, t) in enumerate(zip(chosen, targets, strict=True)):
            if target == "score":
                total = total + y[i, 4 + d.category, d.index]
            else:
                s, *_ = t._terms([o[i] for o in outputs])  # type: ignore[attr-defined]
                total = total + _drise_torch(y, i, int(np.argmax(s)), t.box, d.category)  # type: ignore[attr-defined]
        return total

    ref_a, ref_g = _autograd(_arch(name), x, score)
    assert any(np.abs(r).max() > 0 for r in ref_g)
    for k, layer in enumerate(_layer_names(_arch(name))):
        _assert_close(g.activations[layer], g.gradients[layer], ref_a[k], ref_g[k], f"{target} at {layer}")


def test_gradients_through_the_c2psa_attention_match_float64_autograd():
    """At SPPF's output the gradient runs back through C2PSA (MatMul, Softmax, the heads' Reshape and
    Split), which the default layers, downstream of it, never see."""
    model = _model("yolo11n_det")
    x = _image(seed=9)
    task = model.task
    dets = decode(task.layout, model.forward(x), DecodeOptions(max_det=5000))[0]  # type: ignore[attr-defined]
    # Below 0.9: nearer the sigmoid's flat end float32 itself loses digits here (torch's too).
    d = next(d for d in dets if 0.3 < d.score < 0.9)
    layer = "/b9/cv2/act/Mul_output_0"
    g = model.gradients(x, layer, targets=[DetectionScoreTarget(task.layout, d.index, d.category)])  # type: ignore[attr-defined]
    ref_a, ref_g = _autograd("yolo11n", x, lambda y: y[0, 4 + d.category, d.index], ("b9",))
    assert np.abs(ref_g[0]).max() > 0
    _assert_close(g.activations[layer], g.gradients[layer], ref_a[0], ref_g[0], f"score at {layer}")


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


@pytest.mark.parametrize(("ours", "theirs"), [(onnxcam.GradCAM, "GradCAM"),
                                              (onnxcam.GradCAMPlusPlus, "GradCAMPlusPlus"),
                                              (onnxcam.EigenCAM, "EigenCAM")])
@pytest.mark.parametrize("name", ["yolov8n_det", "yolo11n_det"])
def test_maps_match_pytorch_grad_cam(name, ours, theirs):
    model = _model(name)
    x = _image(seed=11)
    layout = model.task.layout  # type: ignore[attr-defined]
    det = _unsaturated(decode(layout, model.forward(x), DecodeOptions(max_det=5000))[0])
    target = DetectionScoreTarget(layout, det.index, det.category)
    kw = {"eigen_sign": "reference"} if theirs == "EigenCAM" else {}
    got = ours(model, **kw)(x, targets=[target])
    net = _torch(_arch(name))
    cam = getattr(pgc, theirs)(model=net, target_layers=[net.get_submodule(m) for m in ARCHS[_arch(name)][1]])
    try:
        expected = cam(input_tensor=torch.from_numpy(x), targets=[lambda out: out[4 + det.category, det.index]])
    finally:
        cam.activations_and_grads.release()
    assert expected.max() - expected.min() > 0.5
    r = _pearson(got[0], np.asarray(expected)[0])
    assert r >= MIN_PEARSON, f"{theirs}: Pearson {r:.5f}"
