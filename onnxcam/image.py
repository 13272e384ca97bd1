"""Reading image files and turning them into model input tensors.

Decoding goes through ``cv2.imdecode`` on the file's bytes rather than ``cv2.imread`` because
``imread`` cannot open paths with non-ASCII characters on Windows. Every image comes out as
``(H, W, 3)`` uint8 RGB, whatever the file held (grayscale, alpha, 16-bit, float).
"""

from __future__ import annotations

import glob
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from onnxcam.errors import ArgumentError, ImageError, InputError, OnnxCamWarning

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "PRESETS",
    "Preprocess",
    "crop_box",
    "expand_image_paths",
    "geometry",
    "get_preset",
    "load_image",
    "preprocess",
    "to_display",
]

DEFAULT_MAX_PIXELS = 50_000_000

#: Extensions OpenCV's decoders handle (lower case). Folder listings and globs keep only these.
IMAGE_EXTENSIONS = frozenset(
    {
        ".bmp", ".dib", ".jpeg", ".jpg", ".jpe", ".jp2", ".png", ".webp", ".avif",
        ".pbm", ".pgm", ".ppm", ".pxm", ".pnm", ".pfm", ".sr", ".ras", ".tiff", ".tif",
        ".exr", ".hdr", ".pic",
    }
)  # fmt: skip

_JPEG_MAGIC = b"\xff\xd8\xff"

ChannelOrder = Literal["RGB", "BGR"]
Layout = Literal["NCHW", "NHWC"]
ResizeMode = Literal["stretch", "center_crop", "letterbox"]


# --------------------------------------------------------------------------- loading


