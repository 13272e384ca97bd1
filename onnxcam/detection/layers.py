"""The default layers of a detector: the feature maps that feed its detection head, one per stride.

A detection head reads each pyramid level with two or more convolutions (YOLOv8's box and class
branches, the PAN's downsampling conv next to them, RetinaNet's box and class towers). Per spatial
size, the last 4-D tensor read by at least two Conv nodes is that level's feature map; the levels
are taken from the coarsest up until their cells add up to the number of predictions (times the
anchors per cell, the fewest that fit). That never lands inside the box decoder (the DFL conv reads a ``(N, 16, 4, A)``
tensor whose "spatial" size is not a grid of the pyramid).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from onnxcam.errors import LayerNotFoundError
from onnxcam.layers import Layer

MAX_ANCHORS_PER_CELL = 9


def head_layers(model: onnx.ModelProto, layers: Sequence[Layer], predictions: int,
                model_name: str = "model") -> tuple[str, ...]:
    """Tensor names of the head's input feature maps, finest first; ``predictions``: A per image."""
    conv_readers: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "Conv" and node.input:
            conv_readers[node.input[0]] = conv_readers.get(node.input[0], 0) + 1
    per_size: dict[tuple[int, int], Layer] = {}
    for layer in layers:
        spatial = layer.spatial
        if spatial is None or spatial[0] <= 1 or spatial[1] <= 1 or conv_readers.get(layer.name, 0) < 2:
            continue
        per_size[spatial] = layer  # graph order: the last one of each size wins
    levels = sorted(per_size.items(), key=lambda kv: kv[0][0] * kv[0][1])
    cells = np.cumsum([h * w for (h, w), _ in levels])
    # The fewest anchors per cell first: a 16x16 + 8x8 head has 320 predictions, which the 8x8
    # level alone would also explain with 5 anchors per cell.
    for m in range(1, MAX_ANCHORS_PER_CELL + 1):
        for depth, total in enumerate(cells):
            if total * m == predictions:
                chosen = [layer for _, layer in levels[: depth + 1]]
                return tuple(c.name for c in sorted(chosen, key=lambda c: c.index))
    raise LayerNotFoundError(
        f"could not find the feature maps feeding {model_name}'s detection head ({predictions} predictions per "
        "image): name the layers explicitly (see `onnxcam layers MODEL`)"
    )


__all__ = ["head_layers"]
