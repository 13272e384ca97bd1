"""Exported explainers of detectors against the Python detection path.

One export per detector (every method it allows): its ``detection_*`` outputs must equal
``DetectionTask.detections`` (boxes within 1e-3 px, classes, scores within 1e-5, padding after the
last) and each ``cam_<method>[n, k]`` the Python map of detection ``k`` of image ``n``
(``cam(engine.repeat(x, K), targets=[task.detection_target(d) ...])``, what ``onnxcam explain``
runs) within 1e-4 in onnxruntime, at batch 1, 3 and 16 from one file where the model's batch is
dynamic. OpenVINO runs the same file within 1e-3; its own forward rounds saturated sigmoid scores
differently by an ulp (measured on the random-weight heads, where many scores are 1.0 in float32),
which legitimately reorders equal-looking detections, so its detections are held to the Python
decoding of the outputs OpenVINO itself computed, and its maps to the Python maps where its
detections are onnxruntime's.

The random-weight YOLOv8 head saturates every top score to 1.0 in float32, where both paths'
gradients vanish (all-zero maps): the YOLOv8 layout's maps are pinned on the demo detector (real
weights). Two hand-built graphs cover the YOLOv5 layout (objectness seed) and DETR-style queries
(normalised boxes; sigmoid scores, DETR's softmax with its "no object" class, and read as a box/score
pair whose normalisation and score activation are found per image). The int8 copy of the demo
detector runs in onnxruntime at basic optimisation (QDQ as float simulation, as onnxcam runs it);
OpenVINO's int8 kernels round otherwise, so there only its detections are checked.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxcam
from onnxcam.data import demo_detect_files
from onnxcam.detection import DetectionTask, recognise
from onnxcam.errors import ArgumentError, UnsupportedModelError
from onnxcam.export import export_explainer
from onnxcam.export.detection import DETECTION_EXPORTABLE

K = 5
ALL = ",".join(DETECTION_EXPORTABLE)
# name -> methods exported (the heavier models with two; every method on the small ones)
MODELS: dict[str, str] = {
    "demo": ALL,
    "demo_int8": "gradcam,eigencam",  # QDQ int8 copy of the demo detector (straight-through gradients)
    "boxscore_det": "gradcam,layercam,eigencam",
    "boxscore_det_nms": "gradcam,eigencam",  # NMS inside: explained through what its NMS reads
    "yolov8n_det": "gradcam,hirescam",
    "yolov8n_det_nms": "gradcam",  # NMS inside, its boxes centre-format: turned into corners before it
    "yolov5_tiny": ALL,
    "queries_tiny": "gradcam,gradcam++,xgradcam",
    "softmax_tiny": "gradcam,layercam",  # the queries graph read as DETR does: softmax, last class "no object"
    # the queries graph read as a box/score pair: xyxy boxes found normalised, scores found to be logits
    "pairs_tiny": "gradcam",
}
ORT_BOUND, OV_BOUND = 1e-4, 1e-3
# Every top score 1.0 in float32, OpenVINO's ulp decides their order (see the module docstring).
SATURATED = ("yolov8n_det", "yolov8n_det_nms")
# Python maps for the first images only (a map does not depend on the rest of its batch); every
# image's detections are checked.
REF_IMAGES = 4


# -- hand-built detectors ---------------------------------------------------------------------------
def _tiny(path: Path, kind: str) -> Path:
    """A two-conv detector at 32x32 with a 1x1 head over 16x16 cells (A = 256 predictions, 3 classes).

    ``yolov5``: one output ``(N, A, 8)`` (sigmoid; boxes scaled to pixels), objectness at column 4.
    ``queries``: boxes ``(N, A, 4)`` normalised cxcywh (sigmoid) and class logits ``(N, A, 3)``.
    """
    rng = np.random.default_rng(11 if kind == "yolov5" else 12)
    c, cells = 3, 256
    width = 5 + c if kind == "yolov5" else 4 + c
    inits = [numpy_helper.from_array(v, k) for k, v in {
        "w1": rng.normal(0, 0.4, (8, 3, 3, 3)).astype(np.float32), "b1": rng.normal(0, 0.1, 8).astype(np.float32),
        "w2": rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32), "b2": rng.normal(0, 0.1, 8).astype(np.float32),
        "w3": rng.normal(0, 0.5, (width, 8, 1, 1)).astype(np.float32),
        "b3": rng.normal(0, 0.3, width).astype(np.float32),
        "rows": np.array([0, width, cells], np.int64),
        "pixels": np.array([32, 32, 16, 16] + [1] * (width - 4), np.float32),
        "s0": np.array([0], np.int64), "s4": np.array([4], np.int64), "s_end": np.array([width], np.int64),
        "ax2": np.array([2], np.int64),
    }.items()]
    nodes = [
        helper.make_node("Conv", ["images", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["f1"]),
        helper.make_node("Conv", ["f1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["f2"]),
        helper.make_node("Conv", ["f2", "w3", "b3"], ["head"]),
        helper.make_node("Reshape", ["head", "rows"], ["flat"]),
        helper.make_node("Transpose", ["flat"], ["preds"], perm=[0, 2, 1]),
    ]
    if kind == "yolov5":
        nodes += [helper.make_node("Sigmoid", ["preds"], ["act"]),
                  helper.make_node("Mul", ["act", "pixels"], ["output0"])]
        outputs = [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["N", cells, width])]
    else:
        nodes += [helper.make_node("Slice", ["preds", "s0", "s4", "ax2"], ["box_logits"]),
                  helper.make_node("Sigmoid", ["box_logits"], ["pred_boxes"]),
                  helper.make_node("Slice", ["preds", "s4", "s_end", "ax2"], ["pred_logits"])]
        outputs = [helper.make_tensor_value_info("pred_boxes", TensorProto.FLOAT, ["N", cells, 4]),
                   helper.make_tensor_value_info("pred_logits", TensorProto.FLOAT, ["N", cells, c])]
    graph = helper.make_graph(nodes, f"tiny_{kind}", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                                   ["N", 3, 32, 32])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    model.metadata_props.add(key="task", value="detect")
    model.metadata_props.add(key="imgsz", value="[32, 32]")
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _int8_demo(folder: Path) -> Path:
    """The demo detector quantised to QDQ int8 (per-channel weights), MinMax-calibrated on its scenes.
    Whatever calibration decides, both paths explain the same quantised file."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = demo_detect_files().model
    x = _images("demo", onnxcam.load(model, device="cpu"), 8)

    class Reader:
        def __init__(self) -> None:
            self.it = iter([{"images": x[i:i + 1]} for i in range(len(x))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    pre, out = folder / "demo_pre.onnx", folder / "demo_int8.onnx"
    quant_pre_process(str(model), str(pre), skip_optimization=True)
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ,  # type: ignore[arg-type]
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def _images(name: str, m: onnxcam.Model, n: int) -> np.ndarray:
    if name.startswith("demo"):
        files = demo_detect_files()
        pp = onnxcam.get_preset("yolo", m.input.size)
        base = onnxcam.preprocess([onnxcam.load_image(p) for p in files.images], pp)
        # more scenes: the demo images flipped and dimmed
        variants = [base, base[..., ::-1], base * np.float32(0.8), base[..., ::-1, :] * np.float32(0.9)]
        return np.ascontiguousarray(np.concatenate(variants)[:n])
    rng = np.random.default_rng(3)
    h, w = m.input.size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out = np.empty((n, 3, h, w), np.float32)
    for i in range(n):  # smooth scenes: blobs on a gradient, in [0, 1]
        img = np.stack([xx, yy, 1 - xx]) * 0.4
        for _ in range(5):
            cy, cx, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.2)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
            img = img + blob[None] * rng.uniform(0.2, 0.6, (3, 1, 1))
        out[i] = np.clip(img, 0, 1)
    return out


def _load(name: str, build_model: Any, folder: Path) -> onnxcam.Model:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the NMS models say they are explained before their NMS
        if name == "demo":
            return onnxcam.load(demo_detect_files().model, device="cpu")
        if name == "demo_int8":
            return onnxcam.load(_int8_demo(folder), device="cpu")
        if name.endswith("_tiny"):
            kind = "yolov5" if name == "yolov5_tiny" else "queries"
            return onnxcam.load(_tiny(folder / f"{name}.onnx", kind), device="cpu")
        return onnxcam.load(build_model(name), device="cpu")


def _task(name: str, m: onnxcam.Model) -> DetectionTask:
    if name == "softmax_tiny":
        return DetectionTask(recognise(m.output_shapes, kind="queries", scores="softmax", input_size=m.input.size))
    if name == "pairs_tiny":
        task = DetectionTask(recognise(m.output_shapes, kind="pairs", input_size=m.input.size))
        assert task.layout.normalized is None and task.layout.scores == "auto"
        return task
    task = m.task
    assert isinstance(task, DetectionTask)
    return task


@dataclass
class Case:
    name: str
    m: onnxcam.Model
    task: DetectionTask
    result: Any
    x: np.ndarray
    dets: list[list[Any]]  # the Python path's detections of x
    refs: dict[str, list[np.ndarray]]  # method -> per image of the first REF_IMAGES (len(dets[i][:K]), H, W)

    def batches(self) -> list[int]:
        return [n for n in (1, 3, 16) if n <= len(self.x)]


@pytest.fixture(scope="module", params=list(MODELS))
def case(request: Any, build_model: Any, tmp_path_factory: Any) -> Case:
    name = request.param
    folder = tmp_path_factory.mktemp("xdet")
    m = _load(name, build_model, folder)
    layer = ["f1", "f2"] if name.endswith("_tiny") else "auto"
    task = _task(name, m)
    result = export_explainer(m, MODELS[name], layer, path=folder / f"{name}_cam.onnx", detections=K,
                              task=task if name in ("softmax_tiny", "pairs_tiny") else None)
    x = _images(name, m, 1 if isinstance(m.input.batch, int) else 16)
    dets = task.detections(m.forward(x))
    refs: dict[str, list[np.ndarray]] = {}
    for k in result.maps:
        cam = onnxcam.get_method(k)(m, layer=list(result.layers), task=task)
        per_image = []
        for i, d in enumerate(dets[:REF_IMAGES]):
            targets = [task.detection_target(e) for e in d[:K]]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # blank maps of saturated detections
                per_image.append(cam(m.gradient_engine.repeat(x[i:i + 1], len(targets)), targets=targets)
                                 if targets else np.zeros((0, *m.input.size), np.float32))
        refs[k] = per_image
    return Case(name, m, task, result, x, dets, refs)


def check_detections(out: dict[str, np.ndarray], dets: list[list[Any]], what: str, k: int = K) -> None:
    for i, d in enumerate(dets):
        d = d[:k]
        n = len(d)
        assert out["detection_classes"][i].tolist() == [e.category for e in d] + [-1] * (k - n), f"{what} image {i}"
        np.testing.assert_allclose(out["detection_scores"][i][:n], [e.score for e in d], atol=1e-5, rtol=0)
        assert (out["detection_scores"][i][n:] == 0).all() and (out["detection_boxes"][i][n:] == 0).all()
        if n:
            np.testing.assert_allclose(out["detection_boxes"][i][:n], [e.box for e in d], atol=1e-3, rtol=0)


def check_maps(c: Case, out: dict[str, np.ndarray], images: list[int], bound: float, what: str) -> None:
    for k, name in c.result.maps.items():
        got = out[name]
        assert got.dtype == np.float32 and got.shape[1:] == (K, *c.m.input.size), what
        assert float(got.min()) >= 0.0 and float(got.max()) <= 1.0
        for i in images:
            ref = c.refs[k][i]
            diff = float(np.abs(got[i, : len(ref)] - ref).max()) if len(ref) else 0.0
            assert diff <= bound, f"{what} {k} image {i}: max abs diff {diff}"
            assert (got[i, len(ref):] == 0).all(), f"{what} {k} image {i}: padding maps not zero"


def _ort(path: Path, quantized: bool = False) -> ort.InferenceSession:
    so = ort.SessionOptions()
    # QDQ kept as float simulation, as onnxcam runs a quantised model (Model.optimization)
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_BASIC if quantized
                                   else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _run(sess: ort.InferenceSession, m: onnxcam.Model, x: np.ndarray) -> dict[str, np.ndarray]:
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {m.input.name: x})))