def load_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, downscale: bool = False) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB.

    - grayscale -> the gray value copied to R, G and B;
    - alpha -> composited on a white background (transparent pixels become white, the way
      viewers show them; dropping alpha would expose arbitrary colour under transparent areas);
    - 16-bit -> ``round(v / 257)`` so 65535 maps to 255; float images (EXR/HDR/TIFF) are taken
      as [0, 1] and clipped;
    - JPEG EXIF orientation is applied (the image is shown upright, as viewers do).

    Images above ``max_pixels`` (width * height) raise ``ImageError``, or with ``downscale=True``
    are shrunk (INTER_AREA, aspect kept) to fit, with an ``OnnxCamWarning``. The check runs after
    decoding; OpenCV's own 2**30 pixel cap guards the decoder against decompression bombs.
    """
    p = Path(path)
    if max_pixels <= 0:
        raise ArgumentError(f"max_pixels must be positive, got {max_pixels}")
    if not p.exists():
        raise ImageError(f"image file {str(p)!r} does not exist; check the path and spelling")
    if p.is_dir():
        raise ImageError(
            f"{str(p)!r} is a folder, not an image file; pass the folder to "
            "expand_image_paths (the CLI accepts folders) or name an image inside it"
        )
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read image file {str(p)!r}: {exc.strerror or exc}; check its permissions") from exc
    if not data:
        raise ImageError(f"image file {str(p)!r} is empty (0 bytes); re-export or re-download it")

    buf = np.frombuffer(data, dtype=np.uint8)
    # JPEG has no alpha and no 16-bit in practice, and IMREAD_UNCHANGED would ignore its EXIF
    # orientation, so JPEGs go through IMREAD_COLOR; everything else keeps depth and alpha.
    flags = cv2.IMREAD_COLOR if data[:3] == _JPEG_MAGIC else cv2.IMREAD_UNCHANGED
    try:
        raw = cv2.imdecode(buf, flags)
    except cv2.error as exc:
        raise ImageError(
            f"cannot decode image file {str(p)!r}: {str(exc).strip()}; it may be corrupt or too large"
        ) from exc
    if raw is None or raw.size == 0:
        raise ImageError(
            f"cannot decode image file {str(p)!r}: not an image format OpenCV reads "
            f"(supported: {', '.join(sorted(IMAGE_EXTENSIONS))}) or the file is corrupt/truncated"
        )
    if not downscale:
        # Refuse before the RGB/float conversion, which would multiply an oversized image's memory.
        _limit_pixels(raw, p, max_pixels, downscale)
    rgb = _to_rgb_uint8(raw, p)
    return _limit_pixels(rgb, p, max_pixels, downscale)


def _to_rgb_uint8(raw: np.ndarray, p: Path) -> np.ndarray:
    """``(H, W[, C])`` OpenCV BGR(A)/gray of any supported depth -> ``(H, W, 3)`` uint8 RGB."""
    img = _to_float01(raw, p) if raw.dtype != np.uint8 else raw
    if img.ndim == 2:
        img = img[:, :, None]
    channels = img.shape[2]
    if channels == 1:
        color, alpha = np.repeat(img, 3, axis=2), None
    elif channels == 2:  # gray + alpha
        color, alpha = np.repeat(img[:, :, :1], 3, axis=2), img[:, :, 1:2]
    elif channels == 3:
        if img.dtype == np.uint8:  # the common case: one native conversion, no strided copy
            return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        color, alpha = img[:, :, ::-1], None
    elif channels == 4:
        color, alpha = img[:, :, 2::-1], img[:, :, 3:4]
    else:
        raise ImageError(
            f"image file {str(p)!r} has {channels} channels; only gray, gray+alpha, "
            "RGB and RGBA images are supported; convert it to RGB"
        )
    if alpha is not None:
        full = 255.0 if img.dtype == np.uint8 else 1.0
        a = alpha.astype(np.float32) / full
        color = color.astype(np.float32) * a + full * (1.0 - a)
    if color.dtype != np.uint8:
        scale = 255.0 if img.dtype != np.uint8 else 1.0
        color = np.clip(np.rint(color * scale), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(color)


def _to_float01(raw: np.ndarray, p: Path) -> np.ndarray:
    """Non-uint8 decoded data -> float32 in [0, 1] (values kept exact for 16-bit: v / 65535)."""
    if raw.dtype == np.uint16:
        return raw.astype(np.float32) / 65535.0
    if raw.dtype in (np.float32, np.float64):
        return np.clip(np.nan_to_num(raw.astype(np.float32)), 0.0, 1.0)
    raise ImageError(
        f"image file {str(p)!r} has pixel type {raw.dtype}; only 8-bit, 16-bit and float "
        "images are supported; convert it to 8-bit PNG or JPEG"
    )


def _limit_pixels(img: np.ndarray, p: Path, max_pixels: int, downscale: bool) -> np.ndarray:
    h, w = img.shape[:2]
    if h * w <= max_pixels:
        return img
    mp = h * w / 1e6
    limit = max_pixels / 1e6
    if not downscale:
        raise ImageError(
            f"image file {str(p)!r} is {w}x{h} = {mp:.1f} megapixels, above the limit of "
            f"{limit:g} megapixels; shrink it, raise the pixel limit, or enable downscaling"
        )
    factor = math.sqrt(max_pixels / (h * w))
    new_w, new_h = max(1, int(w * factor)), max(1, int(h * factor))
    warnings.warn(
        f"image {str(p)!r} is {w}x{h} = {mp:.1f} megapixels, above the limit of {limit:g}; "
        f"downscaled to {new_w}x{new_h}",
        OnnxCamWarning,
        stacklevel=3,
    )
    return cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_AREA)


# --------------------------------------------------------------------------- paths


def expand_image_paths(items: Sequence[str | Path]) -> list[Path]:
    """Turn CLI-style items into image file paths, in a stable order.

    - an existing file is kept as given, whatever its extension (decoding will judge it);
    - a folder contributes its image files (extensions in ``IMAGE_EXTENSIONS``, any case),
      non-recursively, sorted by name; dot-files (e.g. macOS ``._x.jpg``) are skipped;
    - anything else containing ``*``, ``?`` or ``[`` is a glob; its matching image files, sorted.
    Duplicates are dropped (first occurrence wins). ``ImageError`` names the item that yields
    nothing.
    """
    if not items:
        raise ArgumentError("no input images given; pass image files, folders or glob patterns")
    out: list[Path] = []
    seen: set[Path] = set()
    for item in items:
        for path in _expand_one(str(item)):
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                out.append(path)
    return out


def is_image_name(path: Path) -> bool:
    """An image by its extension, and not a hidden file (editors' and macOS's ``._`` companions)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _expand_one(item: str) -> list[Path]:
    p = Path(item)
    if p.is_file():
        return [p]
    if p.is_dir():
        found = sorted((c for c in p.iterdir() if c.is_file() and is_image_name(c)), key=str)
        if not found:
            raise ImageError(
                f"folder {item!r} holds no image files (looked for "
                f"{', '.join(sorted(IMAGE_EXTENSIONS))}; subfolders are not searched)"
            )
        return found
    if any(ch in item for ch in "*?["):
        matches = [Path(m) for m in sorted(glob.glob(item))]
        files = [m for m in matches if m.is_file()]
        images = [m for m in files if is_image_name(m)]
        if not images:
            detail = f"it matched {len(files)} file(s), none with an image extension" if files else "it matched nothing"
            raise ImageError(f"glob pattern {item!r} found no image files: {detail}")
        return images
    raise ImageError(f"input {item!r} is not an existing file or folder, and not a glob pattern; check the path")


# --------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class Preprocess:
    """How RGB uint8 images become the model's input tensor.

    Per pixel: ``(value * scale - mean[c]) / std[c]``, where ``value`` is 0..255 and channels are
    first put in ``channel_order`` (``mean``/``std`` are given in that order). Geometry: with
    ``resize_mode="stretch"`` the image is resized to ``size`` without keeping the aspect ratio
    (what most exported classifiers' eval pipelines expect at a fixed input size); with
    ``"center_crop"`` it is scaled (aspect kept) so its shorter side covers ``size / crop_fraction``
    and the central ``size`` is cut out (torchvision's Resize(256) + CenterCrop(224) for 0.875); with
    ``"letterbox"`` it is scaled (aspect kept) to fit inside ``size`` and centred on gray (114)
    padding, as ultralytics' YOLO exports expect.

    ``channels``: what the model takes. 1: the image's luma (BT.601: 0.299 R + 0.587 G + 0.114 B),
    normalised with ``mean[0]``/``std[0]``; 4: RGB plus an opaque alpha (255, scaled by ``scale``
    only: ``load_image`` has already composited any transparency); 3: RGB (or BGR).
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: float
    channel_order: ChannelOrder = "RGB"
    layout: Layout = "NCHW"
    size: tuple[int, int] = (224, 224)  # (H, W)
    resize_mode: ResizeMode = "stretch"
    crop_fraction: float = 0.875
    channels: int = 3


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

#: Named presets; ``size``/``layout`` here are placeholders that ``get_preset`` replaces.
PRESETS: dict[str, Preprocess] = {
    "imagenet": Preprocess(mean=_IMAGENET_MEAN, std=_IMAGENET_STD, scale=1 / 255),
    "tf": Preprocess(mean=(1.0, 1.0, 1.0), std=(1.0, 1.0, 1.0), scale=1 / 127.5),
    "unit": Preprocess(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), scale=1 / 255),
    # Keras/Caffe "caffe" mode: BGR, ImageNet means in BGR order, no scaling.
    "caffe": Preprocess(mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0), scale=1.0, channel_order="BGR"),
    "raw": Preprocess(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), scale=1.0),
    # ultralytics YOLO: letterbox to the model size on gray 114, RGB, / 255.
    "yolo": Preprocess(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), scale=1 / 255, resize_mode="letterbox"),
}
LETTERBOX_PAD = 114


def get_preset(
    name: str,
    size: tuple[int, int],
    layout: str = "NCHW",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    *,
    resize_mode: str | None = None,
    crop_fraction: float = 0.875,
    channels: int = 3,
) -> Preprocess:
    """The preset ``name`` for an input of ``size`` ``(H, W)``, ``layout`` and ``channels`` (1, 3 or 4);
    mean/std override.

    ``resize_mode``: None keeps the preset's own (``letterbox`` for ``yolo``, else ``stretch``).
    """
    key = name.lower()
    if key not in PRESETS:
        raise ArgumentError(f"unknown preprocessing preset {name!r}; valid presets: {', '.join(PRESETS)}")
    if layout not in ("NCHW", "NHWC"):
        raise ArgumentError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    if resize_mode is not None and resize_mode not in ("stretch", "center_crop", "letterbox"):
        raise ArgumentError(f"resize_mode must be 'stretch', 'center_crop' or 'letterbox', got {resize_mode!r}")
    if not 0.0 < crop_fraction <= 1.0:
        raise ArgumentError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    if len(size) != 2 or any(int(s) != s or s <= 0 for s in size):
        raise ArgumentError(f"size must be two positive integers (H, W), got {tuple(size)}")
    if channels not in (1, 3, 4):
        raise ArgumentError(f"onnxcam makes 1-, 3- or 4-channel inputs from images, the model takes {channels}")
    base = PRESETS[key]
    resize_mode = base.resize_mode if resize_mode is None else resize_mode
    return replace(
        base,
        size=(int(size[0]), int(size[1])),
        layout=layout,  # type: ignore[arg-type]  # checked above
        mean=_triple("mean", mean) if mean is not None else base.mean,
        std=_triple("std", std, nonzero=True) if std is not None else base.std,
        resize_mode=resize_mode,  # type: ignore[arg-type]  # checked above
        crop_fraction=crop_fraction,
        channels=channels,
    )


def _triple(what: str, values: Sequence[float], nonzero: bool = False) -> tuple[float, float, float]:
    vals = tuple(float(v) for v in values)
    if len(vals) != 3:
        raise ArgumentError(f"{what} needs 3 values (one per channel), got {len(vals)}: {vals}")
    if nonzero and any(v == 0 for v in vals):
        raise ArgumentError(f"{what} values must be non-zero, got {vals}")
    return vals  # type: ignore[return-value]  # length checked above


def _crop_plan(hw: tuple[int, int], size: tuple[int, int], crop_fraction: float) -> tuple[int, int, int, int]:
    """``(new_h, new_w, y0, x0)``: resize ``hw`` to ``(new_h, new_w)``, crop ``size`` at y0, x0."""
    h, w = hw
    out_h, out_w = size
    scale = max(out_h / crop_fraction / h, out_w / crop_fraction / w)
    # max(): rounding must never leave the resized image a pixel short of the crop.
    new_h, new_w = max(round(h * scale), out_h), max(round(w * scale), out_w)
    return new_h, new_w, (new_h - out_h) // 2, (new_w - out_w) // 2


def _letterbox_plan(hw: tuple[int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(new_h, new_w, top, left)``: ultralytics' LetterBox (auto=False, centred) for ``hw`` into ``size``."""
    h, w = hw
    r = min(size[0] / h, size[1] / w)
    new_w, new_h = int(round(w * r)), int(round(h * r))
    dw, dh = (size[1] - new_w) / 2, (size[0] - new_h) / 2
    return new_h, new_w, int(round(dh - 0.1)), int(round(dw - 0.1))


def crop_box(
    hw: tuple[int, int],
    size: tuple[int, int],
    resize_mode: str = "stretch",
    crop_fraction: float = 0.875,
) -> tuple[float, float, float, float]:
    """The region ``(x0, y0, x1, y1)`` of an ``hw`` image that ``geometry`` maps onto ``size``.

    Lets a map computed at input resolution be placed back on the original image.
    """
    h, w = hw
    if resize_mode == "stretch":
        return (0.0, 0.0, float(w), float(h))
    if resize_mode == "letterbox":
        new_h, new_w, top, left = _letterbox_plan(hw, size)
        sy, sx = h / new_h, w / new_w
        return (-left * sx, -top * sy, (size[1] - left) * sx, (size[0] - top) * sy)
    new_h, new_w, y0, x0 = _crop_plan(hw, size, crop_fraction)
    sy, sx = h / new_h, w / new_w
    return (x0 * sx, y0 * sy, (x0 + size[1]) * sx, (y0 + size[0]) * sy)


def geometry(
    image: np.ndarray,
    size: tuple[int, int],
    resize_mode: str = "stretch",
    crop_fraction: float = 0.875,
) -> np.ndarray:
    """Resize (and crop) ``(H, W, C)`` ``image`` to ``size`` ``(h, w)`` with cv2 INTER_LINEAR."""
    out_h, out_w = size
    if resize_mode == "stretch":
        if image.shape[:2] == (out_h, out_w):
            return image
        return cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    if resize_mode == "letterbox":
        new_h, new_w, top, left = _letterbox_plan(image.shape[:2], size)
        resized = image if image.shape[:2] == (new_h, new_w) else cv2.resize(
            image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        out = np.full((out_h, out_w) + image.shape[2:], LETTERBOX_PAD, dtype=image.dtype)
        out[top:top + new_h, left:left + new_w] = resized
        return out
    if resize_mode != "center_crop":
        raise ArgumentError(f"resize_mode must be 'stretch', 'center_crop' or 'letterbox', got {resize_mode!r}")
    new_h, new_w, y0, x0 = _crop_plan(image.shape[:2], size, crop_fraction)
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return resized[y0 : y0 + out_h, x0 : x0 + out_w]


def _check_rgb_uint8(image: np.ndarray, what: str) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or (image.shape[2] != 3):
        desc = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise InputError(f"{what} must be a (H, W, 3) uint8 RGB array, got {desc}; load it with load_image")


def preprocess(images: Sequence[np.ndarray], pp: Preprocess) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` images -> float32 ``(N, C, h, w)`` (NCHW) or ``(N, h, w, C)``, ``C = pp.channels``."""
    if len(images) == 0:
        raise InputError("preprocess got no images; pass at least one (H, W, 3) uint8 array")
    out_h, out_w = pp.size
    batch = np.empty((len(images), out_h, out_w, 3), dtype=np.float32)
    for i, img in enumerate(images):
        _check_rgb_uint8(img, f"image {i}")
        batch[i] = geometry(img, pp.size, pp.resize_mode, pp.crop_fraction)
    if pp.channel_order == "BGR":
        batch = batch[..., ::-1]
    mean = np.asarray(pp.mean, dtype=np.float32)
    std = np.asarray(pp.std, dtype=np.float32)
    if pp.channels == 1:
        # Luma from RGB whatever channel_order says: the weights belong to the colours, not the positions.
        rgb = batch[..., ::-1] if pp.channel_order == "BGR" else batch
        gray = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        batch = ((gray * np.float32(pp.scale) - mean[0]) / std[0])[..., None]
    else:
        batch = (batch * np.float32(pp.scale) - mean) / std
        if pp.channels == 4:
            alpha = np.full(batch.shape[:3] + (1,), 255 * pp.scale, dtype=np.float32)
            batch = np.concatenate([batch, alpha], axis=3)
    if pp.layout == "NCHW":
        batch = batch.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(batch, dtype=np.float32)


def to_display(
    image: np.ndarray,
    size: tuple[int, int] | Preprocess,
    resize_mode: str = "stretch",
    crop_fraction: float = 0.875,
) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB -> float32 ``(h, w, 3)`` in [0, 1], geometrically as ``preprocess``.

    Pass the ``Preprocess`` itself as ``size`` to reuse its size, resize mode and crop fraction,
    so an overlay lines up pixel for pixel with what the model saw.
    """
    if isinstance(size, Preprocess):
        resize_mode, crop_fraction, size = size.resize_mode, size.crop_fraction, size.size
    _check_rgb_uint8(image, "image")
    return geometry(image, size, resize_mode, crop_fraction).astype(np.float32) / np.float32(255)
