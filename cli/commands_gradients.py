"""``onnxcam methods`` and ``onnxcam check-gradients``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from onnxcam.image import get_preset, load_image, preprocess
from onnxcam.model import load
from onnxcam.registry import method_info
from onnxcam.selfcheck import DEFAULT_TOLERANCE, check_gradients

from .errors import friendly
from .parsing import parse_size


def register(app: typer.Typer) -> None:
    app.command("methods", help="Table of CAM methods: gradient-based or not, and what each costs.\n\n"
                                "Example:\n\n    onnxcam methods")(methods)
    app.command("check-gradients", help="Compare onnxcam's gradient graph with central finite differences along "
                                        "random directions and print the relative error.\n\nExample:\n\n"
                                        "    onnxcam check-gradients model.onnx --layer auto --image cat.jpg")(
        check_gradients_cmd)


@friendly
def methods() -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="onnxcam methods")
    table.add_column("method")
    table.add_column("gradients")
    table.add_column("cost per batch")
    table.add_column("what it does")
    for row in method_info():
        table.add_row(row.name, "yes" if row.gradients else "no", row.cost, row.summary)
    Console(width=170).print(table)


@friendly
def check_gradients_cmd(
    model: Path = typer.Argument(..., help="The .onnx model file.", show_default=False),
    layer: str = typer.Option("auto", "--layer", "-l", help="Feature tensor to check at."),
    image: list[Path] = typer.Option(None, "--image", "-i", help="Image(s) to check on (default: 2 random inputs)."),
    preset: str = typer.Option("imagenet", "--preprocess", "-p", help="Preprocessing preset for --image."),
    size: str = typer.Option("", "--size", help="Input size HxW for dynamic-size models."),
    directions: int = typer.Option(8, "--directions", help="Random directions per image."),
    tolerance: float = typer.Option(DEFAULT_TOLERANCE, "--tolerance", help="Pass if relative error <= this."),
) -> None:
    m = load(model, device="cpu", input_size=parse_size(size) if size else None)
    if image:
        pp = get_preset(preset, m.input.size, m.input.layout)
        x = preprocess([load_image(p) for p in image], pp)
    else:
        x = np.random.default_rng(0).normal(0, 1, m.input.shape(2)).astype(np.float32)
    result = check_gradients(m, x, layer, directions=directions, tolerance=tolerance)
    for note in result.notes:
        typer.echo(f"note: {note}")
    verdict = "PASS" if result.passed else "FAIL"
    typer.echo(f"{verdict}: {m.name} layer {result.layer!r}: gradients from {result.source}; relative error vs "
               f"central finite differences {result.relative_error:.2e} over {result.directions} directions x "
               f"{x.shape[0]} image(s) (tolerance {result.tolerance:.0e})")
    if not result.passed:
        raise typer.Exit(1)
