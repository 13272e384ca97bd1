"""``onnxcam audit`` and ``onnxcam compare``: arguments in, ``onnxcam.audit.job`` does the work."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from onnxcam.errors import ArgumentError

from . import notes  # warnings as one-line notes
from . import options as opt
from .errors import friendly, report_skipped
from .parsing import parse_size, preprocessing, resolve_layer_arg
from .progress import progress_bar

if TYPE_CHECKING:
    from onnxcam.audit.job import JobSummary

AUDIT_HELP = """Audit CAM explanations of MODEL on IMAGES (files, folders, globs, a --manifest or a tree of
class folders) before deployment.

Streams: per-image records go to records.parquet, records.jsonl and metrics.csv, one overlay per image
and method to overlays/, and report.html (self-contained: the summary, curves, the sanity check, and
the worst, best and random images per method plus the flagged ones) with metrics.json; _DONE is
written last. An interrupted audit continues with --resume. --engine ray runs it on a Ray cluster.

boxes.json maps file names to labelled boxes in original-image pixels:
{"cat.jpg": {"box": [x0, y0, x1, y1]}}; with it the report adds pointing game, energy pointing
game and CAM-box IoU.

Examples:

    onnxcam audit model.onnx photos/ --methods gradcam,scorecam --labels labels.txt --out audit/

    onnxcam audit model.onnx photos/ --boxes boxes.json --no-sanity --road

    onnxcam audit model.onnx val/ --class-folders --labels imagenet --out audit/ --resume

    onnxcam audit model.onnx --manifest val.csv --engine ray --ray-actors 8 --out audit/
"""

COMPARE_HELP = """Compare the explanations of two versions of a model (fp32 vs int8 QDQ, an optimised export) on IMAGES.

Both models explain model A's top-1 class per image. Writes report.html with top-1 agreement, per-image
map similarity (Pearson, IoU of the top-20% regions) and the images ranked by explanation change
(most changed first), plus metrics.json and metrics.csv.

Example:

    onnxcam compare model_fp32.onnx model_int8.onnx photos/ --method gradcam --out compare/

    onnxcam compare model_fp32.onnx model_int8.onnx photos/ --method scorecam --max-channels 64
