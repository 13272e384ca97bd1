"""``onnxcam layers``: what a model offers to explain."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from . import options as opt
from .errors import friendly
from .parsing import parse_size

if TYPE_CHECKING:
    from onnxcam.model import Model


def register(app: typer.Typer) -> None:
    app.command(
        "layers",
        help="List the feature tensors of MODEL that a CAM can be computed at. The # column is what "
        "--layer '#N' picks.\n\n"
        "Example:\n\n    onnxcam layers models/efficientnet_lite0.onnx --last 10\n\n"
        "    onnxcam layers models/efficientnet_lite0.onnx --json",
    )(layers)


@friendly
def layers(
    model: Path = typer.Argument(..., help="The .onnx model file.", show_default=False),
    last: int | None = typer.Option(None, "--last", show_default=False,
                                    help="Show only the last N candidates (default: all)."),
    size: str = typer.Option("", "--size", help="Input size HxW for models with a dynamic spatial size."),
    as_json: bool = typer.Option(False, "--json", help="Print the layers as JSON (index, name, op, shape, auto)."),
) -> None:
    from onnxcam.model import load

    start = time.perf_counter()
    opt.positive(last, "--last")
    m = load(model, device="cpu", input_size=parse_size(size) if size else None)
    if as_json:
        typer.echo(json.dumps(_as_json(m, last), indent=2))
    else:
        _print_table(m, last, start)


def _auto(m: Model) -> tuple[str, ...]:
    """What ``--layer auto`` picks: one layer, or several (a detector's maps feeding its head)."""
    return m.resolve_layers("auto") if m.layers() else ()


def _as_json(m: Model, last: int | None) -> dict[str, Any]:
    all_layers = m.layers()
    chosen = _auto(m)
    auto: str | list[str] | None = (chosen[0] if len(chosen) == 1 else list(chosen)) if chosen else None
    shown = all_layers[-last:] if last else all_layers
    return {
        "model": m.name,
        "input": {"name": m.input.name, "layout": m.input.layout,
                  "shape": [m.input.channels, m.input.height, m.input.width]},
        "auto": auto,
        "count": len(all_layers),
        "layers": [{"index": layer.index, "name": layer.name, "op": layer.op_type, "node": layer.node_name,
                    "shape": list(layer.shape), "auto": layer.name in chosen} for layer in shown],
    }


def _print_table(m: Model, last: int | None, start: float) -> None:
    from rich.console import Console
    from rich.table import Table

    layers_ = m.layers()
    auto = _auto(m)
    shown = layers_[-last:] if last else layers_
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
                      "<- auto" if layer.name in auto else "")
    console = Console(width=160)
    console.print(table)
    what = "auto layer" if len(auto) <= 1 else f"auto layers ({len(auto)}, fused)"
    console.print(f"{what}: {', '.join(auto) or None}   ({time.perf_counter() - start:.2f} s)")
