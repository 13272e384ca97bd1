"""``onnxcam methods`` and ``onnxcam check-gradients``."""

from __future__ import annotations

from pathlib import Path

import typer

from .errors import friendly
from .parsing import parse_size, resolve_layer_arg


def register(app: typer.Typer) -> None:
    app.command("methods", help="Table of CAM methods: gradient-based or not, what each costs, and the options "
                                "--option METHOD.OPTION=VALUE sets.\n\nExample:\n\n    onnxcam methods")(methods)
    app.command("check-gradients", help="Compare onnxcam's gradient graph with central finite differences along "
                                        "random directions and print the relative error.\n\nExample:\n\n"
                                        "    onnxcam check-gradients model.onnx --layer auto --image cat.jpg")(
        check_gradients_cmd)


@friendly
def methods() -> None:
    from rich.console import Console
    from rich.table import Table

    from onnxcam.registry import method_info

    table = Table(title="onnxcam methods")
    table.add_column("method")
    table.add_column("gradients")
    table.add_column("cost per batch")
    table.add_column("what it does")
    table.add_column("options (--option METHOD.OPTION=VALUE)")
    for row in method_info():
        options = "\n".join(f"{o.name}={o.default}: {o.help}" for o in row.options)
        cost = f"{row.cost}\n(slow)" if row.slow else row.cost
        table.add_row(row.name, "yes" if row.gradients else "no", cost, row.summary, options)
    Console(width=200).print(table)


@friendly
def check_gradients_cmd(
    model: Path = typer.Argument(..., help="The .onnx model file.", show_default=False),
    layer: str = typer.Option("auto", "--layer", "-l", help="Feature tensor to check at ('#N': a row of "
                                                             "`onnxcam layers`)."),
    image: list[Path] | None = typer.Option(None, "--image", "-i",
                                            help="Image(s) to check on (default: 2 random inputs)."),
    preset: str = typer.Option("imagenet", "--preprocess", "-p", help="Preprocessing preset for --image."),
    size: str = typer.Option("", "--size", help="Input size HxW for dynamic-size models."),
    directions: int = typer.Option(8, "--directions", help="Random directions per image."),
    tolerance: float | None = typer.Option(None, "--tolerance", show_default=False,
                                           help="Pass if relative error <= this (default: 1e-2)."),
) -> None:
    import numpy as np

    from onnxcam.image import get_preset, load_image, preprocess
    from onnxcam.model import load
    from onnxcam.selfcheck import DEFAULT_TOLERANCE, check_gradients

    m = load(model, device="cpu", input_size=parse_size(size) if size else None)
    if image:
        pp = get_preset(preset, m.input.size, m.input.layout)
        x = preprocess([load_image(p) for p in image], pp)
    else:
        x = np.random.default_rng(0).normal(0, 1, m.input.shape(2)).astype(np.float32)
    resolved = resolve_layer_arg(m, layer)
    result = check_gradients(m, x, resolved if isinstance(resolved, str) else layer, directions=directions,
                             tolerance=DEFAULT_TOLERANCE if tolerance is None else tolerance)
    for note in result.notes:
        typer.echo(f"note: {note}")
    verdict = "PASS" if result.passed else "FAIL"
    typer.echo(f"{verdict}: {m.name} layer {result.layer!r}: gradients from {result.source}; relative error vs "
               f"central finite differences {result.relative_error:.2e} over {result.directions} directions x "
               f"{x.shape[0]} image(s) (tolerance {result.tolerance:.0e})")
    if not result.passed:
        raise typer.Exit(1)
