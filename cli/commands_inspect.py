"""``onnxcam layers``: what a model offers to explain."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from onnxcam.model import load

from .errors import friendly


def register(app: typer.Typer) -> None:
    app.command(
        "layers",
        help="List the feature tensors of MODEL that a CAM can be computed at.\n\n"
        "Example:\n\n    onnxcam layers models/efficientnet_lite0.onnx --last 10",
    )(layers)


@friendly
def layers(
    model: Path = typer.Argument(..., help="The .onnx model file.", show_default=False),
    last: int = typer.Option(0, "--last", help="Show only the last N candidates (0 = all)."),
    size: str = typer.Option("", "--size", help="Input size HxW for models with a dynamic spatial size."),
) -> None:
    start = time.perf_counter()
    from rich.console import Console
    from rich.table import Table

    from .parsing import parse_size

    m = load(model, device="cpu", input_size=parse_size(size) if size else None)
    layers_ = m.layers()
    auto = m.layer("auto").name if layers_ else None
    shown = layers_[-last:] if last > 0 else layers_
    table = Table(title=f"{m.name}: {len(layers_)} candidate layers (input {m.input.name} {m.input.layout} "
                        f"{m.input.channels}x{m.input.height}x{m.input.width})")
    table.add_column("#", justify="right")
    table.add_column("tensor")
    table.add_column("op")
    table.add_column("shape (N, C, h, w)")
    # How the tensor is read as a map: NCHW, NHWC, tokens P+hxw (P prefix tokens dropped); "?" marks
    # a layout no op fixes (assumed NCHW).
    table.add_column("view")
    table.add_column("")
    for layer in shown:
        shape = "(" + ", ".join(str(d) for d in layer.shape) + ")"
        table.add_row(str(layer.index), layer.name, layer.op_type, shape, layer.grid.removeprefix("tokens NTD "),
                      "<- auto" if layer.name == auto else "")
    console = Console(width=160)
    console.print(table)
    console.print(f"auto layer: {auto}   ({time.perf_counter() - start:.2f} s)")
