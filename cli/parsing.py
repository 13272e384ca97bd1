"""Parsing of CLI argument strings into library values."""

from __future__ import annotations

import re

import numpy as np

from onnxcam.errors import ArgumentError
from onnxcam.graph.inputs import parse_value
from onnxcam.image import Preprocess, get_preset
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


def preprocessing(m: Model, preset: str, mean: str, std: str, center_crop: bool) -> Preprocess:
    """The --preprocess/--mean/--std/--center-crop options -> the ``Preprocess`` for model ``m``."""
    return get_preset(preset, m.input.size, m.input.layout,
                      mean=parse_floats(mean, 3, "--mean") if mean else None,
                      std=parse_floats(std, 3, "--std") if std else None,
                      resize_mode="center_crop" if center_crop else "stretch", channels=m.input.channels)


def extra_inputs(items: list[str] | None) -> dict[str, np.ndarray]:
    """``--input NAME=VALUE`` (repeatable; VALUE comma-separated numbers) -> fixed values by input name."""
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
