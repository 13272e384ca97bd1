"""Bad models, images, arrays and arguments: each must end in the documented ``OnnxCamError`` subclass
(library) or its exit code with one ``onnxcam: error:`` line (CLI), a message that names the offending
thing, and no output left behind. Degenerate maths must give finite all-zero maps plus a warning.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from graphs import residual_net, save
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import onnxcam
from cli.main import app
from onnxcam.errors import (
    AmbiguousLayerError,
    ArgumentError,
    ExternalDataError,
    ImageError,
    InputError,
    LayerNotFoundError,
    LayerShapeError,
    ModelLoadError,
    ModelNotFoundError,
    OnnxCamError,
    OnnxCamWarning,
    OnnxRuntimeError,
    OutputError,
    TargetError,
    UnsupportedModelError,
)
from onnxcam.graph.protos import make_model
from onnxcam.overlay import colormap_code

runner = CliRunner()
OPSET = [helper.make_opsetid("", 17)]


# --------------------------------------------------------------------------- graphs and files


def _f32(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)


def _vi(name: str, shape: list[int | str], elem: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def conv_gap_net(w1: np.ndarray, b1: np.ndarray, wf: np.ndarray, bf: np.ndarray) -> onnx.ModelProto:
    """x (N, 3, 8, 8) -> Conv(w1, b1, pad 1) -> a -> Relu -> r -> GAP -> Flatten -> Gemm(wf, bf) -> y (N, K)."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1),
    ]
    k = int(np.asarray(wf).shape[0])
    graph = helper.make_graph(nodes, "conv_gap", [_vi("x", ["N", 3, 8, 8])], [_vi("y", ["N", k])],
                              [_f32("w1", w1), _f32("b1", b1), _f32("wf", wf), _f32("bf", bf)])
    return make_model(graph, OPSET)


