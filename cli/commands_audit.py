"""``onnxcam audit`` and ``onnxcam compare``: arguments in, ``onnxcam.audit.job`` does the work."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from onnxcam.image import expand_image_paths
from onnxcam.model import load
from onnxcam.pipeline import read_labels

from . import notes  # h-ux: warnings as one-line notes
from .errors import friendly, report_skipped
from .parsing import layer_list, parse_size, preprocessing
from .progress import progress_bar

if TYPE_CHECKING:
    from onnxcam.audit.job import JobSummary

AUDIT_HELP = """Audit CAM explanations of MODEL on IMAGES (files, folders or globs) before deployment.

Writes report.html (one self-contained file: overlays per method side by side, top-3 predictions,
per-image metrics, a summary with mean +- std per method, flags to review, and the cascading
randomisation sanity check), plus metrics.json and metrics.csv with every number.

boxes.json maps file names to labelled boxes in original-image pixels:
{"cat.jpg": {"box": [x0, y0, x1, y1]}}; with it the report adds pointing game, energy pointing
game and CAM-box IoU.

Examples:

    onnxcam audit model.onnx photos/ --methods gradcam,scorecam --labels labels.txt --out audit/

    onnxcam audit model.onnx photos/ --boxes boxes.json --no-sanity --road
"""

COMPARE_HELP = """Compare the explanations of two versions of a model (fp32 vs int8 QDQ, an optimised export) on IMAGES.

Both models explain model A's top-1 class per image. Writes report.html with top-1 agreement, per-image
map similarity (Pearson, IoU of the top-20% regions) and the images ranked by explanation change
(most changed first), plus metrics.json and metrics.csv.

Example:

    onnxcam compare model_fp32.onnx model_int8.onnx photos/ --method gradcam --out compare/
"""


def register(app: typer.Typer) -> None:
    app.command("audit", help=AUDIT_HELP)(audit)
    app.command("compare", help=COMPARE_HELP)(compare)


def _finish(summary: JobSummary, what: str, quiet: bool) -> None:
    report_skipped(summary.failed)
    notes.print_notes(summary.notes)  # h-ux
    if not summary.report["images"]:
        typer.echo("onnxcam: error: no image could be read", err=True)
        raise typer.Exit(5)
    if not quiet:
        typer.echo(f"{what} {len(summary.report['images'])} image(s) in {summary.seconds:.1f} s"
                   f"{notes.skipped_suffix(summary.failed)}; open "
                   f"{summary.out_dir / 'report.html'} (numbers in metrics.json, metrics.csv)")


@friendly
def audit(
    model: Path = typer.Argument(..., help="The .onnx model file.", show_default=False),
    images: list[str] = typer.Argument(..., help="Image files, folders or glob patterns.", show_default=False),
    boxes: Path = typer.Option(None, "--boxes", help="boxes.json with labelled boxes (original-image pixels)."),
    methods: str = typer.Option("gradcam", "--methods", "--method", "-m", help="Methods, comma-separated."),
    layer: str = typer.Option("auto", "--layer", "-l", help="Feature tensor name(s), comma-separated, or 'auto'."),
    labels: Path = typer.Option(None, "--labels", help="Text file with one class name per line, or 'imagenet'."),
    preset: str = typer.Option("imagenet", "--preprocess", "-p", help="imagenet, tf, unit, caffe or raw."),
    mean: str = typer.Option("", "--mean", help="Per-channel mean (overrides the preset)."),
    std: str = typer.Option("", "--std", help="Per-channel std (overrides the preset)."),
    size: str = typer.Option("", "--size", help="Input size HxW (default: read from the model)."),
    layout: str = typer.Option("", "--layout", help="Force NCHW or NHWC (default: read from the model)."),
    center_crop: bool = typer.Option(False, "--center-crop", help="Resize the shorter side, then center-crop."),
    out: Path = typer.Option(Path("onnxcam-audit"), "--out", "-o", help="Output folder (created)."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", help="Images (or perturbed copies) per run."),
    steps: int = typer.Option(32, "--steps", help="Deletion/insertion curve steps."),
    sanity: bool = typer.Option(True, "--sanity/--no-sanity", help="Run the cascading randomisation check."),
    sanity_images: int = typer.Option(4, "--sanity-images", help="Images used by the sanity check."),
    road: bool = typer.Option(False, "--road", help="Also compute ROAD (slow)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary line."),
) -> None:
    notes.install()  # h-ux
    from onnxcam.audit.job import AuditConfig, audit_units, run_audit  # heavy: only for this command

    m = load(model, device=device, input_size=parse_size(size) if size else None, layout=layout or None)
    paths = expand_image_paths(images)
    config = AuditConfig(
        preprocess=preprocessing(m, preset, mean, std, center_crop),
        methods=[s.strip() for s in methods.split(",") if s.strip()], layer=layer_list(layer),
        labels=read_labels(labels) if labels else None, boxes=boxes, batch_size=batch_size, steps=steps,
        road=road, sanity=sanity, sanity_images=sanity_images,
    )
    with progress_bar(audit_units(m, len(paths), config), "auditing", enabled=not quiet) as advance:
        summary = run_audit(m, paths, out, config, progress=advance)
    _finish(summary, "audited", quiet)


@friendly
def compare(
    model_a: Path = typer.Argument(..., help="Model A (the reference, e.g. fp32).", show_default=False),
    model_b: Path = typer.Argument(..., help="Model B (e.g. int8 QDQ or optimised).", show_default=False),
    images: list[str] = typer.Argument(..., help="Image files, folders or glob patterns.", show_default=False),
    method: str = typer.Option("gradcam", "--method", "-m", help="The CAM method."),
    layer_a: str = typer.Option("auto", "--layer-a", help="Layer of model A ('auto' by default)."),
    layer_b: str = typer.Option("auto", "--layer-b", help="Layer of model B ('auto' by default)."),
    labels: Path = typer.Option(None, "--labels", help="Text file with one class name per line, or 'imagenet'."),
    preset: str = typer.Option("imagenet", "--preprocess", "-p", help="imagenet, tf, unit, caffe or raw."),
    mean: str = typer.Option("", "--mean", help="Per-channel mean (overrides the preset)."),
    std: str = typer.Option("", "--std", help="Per-channel std (overrides the preset)."),
    size: str = typer.Option("", "--size", help="Input size HxW (default: read from the models)."),
    center_crop: bool = typer.Option(False, "--center-crop", help="Resize the shorter side, then center-crop."),
    out: Path = typer.Option(Path("onnxcam-compare"), "--out", "-o", help="Output folder (created)."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", help="Images per run."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary line."),
) -> None:
    notes.install()  # h-ux
    from onnxcam.audit.job import CompareConfig, run_compare  # heavy: only for this command

    input_size = parse_size(size) if size else None
    a = load(model_a, device=device, input_size=input_size)
    b = load(model_b, device=device, input_size=input_size)
    paths = expand_image_paths(images)
    config = CompareConfig(
        preprocess=preprocessing(a, preset, mean, std, center_crop), method=method,
        layer_a=layer_list(layer_a), layer_b=layer_list(layer_b), labels=read_labels(labels) if labels else None,
        batch_size=batch_size,
    )
    with progress_bar(len(paths), "comparing", enabled=not quiet) as advance:
        summary = run_compare(a, b, paths, out, config, progress=advance)
    _finish(summary, "compared", quiet)
