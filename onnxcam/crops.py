"""Gradients through a head's local region, taken on crops (see ``onnxcam.graph.local``).

The gradient engine hands over the exact gradients at the region's boundary (from the tail's
gradient graph) and the body's values of the region's inputs; this module finds, per image row,
the image window the boundary gradient reaches back to, crops every input to it, runs the region's
gradient graph on the crops (one graph per crop shape and batch, cached) and pastes the crop
gradients into full-size zero maps. Rows whose gradient is dense get a window covering the whole
image: the same work as one full gradient graph, and the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from onnxcam.graph.local import LocalRegion
from onnxcam.graph.prune import prune_to_outputs
from onnxcam.graph.shapes import TensorInfo
from onnxcam.graph.toposort import ancestors
from onnxcam.runtime import run

Box = tuple[int, int, int, int]
Window = tuple[int, int, int, int]  # top, left, height, width in model-input pixels


@dataclass(frozen=True)
class CropGraph:
    """A built crop gradient graph: its session, the region inputs it reads, seed inputs by boundary
    tensor, the ``wrt`` tensors the seeds reach and their gradient outputs."""

    session: object
    inputs: tuple[str, ...]
    seed_inputs: dict[str, str]
    wrt: tuple[str, ...]
    grad_outputs: dict[str, str]


def seed_box(g: np.ndarray) -> Box | None:
    """The box ``(y0, x0, y1, x1)`` of the non-zero positions of one row's gradient ``g (C, h, w)``."""
    hit = np.any(g != 0, axis=0)
    ys = np.flatnonzero(hit.any(axis=1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero(hit.any(axis=0))
    return (int(ys[0]), int(xs[0]), int(ys[-1]), int(xs[-1]))


def _crop(v: np.ndarray, window: Window, stride: tuple[int, int]) -> np.ndarray:
    top, left, h, w = window
    sy, sx = stride
    return v[..., top // sy:(top + h) // sy, left // sx:(left + w) // sx]


class CropGradients:
    """Gradients at ``wrt`` (region inputs or region tensors) from boundary gradients, on crops.

    ``build(window (h, w), n)`` returns the region's gradient graph over crops of that size at batch
    ``n`` (a ``CropGraph``); the engine supplies it so that sessions are made on the model's device.
    """

    def __init__(self, region: LocalRegion, source: onnx.ModelProto, infos: Mapping[str, TensorInfo],
                 wrt: Sequence[str], new_session: Callable[[onnx.ModelProto], object]) -> None:
        self.region = region
        self.source = source
        self.infos = infos
        self.wrt = tuple(wrt)
        produced = {o for node in region.nodes for o in node.output}
        # Boundary tensors the region computes get seeds; those it is fed pass their gradient straight.
        self.seeded = tuple(b for b in region.boundary if b in produced)
        used = produced | {i for node in region.nodes for i in node.input}
        self.crop_wrt = tuple(w for w in self.wrt if w in used)
        self.new_session = new_session
        self._graphs: dict[tuple[tuple[str, ...], int, int, int], CropGraph] = {}

    def graph(self, seeded: tuple[str, ...], size: tuple[int, int], n: int) -> CropGraph:
        """The region's gradient graph seeded at ``seeded`` only (branches no seed reaches are pruned
        away: a detection at one level runs none of the other levels' branches) over crops of ``size``."""
        key = (seeded, size[0], size[1], n)
        built = self._graphs.get(key)
        if built is None:
            from onnxcam.gradients import build_gradient_model

            proto = self.region.crop_model(self.source, size, n, self.infos, seeded)
            _, reached = ancestors(proto.graph.node, seeded)
            wrt = tuple(w for w in self.crop_wrt if w in reached)
            g = build_gradient_model(proto, wrt, seeded)
            pruned = prune_to_outputs(g.model, list(g.grad_outputs.values()))
            _, read = ancestors(pruned.graph.node, g.grad_outputs.values())
            inputs = [i for i in pruned.graph.input if i.name in read]
            del pruned.graph.input[:]
            pruned.graph.input.extend(inputs)
            region_inputs = tuple(i.name for i in inputs if i.name in self.region.strides)
            built = self._graphs[key] = CropGraph(self.new_session(pruned), region_inputs, dict(g.seed_inputs), wrt,
                                                  dict(g.grad_outputs))
        return built

    def windows(self, boundary: Mapping[str, np.ndarray]) -> list[tuple[tuple[str, ...], Window] | None]:
        """Per row, the boundary tensors its gradient reaches and the image window it reaches back
        to (None: no gradient through the region)."""
        rows = next(iter(boundary.values())).shape[0]
        out: list[tuple[tuple[str, ...], Window] | None] = []
        for i in range(rows):
            seeds = {b: box for b in self.seeded if (box := seed_box(boundary[b][i])) is not None}
            if not seeds:
                out.append(None)
                continue
            out.append((tuple(seeds), self.region.window(self.region.support(seeds))))
        return out

    def gradients(self, feeds: Mapping[str, np.ndarray], boundary: Mapping[str, np.ndarray],
                  batch: int, what: str,
                  check: Callable[[dict[str, np.ndarray]], None] | None = None,
                  found: Sequence[tuple[tuple[str, ...], Window] | None] | None = None) -> dict[str, np.ndarray]:
        """Full-size gradients ``(N, C, h, w)`` at every ``wrt`` tensor: the region's share, from crops,
        plus the boundary gradient itself where a ``wrt`` tensor is read by the tail directly.

        ``feeds``: the body's values of every region input; ``boundary``: the tail's gradients at
        every boundary tensor, ``(N, C, h, w)`` each; ``check`` screens each crop run's gradients and
        what passes straight through (it raises on NaN/Inf); ``found``: ``windows(boundary)`` if the
        caller has it."""
        region = self.region
        rows = next(iter(boundary.values())).shape[0]
        grads: dict[str, np.ndarray] = {}
        for w in self.wrt:  # every layer is among the body's outputs on the crop path
            grads[w] = np.zeros((rows,) + feeds[w].shape[1:], dtype=feeds[w].dtype)
        if found is None:
            found = self.windows(boundary)
        windows: dict[int, Window] = {}
        groups: dict[tuple[tuple[str, ...], int, int], list[int]] = {}
        for i, hit in enumerate(found):
            if hit is not None:
                seeded, windows[i] = hit
                groups.setdefault((seeded, hit[1][2], hit[1][3]), []).append(i)
        for (seeded, h, wd), members in groups.items():
            for start in range(0, len(members), batch):
                part = members[start:start + batch]
                n = _bucket(len(part), batch)
                graph = self.graph(seeded, (h, wd), n)
                feed: dict[str, np.ndarray] = {}
                for c in graph.inputs:
                    feed[c] = _stack([_crop(feeds[c][i], windows[i], region.strides[c]) for i in part], n)
                for b, seed_name in graph.seed_inputs.items():
                    feed[seed_name] = _stack([_crop(boundary[b][i], windows[i], region.strides[b]) for i in part], n)
                names = [graph.grad_outputs[w] for w in graph.wrt]
                values = run(graph.session, feed, names, what=what)  # type: ignore[arg-type]
                if check is not None:
                    check(dict(zip(graph.wrt, values)))
                for w, v in zip(graph.wrt, values):
                    sy, sx = region.strides[w]
                    for k, i in enumerate(part):
                        top, left = windows[i][:2]
                        grads[w][i, :, top // sy:(top + h) // sy, left // sx:(left + wd) // sx] = v[k]
        for w in self.wrt:
            if w in boundary and w not in self.seeded:
                if check is not None:
                    check({w: boundary[w]})
                grads[w] += boundary[w]
        return grads


def _bucket(m: int, limit: int) -> int:
    """The crop graph's batch for ``m`` rows: the next power of two (few graphs), at most ``limit``."""
    n = 1
    while n < m:
        n *= 2
    return max(min(n, limit), m)


def _stack(parts: list[np.ndarray], n: int) -> np.ndarray:
    """Rows stacked and zero-padded to ``n`` (zero seeds give zero gradients on padded rows)."""
    if len(parts) == n == 1:  # one copy, contiguous for onnxruntime
        return np.ascontiguousarray(parts[0][None])
    out = np.zeros((n,) + parts[0].shape, dtype=parts[0].dtype)
    for k, p in enumerate(parts):
        out[k] = p
    return out


__all__ = ["CropGradients", "seed_box"]
