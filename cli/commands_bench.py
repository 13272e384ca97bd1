"""``onnxcam bench``: time and memory of CAM methods on one model (``onnxcam.bench`` does the work)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from onnxcam.errors import ArgumentError

from . import options as opt
from .errors import friendly
from .parsing import needs_model, resolve_layer_arg

BENCH_HELP = """Benchmark CAM methods on MODEL: seconds per image, ratio to one plain forward, peak memory.

Each method runs in a fresh process (warm-up run first, then the best of --repeats); peak memory is the
growth of the process's peak resident set size (VmHWM) while the method ran, onnxruntime arena included.
Score-CAM, SS-CAM and Ablation-CAM are timed on --heavy-images images.

Examples:

    onnxcam bench model.onnx --methods gradcam,layercam --batch-size 16

    onnxcam bench model.onnx --methods scorecam,scorecam:max_channels=64 --batch-size 64

    onnxcam bench model.onnx --methods sscam --option sscam.num_samples=8 --max-channels 32
"""


def register(app: typer.Typer) -> None:
    app.command("bench", help=BENCH_HELP)(bench_command)


def _row(item: str) -> tuple[str, str]:
    """``scorecam:max_channels=64`` -> ("scorecam", "max_channels=64"), with the same type and range
    checks as --option, so a typo fails before minutes of timing."""
    from onnxcam.registry import check_options, spec_of

    name, _, inline = item.partition(":")
    canonical = spec_of(name).name
    parts = [part for part in inline.split(":") if part]
    if any("=" not in part for part in parts):
        raise ArgumentError(f"--methods {item}: write METHOD:OPTION=VALUE, e.g. scorecam:max_channels=64")
    check_options(canonical, dict(part.split("=", 1) for part in parts))
    return canonical, inline


def _rows(text: str) -> tuple[list[str], list[str]]:
    """``--methods`` -> (the rows to time, exact repeats dropped; their method names). A row may carry
    its own options (``scorecam:max_channels=64``), so one method can be timed several ways."""
    seen: dict[tuple[str, str], str] = {}
    for item in (s.strip() for s in text.split(",") if s.strip()):
        key = _row(item)
        if key in seen:
            typer.echo(f"onnxcam: note: {item} is given twice in --methods; it is timed once", err=True)
            continue
        seen[key] = item
    return list(seen.values()), list(dict.fromkeys(name for name, _ in seen))


def _layer(model: Path, layer: str) -> str:
    """A '#12' row of `onnxcam layers` as its tensor name (each timed method loads the model itself)."""
    if not needs_model(layer):
        return layer
    from onnxcam.model import load

    resolved = resolve_layer_arg(load(model, device="cpu"), layer)
    return resolved if isinstance(resolved, str) else ",".join(resolved)


@friendly
def bench_command(
    model: Path = typer.Argument(..., help="The .onnx model file.", show_default=False),
    methods: str | None = opt.methods_option(None, help="Methods, comma-separated; options per row as "
                                                        "scorecam:max_channels=64 (default: gradcam, gradcam++, "
                                                        "layercam, ablationcam, scorecam)."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", help="Images (or masked copies) per onnxruntime run."),
    images: int | None = typer.Option(None, "--images", "-n", show_default=False,
                                      help="Images timed per method (default: the batch size)."),
    heavy_images: int = typer.Option(1, "--heavy-images", help="Images for Score-CAM, SS-CAM, Ablation-CAM."),
    layer: str = typer.Option("auto", "--layer", "-l", help="Feature tensor name, '#N' (a row of `onnxcam layers`) "
                                                             "or 'auto'."),
    repeats: int = typer.Option(3, "--repeats", "-r", help="Timed runs per method; the best is kept."),
    threads: int | None = typer.Option(None, "--threads", show_default=False,
                                       help="onnxruntime intra-op threads (default: one per physical core)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    option: list[str] | None = opt.method_option_option(),
    max_channels: int | None = opt.max_channels_option(),
    samples: int | None = opt.samples_option(),
    noise_std: float | None = opt.noise_std_option(),
    no_memory: bool = typer.Option(False, "--no-memory", help="Run all in this process; no memory column."),
    as_json: bool = typer.Option(False, "--json", help="Print the table as JSON."),
) -> None:
    from onnxcam.bench import DEFAULT_METHODS, bench, format_table
    from onnxcam.registry import parse_method_options

    rows, names = _rows(methods if methods is not None else ",".join(DEFAULT_METHODS))
    method_options = parse_method_options(option or [], names, opt.option_shortcuts(max_channels, samples, noise_std))
    result = bench(model, rows, batch_size=batch_size, images=opt.positive(images, "--images"),
                   heavy_images=heavy_images, layer=_layer(model, layer), repeats=repeats,
                   threads=opt.positive(threads, "--threads"), device=device, memory=not no_memory,
                   method_options=method_options,
                   progress=None if as_json else (lambda m: typer.echo(f"timing {m} ...", err=True)))
    typer.echo(json.dumps(result.table(), indent=2) if as_json else format_table(result))
