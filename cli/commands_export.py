"""``onnxcam export``: one ONNX file returning the model's outputs and their CAMs."""

from __future__ import annotations

from pathlib import Path

import typer

from onnxcam.errors import ArgumentError

from . import options as opt
from .errors import friendly
from .parsing import parse_size, resolve_layer_arg


def register(app: typer.Typer) -> None:
    app.command("export", help="Write one ONNX file that returns the model's outputs, the explained class and a CAM "
                               "per method (N, H, W) in [0, 1], for any ONNX runtime; for a detector, its top "
                               "--detections detections and a map per detection (N, K, H, W).\n\nExample:\n\n"
                               "    onnxcam export model.onnx --method gradcam,layercam -o model_cam.onnx")(export_cmd)


@friendly
def export_cmd(
    model: Path = typer.Argument(..., help="The .onnx model file (read, never modified).", show_default=False),
    method: str = opt.methods_option(help="Method(s), comma-separated: gradcam, gradcam++, xgradcam, layercam, "
                                          "hirescam, gradcam-elementwise, fullgrad, cam, eigencam."),
    layer: str = typer.Option("auto", "--layer", "-l", help="Feature tensor(s) to explain at: a name, '#row' of "
                              "`onnxcam layers`, or several comma-separated (their maps are fused)."),
    target: str = typer.Option("top1", "--target", help="top1: each image's top class; input: an int64 input "
                               "'target' (N,) names the class per image."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the exported .onnx file.",
                                show_default=False),
    size: str = typer.Option("", "--size", help="Input size HxW for dynamic-size models."),
    detections: int = typer.Option(5, "--detections", help="Detectors: maps for each image's top K detections "
                                   "(outputs detection_boxes/_scores/_classes (N, K, ...), cam_<method> "
                                   "(N, K, H, W))."),
    conf: float = typer.Option(0.25, "--conf", help="Detectors: minimum detection score, 0..1."),
    iou: float = typer.Option(0.45, "--iou", help="Detectors: NMS IoU threshold, 0..1."),
) -> None:
    from onnxcam.export import export_explainer
    from onnxcam.model import load

    if target not in ("top1", "input"):
        raise ArgumentError(f"--target must be top1 or input, got {target!r}")
    m = load(model, device="cpu", input_size=parse_size(size) if size else None)
    result = export_explainer(m, method, resolve_layer_arg(m, layer), path=output, target=target,  # type: ignore[arg-type]
                              detections=detections, conf=conf, iou=iou)
    extra = f" + {result.path.name}.data" if result.external_data else ""
    at = f" at layer{'s' if len(result.layers) > 1 else ''} {', '.join(result.layers)}" if result.layers else ""
    explained = ", ".join(result.detection_outputs or (result.class_output,))
    typer.echo(f"wrote {result.path}{extra}{at}: inputs {', '.join(result.inputs)}; outputs "
               f"{', '.join(result.model_outputs)}, {explained}, {', '.join(result.maps.values())}")
