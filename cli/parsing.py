"""Parsing of CLI argument strings into library values."""

from __future__ import annotations

import re

from onnxcam.errors import ArgumentError


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
