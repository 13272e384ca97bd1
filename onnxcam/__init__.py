"""onnxcam: class activation maps for exported ONNX vision models, run with onnxruntime.

    import onnxcam
    model = onnxcam.load("model.onnx")
    pp = onnxcam.get_preset("imagenet", model.input.size, model.input.layout)
    x = onnxcam.preprocess([onnxcam.load_image("cat.jpg")], pp)
    maps = onnxcam.GradCAM(model, layer="auto")(x)          # (N, H, W) in [0, 1]
"""

from onnxcam import detection, errors
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
from onnxcam.image import PRESETS, Preprocess, expand_image_paths, get_preset, load_image, preprocess, to_display
from onnxcam.model import InputSpec, Model, load
from onnxcam.overlay import COLORMAPS, make_grid, show_cam_on_image
from onnxcam.registry import METHODS, get_method, method_info
from onnxcam.targets import ClassTarget, EmbeddingTarget, OutputTarget, SegmentationTarget, SoftmaxTarget, Target
from onnxcam.tasks import TASKS, ClassificationTask, EmbeddingTask, SegmentationTask, Task, detect_task
from onnxcam.views import FeatureView

__version__ = "0.1.0"

__all__ = [
    "CAM", "COLORMAPS", "METHODS", "PRESETS", "SSCAM", "TASKS", "AblationCAM", "BaseCAM", "ClassTarget",
    "ClassificationTask", "DRiseTarget", "DetectionScoreTarget", "DetectionTask", "EigenCAM", "EigenGradCAM",
    "EmbeddingTarget", "EmbeddingTask", "Explanation", "FeatureView", "FullGrad", "GradCAM", "GradCAMElementWise",
    "GradCAMPlusPlus", "Gradients", "HiResCAM", "InputSpec", "LayerCAM", "Model", "OutputTarget", "Preprocess",
    "ScoreCAM", "SegmentationTarget", "SegmentationTask", "SmoothGradCAMPlusPlus", "SoftmaxTarget", "Target", "Task",
    "XGradCAM", "__version__", "box_iou", "cam_to_boxes", "detect_task", "detection", "errors", "expand_image_paths",
    "get_method", "get_preset", "load", "load_image", "make_grid", "method_info", "preprocess", "show_cam_on_image",
    "to_display",
]
