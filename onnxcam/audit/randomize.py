"""Cascading model randomisation for the saliency sanity check.

Adebayo, Gilmer, Muelly, Goodfellow, Hardt, Kim, "Sanity Checks for Saliency Maps", NeurIPS 2018
(arXiv:1810.03292): weights are re-drawn layer by layer from the output end; a method whose maps
depend on what the model learned must produce maps that decorrelate from the original ones.

Step ``k`` re-draws the initializers of the last ``k`` weight-carrying nodes (Conv, ConvTranspose,
Gemm, MatMul: weights and biases). Each tensor gets its own seeded generator (seed, position from
the output end), so step ``k + 1`` keeps step ``k``'s random values and only adds one layer: the
cascade is nested, as in the paper. New values are ``N(0, std(original))``, same shape and dtype;
a tensor with zero spread (e.g. zero biases) stays as it is. Weights behind a DequantizeLinear
(QDQ int8 models) are re-drawn in the integer domain, clipped to the type's range.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcam.errors import ArgumentError, OnnxCamWarning, OnnxRuntimeError
from onnxcam.metrics.correlation import rank_correlation
from onnxcam.model import LayerSpec, Model
from onnxcam.registry import get_method
from onnxcam.tasks import class_indices, classifier_task

_SALT = 0x6F6E6E78
WEIGHT_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


@dataclass(frozen=True)
class WeightNode:
    """A node whose parameters the cascade re-draws: its name and the initializer names it reads."""

    node: str
    op_type: str
    initializers: tuple[str, ...]


def weight_nodes(model_proto: onnx.ModelProto) -> list[WeightNode]:
    """Weight-carrying nodes in graph (topological) order, each with the initializers it reads.

    A weight is an initializer fed directly, or through one DequantizeLinear (QDQ models). Nodes
    with no such input (e.g. a MatMul of two activations) are left out.
    """
    graph = model_proto.graph
    inits = {t.name for t in graph.initializer}
    dq_source = {n.output[0]: n.input[0] for n in graph.node
                 if n.op_type == "DequantizeLinear" and n.input and n.input[0] in inits}
    out: list[WeightNode] = []
    for i, node in enumerate(graph.node):
        if node.op_type not in WEIGHT_OPS:
            continue
        names: list[str] = []
        for inp in node.input:
            source = inp if inp in inits else dq_source.get(inp)
            if source is not None and source not in names:
                names.append(source)
        if names:
            out.append(WeightNode(node.name or f"{node.op_type}_{i}", node.op_type, tuple(names)))
    return out


def _redraw(tensor: onnx.TensorProto, rng: np.random.Generator) -> onnx.TensorProto:
    arr = numpy_helper.to_array(tensor)
    if arr.size == 0:
        return tensor
    values = arr.astype(np.float64)
    std = float(values.std())
    if std == 0.0 or not np.isfinite(std):
        return tensor  # nothing to match; a zero bias stays zero
    drawn = rng.normal(0.0, std, size=arr.shape)
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        drawn = np.clip(np.rint(drawn), info.min, info.max)
    new = numpy_helper.from_array(drawn.astype(arr.dtype), tensor.name)
    return new


def _check_steps(steps: int | Sequence[int], available: int) -> list[int]:
    ks = list(range(1, int(steps) + 1)) if isinstance(steps, (int, np.integer)) else [int(k) for k in steps]
    if not ks:
        raise ArgumentError("steps is empty: pass a number of steps (e.g. 4) or the layer counts k to randomise")
    if available == 0:
        raise ArgumentError(
            "the model has no Conv/Gemm/MatMul node with initializer weights to randomise; the cascading "
            "randomisation sanity check needs a model with learned weights stored as initializers"
        )
    bad = [k for k in ks if not 1 <= k <= available]
    if bad:
        raise ArgumentError(
            f"randomisation steps {bad} out of range: the model has {available} weight-carrying nodes, so each "
            f"step must randomise 1..{available} of them"
        )
    return ks


def spread_steps(available: int, count: int) -> list[int]:
    """``count`` cascade depths from 1 (last layer only) to ``available`` (every layer), spaced
    geometrically so the top of the network, where most maps change, is sampled densely."""
    if available < 1 or count < 1:
        return []
    raw = np.geomspace(1, available, num=min(count, available))
    return sorted({int(round(v)) for v in raw} | {available})


def randomized_models(
    model_proto: onnx.ModelProto,
    steps: int | Sequence[int],
    seed: int = 0,
) -> list[onnx.ModelProto]:
    """Cascading randomisations of ``model_proto``, output end first; the input is never modified.

    ``steps``: an int ``n`` gives steps ``k = 1..n``; a sequence gives those ``k``. Model ``k``
    has the initializers of its last ``k`` weight-carrying nodes (see :func:`weight_nodes`)
    re-drawn. Returns one new ``ModelProto`` per step, in the order of ``steps``.
    """
    nodes = weight_nodes(model_proto)
    ks = _check_steps(steps, len(nodes))
    from_top = list(reversed(nodes))
    # Draw each tensor once: the cascade is nested, so step k reuses step k-1's values.
    drawn: dict[str, onnx.TensorProto] = {}
    originals = {t.name: t for t in model_proto.graph.initializer}
    for depth, wn in enumerate(from_top[: max(ks)]):
        for j, name in enumerate(wn.initializers):
            if name not in drawn:
                # The salt keeps these streams apart from default_rng(seed) draws made elsewhere
                # (SeedSequence(0) and SeedSequence([0, 0, 0]) coincide).
                rng = np.random.default_rng([seed, depth, j, _SALT])
                drawn[name] = _redraw(originals[name], rng)
    out: list[onnx.ModelProto] = []
    for k in ks:
        chosen = {name for wn in from_top[:k] for name in wn.initializers}
        copy = onnx.ModelProto()
        copy.CopyFrom(model_proto)
        for t in copy.graph.initializer:
            if t.name in chosen:
                t.CopyFrom(drawn[t.name])
        out.append(copy)
    return out


@contextlib.contextmanager
def model_from_proto(
    proto: onnx.ModelProto,
    name: str = "model.onnx",
    device: str = "cpu",
    input_size: tuple[int, int] | None = None,
    layout: str | None = None,
    threads: int | None = None,
) -> Iterator[Model]:
    """A ``Model`` loaded from an in-memory proto, through a private temporary folder.

    ``Model`` reads from a path; the proto is written to a fresh ``tempfile`` folder (never next
    to the user's files) that is removed when the block ends.
    """
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "model.onnx"
    with tempfile.TemporaryDirectory(prefix="onnxcam-audit-") as tmp:
        path = Path(tmp) / safe
        onnx.save_model(proto, str(path))
        yield Model(path, device=device, input_size=input_size, layout=layout, threads=threads)


@dataclass
class SanityResult:
    """Spearman rank correlation of the randomised models' maps with the original maps.

    ``depths[s]`` layers were randomised at step ``s``; ``per_image`` is ``(S, N)`` (NaN where a
    map is constant, so the correlation is undefined); ``mean`` is ``(S,)``, NaN left out.
    """

    method: str
    depths: list[int]
    randomized: list[list[str]]  # per step, the nodes re-drawn (output end first)
    per_image: np.ndarray
    mean: np.ndarray
    classes: np.ndarray
    notes: list[str]


def sanity_run(
    model: Model,
    method: str,
    x: np.ndarray,
    steps: int | Sequence[int] = 4,
    layer: LayerSpec = "auto",
    batch_size: int = 16,
    seed: int = 0,
    method_options: dict[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
) -> SanityResult:
    """Run ``method`` on ``x`` with the trained model and with each cascading randomisation.

    ``steps``: an int ``n`` spreads ``n`` depths from the last layer to all (``spread_steps``); a
    sequence gives the depths. Every model explains the original model's predicted class, at the
    same layer (tensor names survive the randomisation). ``progress(1)`` after each step.
    """
    options = dict(method_options or {})
    cls = get_method(method)
    cam = cls(model, layer, batch_size=batch_size, **options)
    original = cam.explain(x)
    classes = class_indices(classifier_task(cam.task, "the sanity check"), original.targets)
    nodes = list(reversed(weight_nodes(model.proto)))
    depths = spread_steps(len(nodes), int(steps)) if isinstance(steps, (int, np.integer)) else [int(k) for k in steps]
    protos = randomized_models(model.proto, depths, seed=seed)
    per_image = np.full((len(depths), x.shape[0]), np.nan)
    notes: list[str] = []
    for s, (k, proto) in enumerate(zip(depths, protos, strict=True)):
        try:
            with model_from_proto(proto, f"{Path(model.name).stem}-randomized-top{k}.onnx", device=model.device,
                                  input_size=model.input.size, layout=model.input.layout,
                                  threads=model.threads) as rmodel:
                rcam = cls(rmodel, list(cam.layers), batch_size=batch_size, **options)
                with warnings.catch_warnings():
                    # Random weights often give blank maps; that is a result here, not a problem.
                    warnings.simplefilter("ignore", OnnxCamWarning)
                    maps = rcam.explain(x, original.targets).maps
                    per_image[s] = [rank_correlation(a, b) for a, b in zip(original.maps, maps, strict=True)]
        except OnnxRuntimeError as exc:
            notes.append(f"step {k}: the randomised model failed to run ({exc}); correlation left undefined")
        if progress is not None:
            progress(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN step -> NaN mean, reported as undefined
        mean = np.nanmean(per_image, axis=1) if per_image.size else np.zeros(0)
    return SanityResult(cls.name, depths, [[n.node for n in nodes[:k]] for k in depths], per_image,
                        np.asarray(mean, dtype=np.float64), classes, notes)


__all__ = ["SanityResult", "WeightNode", "model_from_proto", "randomized_models", "sanity_run", "spread_steps",
           "weight_nodes"]
