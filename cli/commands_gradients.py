"""``onnxcam methods`` and ``onnxcam check-gradients``."""

from __future__ import annotations

from pathlib import Path

import typer

from . import options as opt
from .errors import friendly
from .parsing import parse_size, preprocessing, resolve_layer_arg


def register(app: typer.Typer) -> None:
    app.command("methods", help="Table of CAM methods: gradient-based or not, what each costs, and the options "
                                "--option METHOD.OPTION=VALUE sets.\n\nExample:\n\n    onnxcam methods")(methods)
    app.command("check-gradients", help="Compare onnxcam's gradients with central finite differences of a float64 "
                                        "copy of the head along random directions: PASS, FAIL (exit 1) or "
                                        "UNCHECKED (exit 2: nothing to compare).\n\nExample:\n\n"
                                        "    onnxcam check-gradients model.onnx cat.jpg --layer auto")(
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
        summary = f"{row.summary}\nonly for models with: {row.applies_to}" if row.applies_to else row.summary
        table.add_row(row.name, "yes" if row.gradients else "no", cost, summary, options)
    Console(width=200).print(table)


@friendly
def check_gradients_cmd(
    model: Path = typer.Argument(..., help="The .onnx model file.", show_default=False),
    images: list[Path] | None = typer.Argument(None, help="Image file(s) to check at (default: 2 random inputs).",
                                               show_default=False),
    layer: str = typer.Option("auto", "--layer", "-l", help="Feature tensor to check at ('#N': a row of "
                                                             "`onnxcam layers`)."),
    target: list[int] | None = typer.Option(None, "--target", "-t", show_default=False,
                                            help="Class index to check for (default: each image's top class)."),
    image: list[Path] | None = typer.Option(None, "--image", "-i",
                                            help="Image(s) to check on (same as the IMAGE argument)."),
    preset: str = typer.Option("imagenet", "--preprocess", "-p", help="imagenet, tf, unit, caffe or raw."),
    size: str = typer.Option("", "--size", help="Input size HxW (default: read from the model)."),
    mean: str = typer.Option("", "--mean", help="Per-channel mean, e.g. 0.485,0.456,0.406 (overrides the preset)."),
    std: str = typer.Option("", "--std", help="Per-channel std, e.g. 0.229,0.224,0.225 (overrides the preset)."),
    layout: str | None = opt.layout_option(),
    channel_order: str | None = opt.channel_order_option(),
    center_crop: bool = typer.Option(False, "--center-crop", help="Resize the shorter side, then center-crop."),
    directions: int = typer.Option(4, "--directions", help="Random directions per image, of each kind."),
    tolerance: float | None = typer.Option(None, "--tolerance", show_default=False,
                                           help="Fixed bound on the relative error (default: from the measured "
                                                "noise)."),
) -> None:
    import numpy as np

    from onnxcam.image import load_image, preprocess
    from onnxcam.model import load
    from onnxcam.selfcheck import check_gradients

    m = load(model, device="cpu", input_size=parse_size(size) if size else None, layout=opt.layout_arg(layout))
    files = list(images or []) + list(image or [])
    if files:
        pp = preprocessing(m, preset, mean, std, center_crop, opt.channel_order_arg(channel_order))
        x = preprocess([load_image(p) for p in files], pp)
    else:
        x = np.random.default_rng(0).normal(0, 1, m.input.shape(2)).astype(np.float32)
    resolved = resolve_layer_arg(m, layer)
    result = check_gradients(m, x, resolved if isinstance(resolved, str) else layer, targets=opt.one_target(target),
                             directions=directions, tolerance=tolerance)
    for note in result.notes:
        typer.echo(f"note: {note}")
    where = f"{m.name} layer {result.layer!r}"
    if result.status == "unchecked":
        typer.echo(f"UNCHECKED: {where}: could not check: {result.reason}")
        raise typer.Exit(2)
    verdict = "PASS" if result.passed else "FAIL"
    typer.echo(f"{verdict}: {where}: gradients from {result.source}; relative error vs {result.reference} "
               f"{result.relative_error:.2e} (channel directions {result.channel_error:.1e}, element directions "
               f"{result.element_error:.1e}) over {result.directions} directions of each kind x {x.shape[0]} "
               f"image(s); tolerance {result.tolerance:.1e} (reference noise {result.noise:.1e})")
    if not result.passed:
        raise typer.Exit(1)
