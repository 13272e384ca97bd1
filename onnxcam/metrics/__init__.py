"""Faithfulness and localisation metrics for saliency maps, model-agnostic.

Every forward goes through ``predict(images (M, ...) float32) -> (M, K)``, so the metrics are
plain numpy around whatever backs ``predict`` (batched onnxruntime sessions in onnxcam).
"""

from onnxcam.metrics.confidence import AverageDropIncrease, average_drop_increase
from onnxcam.metrics.correlation import (
    average_ranks,
    pearson,
    rank_correlation,
    sanity_check,
    top_region_iou,
)
from onnxcam.metrics.localisation import (
    box_iou,
    cam_box_iou,
    cam_boxes,
    energy_pointing_game,
    pointing_game,
)
from onnxcam.metrics.rise import DeletionInsertion, blur_images, deletion_insertion
from onnxcam.metrics.road_eval import RoadResult, noisy_linear_impute, road, road_combined

__all__ = [
    "AverageDropIncrease",
    "DeletionInsertion",
    "RoadResult",
    "average_drop_increase",
    "average_ranks",
    "blur_images",
    "box_iou",
    "cam_box_iou",
    "cam_boxes",
    "deletion_insertion",
    "energy_pointing_game",
    "noisy_linear_impute",
    "pearson",
    "pointing_game",
    "rank_correlation",
    "road",
    "road_combined",
    "sanity_check",
    "top_region_iou",
]
