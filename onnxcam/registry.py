"""Method names as the CLI and users type them -> CAM classes, with what each costs."""

from __future__ import annotations

from dataclasses import dataclass

from onnxcam.explainers.base import BaseCAM
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

METHODS: dict[str, type[BaseCAM]] = {
    "cam": CAM,
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "smoothgradcam++": SmoothGradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "hirescam": HiResCAM,
    "gradcam-elementwise": GradCAMElementWise,
    "eigencam": EigenCAM,
    "eigengradcam": EigenGradCAM,
    "fullgrad": FullGrad,
    "scorecam": ScoreCAM,
    "sscam": SSCAM,
    "ablationcam": AblationCAM,
}


@dataclass(frozen=True)
class MethodInfo:
    name: str
    gradients: bool
    cost: str
    summary: str


_COST = {
    "cam": "1 forward",
    "gradcam": "1 forward + 1 head backward",
    "gradcam++": "1 forward + 1 head backward",
    "smoothgradcam++": "(1 + samples) x (forward + head backward)",
    "xgradcam": "1 forward + 1 head backward",
    "layercam": "1 forward + 1 head backward",
    "hirescam": "1 forward + 1 head backward",
    "gradcam-elementwise": "1 forward + 1 head backward",
    "eigencam": "1 forward + SVD",
    "eigengradcam": "1 forward + 1 head backward + SVD",
    "fullgrad": "1 forward + 1 full backward",
    "scorecam": "1 + C forwards (C = channels; constant channels once)",
    "sscam": "1 + samples x C forwards",
    "ablationcam": "1 forward + C head runs",
}


def method_info() -> list[MethodInfo]:
    """One row per method: name, whether it needs gradients, its cost, a one-line summary."""
    rows = []
    for name, cls in METHODS.items():
        doc = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
        doc = doc.split(": ", 1)[-1] if len(doc) > 90 else doc
        rows.append(MethodInfo(name, cls.uses_gradients, _COST[name], doc))
    return rows


def get_method(name: str) -> type[BaseCAM]:
    from onnxcam.errors import ArgumentError

    key = name.strip().lower().replace("_", "-")
    aliases = {"gradcampp": "gradcam++", "gradcamplusplus": "gradcam++", "smoothgradcampp": "smoothgradcam++",
               "smoothgradcamplusplus": "smoothgradcam++", "ss-cam": "sscam", "score-cam": "scorecam",
               "ablation-cam": "ablationcam", "grad-cam": "gradcam", "eigen-cam": "eigencam"}
    key = aliases.get(key, key)
    if key not in METHODS:
        raise ArgumentError(f"unknown method {name!r}: choose one of {', '.join(METHODS)} (see `onnxcam methods`)")
    return METHODS[key]
