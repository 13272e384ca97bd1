"""Detection layouts, decoding and NMS against hand-computed expectations; detection targets'
seeds against float64 central differences of their own scores; bad layouts and options."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcam.detection import (
    DecodeOptions,
    DetectionScoreTarget,
    DetectionTask,
    DRiseTarget,
    LayoutError,
    decode,
    nms,
    recognise,
    to_image_boxes,
)
from onnxcam.errors import ArgumentError, TargetError
from onnxcam.image import crop_box, geometry, get_preset
from onnxcam.tasks import detect_task


def _v8_output(rows: list[tuple[float, float, float, float, int, float]], a: int = 8, k: int = 3) -> np.ndarray:
    """A (1, 4 + k, a) YOLOv8 output; ``rows``: (cx, cy, w, h, class, score) for the first anchors."""
    out = np.zeros((1, 4 + k, a), dtype=np.float32)
    out[0, :4] = np.array([[5, 5, 2, 2]], dtype=np.float32).T  # background anchors: small boxes, score 0
    for j, (cx, cy, w, h, c, s) in enumerate(rows):
        out[0, :4, j] = (cx, cy, w, h)
        out[0, 4 + c, j] = s
    return out


def test_recognise_layouts_from_shapes():
    assert recognise([(84, 8400)]).kind == "yolov8"
    v5 = recognise([(25200, 85)])
    assert (v5.kind, v5.num_classes) == ("yolov5", 80)
    pairs = recognise([(3000, 4), (3000, 91)])
    assert (pairs.kind, pairs.outputs, pairs.num_classes, pairs.box_format) == ("pairs", (0, 1), 91, "xyxy")
    swapped = recognise([(3000, 91), (3000, 4)])
    assert swapped.outputs == (1, 0)
    detr = recognise([(100, 92), (100, 4)], scores="softmax")
    assert (detr.kind, detr.box_format, detr.normalized, detr.scores) == ("queries", "cxcywh", True, "softmax")
    # metadata names fix K: (85, 8400) with 81 names reads as YOLOv8 with 81 classes.
    assert recognise([(85, 8400)], {"names": str({i: f"c{i}" for i in range(81)})}).num_classes == 81


def test_task_detection_from_shapes_and_metadata():
    assert isinstance(detect_task([(84, 2100)]), DetectionTask)
    assert detect_task([(10,)]).name == "classification"
    assert not isinstance(detect_task([(197, 768)]), DetectionTask)  # a token sequence is not a YOLO head
    forced = detect_task([(197, 768)], metadata={"task": "detect"})
    assert isinstance(forced, DetectionTask)
    named = detect_task([(6, 100)], metadata={"names": "{0: 'cat', 1: 'dog'}"})
    assert isinstance(named, DetectionTask) and named.label(1) == "dog"


def test_unreadable_layout_is_one_line_naming_shapes_and_options():
    with pytest.raises(LayoutError) as info:
        detect_task([(3, 7, 7)], "detect")
    msg = str(info.value)
    assert "\n" not in msg and "(N, 3, 7, 7)" in msg and "task=" in msg and "box formats: cxcywh, xyxy, xywh" in msg


def test_bad_options_are_clear_errors():
    with pytest.raises(ArgumentError, match="confidence threshold"):
        DecodeOptions(conf=-0.1)
    with pytest.raises(ArgumentError, match="IoU"):
        DecodeOptions(iou=1.5)
    task = detect_task([(7, 8)], "detect")
    out = [_v8_output([(10, 10, 4, 4, 0, 0.9)])]
    with pytest.raises(ArgumentError, match="detections must be >= 1"):
        task.top_targets(out, 0)
    with pytest.raises(ArgumentError, match="box format"):
        recognise([(7, 8)], box_format="yxyx")


def test_nms_per_class_greedy_by_hand():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 9]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.95])
    classes = np.array([0, 0, 1, 0, 0])
    # box 4 (0.95) suppresses 0 (IoU 0.9) and 1 (IoU 81/(90+100-81) = 0.74); class 1 survives; 3 is apart.
    assert nms(boxes, scores, classes, 0.5, 300).tolist() == [4, 2, 3]
    # IoU of 4 and 1 is 0.74 < 0.8: 1 stays at a higher threshold; 0 (0.9) still goes.
    assert nms(boxes, scores, classes, 0.8, 300).tolist() == [4, 1, 2, 3]
    assert nms(boxes, scores, classes, 0.5, 2).tolist() == [4, 2]


def test_decode_yolov8_boxes_scores_and_conf():
    out = _v8_output([(20, 30, 10, 20, 2, 0.9), (21, 30, 10, 20, 2, 0.6), (50, 50, 8, 8, 1, 0.3),
                      (70, 70, 8, 8, 0, 0.2)])
    task = detect_task([(7, 8)], "detect")
    dets = decode(task.layout, [out], DecodeOptions(conf=0.25, iou=0.45))[0]
    assert [(d.index, d.category) for d in dets] == [(0, 2), (2, 1)]
    assert dets[0].box == (15.0, 20.0, 25.0, 40.0) and abs(dets[0].score - 0.9) < 1e-6
    assert decode(task.layout, [out], DecodeOptions(conf=0.95))[0] == []
    rows = task.predictions([out], 5)[0]
    assert rows[0]["label"] == "2" and rows[0]["box"] == [15.0, 20.0, 25.0, 40.0] and rows[0]["prediction"] == 0
    targets = task.top_targets([out], 5)[0]
    assert len(targets) == 2 and isinstance(targets[0], DetectionScoreTarget)
    assert task.resolve(1, [out])[0].index == 2  # type: ignore[attr-defined]
    with pytest.raises(TargetError, match="has 1 detection"):
        task.resolve(1, [_v8_output([(9, 9, 2, 2, 0, 0.9)])])
    with pytest.raises(TargetError, match="has 0 detection"):
        task.resolve(None, [_v8_output([])])


def test_decode_yolov5_objectness_times_class():
    out = np.zeros((1, 4, 7), dtype=np.float32)  # (A, 5 + K), K = 2
    out[0, 0] = (10, 10, 4, 4, 0.5, 0.9, 0.1)   # score 0.45, class 0
    out[0, 1] = (40, 40, 4, 4, 0.9, 0.2, 0.4)   # score 0.36, class 1
    out[0, 2] = (10, 10, 4, 4, 0.3, 0.9, 0.0)   # 0.27, class 0, overlaps anchor 0 fully: suppressed
    out[0, 3] = (80, 80, 4, 4, 0.2, 0.9, 0.0)   # 0.18 < conf
    layout = recognise([(4, 7)], kind="yolov5")
    dets = decode(layout, [out], DecodeOptions(conf=0.25))[0]
    assert [(d.index, d.category, round(d.score, 4)) for d in dets] == [(0, 0, 0.45), (1, 1, 0.36)]
    target = DetectionScoreTarget(layout, 1, 1)
    seeds = target.seeds([out[0]])[0]
    assert seeds[1, 4] == pytest.approx(0.4) and seeds[1, 6] == pytest.approx(0.9)
    assert np.count_nonzero(seeds) == 2


def test_decode_pairs_normalised_and_sigmoid():
    boxes = np.array([[[0.1, 0.2, 0.5, 0.6], [0.6, 0.6, 0.9, 0.9]]], dtype=np.float32)
    logits = np.array([[[2.0, -3.0], [-4.0, -5.0]]], dtype=np.float32)
    layout = recognise([(2, 4), (2, 2)], kind="pairs", input_size=(100, 200))
    dets = decode(layout, [boxes, logits], DecodeOptions(conf=0.25))[0]
    assert len(dets) == 1 and dets[0].category == 0
    assert dets[0].score == pytest.approx(1 / (1 + np.exp(-2.0)))
    assert np.allclose(dets[0].box, (20, 20, 100, 60))


def test_letterbox_and_box_mapping_back():
    img = np.full((100, 200, 3), 7, dtype=np.uint8)
    pp = get_preset("yolo", (64, 64))
    assert pp.resize_mode == "letterbox" and pp.scale == pytest.approx(1 / 255)
    boxed = geometry(img, (64, 64), "letterbox")
    # 200x100 -> 64x32, centred: rows 16..47 are the image, the rest gray 114.
    assert boxed.shape == (64, 64, 3) and (boxed[16:48] == 7).all() and (boxed[:16] == 114).all()
    assert (boxed[48:] == 114).all()
    region = crop_box((100, 200), (64, 64), "letterbox")
    assert np.allclose(region, (0, -50, 200, 150))
    # The input box around the image content maps onto the whole original image.
    assert np.allclose(to_image_boxes(np.array([0.0, 16.0, 64.0, 48.0]), region, (64, 64)), (0, 0, 200, 100))


def _central_diff(target, outputs: list[np.ndarray], seeds: dict[int, np.ndarray], eps: float = 1e-4) -> float:
    """Largest |seed - central difference| over every output element the seed or score touches."""
    worst = 0.0
    for k, seed in seeds.items():
        base = outputs[k].astype(np.float64)
        for idx in np.argwhere(np.ones_like(base, dtype=bool)):
            idx = tuple(idx)
            hi, lo = base.copy(), base.copy()
            hi[idx] += eps
            lo[idx] -= eps
            up = [hi if j == k else o for j, o in enumerate(outputs)]
            down = [lo if j == k else o for j, o in enumerate(outputs)]
            fd = (target.score(up) - target.score(down)) / (2 * eps)
            worst = max(worst, abs(fd - float(seed[idx])))
    return worst


@pytest.mark.parametrize("kind", ["yolov8", "yolov5", "pairs", "queries"])
def test_detection_targets_seeds_are_their_scores_gradients(kind):
    rng = np.random.default_rng(3)
    a, k = 6, 3
    cxcy = rng.uniform(20, 40, (a, 2))
    wh = rng.uniform(10, 20, (a, 2))
    probs = rng.uniform(0.05, 0.9, (a, k))
    if kind == "yolov8":
        outs = [np.concatenate([cxcy, wh, probs], axis=1).T]
        layout = recognise([(4 + k, a)], kind="yolov8")
    elif kind == "yolov5":
        outs = [np.concatenate([cxcy, wh, rng.uniform(0.2, 0.9, (a, 1)), probs], axis=1)]
        layout = recognise([(a, 5 + k)], kind="yolov5")
    elif kind == "pairs":
        outs = [np.concatenate([cxcy - wh / 2, cxcy + wh / 2], axis=1), rng.normal(0, 1, (a, k))]
        layout = recognise([(a, 4), (a, k)], kind="pairs", normalized=False, scores="sigmoid")
    else:
        outs = [np.concatenate([cxcy, wh], axis=1) / 64, rng.normal(0, 1, (a, k + 1))]
        layout = recognise([(a, 4), (a, k + 1)], kind="queries", scores="softmax", input_size=(64, 64))
    outs = [o.astype(np.float64) for o in outs]
    score_t = DetectionScoreTarget(layout, 2, 1)
    assert _central_diff(score_t, outs, score_t.seeds(outs)) < 1e-6
    box = tuple(float(v) for v in layout.rows(outs)[0][4] + np.array([1.0, -2.0, 3.0, 1.5]))
    drise = DRiseTarget(layout, box, 1)  # type: ignore[arg-type]
    assert _central_diff(drise, outs, drise.seeds(outs)) < 1e-6
    # Vectorised scores over rows agree with the one-image score.
    rows = [np.stack([o, o * 1.01]) for o in outs]
    for t in (score_t, drise):
        assert np.allclose(t.scores(rows), [t.score([r[0] for r in rows]), t.score([r[1] for r in rows])], atol=1e-6)


def test_drise_box_gradient_is_zero_at_its_own_box():
    layout = recognise([(5, 2)], kind="yolov8")
    out = np.array([[20.0, 50.0], [20.0, 50.0], [10.0, 8.0], [12.0, 8.0], [0.8, 0.6]])
    t = DRiseTarget(layout, (15.0, 14.0, 25.0, 26.0), 0)  # prediction 0's own box: IoU peaks at 1
    seeds = t.seeds([out])[0]
    assert np.allclose(seeds[:4, 0], 0.0) and seeds[4, 0] > 0