"""


def register(app: typer.Typer) -> None:
    app.command("audit", help=AUDIT_HELP)(audit)
    app.command("compare", help=COMPARE_HELP)(compare)


def _finish(summary: JobSummary, what: str, quiet: bool) -> None:
    report_skipped(summary.failed)
    notes.print_notes(summary.notes)
    if not quiet:
        n = summary.report.get("images_total", len(summary.report["images"]))
        records = "records.parquet, metrics.csv" if "records" in summary.report else "metrics.json, metrics.csv"
        typer.echo(f"{what} {n} image(s) in {summary.seconds:.1f} s"
                   f"{notes.skipped_suffix(summary.failed)}; open "
                   f"{summary.out_dir / 'report.html'} (numbers in {records})")


@friendly
def audit(
    model: Path = typer.Argument(..., help="The .onnx model file.", show_default=False),
    images: list[str] | None = typer.Argument(None, help="Image files, folders or glob patterns (or --manifest).",
                                              show_default=False),
    boxes: Path | None = typer.Option(None, "--boxes", help="boxes.json with labelled boxes (original-image pixels)."),
    manifest: Path | None = typer.Option(None, "--manifest", help="CSV/JSONL listing the images: path, optional "
                                         "label and box (instead of IMAGES).", show_default=False),
    class_folders: bool = typer.Option(False, "--class-folders", help="IMAGES is one folder of class folders "
                                       "(ImageNet style): labels from the folder names, accuracy per class."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted audit in --out (same arguments)."),
    engine: str = typer.Option("local", "--engine", help="local (this process) or ray (Ray Data; "
                               'pip install "onnxcam[ray]").'),
    ray_address: str | None = typer.Option(None, "--ray-address", help="Ray cluster to join (default: RAY_ADDRESS, "
                                           "else a local one).", show_default=False),
    ray_actors: int = typer.Option(2, "--ray-actors", help="Ray: actors (model copies) running at once."),
    ray_cpus: float = typer.Option(1.0, "--ray-cpus", help="Ray: CPUs per actor (= onnxruntime threads)."),
    ray_gpus: float = typer.Option(0.0, "--ray-gpus", help="Ray: GPUs per actor (with --device cuda)."),
    report_sample: int = typer.Option(8, "--report-sample", help="Report: worst, best and random K images per "
                                      "method (every image up to 50)."),
    overlays: bool = typer.Option(True, "--overlays/--no-overlays", help="Write one overlay JPEG per image and "
                                  "method (overlays/)."),
    methods: str = opt.methods_option(),
    layer: str = typer.Option("auto", "--layer", "-l", help=opt.LAYER_HELP),
    labels: Path | None = typer.Option(None, "--labels", help="Text file with one class name per line, or 'imagenet'."),
    preset: str = typer.Option("imagenet", "--preprocess", "-p", help="imagenet, tf, unit, caffe or raw."),
    mean: str = typer.Option("", "--mean", help="Per-channel mean (overrides the preset)."),
    std: str = typer.Option("", "--std", help="Per-channel std (overrides the preset)."),
    size: str = typer.Option("", "--size", help="Input size HxW (default: read from the model)."),
    layout: str | None = opt.layout_option(),
    channel_order: str | None = opt.channel_order_option(),
    center_crop: bool = typer.Option(False, "--center-crop", help="Resize the shorter side, then center-crop."),
    out: Path = typer.Option(Path("onnxcam-audit"), "--out", "-o", help="Output folder (created)."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", help="Images (or perturbed copies) per run."),
    steps: int = typer.Option(32, "--steps", help="Deletion/insertion curve steps."),
    sanity: bool = typer.Option(True, "--sanity/--no-sanity", help="Run the cascading randomisation check."),
    sanity_images: int = typer.Option(4, "--sanity-images", help="Images used by the sanity check."),
    road: bool = typer.Option(False, "--road", help="Also compute ROAD (slow)."),
    option: list[str] | None = opt.method_option_option(),
    max_channels: int | None = opt.max_channels_option(),
    samples: int | None = opt.samples_option(),
    noise_std: float | None = opt.noise_std_option(),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary line."),
) -> None:
    notes.install()
    from onnxcam.audit.job import AuditConfig, audit_units, run_audit
    from onnxcam.jobs.engine_ray import RayOptions, import_ray
    from onnxcam.jobs.sources import open_source
    from onnxcam.model import load
    from onnxcam.pipeline import read_labels

    chosen = opt.choose_methods(methods, option, max_channels, samples, noise_std)
    if engine == "ray":
        import_ray()  # before any work: a missing Ray is a one-line error naming the install
    source = open_source(images or [], manifest, class_folders)
    m = load(model, device=device, input_size=parse_size(size) if size else None, layout=opt.layout_arg(layout))
    config = AuditConfig(
        preprocess=preprocessing(m, preset, mean, std, center_crop, opt.channel_order_arg(channel_order)),
        methods=chosen.methods, layer=resolve_layer_arg(m, layer), method_options=chosen.options,
        labels=read_labels(labels) if labels else None, boxes=boxes, batch_size=batch_size, steps=steps,
        road=road, sanity=sanity, sanity_images=sanity_images,
    )
    ray = RayOptions(ray_address, ray_actors, ray_cpus, ray_gpus)
    try:
        with progress_bar(audit_units(m, source.count(), config), "auditing", enabled=not quiet) as advance:
            summary = run_audit(m, source, out, config, progress=advance, resume=resume, engine=engine, ray=ray,
                                overlays=overlays, sample_k=report_sample)
    except KeyboardInterrupt:
        # An audit keeps its finished batches (the generic message says nothing was kept).
        where = f"{out}" if (out / "job.json").is_file() else ""
        typer.echo(f"onnxcam: interrupted; run the same command with --resume to continue the audit in {where}"
                   if where else "onnxcam: interrupted; nothing was written", err=True)
        raise typer.Exit(130) from None
    _finish(summary, "audited", quiet)


@friendly
def compare(
    model_a: Path = typer.Argument(..., help="Model A (the reference, e.g. fp32).", show_default=False),
    model_b: Path = typer.Argument(..., help="Model B (e.g. int8 QDQ or optimised).", show_default=False),
    images: list[str] = typer.Argument(..., help="Image files, folders or glob patterns.", show_default=False),
    method: str = opt.methods_option(help="The CAM method (one)."),
    layer_a: str = typer.Option("auto", "--layer-a", help="Layer of model A: a name, '#N' or 'auto'."),
    layer_b: str = typer.Option("auto", "--layer-b", help="Layer of model B: a name, '#N' or 'auto'."),
    labels: Path | None = typer.Option(None, "--labels", help="Text file with one class name per line, or 'imagenet'."),
    preset: str = typer.Option("imagenet", "--preprocess", "-p", help="imagenet, tf, unit, caffe or raw."),
    mean: str = typer.Option("", "--mean", help="Per-channel mean (overrides the preset)."),
    std: str = typer.Option("", "--std", help="Per-channel std (overrides the preset)."),
    size: str = typer.Option("", "--size", help="Input size HxW (default: read from the models)."),
    channel_order: str | None = opt.channel_order_option(),
    center_crop: bool = typer.Option(False, "--center-crop", help="Resize the shorter side, then center-crop."),
    out: Path = typer.Option(Path("onnxcam-compare"), "--out", "-o", help="Output folder (created)."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", help="Images per run."),
    option: list[str] | None = opt.method_option_option(),
    max_channels: int | None = opt.max_channels_option(),
    samples: int | None = opt.samples_option(),
    noise_std: float | None = opt.noise_std_option(),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary line."),
) -> None:
    notes.install()
    from onnxcam.audit.job import CompareConfig, run_compare
    from onnxcam.image import expand_image_paths
    from onnxcam.model import load
    from onnxcam.pipeline import read_labels

    chosen = opt.choose_methods(method, option, max_channels, samples, noise_std)
    if len(chosen.methods) != 1:
        raise ArgumentError(f"compare explains with one method, got {', '.join(chosen.methods)}: give one --method "
                            "(run compare once per method)")
    input_size = parse_size(size) if size else None
    a = load(model_a, device=device, input_size=input_size)
    b = load(model_b, device=device, input_size=input_size)
    paths = expand_image_paths(images)
    config = CompareConfig(
        preprocess=preprocessing(a, preset, mean, std, center_crop, opt.channel_order_arg(channel_order)),
        method=chosen.methods[0], layer_a=resolve_layer_arg(a, layer_a, "--layer-a"),
        layer_b=resolve_layer_arg(b, layer_b, "--layer-b"), method_options=chosen.options,
        labels=read_labels(labels) if labels else None, batch_size=batch_size,
    )
    with progress_bar(len(paths), "comparing", enabled=not quiet) as advance:
        summary = run_compare(a, b, paths, out, config, progress=advance)
    _finish(summary, "compared", quiet)
