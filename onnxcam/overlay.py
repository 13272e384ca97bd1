"""Drawing maps on images: heatmap overlays, boxes, and grids for comparing methods.

All images are RGB; OpenCV's BGR only appears inside these functions.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from onnxcam.errors import ArgumentError, InputError

__all__ = ["COLORMAPS", "DIM_OUTSIDE", "add_caption", "add_colorbar", "box_covers", "colormap_code", "draw_boxes",
           "make_grid", "overlay_on_original", "show_cam_on_image"]

#: Brightness kept outside the region the model saw (center crop), so the cut-off parts stay visible but dimmed.
DIM_OUTSIDE = 0.35

_COLORMAP_NAMES = (
    "autumn", "bone", "jet", "winter", "rainbow", "ocean", "summer", "spring", "cool", "hsv",
    "pink", "hot", "parula", "magma", "inferno", "plasma", "viridis", "cividis", "twilight",
    "twilight_shifted", "turbo", "deepgreen",
)  # fmt: skip

#: Colormap name -> OpenCV constant (those this OpenCV build provides).
COLORMAPS: dict[str, int] = {
    name: getattr(cv2, f"COLORMAP_{name.upper()}")
    for name in _COLORMAP_NAMES
    if hasattr(cv2, f"COLORMAP_{name.upper()}")
}


def colormap_code(name: str) -> int:
    """The OpenCV constant for colormap ``name`` (case-insensitive)."""
    code = COLORMAPS.get(name.lower())
    if code is None:
        raise ArgumentError(f"unknown colormap {name!r}; valid colormaps: {', '.join(COLORMAPS)}")
    return code


def show_cam_on_image(
    img: np.ndarray,
    cam: np.ndarray,
    alpha: float = 0.5,
    colormap: str = "jet",
    normalize: bool = True,
) -> np.ndarray:
    """Blend a colour-mapped ``cam`` over ``img``; returns ``(H, W, 3)`` uint8 RGB.

    ``img``: ``(H, W, 3)`` RGB, float in [0, 1] (uint8 is accepted and divided by 255).
    ``cam``: ``(h, w)`` in [0, 1] (values outside are clipped, NaN -> 0); resized to ``(H, W)``
    with INTER_LINEAR when its size differs.

    Matches pytorch-grad-cam's ``show_cam_on_image(img, cam, use_rgb=True,
    image_weight=1 - alpha)`` bit for bit: ``heat = applyColorMap(uint8(255 * cam)) / 255``
    (BGR -> RGB), ``out = alpha * heat + (1 - alpha) * img``, then (``normalize=True``)
    ``out /= out.max()`` and ``uint8(255 * out)``, truncating. The division by the maximum
    brightens dark images; ``normalize=False`` skips it for a plain blend.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ArgumentError(f"alpha must be in [0, 1], got {alpha}")
    base = _as_float_rgb(img)
    mask = _as_cam(cam, base.shape[:2])
    # astype truncates, as pytorch-grad-cam's np.uint8(...) does.
    heat = cv2.applyColorMap((255 * mask).astype(np.uint8), colormap_code(colormap))
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB).astype(np.float32) / 255
    # The weights are written as pytorch-grad-cam writes them (image_weight = 1 - alpha) so the
    # float rounding, and with it the uint8 truncation, is identical.
    image_weight = 1.0 - alpha
    out = (1 - image_weight) * heat + image_weight * base
    if normalize:
        peak = float(np.max(out))
        if peak > 0:
            out = out / peak
    return (255 * np.clip(out, 0.0, 1.0)).astype(np.uint8)


def _as_float_rgb(img: np.ndarray) -> np.ndarray:
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3:
        shape = getattr(img, "shape", None)
        raise InputError(f"overlay image must be (H, W, 3) RGB, got shape {shape}")
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255
    out = img.astype(np.float32)
    if out.size and (np.nanmax(out) > 1.0 or np.nanmin(out) < 0.0):
        raise InputError(
            f"overlay image must be float in [0, 1] (or uint8), got values in "
            f"[{np.nanmin(out):g}, {np.nanmax(out):g}]; divide by 255 or use image.to_display"
        )
    return out


