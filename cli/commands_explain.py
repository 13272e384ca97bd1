"""``onnxcam explain`` and ``onnxcam demo``: arguments in, ``onnxcam.pipeline`` does the work."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from . import notes  # warnings as one-line notes
from . import options as opt
from .errors import friendly, report_skipped
from .parsing import check_top_k, extra_inputs, parse_size, preprocessing, resolve_layer_arg
from .progress import progress_bar

if TYPE_CHECKING:
    from onnxcam.model import Model
    from onnxcam.pipeline import ExplainConfig, ExplainSummary

EXPLAIN_HELP = """Explain IMAGES (files, folders or globs) with class activation maps of MODEL.

Writes one overlay PNG per image and method (the CAM box drawn on it), optional raw maps (.npy),
a side-by-side grid when several methods are given, and summary.json with predictions and boxes.

Examples:

    onnxcam explain model.onnx photos/ --method gradcam --out cams/

    onnxcam explain model.onnx cat.jpg --method gradcam,scorecam,ablationcam --labels labels.txt --top-k 2

    onnxcam explain model.onnx cat.jpg --method scorecam,sscam --option scorecam.max_channels=64 --samples 8
"""


def register(app: typer.Typer) -> None:
    app.command("explain", help=EXPLAIN_HELP)(explain)
    app.command("demo", help="Run explain on the model and images that ship with onnxcam; writes to "
                             "./onnxcam-demo/.\n\nExample:\n\n    onnxcam demo --method gradcam,scorecam")(demo)


def _report(summary: ExplainSummary, quiet: bool) -> None:
    report_skipped(summary.failed)
    notes.print_notes(summary.notes)
    if quiet:
        return
    n = len(summary.images)
    typer.echo(f"explained {n} image(s) in {summary.seconds:.2f} s on {summary.device}"
               f"{notes.skipped_suffix(summary.failed)}; results in {summary.out_dir}/ (summary.json)")


@friendly
def explain(
    model: Path = typer.Argument(..., help="The .onnx model file.", show_default=False),
    images: list[str] = typer.Argument(..., help="Image files, folders or glob patterns.", show_default=False),
    method: str = opt.methods_option(),
    layer: str = typer.Option("auto", "--layer", "-l", help=opt.LAYER_HELP),
    target: list[int] | None = typer.Option(None, "--target", "-t", show_default=False,
                                            help="Class index to explain for every image (default: top classes)."),
    top_k: int = typer.Option(1, "--top-k", "-k", help="Explain each image's top K classes."),
    labels: Path | None = typer.Option(None, "--labels", help="Text file with one class name per line, or 'imagenet'."),
    out: Path = typer.Option(Path("onnxcam-out"), "--out", "-o", help="Output folder (created)."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", help="Images (or masked copies) per onnxruntime run."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    preset: str = typer.Option("imagenet", "--preprocess", "-p", help="imagenet, tf, unit, caffe or raw."),
    size: str = typer.Option("", "--size", help="Input size HxW (default: read from the model)."),
    mean: str = typer.Option("", "--mean", help="Per-channel mean, e.g. 0.485,0.456,0.406 (overrides the preset)."),
    std: str = typer.Option("", "--std", help="Per-channel std, e.g. 0.229,0.224,0.225 (overrides the preset)."),
    layout: str | None = opt.layout_option(),
    channel_order: str | None = opt.channel_order_option(),
    center_crop: bool = typer.Option(False, "--center-crop", help="Resize the shorter side, then center-crop."),
    alpha: float = typer.Option(0.5, "--alpha", help="Heatmap opacity in the overlay, 0..1."),
    colormap: str = typer.Option("jet", "--colormap", help="jet, turbo, viridis, inferno, magma, ..."),
    boxes: bool = typer.Option(True, "--boxes/--no-boxes", help="Draw the CAM box (20% of the map's max)."),
    save_npy: bool = typer.Option(False, "--save-npy", help="Also save each map as float32 .npy (H, W)."),
    colorbar: bool = typer.Option(False, "--colorbar", help="Draw a colour scale beside each overlay."),
    option: list[str] | None = opt.method_option_option(),
    max_channels: int | None = opt.max_channels_option(),
    samples: int | None = opt.samples_option(),
    noise_std: float | None = opt.noise_std_option(),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary line."),
    task: str = typer.Option("auto", "--task", help="auto, or detect to read the outputs as a detector's."),
    conf: float = typer.Option(0.25, "--conf", help="Detectors: minimum detection score, 0..1."),
    iou: float = typer.Option(0.45, "--iou", help="Detectors: NMS IoU threshold, 0..1."),
    detections: int = typer.Option(5, "--detections", help="Detectors: explain each image's top K detections."),
    inputs: list[str] | None = typer.Option(None, "--input", help="Fix another model input: NAME=VALUE, e.g. "
                                     "scale_factor=1,1 (repeatable; one image's value)."),
) -> None:
    notes.install()
    from onnxcam.image import expand_image_paths
    from onnxcam.model import load
    from onnxcam.pipeline import ExplainConfig, read_labels

    chosen = opt.choose_methods(method, option, max_channels, samples, noise_std)
    target_index = opt.one_target(target)
    m = load(model, device=device, input_size=parse_size(size) if size else None, layout=opt.layout_arg(layout),
             extra_inputs=extra_inputs(inputs))
    paths = expand_image_paths(images)
    if _is_detector(m, task):
        _explain_detections(m, paths, out, chosen, layer, detections, conf, iou, preset, mean, std, center_crop,
                            alpha, colormap, task, quiet)
        return
    check_top_k(m, top_k)
    config = ExplainConfig(
        preprocess=preprocessing(m, preset, mean, std, center_crop, opt.channel_order_arg(channel_order)),
        methods=chosen.methods, layer=resolve_layer_arg(m, layer), target=target_index, top_k=top_k,
        labels=read_labels(labels) if labels else None, batch_size=batch_size, alpha=alpha, colormap=colormap,
        boxes=boxes, save_npy=save_npy, colorbar=colorbar, method_options=chosen.options,
    )
    _run(m, paths, out, config, quiet, folders=[Path(i) for i in images if Path(i).is_dir()])


def _is_detector(m: Model, task: str) -> bool:
    from onnxcam.detection import DetectionTask

    return task == "detect" or (task == "auto" and isinstance(m.task, DetectionTask))


def _explain_detections(m: Model, paths: list[Path], out: Path, chosen: opt.MethodChoice, layer: str,
                        detections: int, conf: float, iou: float, preset: str, mean: str, std: str,
                        center_crop: bool, alpha: float, colormap: str, task: str, quiet: bool) -> None:
    from onnxcam.detection.job import DetectionConfig, detection_report, explain_detections

    # A detector's default preprocessing is the yolo letterbox, not the imagenet default of classifiers.
    pp = None if preset == "imagenet" and not (mean or std or center_crop) else \
        preprocessing(m, preset, mean, std, center_crop)
    found = explain_detections(m, paths, out, DetectionConfig(
        chosen.methods, resolve_layer_arg(m, layer), detections, conf, iou, pp, alpha, colormap,
        method_options=chosen.options), task)
    if not quiet:
        typer.echo(detection_report(found))


def _run(m: Model, paths: list[Path], out: Path, config: ExplainConfig, quiet: bool,
         folders: list[Path] | None = None) -> None:
    from onnxcam.pipeline import explain_images
    from onnxcam.registry import is_slow

    heavy = is_slow(config.methods)
    with progress_bar(len(paths), "explaining", enabled=not quiet and (len(paths) > 3 or heavy)) as advance:
        summary = explain_images(m, paths, out, config, progress=advance, input_folders=folders or ())
    _report(summary, quiet)
    if not summary.images and summary.failed:
        raise typer.Exit(5)


@friendly
def demo(
    method: str = opt.methods_option(),
    out: Path = typer.Option(Path("onnxcam-demo"), "--out", "-o", help="Output folder."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    task: str = typer.Option("classify", "--task", help="classify (the shapes classifier) or detect (the shapes "
                             "detector: one map per detection)."),
) -> None:
    notes.install()
    if task not in ("classify", "detect"):
        from onnxcam.errors import ArgumentError

        raise ArgumentError(f"unknown demo task {task!r}: use --task classify or --task detect")
    if task == "detect":
        _demo_detect(method, out, device, quiet)
        return
    from onnxcam.data import demo_files
    from onnxcam.image import get_preset
    from onnxcam.model import load
    from onnxcam.pipeline import ExplainConfig

    files = demo_files()
    methods = opt.choose_methods(method).methods
    m = load(files.model, device=device)
    pp = get_preset(files.preset, m.input.size, m.input.layout, mean=files.mean, std=files.std)
    config = ExplainConfig(preprocess=pp, methods=methods, labels=files.labels, save_npy=True)
    _run(m, files.images, out, config, quiet)
    if not quiet:
        summary = json.loads((out / "summary.json").read_text())
        hits = sum(1 for item in summary["images"]
                   if item["predictions"][0]["label"] == files.truth[Path(item["file"]).name]["label"])
        typer.echo(f"demo: {hits}/{len(summary['images'])} images classified correctly; open {out}/*_grid.png or "
                   f"{out}/*.png to see where the model looked")


def _demo_detect(method: str, out: Path, device: str, quiet: bool) -> None:
    """``onnxcam demo --task detect``: the shipped shapes detector on its scenes, every detection explained."""
    from onnxcam.data import demo_detect_files
    from onnxcam.detection.job import DetectionConfig, detection_report, explain_detections
    from onnxcam.model import load

    files = demo_detect_files()
    m = load(files.model, device=device)
    summary = explain_detections(m, files.images, out, DetectionConfig(opt.choose_methods(method).methods))
    if quiet:
        return
    typer.echo(detection_report(summary))
    found = objects = 0
    for item in summary["images"]:
        truth = files.truth[Path(item["file"]).name]
        objects += len(truth)
        labels = [d["label"] for d in item["detections"]]
        found += sum(1 for t in truth if t["label"] in labels)
    typer.echo(f"demo: found {found}/{objects} objects; open {out}/*_grid.png to see, for each detection, where the "
               "detector looked")
