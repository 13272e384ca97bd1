"""Object detectors: output layouts, decoding and NMS, one target per detection, default layers.

Importing the package registers the detection task with ``onnxcam.tasks.detect_task``, so a
``Model`` whose outputs read as a detector's gets a ``DetectionTask``.
"""

from onnxcam.detection.decode import DecodeOptions, Detection, box_iou_matrix, decode, nms, to_image_boxes
from onnxcam.detection.end2end import PreNms, pre_nms
from onnxcam.detection.layers import head_layers
from onnxcam.detection.layouts import BOX_FORMATS, KINDS, DetectionLayout, LayoutError, recognise
from onnxcam.detection.targets import DetectionScoreTarget, DRiseTarget
from onnxcam.detection.task import DetectionTask, recognise_task
from onnxcam.tasks import RECOGNISERS

if recognise_task not in RECOGNISERS:
    RECOGNISERS.append(recognise_task)

__all__ = ["BOX_FORMATS", "KINDS", "DRiseTarget", "DecodeOptions", "Detection", "DetectionLayout",
           "DetectionScoreTarget", "DetectionTask", "LayoutError", "PreNms", "box_iou_matrix", "decode",
           "head_layers", "nms", "pre_nms", "recognise", "recognise_task", "to_image_boxes"]
