"""Parsing of CLI argument strings into library values."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import TYPE_CHECKING

from onnxcam.errors import ArgumentError

if TYPE_CHECKING:
    import numpy as np

    from onnxcam.image import Preprocess
    from onnxcam.model import Model


def parse_size(text: str) -> tuple[int, int]:
    """``"224x224"`` or ``"224"`` -> (H, W)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX,]\s*(\d+))?\s*", text)
    if not m:
        raise ArgumentError(f"--size {text!r} is not HxW (e.g. 224x224)")
    h = int(m.group(1))
    w = int(m.group(2) or h)
    if h < 1 or w < 1:
        raise ArgumentError(f"--size {text!r} must be positive")
    return h, w


def parse_floats(text: str, n: int, what: str) -> tuple[float, ...]:
    """``"0.485,0.456,0.406"`` -> a tuple of ``n`` floats."""
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise ArgumentError(f"{what} {text!r} must be {n} comma-separated numbers") from None
    if len(values) == 1:
        values = values * n
    if len(values) != n:
        raise ArgumentError(f"{what} {text!r} must be {n} comma-separated numbers")
    return values


def preprocessing(m: Model, preset: str, mean: str, std: str, center_crop: bool,
                  channel_order: str | None = None) -> Preprocess:
    """The --preprocess/--mean/--std/--center-crop/--channel-order options -> the ``Preprocess`` for ``m``.

    The resize is the preset's own (``yolo`` letterboxes) unless --center-crop; a detector's images are
    letterboxed whatever the preset, since its boxes are mapped back through the letterbox.
    """
    from onnxcam.detection import DetectionTask
    from onnxcam.image import get_preset

    resize = "center_crop" if center_crop else "letterbox" if isinstance(m.task, DetectionTask) else None
    pp = get_preset(preset, m.input.size, m.input.layout,
                    mean=parse_floats(mean, 3, "--mean") if mean else None,
                    std=parse_floats(std, 3, "--std") if std else None,
                    resize_mode=resize, channels=m.input.channels)
    return replace(pp, channel_order=channel_order) if channel_order else pp  # type: ignore[arg-type]


def extra_inputs(items: list[str] | None) -> dict[str, np.ndarray]:
    """``--input NAME=VALUE`` (repeatable; VALUE comma-separated numbers) -> fixed values by input name."""
    from onnxcam.graph.inputs import parse_value

    values: dict[str, np.ndarray] = {}
    for item in items or []:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise ArgumentError(f"--input {item!r} is not NAME=VALUE (e.g. --input scale_factor=1,1)")
        values[name.strip()] = parse_value(text)
    return values


def layer_list(text: str) -> str | list[str]:
    """``--layer a,b`` -> ["a", "b"]; a single name (or 'auto') stays a string."""
    return [s.strip() for s in text.split(",") if s.strip()] if "," in text else text.strip()


_ROW = re.compile(r"#(\d+)")


def resolve_layer_arg(m: Model, text: str, flag: str = "--layer") -> str | list[str]:
    """``--layer`` with rows of ``onnxcam layers`` ('#12') replaced by tensor names.

    Only '#12' is a row: a bare 12 stays a name, because exported graphs name tensors with numbers
    and the library matches name suffixes; when no tensor matches it, the error says to write '#12'.
    """
    parts = [s.strip() for s in text.split(",") if s.strip()]
    resolved = [_one_layer(m, part, flag) for part in parts]
    return resolved if "," in text else (resolved[0] if resolved else text.strip())


def _one_layer(m: Model, part: str, flag: str) -> str:
    from onnxcam.errors import LayerNotFoundError

    row = _ROW.fullmatch(part)
    if row is not None:
        layers = m.layers()
        index = int(row.group(1))
        if index >= len(layers):
            raise ArgumentError(f"{flag} {part}: {m.name} has {len(layers)} candidate layers (#0..#{len(layers) - 1});"
                                f" see `onnxcam layers {m.name}`")
        return layers[index].name
    if part.isdigit():
        try:
            m.layer(part)
        except LayerNotFoundError as exc:
            raise LayerNotFoundError(f"{exc}; to pick row {part} of `onnxcam layers`, write {flag} '#{part}'") from None
    return part


def needs_model(text: str) -> bool:
    """Whether ``--layer`` names a row ('#12') that only the model can turn into a tensor name."""
    return any(_ROW.fullmatch(s.strip()) for s in text.split(","))


def class_count(m: Model) -> int | None:
    """Classes in the model's first output (its non-batch size), or None when not static."""
    shape = m.tensor_info(m.outputs[0]).shape or ()
    dims = [d for d in shape[1:] if isinstance(d, int)]
    if len(shape) < 2 or len(dims) != len(shape) - 1:
        return None
    count = 1
    for d in dims:
        count *= d
    return count


def check_top_k(m: Model, top_k: int) -> None:
    """A --top-k above the class count would explain classes that do not exist."""
    k = class_count(m)
    if k is not None and top_k > k:
        raise ArgumentError(f"--top-k {top_k} is more than the {k} classes {m.name} outputs: use --top-k {k} or less")