def _as_cam(cam: np.ndarray, hw: tuple[int, ...]) -> np.ndarray:
    mask = np.asarray(cam, dtype=np.float32)
    if mask.ndim == 3 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.ndim != 2:
        raise InputError(f"cam must be a 2-D (H, W) map, got shape {mask.shape}")
    mask = np.clip(np.nan_to_num(mask, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    if mask.shape != tuple(hw):
        mask = np.asarray(cv2.resize(mask, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR))
    return mask


def _as_uint8_rgb(img: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise InputError(f"{what} must be (H, W, 3) RGB or (H, W) gray, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.size and float(np.nanmax(arr)) <= 1.0:
            arr = np.rint(np.clip(np.nan_to_num(arr), 0, 1) * 255)
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def _ascii(text: str) -> str:
    # cv2.putText's Hershey fonts only have ASCII glyphs; make the loss visible rather than silent.
    return "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in text)


def draw_boxes(
    img: np.ndarray,
    boxes: Sequence[tuple[int, int, int, int] | None],
    color: tuple[int, int, int] = (0, 255, 0),
    labels: Sequence[str] | None = None,
    thickness: int = 2,
) -> np.ndarray:
    """A copy of ``img`` (``(H, W, 3)`` RGB) with ``boxes`` ``(x0, y0, x1, y1)`` drawn.

    ``x1``/``y1`` are exclusive (as ``cam_to_boxes`` returns them); ``None`` boxes are skipped.
    ``color`` is RGB. Labels are drawn above each box, or inside it at the top edge.
    """
    if labels is not None and len(labels) != len(boxes):
        raise ArgumentError(f"draw_boxes got {len(boxes)} boxes but {len(labels)} labels")
    out = _as_uint8_rgb(img, "image").copy()
    rgb = tuple(int(c) for c in color)  # the array is RGB, so the colour is too
    font, scale, text_th = cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1
    for i, box in enumerate(boxes):
        if box is None:
            continue
        x0, y0, x1, y1 = (int(v) for v in box)
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), rgb, thickness)
        if labels is not None and labels[i]:
            text = _ascii(labels[i])
            (_, th), base = cv2.getTextSize(text, font, scale, text_th)
            ty = y0 - base - 1 if y0 - th - base - 1 >= 0 else y0 + th + 1
            cv2.putText(out, text, (x0, ty), font, scale, rgb, text_th, cv2.LINE_AA)
    return out


def make_grid(
    tiles: Sequence[np.ndarray],
    titles: Sequence[str],
    columns: int,
    pad: int = 4,
    background: int = 255,
) -> np.ndarray:
    """Tiles side by side, ``columns`` per row, each under its title; ``(H, W, 3)`` uint8 RGB.

    Cells are as large as the largest tile; smaller tiles sit centred. Titles longer than a cell
    are cut with ``...``; non-ASCII characters show as ``?`` (OpenCV's fonts are ASCII only).
    """
    if not tiles:
        raise ArgumentError("make_grid needs at least one tile")
    if len(titles) != len(tiles):
        raise ArgumentError(f"make_grid got {len(tiles)} tiles but {len(titles)} titles")
    if columns <= 0:
        raise ArgumentError(f"columns must be positive, got {columns}")
    if pad < 0:
        raise ArgumentError(f"pad must be >= 0, got {pad}")
    imgs = [_as_uint8_rgb(t, f"tile {i}") for i, t in enumerate(tiles)]
    cell_h = max(t.shape[0] for t in imgs)
    cell_w = max(t.shape[1] for t in imgs)
    font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1
    (_, text_h), text_base = cv2.getTextSize("Ag", font, scale, thick)
    title_h = text_h + text_base + 2 * pad
    columns = min(columns, len(imgs))
    rows = -(-len(imgs) // columns)
    grid_h = rows * (title_h + cell_h + pad) + pad
    grid_w = columns * (cell_w + pad) + pad
    grid = np.full((grid_h, grid_w, 3), background, dtype=np.uint8)
    ink = (0, 0, 0) if background > 127 else (255, 255, 255)
    for i, (tile, title) in enumerate(zip(imgs, titles, strict=True)):
        r, c = divmod(i, columns)
        top = pad + r * (title_h + cell_h + pad)
        left = pad + c * (cell_w + pad)
        text = _fit_text(_ascii(title), cell_w, font, scale, thick)
        cv2.putText(grid, text, (left, top + pad + text_h), font, scale, ink, thick, cv2.LINE_AA)
        y = top + title_h + (cell_h - tile.shape[0]) // 2
        x = left + (cell_w - tile.shape[1]) // 2
        grid[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
    return grid


def _fit_text(text: str, width: int, font: int, scale: float, thick: int) -> str:
    if cv2.getTextSize(text, font, scale, thick)[0][0] <= width:
        return text
    cut = text
    while cut and cv2.getTextSize(cut + "...", font, scale, thick)[0][0] > width:
        cut = cut[:-1]
    if cut:
        return cut + "..."
    # A cell too narrow for even one letter and the ellipsis (glyph widths differ between OpenCV
    # versions) still shows the title's start.
    while text and cv2.getTextSize(text, font, scale, thick)[0][0] > width:
        text = text[:-1]
    return text


# --------------------------------------------------------------------------- at the original resolution


def overlay_on_original(
    image: np.ndarray,
    cam: np.ndarray,
    region: tuple[float, float, float, float] | None = None,
    alpha: float = 0.5,
    colormap: str = "jet",
) -> np.ndarray:
    """``cam`` (at model-input resolution) blended over the full ``image``; ``(H, W, 3)`` uint8 RGB.

    ``region`` ``(x0, y0, x1, y1)``: the part of ``image`` the model saw (``onnxcam.image.crop_box``;
    None: all of it). The map is resized onto that region only, so it keeps the image's aspect ratio
    whatever the preprocessing stretched; outside the region (a center crop's cut-off borders) the
    image is shown dimmed to ``DIM_OUTSIDE`` and without heat, so nobody reads a map where the model
    saw nothing. Inside, the blend is ``show_cam_on_image``'s (``alpha * heat + (1 - alpha) * image``,
    scaled so its brightest value is 255), computed with OpenCV in one pass over the pixels (overlays
    of photos are megapixels: numpy's float temporaries cost ten times more).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ArgumentError(f"alpha must be in [0, 1], got {alpha}")
    base = _as_uint8_rgb(image, "image")
    h, w = base.shape[:2]
    x0, y0, x1, y1 = region if region is not None else (0.0, 0.0, float(w), float(h))
    px0, py0 = max(0, int(round(x0))), max(0, int(round(y0)))
    px1, py1 = min(w, max(px0 + 1, int(round(x1)))), min(h, max(py0 + 1, int(round(y1))))
    # The map is quantised at its own resolution and resized as uint8: the float map of a photo-sized
    # region would cost more than the rest of the overlay.
    low = (255 * _as_cam(cam, np.asarray(cam).shape[-2:])).astype(np.uint8)
    level = cv2.resize(low, (px1 - px0, py1 - py0), interpolation=cv2.INTER_LINEAR)
    heat = cv2.cvtColor(cv2.applyColorMap(level, colormap_code(colormap)), cv2.COLOR_BGR2RGB)
    inside = np.ascontiguousarray(base[py0:py1, px0:px1])
    blended = cv2.addWeighted(heat, float(alpha), inside, 1.0 - float(alpha), 0.0)
    peak = float(blended.max())
    if region is None or (px0, py0, px1, py1) == (0, 0, w, h):
        out = np.empty_like(base)
    else:
        out = cv2.convertScaleAbs(base, alpha=DIM_OUTSIDE)
    out[py0:py1, px0:px1] = cv2.convertScaleAbs(blended, alpha=255.0 / peak if peak > 0 else 1.0)
    return out


def box_covers(box: tuple[int, int, int, int], hw: tuple[int, int], fraction: float = 0.95) -> bool:
    """Whether ``box`` covers at least ``fraction`` of an ``hw`` map: such a box says nothing about
    where the map is, and drawn on the image it would only look like a frame."""
    area = max(0, box[2] - box[0]) * max(0, box[3] - box[1])
    return area >= fraction * hw[0] * hw[1]


def _font_scale(width: int) -> tuple[float, int]:
    scale = float(np.clip(width / 640, 0.4, 1.6))
    return scale, max(1, int(round(scale * 1.5)))


def add_caption(img: np.ndarray, text: str, background: int = 255) -> np.ndarray:
    """``img`` with a band underneath holding ``text`` (cut with ``...`` when too long); RGB uint8."""
    arr = _as_uint8_rgb(img, "image")
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale, thick = _font_scale(arr.shape[1])
    (_, th), base = cv2.getTextSize("Ag", font, scale, thick)
    pad = max(4, th // 2)
    band = np.full((th + base + 2 * pad, arr.shape[1], 3), background, dtype=np.uint8)
    ink = (0, 0, 0) if background > 127 else (255, 255, 255)
    fitted = _fit_text(_ascii(text), arr.shape[1] - 2 * pad, font, scale, thick)
    cv2.putText(band, fitted, (pad, pad + th), font, scale, ink, thick, cv2.LINE_AA)
    return np.concatenate([arr, band], axis=0)


def add_colorbar(img: np.ndarray, colormap: str = "jet", background: int = 255) -> np.ndarray:
    """``img`` with a vertical colour scale on its right: the map's 0 (bottom) to 1 (top, its maximum)."""
    arr = _as_uint8_rgb(img, "image")
    h = arr.shape[0]
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale, thick = _font_scale(arr.shape[1])
    scale *= 0.8
    (tw, th), base = cv2.getTextSize("1.0", font, scale, thick)
    bar_w = max(8, arr.shape[1] // 40)
    pad = max(4, th // 2)
    top, bottom = pad + th // 2, h - pad - th // 2
    panel = np.full((h, 3 * pad + bar_w + tw, 3), background, dtype=np.uint8)
    if bottom - top >= 2:
        ramp = np.linspace(255, 0, bottom - top).astype(np.uint8)[:, None]
        colours = cv2.cvtColor(cv2.applyColorMap(ramp, colormap_code(colormap)), cv2.COLOR_BGR2RGB)
        panel[top:bottom, pad:pad + bar_w] = colours
    ink = (0, 0, 0) if background > 127 else (255, 255, 255)
    for value, y in (("1.0", top + th // 2), ("0.5", (top + bottom) // 2 + th // 2), ("0.0", bottom + th // 2)):
        cv2.putText(panel, value, (2 * pad + bar_w, min(h - base, y)), font, scale, ink, thick, cv2.LINE_AA)
    return np.concatenate([arr, panel], axis=1)
