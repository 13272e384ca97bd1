"""Image decoding, path expansion and preprocessing presets: exact pixel values."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from onnxcam.errors import ArgumentError, ImageError, InputError, OnnxCamWarning
from onnxcam.image import (
    PRESETS,
    Preprocess,
    crop_box,
    expand_image_paths,
    get_preset,
    load_image,
    preprocess,
    to_display,
)


def _write(path: Path, arr: np.ndarray, ext: str = ".png") -> Path:
    ok, buf = cv2.imencode(ext, arr)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


# --------------------------------------------------------------------------- decoding


def test_bgr_file_loads_as_rgb(tmp_path: Path) -> None:
    bgr = np.zeros((2, 3, 3), np.uint8)
    bgr[0, 0] = (0, 0, 255)  # red in BGR
    bgr[1, 2] = (255, 10, 20)
    img = load_image(_write(tmp_path / "c.png", bgr))
    assert img.shape == (2, 3, 3) and img.dtype == np.uint8
    assert img[0, 0].tolist() == [255, 0, 0]
    assert img[1, 2].tolist() == [20, 10, 255]


def test_grayscale_becomes_three_equal_channels(tmp_path: Path) -> None:
    gray = np.array([[0, 77], [200, 255]], np.uint8)
    img = load_image(_write(tmp_path / "g.png", gray))
    assert img.shape == (2, 2, 3)
    np.testing.assert_array_equal(img, np.repeat(gray[:, :, None], 3, axis=2))


def test_alpha_is_composited_on_white(tmp_path: Path) -> None:
    bgra = np.zeros((1, 3, 4), np.uint8)
    bgra[0, :, :3] = (0, 100, 200)  # RGB (200, 100, 0)
    bgra[0, :, 3] = (0, 255, 128)
    img = load_image(_write(tmp_path / "a.png", bgra))
    assert img[0, 0].tolist() == [255, 255, 255]  # fully transparent -> white
    assert img[0, 1].tolist() == [200, 100, 0]  # opaque -> colour
    # 128/255 opaque: c * a + 255 * (1 - a) = 227.39, 177.20, 127.00
    assert img[0, 2].tolist() == [227, 177, 127]


def test_gray_alpha_png(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.array([[[100, 0], [100, 255]]], np.uint8), "LA").save(buf, "PNG")
    (tmp_path / "la.png").write_bytes(buf.getvalue())
    img = load_image(tmp_path / "la.png")
    assert img.tolist() == [[[255, 255, 255], [100, 100, 100]]]


def test_16bit_is_scaled_to_8bit(tmp_path: Path) -> None:
    v = np.array([[0, 257 * 100, 65535, 300, 32896]], np.uint16)
    img = load_image(_write(tmp_path / "d.png", v))
    assert img[0, :, 0].tolist() == [0, 100, 255, 1, 128]
    assert (img[..., 0] == img[..., 2]).all()


def test_16bit_rgba(tmp_path: Path) -> None:
    bgra = np.array([[[0, 0, 65535, 65535], [65535, 0, 0, 0]]], np.uint16)
    img = load_image(_write(tmp_path / "d4.png", bgra))
    assert img.tolist() == [[[255, 0, 0], [255, 255, 255]]]


def test_float_tiff(tmp_path: Path) -> None:
    arr = np.array([[[0.0, 0.5, 1.0], [2.0, -1.0, 0.25]]], np.float32)  # BGR
    img = load_image(_write(tmp_path / "f.tiff", arr, ".tiff"))
    # RGB (0.25, -1 -> 0, 2 -> 1) * 255, rounded
    assert img.tolist() == [[[255, 128, 0], [64, 0, 255]]]


def test_jpeg_exif_orientation_applied(tmp_path: Path) -> None:
    # 2 rows x 4 columns, stored with orientation 6 (rotate 90 degrees clockwise to view).
    arr = np.zeros((16, 32, 3), np.uint8)
    arr[:, :16] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", exif=exif, quality=95)
    (tmp_path / "r.jpg").write_bytes(buf.getvalue())
    img = load_image(tmp_path / "r.jpg")
    assert img.shape == (32, 16, 3)
    # After a clockwise turn the left half (red) is on top.
    assert img[2, 8, 0] > 200 and img[29, 8, 0] < 50


def test_non_ascii_path(tmp_path: Path) -> None:
    d = tmp_path / "bilder_猫"
    d.mkdir()
    p = _write(d / "kätze é.png", np.full((3, 2, 3), 9, np.uint8))
    assert load_image(p).shape == (3, 2, 3)
    assert expand_image_paths([str(d)]) == [p]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"nope\.png.*does not exist"):
        load_image(tmp_path / "nope.png")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="is a folder"):
        load_image(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "e.png").write_bytes(b"")
    with pytest.raises(ImageError, match=r"e\.png.*empty \(0 bytes\)"):
        load_image(tmp_path / "e.png")


@pytest.mark.parametrize("data", [b"not an image at all", None])
def test_undecodable(tmp_path: Path, data: bytes | None) -> None:
    if data is None:  # a PNG cut in half
        ok, buf = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (40, 40, 3), np.uint8))
        data = buf.tobytes()[: len(buf) // 2]
    (tmp_path / "bad.png").write_bytes(data)
    with pytest.raises(ImageError, match=r"cannot decode image file .*bad\.png.*corrupt"):
        load_image(tmp_path / "bad.png")


def test_image_error_is_input_error() -> None:
    assert issubclass(ImageError, InputError) and ImageError.exit_code == 5


def test_pixel_limit_refuses(tmp_path: Path) -> None:
    p = _write(tmp_path / "big.png", np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(ImageError, match=r"100x100 = 0\.0 megapixels, above the limit of 0\.005"):
        load_image(p, max_pixels=5000)
    assert load_image(p, max_pixels=10000).shape == (100, 100, 3)


def test_pixel_limit_downscales_with_warning(tmp_path: Path) -> None:
    arr = np.zeros((100, 200, 3), np.uint8)
    arr[:, 100:] = 200
    p = _write(tmp_path / "big.png", arr)
    with pytest.warns(OnnxCamWarning, match="downscaled to 100x50"):
        img = load_image(p, max_pixels=5000, downscale=True)
    assert img.shape == (50, 100, 3)
    assert img[:, :49].max() == 0 and img[:, 51:].min() == 200


# --------------------------------------------------------------------------- paths


def test_expand_folder_sorted_image_only(tmp_path: Path) -> None:
    px = np.zeros((1, 1, 3), np.uint8)
    for name in ["b.png", "a.jpg", "C.PNG", ".hidden.png"]:
        _write(tmp_path / name, px, ".png")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "sub" / "deep.png", px)
    got = expand_image_paths([str(tmp_path)])
    assert [p.name for p in got] == ["C.PNG", "a.jpg", "b.png"]


def test_expand_files_globs_and_dedupe(tmp_path: Path) -> None:
    px = np.zeros((1, 1, 3), np.uint8)
    a = _write(tmp_path / "a.png", px)
    b = _write(tmp_path / "b.png", px)
    txt = tmp_path / "x.txt"
    txt.write_text("x")
    got = expand_image_paths([str(b), str(tmp_path / "*.png"), str(txt)])
    assert got == [b, a, txt]  # explicit files kept whatever the extension; b not repeated


def test_expand_errors_name_the_item(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ImageError, match=r"glob pattern .*\*\.jpg.* matched nothing"):
        expand_image_paths([str(tmp_path / "*.jpg")])
    with pytest.raises(ImageError, match=r"\*\.txt.*1 file\(s\), none with an image extension"):
        expand_image_paths([str(tmp_path / "*.txt")])
    with pytest.raises(ImageError, match=r"holds no image files"):
        expand_image_paths([str(tmp_path)])
    with pytest.raises(ImageError, match=r"ghost\.png.*not an existing file"):
        expand_image_paths([str(tmp_path / "ghost.png")])
    with pytest.raises(ArgumentError):
        expand_image_paths([])


# --------------------------------------------------------------------------- presets


IMG = np.array([[[255, 0, 128], [10, 20, 30]], [[51, 102, 153], [0, 255, 255]]], np.uint8)


def test_imagenet_values() -> None:
    x = preprocess([IMG], get_preset("imagenet", (2, 2)))
    assert x.shape == (1, 3, 2, 2) and x.dtype == np.float32
    np.testing.assert_allclose(
        x[0, :, 0, 0],
        [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225],
        rtol=1e-6,
    )
    np.testing.assert_allclose(x[0, 0, 0, 0], 2.2489083, rtol=1e-6)


def test_tf_unit_raw_values() -> None:
    tf = preprocess([IMG], get_preset("tf", (2, 2)))
    np.testing.assert_allclose(tf[0, :, 0, 0], [1.0, -1.0, 128 / 127.5 - 1], atol=1e-6)
    np.testing.assert_allclose(tf[0, :, 1, 0], [-0.6, -0.2, 0.2], atol=1e-6)
    unit = preprocess([IMG], get_preset("unit", (2, 2)))
    np.testing.assert_allclose(unit[0, :, 1, 0], [0.2, 0.4, 0.6], atol=1e-7)
    raw = preprocess([IMG], get_preset("raw", (2, 2)))
    np.testing.assert_array_equal(raw[0].transpose(1, 2, 0), IMG.astype(np.float32))


def test_caffe_is_bgr_mean_subtracted() -> None:
    x = preprocess([IMG], get_preset("caffe", (2, 2)))
    # pixel RGB (10, 20, 30) -> BGR (30, 20, 10) minus BGR means
    np.testing.assert_allclose(x[0, :, 0, 1], [30 - 103.939, 20 - 116.779, 10 - 123.68], rtol=1e-6)


def test_nhwc_layout_and_batch() -> None:
    pp_c = get_preset("imagenet", (2, 2), "NCHW")
    pp_h = get_preset("imagenet", (2, 2), "NHWC")
    imgs = [IMG, IMG[::-1].copy()]
    c, h = preprocess(imgs, pp_c), preprocess(imgs, pp_h)
    assert c.shape == (2, 3, 2, 2) and h.shape == (2, 2, 2, 3)
    np.testing.assert_array_equal(c.transpose(0, 2, 3, 1), h)
    np.testing.assert_array_equal(c[1, :, 0, 0], c[0, :, 1, 0])


def test_mean_std_override() -> None:
    pp = get_preset("unit", (2, 2), mean=[0.5, 0.5, 0.5], std=[0.5, 0.25, 2])
    x = preprocess([IMG], pp)
    np.testing.assert_allclose(x[0, :, 1, 0], [(0.2 - 0.5) / 0.5, (0.4 - 0.5) / 0.25, 0.05], atol=1e-6)
    with pytest.raises(ArgumentError, match="mean needs 3 values"):
        get_preset("unit", (2, 2), mean=[0.5])
    with pytest.raises(ArgumentError, match="non-zero"):
        get_preset("unit", (2, 2), std=[1, 0, 1])


def test_unknown_preset_lists_names() -> None:
    with pytest.raises(ArgumentError, match="unknown preprocessing preset 'torch'") as e:
        get_preset("torch", (2, 2))
    for name in PRESETS:
        assert name in str(e.value)
    with pytest.raises(ArgumentError, match="layout"):
        get_preset("unit", (2, 2), "CHW")
    with pytest.raises(ArgumentError, match="size"):
        get_preset("unit", (0, 2))


def test_preset_is_frozen() -> None:
    pp = get_preset("imagenet", (3, 4))
    assert isinstance(pp, Preprocess) and pp.size == (3, 4)
    with pytest.raises(AttributeError):
        pp.scale = 2.0  # type: ignore[misc]


def test_preprocess_rejects_bad_images() -> None:
    pp = get_preset("unit", (2, 2))
    with pytest.raises(InputError, match=r"image 1 must be a \(H, W, 3\) uint8"):
        preprocess([IMG, IMG.astype(np.float32)], pp)
    with pytest.raises(InputError):
        preprocess([], pp)


# --------------------------------------------------------------------------- geometry


def _banded() -> np.ndarray:
    """100 x 200: red left quarter, green middle half, blue right quarter."""
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, :50] = (255, 0, 0)
    img[:, 50:150] = (0, 255, 0)
    img[:, 150:] = (0, 0, 255)
    return img


def test_stretch_keeps_whole_image() -> None:
    x = preprocess([_banded()], get_preset("raw", (50, 50), "NHWC"))[0]
    np.testing.assert_array_equal(x, cv2.resize(_banded(), (50, 50), interpolation=cv2.INTER_LINEAR))
    assert x[25, 2].tolist() == [255, 0, 0] and x[25, 47].tolist() == [0, 0, 255]


def test_center_crop_cuts_sides() -> None:
    pp = get_preset("raw", (50, 50), "NHWC", resize_mode="center_crop", crop_fraction=1.0)
    x = preprocess([_banded()], pp)[0]
    assert x.shape == (50, 50, 3)
    assert (x == np.array([0, 255, 0], np.float32)).all()  # only the green middle survives
    assert crop_box((100, 200), (50, 50), "center_crop", 1.0) == (50.0, 0.0, 150.0, 100.0)


def test_center_crop_matches_resize256_crop224() -> None:
    assert crop_box((256, 256), (224, 224), "center_crop", 0.875) == (16.0, 16.0, 240.0, 240.0)
    img = np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    pp = get_preset("raw", (224, 224), "NHWC", resize_mode="center_crop")
    np.testing.assert_array_equal(preprocess([img], pp)[0], img[16:240, 16:240])


def test_to_display_matches_preprocess_geometry() -> None:
    img = np.random.default_rng(2).integers(0, 256, (37, 61, 3), dtype=np.uint8)
    for mode in ("stretch", "center_crop"):
        pp = get_preset("unit", (20, 24), "NHWC", resize_mode=mode)
        disp = to_display(img, pp)
        assert disp.dtype == np.float32 and disp.shape == (20, 24, 3)
        np.testing.assert_allclose(disp, preprocess([img], pp)[0], atol=1e-7)
        assert 0.0 <= disp.min() and disp.max() <= 1.0
    np.testing.assert_allclose(to_display(img, (20, 24)), cv2.resize(img, (24, 20)).astype(np.float32) / 255, atol=1e-7)
