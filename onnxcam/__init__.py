"""onnxcam: class activation maps for exported ONNX vision models, run with onnxruntime.

    import onnxcam
    model = onnxcam.load("model.onnx")
    pp = onnxcam.get_preset("imagenet", model.input.size, model.input.layout)
    x = onnxcam.preprocess([onnxcam.load_image("cat.jpg")], pp)
    maps = onnxcam.GradCAM(model, layer="auto")(x)          # (N, H, W) in [0, 1]
"""

# The names below are imported on first use (PEP 562): onnx, onnxruntime and OpenCV take most of a
# second to import, and `import onnxcam.errors` or `onnxcam --help` should not pay for them.

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from onnxcam import errors

if TYPE_CHECKING:
    from onnxcam.boxes import box_iou, cam_to_boxes
    from onnxcam.detection import DetectionScoreTarget, DetectionTask, DRiseTarget
    from onnxcam.engine import Gradients
    from onnxcam.explainers.base import BaseCAM, Explanation
    from onnxcam.explainers.gradient import (
        EigenGradCAM,
        GradCAM,
        GradCAMElementWise,
        GradCAMPlusPlus,
        HiResCAM,
        LayerCAM,
        SmoothGradCAMPlusPlus,
        XGradCAM,
    )
    from onnxcam.explainers.perturbation import SSCAM, AblationCAM, ScoreCAM
    from onnxcam.explainers.structural import CAM, EigenCAM, FullGrad
    from onnxcam.export import export_explainer
    from onnxcam.image import PRESETS, Preprocess, expand_image_paths, get_preset, load_image, preprocess, to_display
    from onnxcam.labels import read_labels, resolve_labels
    from onnxcam.method_specs import MethodOption, MethodSpec, method_spec
    from onnxcam.model import InputSpec, Model, load
    from onnxcam.overlay import COLORMAPS, make_grid, show_cam_on_image
    from onnxcam.registry import METHODS, get_method, method_info, parse_method_options
    from onnxcam.sparse_seed import SparseSeed
    from onnxcam.targets import (
        ClassifierOutputTarget,
        ClassTarget,
        EmbeddingTarget,
        OutputTarget,
        SegmentationTarget,
        SoftmaxTarget,
        Target,
    )
    from onnxcam.tasks import TASKS, ClassificationTask, EmbeddingTask, SegmentationTask, Task, detect_task
    from onnxcam.views import FeatureView


__version__ = "0.1.0"

_EXPORTS: dict[str, tuple[str, ...]] = {
    "onnxcam.detection": ("DetectionScoreTarget", "DetectionTask", "DRiseTarget"),
    "onnxcam.engine": ("Gradients",),
    "onnxcam.boxes": ("box_iou", "cam_to_boxes"),
    "onnxcam.explainers.base": ("BaseCAM", "Explanation"),
    "onnxcam.explainers.gradient": ("EigenGradCAM", "GradCAM", "GradCAMElementWise", "GradCAMPlusPlus", "HiResCAM",
                                    "LayerCAM", "SmoothGradCAMPlusPlus", "XGradCAM"),
    "onnxcam.explainers.perturbation": ("SSCAM", "AblationCAM", "ScoreCAM"),
    "onnxcam.explainers.structural": ("CAM", "EigenCAM", "FullGrad"),
    "onnxcam.export": ("export_explainer",),
    "onnxcam.image": ("PRESETS", "Preprocess", "expand_image_paths", "get_preset", "load_image", "preprocess",
                      "to_display"),
    "onnxcam.method_specs": ("MethodOption", "MethodSpec", "method_spec"),
    "onnxcam.model": ("InputSpec", "Model", "load"),
    "onnxcam.overlay": ("COLORMAPS", "make_grid", "show_cam_on_image"),
    "onnxcam.registry": ("METHODS", "get_method", "method_info", "parse_method_options"),
    "onnxcam.labels": ("read_labels", "resolve_labels"),
    "onnxcam.sparse_seed": ("SparseSeed",),
    "onnxcam.targets": ("ClassTarget", "ClassifierOutputTarget", "EmbeddingTarget", "OutputTarget",
                        "SegmentationTarget", "SoftmaxTarget", "Target"),
    "onnxcam.tasks": ("TASKS", "ClassificationTask", "EmbeddingTask", "SegmentationTask", "Task", "detect_task"),
    "onnxcam.views": ("FeatureView",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        return _submodule(name)
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def _submodule(name: str) -> Any:
    """``onnxcam.methods`` and the like after a bare ``import onnxcam``, as when the package imported them eagerly."""
    try:
        return importlib.import_module(f"onnxcam.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"onnxcam.{name}":
            raise
        raise AttributeError(f"module 'onnxcam' has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


__all__ = [
    "CAM", "COLORMAPS", "METHODS", "PRESETS", "SSCAM", "TASKS", "AblationCAM", "BaseCAM", "ClassTarget",
    "ClassifierOutputTarget", "ClassificationTask", "DRiseTarget", "DetectionScoreTarget", "DetectionTask",
    "EigenCAM", "EigenGradCAM", "EmbeddingTarget", "EmbeddingTask", "Explanation",
    "FeatureView", "FullGrad", "GradCAM", "GradCAMElementWise", "GradCAMPlusPlus", "Gradients", "HiResCAM",
    "InputSpec", "LayerCAM", "MethodOption", "MethodSpec", "Model", "OutputTarget", "Preprocess", "ScoreCAM",
    "SegmentationTarget", "SegmentationTask", "SmoothGradCAMPlusPlus", "SoftmaxTarget", "SparseSeed", "Target",
    "Task",
    "XGradCAM", "__version__", "box_iou", "cam_to_boxes", "detect_task", "errors", "expand_image_paths",
    "export_explainer", "get_method", "get_preset", "load", "load_image", "make_grid", "method_info", "method_spec",
    "parse_method_options", "preprocess", "read_labels", "resolve_labels", "show_cam_on_image", "to_display",
]
