"""Gradients through a head's local region, taken on crops (see ``onnxcam.graph.local``).

The gradient engine hands over the exact gradients at the region's boundary (from the tail's
gradient graph) and the body's values of the region's inputs; this module finds, per image row,
the image window the boundary gradient reaches back to, crops every input to it, runs the region's
gradient graph on the crops (one graph per crop shape and batch, cached) and pastes the crop
gradients into full-size zero maps. Rows whose gradient is dense get a window covering the whole
image: the same work as one full gradient graph, and the same numbers.

Where the region has no pooling node, each tensor runs on its own window instead
(``onnxcam.graph.local_windows``): the seeds' window fixes the graph, every tensor gets the box its
consumers read, and the coarse levels no longer run on the finest level's window.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxcam.graph.local import Box, LocalRegion
from onnxcam.graph.local_windows import WindowMask, windowed_model
from onnxcam.graph.protos import opset_version
from onnxcam.graph.prune import prune_to_outputs
from onnxcam.graph.seed_parts import concat_parts
from onnxcam.graph.shapes import TensorInfo
from onnxcam.graph.toposort import ancestors
from onnxcam.runtime import run

Window = tuple[int, int, int, int]  # top, left, height, width in model-input pixels
Geometry = tuple[tuple[str, ...], int, int]  # seeded tensors, window height and width
# Receives one row's gradient at one tensor: (tensor, row, (rows, columns) of its map, values (C, h, w)).
Put = Callable[[str, int, tuple[slice, slice], np.ndarray], None]


@dataclass(frozen=True)
class CropGraph:
    """A built crop gradient graph: its session, the region inputs it reads, seed inputs by boundary
    tensor, the ``wrt`` tensors the seeds reach and their gradient outputs."""

    session: object
    inputs: tuple[str, ...]
    seed_inputs: dict[str, str]
    wrt: tuple[str, ...]
    grad_outputs: dict[str, str]
    masks: Mapping[str, WindowMask] = field(default_factory=dict)


@dataclass(frozen=True)
class WindowPlan:
    """Per-tensor windows for one seeded set and seed window size: each tensor's box in its own grid
    relative to the seed window's origin (``LocalRegion.reach``), and the image area they span."""

    boxes: dict[str, Box]
    area: int
    reach: tuple[tuple[int, int], tuple[int, int]]  # per axis, the pixels the boxes span from the origin

    def on_map(self, window: Window, image: tuple[int, int]) -> bool:
        """Whether every box of a seed window at ``window``'s origin lies on its map (no masks needed)."""
        return all(0 <= window[axis] + self.reach[axis][0] and window[axis] + self.reach[axis][1] <= image[axis]
                   for axis in (0, 1))


