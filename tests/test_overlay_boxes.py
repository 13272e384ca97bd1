"""Overlays (exact pixels, parity with pytorch-grad-cam), boxes on images, grids, CAM boxes."""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from onnxcam.boxes import box_iou, cam_to_boxes, scale_box
from onnxcam.errors import ArgumentError, InputError
from onnxcam.overlay import COLORMAPS, colormap_code, draw_boxes, make_grid, show_cam_on_image

# --------------------------------------------------------------------------- overlay


def test_overlay_exact_pixels() -> None:
    img = np.full((2, 2, 3), 0.5, np.float32)
    cam = np.array([[1.0, 0.0], [0.0, 0.0]], np.float32)
    out = show_cam_on_image(img, cam)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    # jet(255) = RGB (128, 0, 0), jet(0) = RGB (0, 0, 128); 0.5 * heat + 0.5 * 0.5
    # -> (0.50098, 0.25, 0.25); divided by the max 0.50098 and truncated: 255, 127, 127.
    assert out[0, 0].tolist() == [255, 127, 127]
    assert out[1, 1].tolist() == [127, 127, 255]
    plain = show_cam_on_image(img, cam, normalize=False)
    assert plain[0, 0].tolist() == [127, 63, 63]  # 255 * 0.50098 = 127.75, 255 * 0.25 = 63.75


