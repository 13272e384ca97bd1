"""Options several commands share, declared once, and the step from their strings to library values.

Nothing heavy is imported at module level: ``onnxcam --help`` must not load onnx, onnxruntime or
OpenCV (see tests/benchmarks/cli_startup.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import typer

from onnxcam.errors import ArgumentError

LAYER_HELP = ("Feature tensor name(s), comma-separated, 'auto', or '#N' for row N of `onnxcam layers` (a bare "
              "number is a tensor name).")
OPTION_HELP = ("A method option as METHOD.OPTION=VALUE, e.g. scorecam.max_channels=64 (repeatable; OPTION=VALUE "
               "when one method has it). `onnxcam methods` lists them.")


def methods_option(default: str | None = "gradcam", help: str = "Method(s), comma-separated (see `onnxcam methods`).",
                   ) -> Any:
    return typer.Option(default, "--method", "--methods", "-m", help=help)


def method_option_option() -> Any:
    return typer.Option(None, "--option", help=OPTION_HELP, show_default=False)


def max_channels_option() -> Any:
    return typer.Option(None, "--max-channels", help="Score-CAM, SS-CAM: only the K most varied channels "
                                                     "(same as --option max_channels=K).", show_default=False)


def samples_option() -> Any:
    return typer.Option(None, "--samples", help="SS-CAM, Smooth Grad-CAM++: noisy samples "
                                                "(same as --option num_samples=N).", show_default=False)


def noise_std_option() -> Any:
    return typer.Option(None, "--noise-std", help="SS-CAM, Smooth Grad-CAM++: std of the noise "
                                                  "(same as --option std=S).", show_default=False)


def layout_option() -> Any:
    return typer.Option(None, "--layout", help="Force NCHW or NHWC, any case (default: read from the model).",
                        show_default=False)


def channel_order_option() -> Any:
    return typer.Option(None, "--channel-order", help="rgb or bgr, any case (default: the preset's; caffe is bgr).",
                        show_default=False)


@dataclass(frozen=True)
class MethodChoice:
    """The methods to run (canonical, without repeats) and their constructor options."""

    methods: list[str]
    options: dict[str, dict[str, Any]]


def choose_methods(text: str, assignments: list[str] | None = None, max_channels: int | None = None,
                   samples: int | None = None, noise_std: float | None = None) -> MethodChoice:
    """``--method`` and the method-option flags -> a ``MethodChoice``; a repeated method is dropped
    with a note on stderr (the outputs of two runs of one method would share file names)."""
    from onnxcam.registry import parse_method_options, unique_methods

    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise ArgumentError("--method is empty: give a method name, e.g. --method gradcam (see `onnxcam methods`)")
    methods, dropped = unique_methods(names)
    for name in dropped:
        typer.echo(f"onnxcam: note: method {name} is given twice in --method; it runs once", err=True)
    shortcuts = option_shortcuts(max_channels, samples, noise_std)
    return MethodChoice(methods, parse_method_options(assignments or [], methods, shortcuts))


def option_shortcuts(max_channels: int | None, samples: int | None,
                     noise_std: float | None) -> dict[str, tuple[str, Any]]:
    """The convenience flags as ``parse_method_options`` shortcuts: flag -> (option name, value)."""
    return {"--max-channels": ("max_channels", max_channels), "--samples": ("num_samples", samples),
            "--noise-std": ("std", noise_std)}


def layout_arg(text: str | None) -> str | None:
    """``--layout nchw`` -> ``"NCHW"``."""
    if text is None or not text.strip():
        return None
    value = text.strip().upper()
    if value not in ("NCHW", "NHWC"):
        raise ArgumentError(f"--layout {text!r}: use NCHW or NHWC (any case)")
    return value


def channel_order_arg(text: str | None) -> str | None:
    """``--channel-order bgr`` -> ``"BGR"``."""
    if text is None or not text.strip():
        return None
    value = text.strip().upper()
    if value not in ("RGB", "BGR"):
        raise ArgumentError(f"--channel-order {text!r}: use rgb or bgr")
    return value


def one_target(values: list[int] | None) -> int | None:
    """``--target`` given at most once, as a class index >= 0."""
    if not values:
        return None
    if len(values) > 1:
        shown = ", ".join(str(v) for v in values)
        raise ArgumentError(f"--target is given {len(values)} times ({shown}): give one --target; to explain each "
                            "image's top K classes use --top-k K")
    if values[0] < 0:
        raise ArgumentError(f"--target {values[0]}: class indices start at 0; leave --target out to explain each "
                            "image's top class")
    return values[0]


def positive(value: int | None, flag: str) -> int | None:
    """An optional count flag: None (not given) or >= 1."""
    if value is not None and value < 1:
        raise ArgumentError(f"{flag} {value}: must be >= 1 (leave {flag} out for the default)")
    return value
