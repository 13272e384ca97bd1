"""``onnxcam bench``: time and memory of CAM methods on one model (``onnxcam.bench`` does the work)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from onnxcam.bench import DEFAULT_METHODS, bench, format_table

from .errors import friendly

BENCH_HELP = """Benchmark CAM methods on MODEL: seconds per image, ratio to one plain forward, peak memory.

Each method runs in a fresh process (warm-up run first, then the best of --repeats); peak memory is the
growth of the process's peak resident set size (VmHWM) while the method ran, onnxruntime arena included.
Score-CAM, SS-CAM and Ablation-CAM are timed on --heavy-images images.

Examples:

    onnxcam bench model.onnx --methods gradcam,layercam --batch-size 16

    onnxcam bench model.onnx --methods scorecam,scorecam:max_channels=64 --batch-size 64
"""


def register(app: typer.Typer) -> None:
    app.command("bench", help=BENCH_HELP)(bench_command)


@friendly
def bench_command(
    model: Path = typer.Argument(..., help="The .onnx model file.", show_default=False),
    methods: str = typer.Option(",".join(DEFAULT_METHODS), "--methods", "-m",
                                help="Methods, comma-separated; options as scorecam:max_channels=64."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", help="Images (or masked copies) per onnxruntime run."),
    images: int = typer.Option(0, "--images", "-n", help="Images timed per method (default: the batch size)."),
    heavy_images: int = typer.Option(1, "--heavy-images", help="Images for Score-CAM, SS-CAM, Ablation-CAM."),
    layer: str = typer.Option("auto", "--layer", "-l", help="Feature tensor name, or 'auto'."),
    repeats: int = typer.Option(3, "--repeats", "-r", help="Timed runs per method; the best is kept."),
    threads: int = typer.Option(0, "--threads", help="onnxruntime intra-op threads (0: one per available core)."),
    device: str = typer.Option("cpu", "--device", help="auto, cpu or cuda."),
    no_memory: bool = typer.Option(False, "--no-memory", help="Run all in this process; no memory column."),
    as_json: bool = typer.Option(False, "--json", help="Print the table as JSON."),
) -> None:
    names = [m.strip() for m in methods.split(",") if m.strip()]
    result = bench(model, names, batch_size=batch_size, images=images or None, heavy_images=heavy_images,
                   layer=layer, repeats=repeats, threads=threads or None, device=device, memory=not no_memory,
                   progress=None if as_json else (lambda m: typer.echo(f"timing {m} ...", err=True)))
    typer.echo(json.dumps(result.table(), indent=2) if as_json else format_table(result))