def seed_box(g: np.ndarray) -> Box | None:
    """The box ``(y0, x0, y1, x1)`` of the non-zero positions of one row's gradient ``g (C, h, w)``."""
    hit = np.any(g != 0, axis=0)  # NaN != 0: a NaN reaches the crops' gradient check
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
        # A boundary tensor concatenated over channels inside the region (a YOLOv8 level's box and
        # class maps) is seeded at the parts its gradient reaches: a class score's crop graph then
        # holds no box branch.
        self.parts: dict[str, tuple[tuple[str, int, int], ...]] = {}
        for b in self.seeded:
            p = concat_parts(source.graph, b, infos)
            if p is not None and p.axis == 1 and all(n in produced and n not in region.boundary for n in p.names):
                self.parts[b] = tuple((n, p.bounds[i], p.bounds[i + 1]) for i, n in enumerate(p.names))
        self.source_of = {n: (b, lo, hi) for b, ps in self.parts.items() for n, lo, hi in ps}
        self.new_session = new_session
        self._graphs: dict[tuple[tuple[str, ...], int, int, int, bool], CropGraph] = {}
        # Each tensor on its own window, unless a pooling node's padding (not zeros) is in the way or
        # the opset predates integer comparisons (the masks' Less).
        self.windowed = not region.pooled and opset_version(source) >= 9
        self._plans: dict[Geometry, WindowPlan] = {}
        self._steps: dict[tuple[str, ...], tuple[int, int]] = {}

    def graph(self, seeded: tuple[str, ...], size: tuple[int, int], n: int, edge: bool = True) -> CropGraph:
        """The region's gradient graph seeded at ``seeded`` only (branches no seed reaches are pruned
        away: a detection at one level runs none of the other levels' branches) over crops of ``size``
        (windowed: the seed window's size; ``edge``: whether it may meet the map's edge)."""
        key = (seeded, size[0], size[1], n, edge)
        built = self._graphs.get(key)
        if built is None:
            from onnxcam.gradients import build_gradient_model

            masks: dict[str, WindowMask] = {}
            if self.windowed:
                boxes = self.plan((seeded, size[0], size[1])).boxes
                proto, masks = windowed_model(self.region, self.source, boxes, n, self.infos, seeded, edge)
            else:
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
                                                  dict(g.grad_outputs),
                                                  {i.name: masks[i.name] for i in inputs if i.name in masks})
        return built

    def plan(self, geometry: Geometry) -> WindowPlan:
        """The per-tensor windows of the seeded tensors ``geometry[0]`` seeded on a window of
        ``geometry[1:]`` image pixels at origin 0, cached."""
        plan = self._plans.get(geometry)
        if plan is None:
            seeded, h, w = geometry
            region = self.region
            seeds = {t: (0, 0, h // region.strides[t][0] - 1, w // region.strides[t][1] - 1) for t in seeded}
            boxes = region.reach(seeds)
            spans = []
            for axis in (0, 1):
                lo = min(b[axis] * region.strides[t][axis] for t, b in boxes.items())
                hi = max((b[axis + 2] + 1) * region.strides[t][axis] for t, b in boxes.items())
                spans.append((lo, hi))
            area = min(spans[0][1] - spans[0][0], region.image[0]) * min(spans[1][1] - spans[1][0], region.image[1])
            plan = self._plans[geometry] = WindowPlan(boxes, area, (spans[0], spans[1]))
        return plan

    def area(self, hit: tuple[tuple[str, ...], Window]) -> int:
        """The image area (pixels) a row's crops span: what decides crops against one dense graph."""
        seeded, window = hit
        if not self.windowed:
            return window[2] * window[3]
        return self.plan((seeded, window[2], window[3])).area

    def _step(self, seeded: tuple[str, ...]) -> tuple[int, int]:
        """The seed window's alignment: the least common multiple of the strides its graph holds, so
        that its origin is on every tensor's grid."""
        step = self._steps.get(seeded)
        if step is None:
            strides = [self.region.strides[t] for t in self.region.reached_from(seeded)]
            step = self._steps[seeded] = (math.lcm(*(s[0] for s in strides)), math.lcm(*(s[1] for s in strides)))
        return step

    def _seed_window(self, seeds: Mapping[str, Box]) -> Window:
        """The image window holding every seed box, on multiples of ``_step`` (not clipped, not shifted:
        the windowed graph reads zeros past the map's edge). A window wider than one step is rounded up
        to an even number of steps: a graph is built per window size, and seeds spread over a few
        positions would otherwise make one per target."""
        step = self._step(tuple(seeds))
        out: list[int] = []
        for axis in (0, 1):
            lo = min(b[axis] * self.region.strides[t][axis] for t, b in seeds.items())
            hi = max((b[axis + 2] + 1) * self.region.strides[t][axis] for t, b in seeds.items())
            start = lo // step[axis] * step[axis]
            steps = -(-(hi - start) // step[axis])
            out += [start, (steps if steps == 1 else steps + steps % 2) * step[axis]]
        return (out[0], out[2], out[1], out[3])

    def windows(self, boundary: Mapping[str, Sequence[np.ndarray]],
                reach: Mapping[str, np.ndarray] | None = None) -> list[tuple[tuple[str, ...], Window] | None]:
        """Per row, the tensors to seed (boundary tensors its gradient reaches, or their reached
        channel parts) and the image window it reaches back to (None: no gradient through the
        region). ``reach``: per boundary tensor, the rows whose gradient there may be non-zero (the
        others are not screened)."""
        rows = len(next(iter(boundary.values())))
        out: list[tuple[tuple[str, ...], Window] | None] = []
        for i in range(rows):
            seeds: dict[str, Box] = {}
            for b in self.seeded:
                if reach is not None and b in reach and not reach[b][i]:
                    continue
                g = boundary[b][i]
                for name, lo, hi in self.parts.get(b, ((b, 0, g.shape[0]),)):
                    box = seed_box(g[lo:hi])
                    if box is not None:
                        seeds[name] = box
            if not seeds:
                out.append(None)
                continue
            if self.windowed:
                out.append((tuple(seeds), self._seed_window(seeds)))
            else:
                out.append((tuple(seeds), self.region.window(self.region.support(seeds))))
        return out

    def gradients(self, feeds: Mapping[str, np.ndarray], boundary: Mapping[str, Sequence[np.ndarray]],
                  batch: int, what: str,
                  check: Callable[[dict[str, np.ndarray]], None] | None = None,
                  found: Sequence[tuple[tuple[str, ...], Window] | None] | None = None) -> dict[str, np.ndarray]:
        """Full-size gradients ``(N, C, h, w)`` at every ``wrt`` tensor: the region's share, from crops,
        plus the boundary gradient itself where a ``wrt`` tensor is read by the tail directly.

        ``feeds``: the body's values of every region input; ``boundary``: the tail's gradients at
        every boundary tensor, ``(N, C, h, w)`` each (or a list of ``N`` rows); ``batch``: how many
        whole images' worth of crops run at a time; ``check`` screens each crop run's gradients and
        what passes straight through (it raises on NaN/Inf); ``found``: ``windows(boundary)`` if the
        caller has it."""
        rows = len(next(iter(boundary.values())))
        grads = {w: np.zeros((rows,) + feeds[w].shape[1:], dtype=feeds[w].dtype) for w in self.wrt}

        def put(w: str, i: int, where: tuple[slice, slice], v: np.ndarray) -> None:
            grads[w][(i, slice(None)) + where] += v

        self._crop_runs(feeds, boundary, batch, what, check, found, put)
        return grads

    def sums(self, feeds: Mapping[str, np.ndarray], boundary: Mapping[str, Sequence[np.ndarray]],
             batch: int, what: str,
             check: Callable[[dict[str, np.ndarray]], None] | None = None,
             found: Sequence[tuple[tuple[str, ...], Window] | None] | None = None) -> dict[str, np.ndarray]:
        """``gradients`` summed over positions, ``(N, C)`` float64 per ``wrt`` tensor, taken from the
        crops themselves: no full-size map per row (Grad-CAM reads nothing else)."""
        rows = len(next(iter(boundary.values())))
        out = {w: np.zeros((rows, feeds[w].shape[1]), dtype=np.float64) for w in self.wrt}

        def put(w: str, i: int, where: tuple[slice, slice], v: np.ndarray) -> None:
            out[w][i] += v.sum(axis=(-2, -1), dtype=np.float64)

        self._crop_runs(feeds, boundary, batch, what, check, found, put)
        return out

    def _crop_runs(self, feeds: Mapping[str, np.ndarray], boundary: Mapping[str, Sequence[np.ndarray]], batch: int,
                   what: str, check: Callable[[dict[str, np.ndarray]], None] | None,
                   found: Sequence[tuple[tuple[str, ...], Window] | None] | None, put: Put) -> None:
        """Run the crop graphs of every row and hand each row's gradient at each ``wrt`` tensor to
        ``put(tensor, row, (rows, columns) of the map, values)``, once per row and tensor, then what
        passes straight through (the whole map)."""
        region = self.region
        rows = len(next(iter(boundary.values())))
        if found is None:
            found = self.windows(boundary)
        windows: dict[int, Window] = {}
        groups: dict[tuple[tuple[str, ...], int, int, bool], list[int]] = {}
        for i, hit in enumerate(found):
            if hit is not None:
                seeded, windows[i] = hit
                # A window whose boxes stay on their maps runs a graph without the edge's masks.
                edge = self.windowed and not self.plan((seeded, hit[1][2], hit[1][3])).on_map(hit[1], region.image)
                groups.setdefault((seeded, hit[1][2], hit[1][3], edge), []).append(i)
        for (seeded, h, wd, edge), members in groups.items():
            # ``batch`` counts whole images: smaller crops run more rows at a time, in as much memory.
            limit = max(1, batch * region.image[0] * region.image[1] // self.area((seeded, (0, 0, h, wd))))
            start = 0
            while start < len(members):
                # Runs of a power of two rows (few graphs), none padded: 5 rows run as 4 + 1, not as 8.
                n = 1 << (min(limit, len(members) - start).bit_length() - 1)
                part = members[start:start + n]
                start += n
                graph = self.graph(seeded, (h, wd), n, edge)
                if self.windowed:
                    self._run_windowed(graph, self.plan((seeded, h, wd)), part, windows, feeds, boundary, n,
                                       put, what, check)
                    continue
                feed: dict[str, np.ndarray] = {}
                for c in graph.inputs:
                    feed[c] = _stack([_crop(feeds[c][i], windows[i], region.strides[c]) for i in part], n)
                for name, seed_name in graph.seed_inputs.items():
                    b, lo, hi = self.source_of.get(name, (name, 0, None))
                    feed[seed_name] = _stack([_crop(boundary[b][i][lo:hi], windows[i], region.strides[b])
                                              for i in part], n)
                names = [graph.grad_outputs[w] for w in graph.wrt]
                values = run(graph.session, feed, names, what=what)  # type: ignore[arg-type]
                if check is not None:
                    check(dict(zip(graph.wrt, values)))
                for w, v in zip(graph.wrt, values):
                    sy, sx = region.strides[w]
                    for k, i in enumerate(part):
                        top, left = windows[i][:2]
                        put(w, i, (slice(top // sy, (top + h) // sy), slice(left // sx, (left + wd) // sx)), v[k])
        for w in self.wrt:
            if w in boundary and w not in self.seeded:
                for i in range(rows):
                    if check is not None:
                        check({w: boundary[w][i]})
                    put(w, i, (slice(None), slice(None)), boundary[w][i])

    def _run_windowed(self, graph: CropGraph, plan: WindowPlan, part: list[int], windows: Mapping[int, Window],
                      feeds: Mapping[str, np.ndarray], boundary: Mapping[str, Sequence[np.ndarray]], n: int,
                      put: Put, what: str, check: Callable[[dict[str, np.ndarray]], None] | None) -> None:
        """One run of a windowed crop graph for rows ``part``; each row's gradients handed to ``put``."""
        region = self.region

        def at(name: str, i: int) -> Box:  # the tensor's box for row i, in its own grid
            (y0, x0, y1, x1), (sy, sx) = plan.boxes[name], region.strides[name]
            top, left = windows[i][0] // sy, windows[i][1] // sx
            return (top + y0, left + x0, top + y1, left + x1)

        feed: dict[str, np.ndarray] = {}
        for c in graph.inputs:
            feed[c] = _stack([_crop_box(feeds[c][i], at(c, i)) for i in part], n)
        for name, seed_name in graph.seed_inputs.items():
            b, lo, hi = self.source_of.get(name, (name, 0, None))
            feed[seed_name] = _stack([_crop_box(boundary[b][i][lo:hi], at(name, i)) for i in part], n)
        if graph.masks:
            origins = np.zeros((n, 2), dtype=np.int64)  # padded rows: any origin (their seeds are zero)
            origins[:len(part)] = [windows[i][:2] for i in part]
            for name, mask in graph.masks.items():
                feed[name] = mask.values(origins)
        names = [graph.grad_outputs[w] for w in graph.wrt]
        values = run(graph.session, feed, names, what=what)  # type: ignore[arg-type]
        for w, v in zip(graph.wrt, values):
            size = region.sizes[w]
            for k, i in enumerate(part):
                y0, x0, y1, x1 = at(w, i)
                # Only the map's own positions: past its edge are the padding's (zero) values.
                cy, cx = max(y0, 0), max(x0, 0)
                ey, ex = min(y1 + 1, size[0]), min(x1 + 1, size[1])
                inside = v[k, :, cy - y0:ey - y0, cx - x0:ex - x0]
                if check is not None:
                    check({w: inside})
                put(w, i, (slice(cy, ey), slice(cx, ex)), inside)


def _crop_box(v: np.ndarray, box: Box) -> np.ndarray:
    """``v (C, h, w)`` on ``box`` (inclusive, in its grid), zeros where the box leaves the map."""
    y0, x0, y1, x1 = box
    h, w = v.shape[-2:]
    if y0 >= 0 and x0 >= 0 and y1 < h and x1 < w:
        return v[..., y0:y1 + 1, x0:x1 + 1]
    out = np.zeros(v.shape[:-2] + (y1 - y0 + 1, x1 - x0 + 1), dtype=v.dtype)
    cy, cx, ey, ex = max(y0, 0), max(x0, 0), min(y1 + 1, h), min(x1 + 1, w)
    if cy < ey and cx < ex:
        out[..., cy - y0:ey - y0, cx - x0:ex - x0] = v[..., cy:ey, cx:ex]
    return out


def _stack(parts: list[np.ndarray], n: int) -> np.ndarray:
    """Rows stacked and zero-padded to ``n`` (zero seeds give zero gradients on padded rows)."""
    if len(parts) == n == 1:  # one copy, contiguous for onnxruntime
        return np.ascontiguousarray(parts[0][None])
    out = np.zeros((n,) + parts[0].shape, dtype=parts[0].dtype)
    for k, p in enumerate(parts):
        out[k] = p
    return out


__all__ = ["CropGradients", "seed_box"]