def nan_net() -> onnx.ModelProto:
    """Log of a negated positive-ish conv: NaN/-inf in the output for a positive input."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["a"]),
        helper.make_node("Log", ["a"], ["b"]),
        helper.make_node("GlobalAveragePool", ["b"], ["c"]),
        helper.make_node("Flatten", ["c"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "nan", [_vi("x", ["N", 3, 8, 8])], [_vi("y", ["N", 2])],
                              [_f32("w", -np.ones((2, 3, 1, 1)))])
    return make_model(graph, OPSET)


def flat_input_net() -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "flat", [_vi("x", ["N", 4])],
                              [_vi("y", ["N", 2])], [_f32("w", np.ones((4, 2)))])
    return make_model(graph, OPSET)


def two_input_net() -> onnx.ModelProto:
    nodes = [helper.make_node("Add", ["x", "z"], ["s"]), helper.make_node("GlobalAveragePool", ["s"], ["y"])]
    graph = helper.make_graph(nodes, "two", [_vi("x", ["N", 3, 8, 8]), _vi("z", ["N", 3, 8, 8])],
                              [_vi("y", ["N", 3, 1, 1])])
    return make_model(graph, OPSET)


def dynamic_size_net() -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"]), helper.make_node("GlobalAveragePool", ["a"], ["g"]),
             helper.make_node("Flatten", ["g"], ["y"])]
    graph = helper.make_graph(nodes, "dyn", [_vi("x", ["N", 3, "H", "W"])], [_vi("y", ["N", 2])],
                              [_f32("w", np.ones((2, 3, 1, 1)))])
    return make_model(graph, OPSET)


def _png(path: Path, img: np.ndarray) -> Path:
    ok, buf = cv2.imencode(".png", img)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


@dataclass
class Workspace:
    root: Path
    model: Path  # residual_net: NCHW (N, 3, 8, 8) -> (N, 4); tensors a b c d e g (4-D), f (N, 6)
    images: Path  # a folder of two RGB PNGs
    out: Path

    def path(self, name: str) -> Path:
        return self.root / name


@pytest.fixture()
def ws(tmp_path: Path) -> Workspace:
    root = tmp_path / "ws"
    root.mkdir()
    images = root / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        _png(images / f"img{i}.png", (rng.random((20, 24, 3)) * 255).astype(np.uint8))
    return Workspace(root, save(residual_net(), root / "res.onnx"), images, root / "out")


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# --------------------------------------------------------------------------- bad model files


def _m_missing(ws: Workspace) -> Path:
    return ws.path("missing.onnx")


def _m_directory(ws: Workspace) -> Path:
    d = ws.path("folder.onnx")
    d.mkdir()
    return d


def _m_empty(ws: Workspace) -> Path:
    p = ws.path("empty.onnx")
    p.write_bytes(b"")
    return p


def _m_garbage(ws: Workspace) -> Path:
    p = ws.path("garbage.onnx")
    p.write_bytes(np.random.default_rng(1).bytes(700))
    return p


def _m_truncated(ws: Workspace) -> Path:
    data = ws.model.read_bytes()
    p = ws.path("truncated.onnx")
    p.write_bytes(data[: len(data) // 2])
    return p


def _m_tensor(ws: Workspace) -> Path:
    p = ws.path("tensor.onnx")
    p.write_bytes(numpy_helper.from_array(np.ones((3, 3), np.float32), "t").SerializeToString())
    return p


def _m_graph_only(ws: Workspace) -> Path:
    # A GraphProto is valid protobuf that parses as a ModelProto with unknown fields.
    p = ws.path("graph_only.onnx")
    p.write_bytes(residual_net().graph.SerializeToString())
    return p


def _m_checker(ws: Workspace) -> Path:
    m = residual_net()
    m.graph.node[1].input[0] = "undefined_tensor"
    return save(m, ws.path("broken_edges.onnx"))


def _m_opset5(ws: Workspace) -> Path:
    m = residual_net()
    m.opset_import[0].version = 5
    return save(m, ws.path("opset5.onnx"))


def _m_ir_new(ws: Workspace) -> Path:
    m = residual_net()
    m.ir_version = 99
    return save(m, ws.path("ir99.onnx"))


def _with_external(ws: Workspace, name: str, location: str | None) -> Path:
    """The residual net with its weights in ``weights.bin``; ``location`` None deletes the file,
    else the tensors point at ``location`` (relative to the model's folder) and the data moves there."""
    p = ws.path(name)
    onnx.save(residual_net(), str(p), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    data = ws.path("weights.bin")
    if location is None:
        data.unlink()
        return p
    target = Path(location) if Path(location).is_absolute() else ws.root / location
    if not target.exists():
        data.replace(target)  # the data really is there: only the location rule may refuse it
    m = onnx.load(str(p), load_external_data=False)
    for t in m.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(m, str(p))
    return p


def _m_ext_missing(ws: Workspace) -> Path:
    return _with_external(ws, "ext_missing.onnx", None)


def _m_ext_escape(ws: Workspace) -> Path:
    return _with_external(ws, "ext_escape.onnx", "../secret.bin")


def _m_ext_absolute(ws: Workspace) -> Path:
    return _with_external(ws, "ext_absolute.onnx", "/etc/hostname")


def _m_flat_input(ws: Workspace) -> Path:
    return save(flat_input_net(), ws.path("flat_input.onnx"))


def _m_two_inputs(ws: Workspace) -> Path:
    return save(two_input_net(), ws.path("two_inputs.onnx"))


def _m_dynamic(ws: Workspace) -> Path:
    return save(dynamic_size_net(), ws.path("dynamic.onnx"))


# (builder, error class, substrings the message must contain)
MODEL_CASES: dict[str, tuple[Callable[[Workspace], Path], type[OnnxCamError], tuple[str, ...]]] = {
    "model-missing": (_m_missing, ModelNotFoundError, ("missing.onnx", "not found")),
    "model-is-directory": (_m_directory, ModelNotFoundError, ("folder.onnx", "directory")),
    "model-empty": (_m_empty, ModelLoadError, ("empty.onnx", "0 bytes")),
    "model-garbage": (_m_garbage, ModelLoadError, ("garbage.onnx", "not an ONNX model")),
    "model-truncated": (_m_truncated, ModelLoadError, ("truncated.onnx", "truncated")),
    "model-tensorproto": (_m_tensor, ModelLoadError, ("tensor.onnx", "not an ONNX model")),
    "model-graphproto": (_m_graph_only, ModelLoadError, ("graph_only.onnx", "not an ONNX model")),
    "model-checker-fails": (_m_checker, ModelLoadError, ("broken_edges.onnx", "undefined_tensor")),
    "model-opset5": (_m_opset5, UnsupportedModelError, ("opset5.onnx", "opset 5")),
    "model-ir-too-new": (_m_ir_new, UnsupportedModelError, ("ir99.onnx", "IR version 99")),
    "external-data-missing": (_m_ext_missing, ExternalDataError, ("ext_missing.onnx", "weights.bin", "missing")),
    "external-data-escapes": (_m_ext_escape, ExternalDataError, ("ext_escape.onnx", "../secret.bin", "outside")),
    "external-data-absolute": (_m_ext_absolute, ExternalDataError, ("ext_absolute.onnx", "/etc/hostname")),
    "no-image-input": (_m_flat_input, UnsupportedModelError, ("flat_input.onnx", "'x'", "(N, 4)")),
    "several-inputs": (_m_two_inputs, UnsupportedModelError, ("two_inputs.onnx", "2 inputs", "z")),
    "dynamic-size-no-size": (_m_dynamic, ArgumentError, ("dynamic.onnx", "--size")),
}


def _assert_names(message: str, names: tuple[str, ...]) -> None:
    for name in names:
        assert name in message, f"{name!r} missing from message: {message}"


def _cli(args: list[str]) -> tuple[int, str, str]:
    result = runner.invoke(app, args)
    return result.exit_code, result.stdout, result.stderr


def _assert_cli_error(ws: Workspace, args: list[str], error: type[OnnxCamError], names: tuple[str, ...]) -> str:
    code, _, err = _cli(args)
    assert code == error.exit_code, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxcam: error: "), err
    _assert_names(lines[0], names)
    assert _files_under(ws.out) == [], "a failed run left files in --out"
    return lines[0]


@pytest.mark.parametrize("case", list(MODEL_CASES), ids=list(MODEL_CASES))
def test_bad_model_library(ws: Workspace, case: str) -> None:
    build, error, names = MODEL_CASES[case]
    path = build(ws)
    with pytest.raises(error) as info:
        onnxcam.load(path)
    _assert_names(str(info.value), names)


@pytest.mark.parametrize("case", list(MODEL_CASES), ids=list(MODEL_CASES))
def test_bad_model_cli(ws: Workspace, case: str) -> None:
    build, error, names = MODEL_CASES[case]
    path = build(ws)
    _assert_cli_error(ws, ["explain", str(path), str(ws.images), "--out", str(ws.out), "--quiet"], error, names)
    assert not ws.out.exists()


def test_bad_model_file_is_never_modified(ws: Workspace) -> None:
    path = _m_opset5(ws)
    before = path.read_bytes()
    with pytest.raises(UnsupportedModelError):
        onnxcam.load(path)
    assert path.read_bytes() == before


# --------------------------------------------------------------------------- the table: images, arrays, arguments


def _x(n: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, 8, 8)).astype(np.float32)


def _corrupt_png(ws: Workspace) -> Path:
    data = _png(ws.path("tmp.png"), np.full((10, 10, 3), 128, np.uint8)).read_bytes()
    p = ws.path("corrupt.png")
    p.write_bytes(data[:20] + b"\x00" * 40)
    return p


def _empty_png(ws: Workspace) -> Path:
    p = ws.path("zero.png")
    p.write_bytes(b"")
    return p


def _huge_png(ws: Workspace) -> Path:
    # 7100 x 7100 = 50.4 MP, above the 50 MP default; a flat PNG is only ~60 kB on disk.
    return _png(ws.path("huge.png"), np.zeros((7100, 7100), np.uint8))


def _text_as_png(ws: Workspace) -> Path:
    p = ws.path("notes.png")
    p.write_text("this is not an image\n")
    return p


def _empty_folder(ws: Workspace) -> Path:
    d = ws.path("nothing_here")
    d.mkdir()
    (d / "readme.txt").write_text("no images\n")
    return d


def _labels(ws: Workspace, n: int) -> Path:
    p = ws.path("labels.txt")
    p.write_text("".join(f"class{i}\n" for i in range(n)))
    return p


@dataclass(frozen=True)
class Lib:
    """A library call expected to raise ``error`` with ``names`` in its message."""

    call: Callable[[Workspace], object]
    error: type[OnnxCamError]
    names: tuple[str, ...]


@dataclass(frozen=True)
class Cli:
    """CLI arguments (after ``explain MODEL IMAGES --out OUT``) expected to exit with ``error.exit_code``."""

    args: Callable[[Workspace], list[str]]
    error: type[OnnxCamError]
    names: tuple[str, ...]


def _explain(ws: Workspace, *extra: str, model: Path | None = None, images: str | None = None) -> list[str]:
    return ["explain", str(model or ws.model), images or str(ws.images), "--out", str(ws.out), *extra]


def _gradcam(ws: Workspace, x: np.ndarray, targets: object = None, **kw: object) -> np.ndarray:
    return onnxcam.GradCAM(onnxcam.load(ws.model), **kw)(x, targets)  # type: ignore[arg-type]


ROWS: dict[str, Lib | Cli] = {
    # NaN from the model itself
    "nan-output-lib": Lib(lambda ws: onnxcam.GradCAM(onnxcam.load(save(nan_net(), ws.path("nan.onnx"))), "a")(
        np.ones((1, 3, 8, 8), np.float32)), OnnxRuntimeError, ("nan.onnx", "'y'", "NaN")),
    "nan-output-cli": Cli(lambda ws: _explain(ws, "--quiet", "--preprocess", "unit",
                                              model=save(nan_net(), ws.path("nan.onnx"))),
                          OnnxRuntimeError, ("nan.onnx", "'y'", "NaN")),
    # images
    "image-corrupt-lib": Lib(lambda ws: onnxcam.load_image(_corrupt_png(ws)), ImageError, ("corrupt.png",)),
    "image-corrupt-cli": Cli(lambda ws: _explain(ws, images=str(_corrupt_png(ws))), ImageError, ("corrupt.png",)),
    "image-0-bytes-lib": Lib(lambda ws: onnxcam.load_image(_empty_png(ws)), ImageError, ("zero.png", "0 bytes")),
    "image-0-bytes-cli": Cli(lambda ws: _explain(ws, images=str(_empty_png(ws))), ImageError,
                             ("zero.png", "0 bytes")),
    "image-not-an-image": Lib(lambda ws: onnxcam.load_image(_text_as_png(ws)), ImageError, ("notes.png",)),
    "image-huge-lib": Lib(lambda ws: onnxcam.load_image(_huge_png(ws)), ImageError, ("huge.png", "megapixels")),
    "image-huge-cli": Cli(lambda ws: _explain(ws, images=str(_huge_png(ws))), ImageError, ("huge.png", "megapixels")),
    "image-missing-cli": Cli(lambda ws: _explain(ws, "--quiet", images=str(ws.path("nothere.jpg"))), ImageError,
                             ("nothere.jpg",)),
    "image-folder-empty-cli": Cli(lambda ws: _explain(ws, "--quiet", images=str(_empty_folder(ws))), ImageError,
                                  ("nothing_here", "no image files")),
    # arguments
    "unknown-method-lib": Lib(lambda ws: onnxcam.get_method("gradcan"), ArgumentError, ("'gradcan'", "gradcam")),
    "unknown-method-cli": Cli(lambda ws: _explain(ws, "--quiet", "--method", "gradcam,gradcan"), ArgumentError,
                              ("'gradcan'",)),
    "unknown-preset-lib": Lib(lambda ws: onnxcam.get_preset("imagenett", (8, 8)), ArgumentError, ("'imagenett'",)),
    "unknown-preset-cli": Cli(lambda ws: _explain(ws, "--quiet", "--preprocess", "imagenett"), ArgumentError,
                              ("'imagenett'", "imagenet")),
    "unknown-colormap-lib": Lib(lambda ws: colormap_code("jett"), ArgumentError, ("'jett'", "jet")),
    "unknown-colormap-cli": Cli(lambda ws: _explain(ws, "--quiet", "--colormap", "jett"), ArgumentError, ("'jett'",)),
    "unknown-device-cli": Cli(lambda ws: _explain(ws, "--quiet", "--device", "tpu"), ArgumentError, ("'tpu'",)),
    "bad-size-cli": Cli(lambda ws: _explain(ws, "--quiet", "--size", "eight"), ArgumentError, ("--size", "eight")),
    "bad-mean-cli": Cli(lambda ws: _explain(ws, "--quiet", "--mean", "1,2"), ArgumentError, ("--mean", "1,2")),
    "alpha-out-of-range-cli": Cli(lambda ws: _explain(ws, "--quiet", "--alpha", "2"), ArgumentError, ("--alpha",)),
    "top-k-0-cli": Cli(lambda ws: _explain(ws, "--quiet", "--top-k", "0"), ArgumentError, ("--top-k",)),
    "batch-size-0-lib": Lib(lambda ws: onnxcam.load(ws.model).batch_limit(0), ArgumentError, ("batch size", "0")),
    "batch-size-0-cli": Cli(lambda ws: _explain(ws, "--quiet", "--batch-size", "0"), ArgumentError,
                            ("--batch-size", "0")),
    "labels-wrong-length-cli": Cli(lambda ws: _explain(ws, "--quiet", "--labels", str(_labels(ws, 3))), ArgumentError,
                                   ("labels", "3 names", "4 classes")),
    "labels-empty-cli": Cli(lambda ws: _explain(ws, "--quiet", "--labels", str(_labels(ws, 0))), ArgumentError,
                            ("labels.txt", "empty")),
    # targets
    "target-out-of-range-lib": Lib(lambda ws: _gradcam(ws, _x(), 4), TargetError, ("4", "4 classes")),
    "target-negative-lib": Lib(lambda ws: _gradcam(ws, _x(), -1), TargetError, ("-1",)),
    "target-out-of-range-cli": Cli(lambda ws: _explain(ws, "--quiet", "--target", "99"), TargetError,
                                   ("99", "4 classes")),
    "target-list-short-lib": Lib(lambda ws: _gradcam(ws, _x(3), [0, 1]), TargetError, ("2 targets", "3 images")),
    "target-list-long-lib": Lib(lambda ws: _gradcam(ws, _x(1), [0, 1]), TargetError, ("2 targets", "1 images")),
    "target-not-a-class-lib": Lib(lambda ws: _gradcam(ws, _x(1), ["cat"]), TargetError, ("'cat'",)),
    # layers
    "layer-not-found-lib": Lib(lambda ws: onnxcam.GradCAM(onnxcam.load(ws.model), "relu9"), LayerNotFoundError,
                               ("'relu9'", "res.onnx")),
    "layer-not-found-cli": Cli(lambda ws: _explain(ws, "--quiet", "--layer", "relu9"), LayerNotFoundError,
                               ("'relu9'",)),
    "layer-ambiguous-lib": Lib(lambda ws: onnxcam.load(ws.model).layer("1"), AmbiguousLayerError,
                               ("'1'", "'a'", "'b'")),
    "layer-ambiguous-cli": Cli(lambda ws: _explain(ws, "--quiet", "--layer", "1"), AmbiguousLayerError, ("'1'",)),
    "layer-not-4d-lib": Lib(lambda ws: onnxcam.load(ws.model).layer("f"), LayerShapeError, ("'f'", "(N, 6)")),
    "layer-not-4d-cli": Cli(lambda ws: _explain(ws, "--quiet", "--layer", "f"), LayerShapeError, ("'f'", "(N, 6)")),
    "layer-one-of-list-bad-cli": Cli(lambda ws: _explain(ws, "--quiet", "--layer", "e,nope"), LayerNotFoundError,
                                     ("'nope'",)),
    # arrays given to the library
    "array-nhwc-to-nchw": Lib(lambda ws: _gradcam(ws, _x().transpose(0, 2, 3, 1)), InputError,
                              ("(1, 8, 8, 3)", "NHWC", "'x'")),
    "array-3d": Lib(lambda ws: _gradcam(ws, _x()[0]), InputError, ("(3, 8, 8)", "x[None]")),
    "array-wrong-size": Lib(lambda ws: _gradcam(ws, np.zeros((1, 3, 9, 8), np.float32)), InputError,
                            ("(1, 3, 9, 8)", "(1, 3, 8, 8)")),
    "array-nan": Lib(lambda ws: _gradcam(ws, np.full((1, 3, 8, 8), np.nan, np.float32)), InputError, ("NaN",)),
    # output folder
    "out-is-existing-file": Cli(lambda ws: ["explain", str(ws.model), str(ws.images), "--quiet", "--out",
                                            str(_occupied(ws))], OutputError, ("taken.txt", "existing file")),
    "out-under-a-file": Cli(lambda ws: ["explain", str(ws.model), str(ws.images), "--quiet", "--out",
                                        str(_occupied(ws) / "sub")], OutputError, ("taken.txt", "is a file")),
    "out-inside-input-folder": Cli(lambda ws: ["explain", str(ws.model), str(ws.images), "--quiet", "--out",
                                               str(ws.images / "cams")], OutputError, ("imgs", "inside the input")),
    "out-is-input-folder": Cli(lambda ws: ["explain", str(ws.model), str(ws.images / "img0.png"), "--quiet",
                                           "--out", str(ws.images)], OutputError, ("imgs", "img0.png")),
}


def _occupied(ws: Workspace) -> Path:
    p = ws.path("taken.txt")
    if not p.exists():
        p.write_text("keep me\n")
    return p


# Rows that expose bugs outside this helper's files (see the reasons).
XFAIL_ROWS: dict[str, str] = {}
_ROW_PARAMS = [pytest.param(k, id=k, marks=pytest.mark.xfail(strict=True, reason=XFAIL_ROWS[k]))
               if k in XFAIL_ROWS else pytest.param(k, id=k) for k in ROWS]


@pytest.mark.parametrize("row", _ROW_PARAMS)
def test_bad_input(ws: Workspace, row: str) -> None:
    case = ROWS[row]
    inputs_before = {p: p.read_bytes() for p in _files_under(ws.root)}
    if isinstance(case, Lib):
        with pytest.raises(case.error) as info:
            case.call(ws)
        assert type(info.value) is case.error or issubclass(type(info.value), case.error)
        _assert_names(str(info.value), case.names)
    else:
        code, _, err = _cli(case.args(ws))
        assert code == case.error.exit_code, err
        assert "Traceback" not in err
        _assert_names(" ".join(err.split()), case.names)
        leftovers = [p for p in _files_under(ws.out) if p.name != "summary.json"]
        assert leftovers == [], "a failed run left result files in --out"
    for p, data in inputs_before.items():  # inputs are never touched
        assert p.read_bytes() == data, p


def test_out_inside_named_input_folder_library(ws: Workspace) -> None:
    from onnxcam.pipeline import ExplainConfig, explain_images

    model = onnxcam.load(ws.model)
    paths = onnxcam.expand_image_paths([ws.images])
    config = ExplainConfig(preprocess=onnxcam.get_preset("imagenet", (8, 8)))
    out = ws.images / "cams"
    with pytest.raises(OutputError, match="inside the input folder"):
        explain_images(model, paths, out, config, input_folders=[ws.images])
    assert not out.exists()
    summary = explain_images(model, paths, ws.out, config, input_folders=[ws.images])  # a sibling is fine
    assert len(summary.images) == 2 and (ws.out / "summary.json").is_file()


def test_unreadable_images_fail_the_run_and_write_nothing(ws: Workspace) -> None:
    """When every image fails, exit 5 with the file and why on stderr, and no output folder (issue #17)."""
    bad = _corrupt_png(ws)
    code, _, err = _cli(_explain(ws, images=str(bad)))
    assert code == 5 and "corrupt.png" in err and "no image could be read (1 of 1 failed)" in err
    assert not ws.out.exists()


def test_out_not_writable(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    locked = ws.path("locked")
    locked.mkdir()
    real_access = os.access
    # CI runs as root, which ignores permission bits: report the folder as unwritable instead.
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    _assert_cli_error(ws, ["explain", str(ws.model), str(ws.images), "--quiet", "--out", str(locked / "cams")],
                      OutputError, ("locked", "permission"))


def test_out_existing_file_is_untouched(ws: Workspace) -> None:
    p = _occupied(ws)
    code, _, _ = _cli(["explain", str(ws.model), str(ws.images), "--quiet", "--out", str(p)])
    assert code == OutputError.exit_code and p.read_text() == "keep me\n"


def test_debug_shows_traceback(ws: Workspace) -> None:
    code, _, err = _cli(["--debug", "explain", str(ws.path("missing.onnx")), str(ws.images), "--out", str(ws.out)])
    assert code == 3 and "Traceback" in err and "onnxcam: error:" in err


# --------------------------------------------------------------------------- known bugs outside my paths


def test_cam_batch_size_0_is_refused(ws: Workspace) -> None:
    with pytest.raises(ArgumentError, match="batch"):
        onnxcam.GradCAM(onnxcam.load(ws.model), batch_size=0)


def test_empty_batch_is_input_error(ws: Workspace) -> None:
    with pytest.raises(InputError, match="0"):
        _gradcam(ws, np.zeros((0, 3, 8, 8), np.float32))


def test_object_array_is_input_error(ws: Workspace) -> None:
    with pytest.raises(InputError, match="object"):
        _gradcam(ws, np.zeros((1, 3, 8, 8), dtype=object))


def test_quiet_still_reports_skipped_images(ws: Workspace) -> None:
    code, _, err = _cli(_explain(ws, "--quiet", images=str(_corrupt_png(ws))))
    assert code == 5 and "corrupt.png" in err


# --------------------------------------------------------------------------- images that must work


def _check_explain_ok(ws: Workspace, folder: Path, n: int) -> None:
    import json

    code, _, err = _cli(["explain", str(ws.model), str(folder), "--out", str(ws.out), "--quiet"])
    assert code == 0, err
    summary = json.loads((ws.out / "summary.json").read_text())
    assert len(summary["images"]) == n and summary["failed"] == []


def test_unusual_images_load_exactly_and_explain(ws: Workspace) -> None:
    folder = ws.path("odd")
    folder.mkdir()
    gray = np.arange(0, 240, 2, dtype=np.uint8).reshape(10, 12)
    _png(folder / "gray.png", gray)
    bgra = np.zeros((10, 12, 4), np.uint8)
    bgra[..., 0], bgra[..., 1], bgra[..., 2] = 10, 20, 30  # B, G, R
    bgra[:5, ..., 3] = 255  # top half opaque, bottom half transparent
    _png(folder / "alpha.png", bgra)
    deep = (np.arange(120, dtype=np.uint16).reshape(10, 12) * 257).astype(np.uint16)
    _png(folder / "gray16.png", deep)
    deep_rgb = np.stack([deep, deep // 2, np.full_like(deep, 65535)], axis=2)  # B, G, R
    _png(folder / "rgb16.png", deep_rgb)

    g = onnxcam.load_image(folder / "gray.png")
    assert g.shape == (10, 12, 3) and g.dtype == np.uint8
    np.testing.assert_array_equal(g, np.repeat(gray[:, :, None], 3, axis=2))
    a = onnxcam.load_image(folder / "alpha.png")
    np.testing.assert_array_equal(a[:5], np.broadcast_to([30, 20, 10], (5, 12, 3)))  # RGB order
    np.testing.assert_array_equal(a[5:], 255)  # transparent -> white
    d = onnxcam.load_image(folder / "gray16.png")
    np.testing.assert_array_equal(d[..., 0], np.arange(120).reshape(10, 12))
    r = onnxcam.load_image(folder / "rgb16.png")
    np.testing.assert_array_equal(r[..., 0], 255)
    np.testing.assert_array_equal(r[..., 2], np.arange(120).reshape(10, 12))
    _check_explain_ok(ws, folder, 4)


def test_huge_image_downscales_when_asked(ws: Workspace) -> None:
    with pytest.warns(OnnxCamWarning, match="downscaled"):
        img = onnxcam.load_image(_huge_png(ws), downscale=True)
    assert img.shape[0] * img.shape[1] <= onnxcam.image.DEFAULT_MAX_PIXELS and img.shape[2] == 3


# --------------------------------------------------------------------------- degenerate maths


_RNG = np.random.default_rng(0)
_W = _RNG.normal(size=(4, 3, 3, 3))
_B = _RNG.normal(size=4)
_WF = _RNG.normal(size=(3, 4))

DEGENERATE = {
    # name: (model, methods that must blank out, words the warning must contain)
    "constant-activations": (conv_gap_net(np.zeros((4, 3, 3, 3)), np.abs(_B) + 0.5, np.abs(_WF), np.zeros(3)),
                             ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "scorecam", "ablationcam",
                              "eigencam", "cam"), ()),
    "zero-gradients": (conv_gap_net(_W, _B, np.zeros((3, 4)), np.array([1.0, 0, 0])),
                       ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "eigengradcam"),
                       ("gradients", "all zero")),
    "all-negative-weights": (conv_gap_net(_W, np.abs(_B) + 1, -np.abs(_WF), np.zeros(3)),
                             ("gradcam", "gradcam++", "xgradcam", "cam", "ablationcam"),
                             ("weights", "negative")),
    "all-channels-zero": (conv_gap_net(_W, -100 * np.ones(4), _WF, np.zeros(3)),
                          ("gradcam", "scorecam", "sscam", "ablationcam", "eigencam", "cam", "layercam"),
                          ("activations", "all zero")),
}
_DEGENERATE_IDS = [(k, m) for k, v in DEGENERATE.items() for m in v[1]]


@pytest.mark.parametrize(("case", "method"), _DEGENERATE_IDS, ids=[f"{k}-{m}" for k, m in _DEGENERATE_IDS])
def test_degenerate_maps_are_zero_with_warning(tmp_path: Path, case: str, method: str) -> None:
    proto, _, words = DEGENERATE[case]
    model = onnxcam.load(save(proto, tmp_path / f"{case}.onnx"))
    kw: dict[str, int] = {"num_samples": 2} if method == "sscam" else {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        maps = onnxcam.METHODS[method](model, "r", **kw)(_x(2), 0)  # type: ignore[arg-type]
    assert maps.shape == (2, 8, 8) and maps.dtype == np.float32
    assert np.all(np.isfinite(maps)) and np.all(maps == 0)
    msgs = [str(w.message) for w in caught if issubclass(w.category, OnnxCamWarning)]
    assert len(msgs) == 1, msgs
    assert method in msgs[0] and "'r'" in msgs[0] and "all zeros" in msgs[0]
    _assert_names(msgs[0], words)


def test_blank_layer_among_live_layers_is_not_reported(tmp_path: Path) -> None:
    """With several layers, a map blank at one of them is expected (a detection at stride 8 has no
    gradient at the coarser maps) and is not reported; blank at every layer, it is, once, with the
    first layer's reason."""
    from onnxcam.explainers.base import RawMaps

    model = onnxcam.load(save(conv_gap_net(_W, _B, _WF, np.zeros(3)), tmp_path / "two.onnx"))
    cam = onnxcam.GradCAM(model, ["a", "r"])
    live = _RNG.normal(size=(2, 8, 8)).astype(np.float32)
    zero = np.zeros((2, 8, 8), np.float32)
    grads = {"a": np.zeros((2, 4, 8, 8), np.float32), "r": np.ones((2, 4, 8, 8), np.float32)}
    acts = {"a": np.ones((2, 4, 8, 8), np.float32), "r": np.ones((2, 4, 8, 8), np.float32)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cam._warn_blank(RawMaps({"a": zero, "r": live}, [], np.zeros(2), [], acts, grads))
        assert not caught
        blank_r = live.copy()
        blank_r[1] = 0
        cam._warn_blank(RawMaps({"a": zero, "r": blank_r}, [], np.zeros(2), [], acts, grads))
    msgs = [str(w.message) for w in caught if issubclass(w.category, OnnxCamWarning)]
    assert msgs == ["gradcam map of image 1 is all zeros at every layer ('a', 'r'); at 'a': the gradients of the "
                    "target score w.r.t. the layer are all zero (saturated or disconnected target); try another "
                    "layer or method"]


def test_constant_activations_warning_names_cause(tmp_path: Path) -> None:
    proto = DEGENERATE["constant-activations"][0]
    model = onnxcam.load(save(proto, tmp_path / "const.onnx"))
    with pytest.warns(OnnxCamWarning, match="activations are .*constant"):
        onnxcam.GradCAM(model, "r")(_x(1), 0)


def test_ablation_with_zero_score_is_finite(tmp_path: Path) -> None:
    """Target score exactly 0 (class 0's row and bias are zero) with live activations: no 0/0."""
    wf = _WF.copy()
    wf[0] = 0.0
    model = onnxcam.load(save(conv_gap_net(_W, _B, wf, np.zeros(3)), tmp_path / "zero_score.onnx"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        e = onnxcam.AblationCAM(model, "r").explain(_x(2), 0)
    np.testing.assert_array_equal(e.scores, 0.0)
    assert np.all(np.isfinite(e.maps)) and np.all(e.maps == 0)
    assert any("all channel weights are zero" in str(w.message) for w in caught)
    # Class 1 on the same model still gets a real map: the zero row did not poison anything.
    maps = onnxcam.AblationCAM(model, "r")(_x(2), 1)
    assert np.all(np.isfinite(maps)) and maps.max() > 0.99
