"""Property tests on random small conv nets (hypothesis, derandomized so CI is deterministic).

Each example builds a net with onnx.helper: 1-4 blocks of Conv (1-6 channels, kernel 1 or 3), an
optional Relu/Sigmoid, an optional Add skip (1x1 projection when channels change) and an optional
2x2 Max/AveragePool, then GlobalAveragePool -> Flatten -> Gemm. Input 1 or 3 channels, 6-12 pixels
square, batch 1-3 (symbolic or fixed batch dim).

(a) body + head of a split at every candidate layer reproduce the model's outputs;
(b) ``Model.gradients`` agrees with central finite differences of the head along channel
    directions (all-ones per channel, and the activation itself per channel);
(c) every method in ``onnxcam.METHODS`` gives finite ``(N, H, W)`` maps in [0, 1], or (a method
    whose spec requires what these nets lack, attention) refuses the net with the methods that work.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import onnxcam
from onnxcam.errors import OnnxCamWarning, UnsupportedModelError
from onnxcam.graph.protos import make_model
from onnxcam.method_specs import applies

SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow],
                print_blob=True)


@dataclass(frozen=True)
class Block:
    channels: int
    kernel: int
    act: str  # "", "Relu", "Sigmoid"
    skip: bool
    pool: str  # "", "MaxPool", "AveragePool"


@dataclass(frozen=True)
class NetSpec:
    in_channels: int
    size: int
    batch: int
    fixed_batch: bool
    classes: int
    blocks: tuple[Block, ...]
    seed: int


@st.composite
def net_specs(draw: st.DrawFn) -> NetSpec:
    blocks = draw(st.lists(st.builds(
        Block,
        channels=st.integers(1, 6),
        kernel=st.sampled_from([1, 3]),
        act=st.sampled_from(["", "Relu", "Sigmoid"]),
        skip=st.booleans(),
        pool=st.sampled_from(["", "", "MaxPool", "AveragePool"]),
    ), min_size=1, max_size=4))
    return NetSpec(
        in_channels=draw(st.sampled_from([1, 3])),
        size=draw(st.integers(6, 12)),
        batch=draw(st.integers(1, 3)),
        fixed_batch=draw(st.booleans()),
        classes=draw(st.integers(2, 5)),
        blocks=tuple(blocks),
        seed=draw(st.integers(0, 2**16)),
    )


@dataclass
class Built:
    proto: onnx.ModelProto
    gap_input: str  # the tensor GlobalAveragePool reads (CAM's layer)


def build_net(spec: NetSpec) -> Built:
    rng = np.random.default_rng(spec.seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def weight(name: str, shape: tuple[int, ...], scale: float) -> str:
        inits.append(numpy_helper.from_array(rng.normal(0, scale, shape).astype(np.float32), name))
        return name

    def conv(i: int, tag: str, src: str, cin: int, cout: int, k: int) -> str:
        w = weight(f"w{tag}{i}", (cout, cin, k, k), 1.5 / np.sqrt(cin * k * k))
        b = weight(f"b{tag}{i}", (cout,), 0.2)
        out = f"conv{tag}{i}"
        nodes.append(helper.make_node("Conv", [src, w, b], [out], pads=[k // 2] * 4, name=f"Conv{tag}_{i}"))
        return out

    cur, ch, hw = "x", spec.in_channels, spec.size
    for i, blk in enumerate(spec.blocks):
        block_in, block_ch = cur, ch
        cur = conv(i, "", cur, ch, blk.channels, blk.kernel)
        ch = blk.channels
        if blk.act:
            nodes.append(helper.make_node(blk.act, [cur], [f"act{i}"], name=f"{blk.act}_{i}"))
            cur = f"act{i}"
        if blk.skip:
            bypass = block_in if block_ch == ch else conv(i, "proj", block_in, block_ch, ch, 1)
            nodes.append(helper.make_node("Add", [cur, bypass], [f"add{i}"], name=f"Add_{i}"))
            cur = f"add{i}"
        if blk.pool and hw >= 4:
            nodes.append(helper.make_node(blk.pool, [cur], [f"pool{i}"], kernel_shape=[2, 2], strides=[2, 2],
                                          name=f"{blk.pool}_{i}"))
            cur, hw = f"pool{i}", hw // 2
    gap_input = cur
    nodes += [
        helper.make_node("GlobalAveragePool", [cur], ["gap"], name="GAP"),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1, name="Flatten"),
        helper.make_node("Gemm", ["flat", weight("wfc", (spec.classes, ch), 1.0),
                                  weight("bfc", (spec.classes,), 0.1)], ["logits"], transB=1, name="FC"),
    ]
    n: int | str = spec.batch if spec.fixed_batch else "N"
    graph = helper.make_graph(
        nodes, "random_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, spec.in_channels, spec.size, spec.size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [n, spec.classes])],
        inits,
    )
    proto = make_model(graph, [helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto)
    return Built(proto, gap_input)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="onnxcam-props-") as d:
        yield Path(d)


_COUNTER = {"n": 0}


def load_net(spec: NetSpec, folder: Path) -> tuple[onnxcam.Model, Built, np.ndarray]:
    _COUNTER["n"] += 1
    built = build_net(spec)
    path = folder / f"net{_COUNTER['n']}.onnx"
    onnx.save(built.proto, str(path))
    model = onnxcam.load(path, device="cpu", threads=1)
    x = np.random.default_rng(spec.seed + 1).normal(
        0, 1, (spec.batch, spec.in_channels, spec.size, spec.size)).astype(np.float32)
    return model, built, x


# --------------------------------------------------------------------------- (a) splits


@settings(max_examples=100, **SETTINGS)  # type: ignore[arg-type]
@given(spec=net_specs())
def test_split_at_every_layer_preserves_outputs(workdir: Path, spec: NetSpec) -> None:
    model, _, x = load_net(spec, workdir)
    ref = model.forward(x)[0]
    layers = model.layers()
    assert layers, "every random net has at least one conv output"
    tol = 1e-5 * max(1.0, float(np.abs(ref).max()))
    for layer in layers:
        feeds, body_outputs = model.run_body(x, (layer.name,))
        np.testing.assert_allclose(body_outputs[0], ref, rtol=0, atol=tol)
        assert feeds[layer.name].shape[0] == spec.batch
        head = model.run_head((layer.name,), feeds)
        split = model.split((layer.name,))
        out = head[list(split.head_outputs).index("logits")]
        assert np.abs(out - ref).max() <= tol, f"split at {layer.name!r}: {np.abs(out - ref).max()}"


# --------------------------------------------------------------------------- (b) gradients


# Two step sizes: a unit within a step of a ReLU/MaxPool kink spoils that step's difference, but
# rarely both; a wrong gradient rule fails both.
FD_STEPS = (1e-3, 2.5e-4)


def _fd_channel_checks(model: onnxcam.Model, x: np.ndarray, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """Analytic ``(N, C, 2)`` and finite-difference ``(len(FD_STEPS), N, C, 2)`` directional
    derivatives of each image's target score: along the all-ones direction of each channel
    (= the channel sum of the gradients) and along the channel's own activation (= the channel
    sum of activations x gradients)."""
    g = model.gradients(x, layer)
    a, d = g.activations[layer].astype(np.float64), g.gradients[layer].astype(np.float64)
    n, c = a.shape[:2]
    analytic = np.stack([d.sum(axis=(2, 3)), (a * d).sum(axis=(2, 3))], axis=2)
    feeds, outputs = model.run_body(x, (layer,))
    score = model.gradient_engine.head_scorer(layer, g.targets, feeds, outputs, 256)
    rows, samples = [], []
    for eps in FD_STEPS:
        for i in range(n):
            for ch in range(c):
                for kind in range(2):
                    direction = np.zeros(a.shape[1:])
                    direction[ch] = 1.0 if kind == 0 else a[i, ch]
                    for sign in (1.0, -1.0):
                        rows.append(a[i] + sign * eps * direction)
                        samples.append(i)
    s = score(np.asarray(rows, dtype=np.float32), np.asarray(samples))
    steps = np.repeat(np.asarray(FD_STEPS), n * c * 2)
    fd = ((s[0::2] - s[1::2]) / (2 * steps)).reshape(len(FD_STEPS), n, c, 2)
    return analytic, fd


@settings(max_examples=100, **SETTINGS)  # type: ignore[arg-type]
@given(spec=net_specs(), pick=st.integers(0, 10**6))
def test_gradients_match_finite_differences(workdir: Path, spec: NetSpec, pick: int) -> None:
    """Tolerance: 5% of the image's largest derivative plus 2e-3 for float32 head noise; each
    derivative must match the central difference at one of the two step sizes (kink caveat)."""
    model, _, x = load_net(spec, workdir)
    layers = model.layers()
    layer = layers[pick % len(layers)].name
    analytic, fd = _fd_channel_checks(model, x, layer)
    scale = np.abs(analytic).max(axis=(1, 2), keepdims=True)
    err = np.abs(analytic[None] - fd).min(axis=0)
    assert np.all(err <= 0.05 * scale + 2e-3), (
        f"layer {layer!r}: max error {err.max():.3g} vs scale {scale.max():.3g}\nanalytic {analytic}\nfd {fd}")


# --------------------------------------------------------------------------- (c) every method


METHOD_OPTIONS = {"sscam": {"num_samples": 2}, "smoothgradcam++": {"num_samples": 2}}
# Re-run methods feed partial chunks to a fixed-batch model; see test_fixed_batch_partial_chunks.
NEEDS_DYNAMIC_BATCH = {"scorecam", "sscam", "ablationcam"}


@settings(max_examples=60, **SETTINGS)  # type: ignore[arg-type]
@given(spec=net_specs())
def test_every_method_gives_finite_unit_maps(workdir: Path, spec: NetSpec) -> None:
    model, built, x = load_net(spec, workdir)
    auto = model.layer("auto")  # pools stop at 3x3, so some layer is always wider than 1x1
    for name, cls in onnxcam.METHODS.items():
        if spec.fixed_batch and spec.batch > 1 and name in NEEDS_DYNAMIC_BATCH:
            continue
        if not applies(cls, model):  # what the method needs (attention), read from its spec
            with pytest.raises(UnsupportedModelError, match="methods that work on it: "):
                cls(model, auto.name)
            continue
        # CAM reads the classifier after GAP, so it runs at GAP's input (the head is GAP -> linear there).
        layer = built.gap_input if name == "cam" else auto.name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OnnxCamWarning)  # blank maps are allowed, NaN is not
            maps = cls(model, layer, **METHOD_OPTIONS.get(name, {}))(x)  # type: ignore[arg-type]
        assert maps.shape == (spec.batch, spec.size, spec.size), name
        assert maps.dtype == np.float32, name
        assert np.all(np.isfinite(maps)), name
        assert maps.min() >= 0.0 and maps.max() <= 1.0, name
        if name == "eigencam":  # a non-degenerate map reaches 1 after normalisation
            assert np.all((maps.max(axis=(1, 2)) == 0) | (maps.max(axis=(1, 2)) > 0.99))


@pytest.mark.parametrize("method", sorted(NEEDS_DYNAMIC_BATCH))
def test_fixed_batch_partial_chunks(workdir: Path, method: str) -> None:
    spec = NetSpec(in_channels=3, size=8, batch=2, fixed_batch=True, classes=3,
                   blocks=(Block(channels=3, kernel=3, act="Relu", skip=False, pool=""),), seed=3)
    model, _, x = load_net(spec, workdir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OnnxCamWarning)
        maps = onnxcam.METHODS[method](model, "act0", **METHOD_OPTIONS.get(method, {}))(x)  # type: ignore[arg-type]
    assert maps.shape == (2, 8, 8) and np.all(np.isfinite(maps))