def test_graph_passes_the_full_check_and_returns_model_outputs_then_detections(case: Case) -> None:
    onnx.checker.check_model(str(case.result.path), full_check=True)
    proto = onnx.load(str(case.result.path))
    names = [o.name for o in proto.graph.output]
    assert names == [o.name for o in case.m.proto.graph.output] + [*case.result.detection_outputs,
                                                                     *case.result.maps.values()]
    assert case.result.class_output == "detection_classes"


def test_onnxruntime_matches_the_python_detections_and_maps_at_every_batch(case: Case) -> None:
    sess = _ort(case.result.path, case.m.quantized)
    nonzero = 0.0
    for n in case.batches():
        out = _run(sess, case.m, case.x[:n])
        check_detections(out, case.dets[:n], f"{case.name} batch {n}")
        check_maps(case, out, list(range(min(n, REF_IMAGES))), ORT_BOUND, f"{case.name} batch {n}")
        nonzero = max(nonzero, *(float(out[v].max()) for v in case.result.maps.values()))
    if case.name not in SATURATED:  # see the module docstring
        assert nonzero > 0.5


def test_openvino_runs_the_same_file(case: Case) -> None:
    ov = pytest.importorskip("openvino")
    core = ov.Core()
    # f32: OpenVINO's CPU plugin otherwise computes in bf16 where the CPU has it.
    compiled = core.compile_model(core.read_model(str(case.result.path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    n = min(3, len(case.x))
    x = case.x[:n]
    ort_out = _run(_ort(case.result.path, case.m.quantized), case.m, x)
    res = compiled({case.m.input.name: x})
    out = {name: np.asarray(res[o]) for o in compiled.outputs for name in o.get_names()}
    own = case.task.detections([out[o.name] for o in case.m.proto.graph.output])
    check_detections(out, own, f"{case.name} OpenVINO batch {n}")
    same = [i for i in range(n) if (out["detection_classes"][i] == ort_out["detection_classes"][i]).all()
            and np.abs(out["detection_boxes"][i] - ort_out["detection_boxes"][i]).max() < 1e-3]
    if case.m.quantized:
        return  # OpenVINO runs int8 kernels, another rounding than the float simulation of QDQ
    if case.name not in SATURATED:
        assert len(same) >= (n + 1) // 2, f"{case.name}: OpenVINO's detections differ on most images"
    check_maps(case, out, same, OV_BOUND, f"{case.name} OpenVINO batch {n}")


def test_no_detection_above_conf_gives_padding_only(build_model: Any, tmp_path: Path) -> None:
    m = _load("demo", build_model, tmp_path)
    result = export_explainer(m, "gradcam,eigencam", path=tmp_path / "strict.onnx", detections=2, conf=0.999)
    x = _images("demo", m, 2)
    out = _run(_ort(result.path), m, x)
    assert out["detection_classes"].tolist() == [[-1, -1], [-1, -1]]
    assert (out["detection_scores"] == 0).all() and (out["cam_gradcam"] == 0).all() and (out["cam_eigencam"] == 0).all()
    assert out["cam_gradcam"].shape == (2, 2, *m.input.size)


def test_methods_without_a_per_detection_form_are_refused_naming_those_that_work(build_model: Any,
                                                                                  tmp_path: Path) -> None:
    m = _load("demo", build_model, tmp_path)
    for method in ("cam", "fullgrad"):
        with pytest.raises(ArgumentError, match="exportable for detectors: gradcam, gradcam\\+\\+"):
            export_explainer(m, f"gradcam,{method}", path=tmp_path / "no.onnx")
    with pytest.raises(UnsupportedModelError, match="leave target='top1'"):
        export_explainer(m, "gradcam", path=tmp_path / "no.onnx", target="input")
    with pytest.raises(ArgumentError, match="detections must be >= 1"):
        export_explainer(m, "gradcam", path=tmp_path / "no.onnx", detections=0)
    assert not (tmp_path / "no.onnx").exists()


def test_cli_passes_detections_conf_and_iou(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    model = demo_detect_files().model
    out = tmp_path / "cli.onnx"
    r = CliRunner().invoke(app, ["export", str(model), "--method", "gradcam", "--detections", "3", "--conf", "0.5",
                                 "--iou", "0.3", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "detection_boxes, detection_scores, detection_classes, cam_gradcam" in r.output
    m = onnxcam.load(model, device="cpu")
    x = _images("demo", m, 4)
    got = _run(_ort(out), m, x)
    assert got["cam_gradcam"].shape == (4, 3, *m.input.size)
    check_detections(got, DetectionTask(m.task.layout, conf=0.5, iou=0.3).detections(m.forward(x)), "CLI", k=3)
    r = CliRunner().invoke(app, ["export", str(model), "--method", "fullgrad", "-o", str(tmp_path / "no.onnx")])
    assert r.exit_code != 0 and "exportable for detectors" in r.output
