"""CAM methods as pure numpy functions: arrays in, channel weights or raw maps ``(N, h, w)`` out.

Methods that must re-run the model (Score-CAM, SS-CAM, Ablation-CAM, Smooth Grad-CAM++) take a
callable; none touches ONNX protobufs or sessions.
"""

from onnxcam.methods.ablation import ablation_value, ablation_weights
from onnxcam.methods.attention import attention_rollout, gradient_attention, token_map
from onnxcam.methods.cam import cam_weights
from onnxcam.methods.eigen import eigencam, eigengradcam, principal_projection
from onnxcam.methods.fullgrad import fullgrad
from onnxcam.methods.gradient import (
    cancellation,
    elementwise_products,
    gradcam_elementwise,
    gradcam_plusplus_weights,
    gradcam_weights,
    hirescam,
    layercam,
    weighted_sum,
    xgradcam_weights,
)
from onnxcam.methods.interpolate import resize_bilinear
from onnxcam.methods.score import scorecam_weights, select_channels_by_variance, sscam_weights
from onnxcam.methods.smooth import smooth_gradcam_plusplus

__all__ = [
    "ablation_value",
    "ablation_weights",
    "attention_rollout",
    "cam_weights",
    "cancellation",
    "eigencam",
    "eigengradcam",
    "elementwise_products",
    "fullgrad",
    "gradcam_elementwise",
    "gradcam_plusplus_weights",
    "gradcam_weights",
    "gradient_attention",
    "hirescam",
    "layercam",
    "principal_projection",
    "resize_bilinear",
    "scorecam_weights",
    "select_channels_by_variance",
    "smooth_gradcam_plusplus",
    "sscam_weights",
    "token_map",
    "weighted_sum",
    "xgradcam_weights",
]