def test_overlay_alpha_extremes_and_uint8_input() -> None:
    img = np.full((1, 2, 3), 0.2, np.float32)
    cam = np.array([[1.0, 0.0]], np.float32)
    assert show_cam_on_image(img, cam, alpha=0.0, normalize=False).tolist() == [[[51] * 3] * 2]
    heat_only = show_cam_on_image(img, cam, alpha=1.0, normalize=False)
    assert heat_only.tolist() == [[[128, 0, 0], [0, 0, 128]]]
    u8 = (img * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(show_cam_on_image(u8, cam), show_cam_on_image(img, cam))


def test_overlay_resizes_cam_and_clips() -> None:
    img = np.zeros((4, 6, 3), np.float32)
    cam = np.array([[0.0, 1.0], [0.5, 0.25]], np.float32)
    resized = cv2.resize(cam, (6, 4), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(show_cam_on_image(img, cam), show_cam_on_image(img, resized))
    wild = np.array([[-3.0, np.nan], [7.0, 0.5]], np.float32)
    clipped = np.array([[0.0, 0.0], [1.0, 0.5]], np.float32)
    np.testing.assert_array_equal(show_cam_on_image(img[:2, :2], wild), show_cam_on_image(img[:2, :2], clipped))


def _load_reference() -> Callable[..., np.ndarray]:
    """pytorch-grad-cam's show_cam_on_image, with torchvision (broken here) stubbed out."""
    spec = importlib.util.find_spec("pytorch_grad_cam")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("grad-cam is a test dependency: pip install -e '.[test]'")
    path = Path(next(iter(spec.submodule_search_locations))) / "utils" / "image.py"
    tv = types.ModuleType("torchvision")
    tvt = types.ModuleType("torchvision.transforms")
    for name in ("Compose", "Normalize", "ToTensor"):
        setattr(tvt, name, object)
    tv.transforms = tvt  # type: ignore[attr-defined]
    saved = {k: sys.modules.get(k) for k in ("torchvision", "torchvision.transforms")}
    sys.modules["torchvision"], sys.modules["torchvision.transforms"] = tv, tvt
    try:
        mod_spec = importlib.util.spec_from_file_location("_pgc_image_ref", path)
        assert mod_spec is not None and mod_spec.loader is not None
        mod = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(mod)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    fn: Callable[..., np.ndarray] = mod.show_cam_on_image
    return fn


@pytest.mark.parametrize("alpha", [0.5, 0.3, 0.75])
@pytest.mark.parametrize("cmap", ["jet", "turbo", "viridis"])
def test_overlay_matches_pytorch_grad_cam(alpha: float, cmap: str) -> None:
    ref = _load_reference()
    rng = np.random.default_rng(0)
    img = rng.random((17, 23, 3), dtype=np.float32)
    cam = rng.random((17, 23), dtype=np.float32)
    want = ref(img, cam, use_rgb=True, colormap=colormap_code(cmap), image_weight=1 - alpha)
    np.testing.assert_array_equal(show_cam_on_image(img, cam, alpha=alpha, colormap=cmap), want)


def test_overlay_argument_errors() -> None:
    img = np.zeros((2, 2, 3), np.float32)
    cam = np.zeros((2, 2), np.float32)
    bright = img.copy()
    bright[0, 0, 0] = 255.0
    with pytest.raises(InputError, match=r"float in \[0, 1\].*\[0, 255\]"):
        show_cam_on_image(bright, cam)
    with pytest.raises(ArgumentError, match="alpha"):
        show_cam_on_image(img, cam, alpha=1.5)
    with pytest.raises(InputError, match="2-D"):
        show_cam_on_image(img, np.zeros((2, 2, 2)))
    with pytest.raises(InputError, match=r"\(H, W, 3\)"):
        show_cam_on_image(img[..., 0], cam)


def test_colormaps() -> None:
    for name in ("jet", "turbo", "viridis", "inferno", "magma", "plasma", "hot", "bone"):
        assert name in COLORMAPS
    assert COLORMAPS["jet"] == cv2.COLORMAP_JET and colormap_code("Turbo") == cv2.COLORMAP_TURBO
    with pytest.raises(ArgumentError, match="unknown colormap 'rainbowz'.*jet.*viridis"):
        colormap_code("rainbowz")
    with pytest.raises(ArgumentError):
        show_cam_on_image(np.zeros((1, 1, 3), np.float32), np.zeros((1, 1)), colormap="nope")


# --------------------------------------------------------------------------- draw / grid


def test_draw_boxes_exclusive_end_and_copy() -> None:
    img = np.zeros((10, 10, 3), np.uint8)
    out = draw_boxes(img, [(2, 3, 6, 8), None], color=(255, 0, 0), thickness=1)
    assert img.max() == 0  # input untouched
    red = np.array([255, 0, 0])
    ring = np.zeros((10, 10), bool)
    ring[3, 2:6] = ring[7, 2:6] = ring[3:8, 2] = ring[3:8, 5] = True
    np.testing.assert_array_equal((out == red).all(axis=2), ring)
    assert (out[~ring] == 0).all()


def test_draw_boxes_labels() -> None:
    img = np.zeros((40, 60, 3), np.uint8)
    out = draw_boxes(img, [(10, 20, 50, 38)], color=(0, 255, 0), labels=["cat"], thickness=1)
    assert out[:19, :, 1].max() > 0  # label text above the box
    assert out[:19, :10].max() == 0 and out[:19, :, 0].max() == 0
    with pytest.raises(ArgumentError, match="1 boxes but 2 labels"):
        draw_boxes(img, [(0, 0, 1, 1)], labels=["a", "b"])


def test_make_grid_layout() -> None:
    red = np.zeros((10, 20, 3), np.uint8)
    red[...] = (255, 0, 0)
    small_blue = np.zeros((4, 6, 3), np.uint8)
    small_blue[...] = (0, 0, 255)
    gray = np.full((10, 20), 90, np.uint8)
    pad = 4
    grid = make_grid([red, small_blue, gray], ["Grad-CAM", "ScoreCAM", "Layer"], columns=2, pad=pad)
    (_, th), base = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
    title_h = th + base + 2 * pad
    row_h = title_h + 10 + pad
    assert grid.shape == (pad + 2 * row_h, pad + 2 * (20 + pad), 3)
    top = pad + title_h
    np.testing.assert_array_equal(grid[top : top + 10, pad : pad + 20], red)
    # the smaller tile sits centred in its 10 x 20 cell
    x, y = pad + 20 + pad + 7, top + 3
    np.testing.assert_array_equal(grid[y : y + 4, x : x + 6], small_blue)
    assert (grid[top : top + 3, x : x + 6] == 255).all()
    np.testing.assert_array_equal(grid[row_h + top : row_h + top + 10, pad : pad + 20, 0], gray)
    # title ink in the title band, nothing but background elsewhere in it
    assert grid[pad:top, pad : pad + 20].min() < 128
    assert (grid[:pad] == 255).all()


def test_make_grid_errors_and_clamped_columns() -> None:
    t = np.zeros((3, 3, 3), np.uint8)
    assert make_grid([t], ["a"], columns=5, pad=0).shape[1] == 3
    with pytest.raises(ArgumentError, match="2 tiles but 1 titles"):
        make_grid([t, t], ["a"], 2)
    with pytest.raises(ArgumentError, match="columns"):
        make_grid([t], ["a"], 0)
    with pytest.raises(ArgumentError):
        make_grid([], [], 1)


# --------------------------------------------------------------------------- CAM boxes


def test_single_blob() -> None:
    cam = np.zeros((10, 12), np.float32)
    cam[2:5, 3:7] = 1.0
    assert cam_to_boxes(cam) == (3, 2, 7, 5)


def test_largest_component_wins_and_threshold_moves_it() -> None:
    cam = np.zeros((10, 10), np.float32)
    cam[0:2, 0:2] = 1.0  # 4 px, the peak
    cam[5:8, 6:9] = 0.5  # 9 px, half the peak
    assert cam_to_boxes(cam, 0.2) == (6, 5, 9, 8)
    assert cam_to_boxes(cam, 0.6) == (0, 0, 2, 2)


def test_eight_connectivity() -> None:
    cam = np.zeros((8, 8), np.float32)
    cam[1, 1] = cam[2, 2] = cam[3, 3] = 1.0  # one component only when diagonals connect
    cam[6, 0] = cam[6, 1] = 1.0
    assert cam_to_boxes(cam) == (1, 1, 4, 4)


def test_threshold_is_inclusive_and_ties_go_first() -> None:
    cam = np.array([[1.0, 0.2, 0.1, 0.0, 1.0, 1.0]], np.float32)
    assert cam_to_boxes(cam.astype(np.float64), 0.2) == (0, 0, 2, 1)
    assert cam_to_boxes(cam, 0.5) == (4, 0, 6, 1)
    tie = np.array([[1.0, 0.0, 1.0]])
    assert cam_to_boxes(tie) == (0, 0, 1, 1)


def test_empty_maps_and_batches() -> None:
    assert cam_to_boxes(np.zeros((4, 4))) is None
    assert cam_to_boxes(-np.ones((4, 4))) is None
    nan = np.full((3, 3), np.nan)
    nan[1, 1] = 2.0
    assert cam_to_boxes(nan) == (1, 1, 2, 2)
    batch = np.zeros((3, 5, 5), np.float32)
    batch[0, 1:3, 1:4] = 1
    batch[2] = 1
    assert cam_to_boxes(batch) == [(1, 1, 4, 3), None, (0, 0, 5, 5)]


def test_cam_to_boxes_errors() -> None:
    with pytest.raises(ArgumentError, match="threshold"):
        cam_to_boxes(np.ones((2, 2)), 1.5)
    with pytest.raises(InputError, match=r"\(H, W\) or \(N, H, W\)"):
        cam_to_boxes(np.ones(4))


@pytest.mark.parametrize(
    ("a", "b", "want"),
    [
        ((0, 0, 2, 2), (0, 0, 2, 2), 1.0),
        ((0, 0, 2, 2), (1, 1, 3, 3), 1 / 7),
        ((0, 0, 2, 2), (2, 0, 4, 2), 0.0),
        ((0, 0, 4, 4), (1, 1, 3, 3), 0.25),
        ((0, 0, 0, 0), (0, 0, 0, 0), 0.0),
    ],
)
def test_box_iou(a: Any, b: Any, want: float) -> None:
    assert box_iou(a, b) == pytest.approx(want)
    assert box_iou(b, a) == pytest.approx(want)


def test_box_iou_rejects_inverted() -> None:
    with pytest.raises(ArgumentError, match="box a"):
        box_iou((3, 0, 1, 2), (0, 0, 1, 1))


def test_scale_box() -> None:
    assert scale_box((1, 1, 3, 3), (4, 4), (8, 8)) == (2, 2, 6, 6)
    assert scale_box((1, 1, 3, 3), (3, 3), (4, 4)) == (1, 1, 4, 4)
    assert scale_box((0, 0, 7, 7), (7, 7), (224, 300)) == (0, 0, 300, 224)
