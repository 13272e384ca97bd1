"""What a new user meets in ``onnxcam explain`` (issue #17): class names built in and read from the
model's metadata, overlays on the original image, progress that moves within a batch, warnings as
one-line notes naming the file, runs that read nothing fail cleanly, re-runs leave no stale files."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from graphs import residual_net, save
from typer.testing import CliRunner

from cli.main import app
from onnxcam import ScoreCAM, load
from onnxcam.explainers.perturbation import AblationCAM
from onnxcam.image import crop_box, get_preset
from onnxcam.labels import labels_hint, metadata_labels, read_labels, resolve_labels
from onnxcam.output import MANIFEST
from onnxcam.overlay import DIM_OUTSIDE, add_caption, add_colorbar, box_covers, overlay_on_original
from onnxcam.pipeline import ExplainConfig, explain_images
from onnxcam.tasks import ClassificationTask

runner = CliRunner()


@pytest.fixture()
def ws(tmp_path: Path) -> tuple[Path, Path, Path]:
    model = save(residual_net(), tmp_path / "res.onnx")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(20, 40), (30, 18), (16, 16)]):
        cv2.imwrite(str(images / f"img{i}.png"), (rng.random((h, w, 3)) * 255).astype(np.uint8))
    return model, images, tmp_path / "out"


def _explain(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["explain", *args])
    return result.exit_code, result.stdout, result.stderr


# ------------------------------------------------------------------------------------------- labels


def test_imagenet_labels_are_built_in() -> None:
    names = read_labels("imagenet")
    assert len(names) == 1000 and len(set(names)) == 1000
    assert (names[0], names[1], names[281], names[285], names[504], names[999]) == (
        "tench", "goldfish", "tabby", "Egyptian cat", "coffee mug", "toilet tissue")
    assert resolve_labels("imagenet") == names and resolve_labels("ImageNet") == names
    assert ClassificationTask(labels="imagenet").label(285) == "Egyptian cat"  # not the letters of "imagenet"


@pytest.mark.parametrize(("value", "expected"), [
    ("{0: 'person', 1: 'bicycle'}", ["person", "bicycle"]),  # ultralytics: str(dict)
    ('["cat", "dog"]', ["cat", "dog"]),
    ('{"0": "cat", "1": "dog"}', ["cat", "dog"]),
    ("{1: 'a', 2: 'b'}", None),  # not indexed 0..K-1
    ("__import__('os')", None),  # never evaluated
    ("not a list", None),
])
def test_metadata_labels_parse(value: str, expected: list[str] | None) -> None:
    assert metadata_labels({"names": value}) == expected


def test_metadata_labels_other_keys() -> None:
    assert metadata_labels({"author": "x", "Classes": '["a", "b"]'}) == ["a", "b"]
    assert metadata_labels({"author": "x"}) is None


def _with_metadata(proto: onnx.ModelProto, key: str, value: str) -> onnx.ModelProto:
    entry = proto.metadata_props.add()
    entry.key, entry.value = key, value
    return proto


def test_explain_reads_labels_from_model_metadata(ws: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, images, out = ws
    model = save(_with_metadata(residual_net(), "names", "{0: 'zero', 1: 'one', 2: 'two', 3: 'three'}"),
                 tmp_path / "named.onnx")
    code, _, err = _explain(str(model), str(images), "--out", str(out), "-q")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    for item in summary["images"]:
        top = item["predictions"][0]
        assert top["label"] == ["zero", "one", "two", "three"][top["class"]]
        assert item["explanations"][0]["label"] == top["label"]


def test_metadata_labels_of_the_wrong_length_are_ignored(ws: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, images, out = ws
    model = save(_with_metadata(residual_net(), "names", "['a', 'b']"), tmp_path / "wrong.onnx")
    code, _, err = _explain(str(model), str(images), "--out", str(out), "-q")
    assert code == 0, err
    top = json.loads((out / "summary.json").read_text())["images"][0]["predictions"][0]
    assert top["label"] == str(top["class"])


def test_cli_labels_imagenet_on_a_1000_class_model(ws: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, images, out = ws
    model = save(residual_net(classes=1000), tmp_path / "k1000.onnx")
    code, _, err = _explain(str(model), str(images), "--out", str(out), "-q")
    assert code == 0, err
    # 1000 classes and no labels: not assumed to be ImageNet, but the user is told the option exists.
    assert "onnxcam: note:" in err and "--labels imagenet" in err
    top = json.loads((out / "summary.json").read_text())["images"][0]["predictions"][0]
    assert top["label"] == str(top["class"])
    code, _, err = _explain(str(model), str(images), "--out", str(out), "-q", "--labels", "imagenet")
    assert code == 0, err and "--labels imagenet" not in err
    top = json.loads((out / "summary.json").read_text())["images"][0]["predictions"][0]
    assert top["label"] == read_labels("imagenet")[top["class"]]
    assert labels_hint(1000, False) is not None and labels_hint(1000, True) is None and labels_hint(4, False) is None


def test_labels_imagenet_on_a_4_class_model_is_refused(ws: tuple[Path, Path, Path]) -> None:
    model, images, out = ws
    code, _, err = _explain(str(model), str(images), "--out", str(out), "-q", "--labels", "imagenet")
    assert code == 2 and "1000 names" in err and "4 classes" in err
    assert not out.exists()


# ------------------------------------------------------------------------------------------ overlays


def test_overlay_on_original_places_the_map_on_the_crop_and_dims_the_rest() -> None:
    image = np.full((20, 40, 3), 200, np.uint8)
    region = crop_box((20, 40), (8, 8), "center_crop", 1.0)  # the central 20 x 20
    assert region == (10.0, 0.0, 30.0, 20.0)
    out = overlay_on_original(image, np.ones((8, 8), np.float32), region, alpha=1.0, colormap="jet")
    assert out.shape == (20, 40, 3)
    dim = int(255 * (200 / 255) * DIM_OUTSIDE)
    assert np.all(np.abs(out[:, :10].astype(int) - dim) <= 1) and np.all(np.abs(out[:, 30:].astype(int) - dim) <= 1)
    # alpha 1, a map of ones: jet's top colour (dark red, normalised to full brightness) inside.
    assert np.all(out[:, 10:30, 0] == 255) and np.all(out[:, 10:30, 2] == 0)


def test_overlay_keeps_the_aspect_of_a_stretched_image() -> None:
    cam = np.zeros((8, 8), np.float32)
    cam[:, :4] = 1.0  # left half of the model's view
    out = overlay_on_original(np.zeros((20, 40, 3), np.uint8), cam, None, alpha=1.0)
    assert out.shape == (20, 40, 3)
    red = (out[..., 0] > 100) & (out[..., 2] < 50)  # jet's top is dark red, its bottom dark blue
    assert red[:, :18].all() and not red[:, 22:].any()  # the left half of the original, 40 px wide


def test_whole_image_boxes_are_not_frames() -> None:
    assert box_covers((0, 0, 8, 8), (8, 8)) and box_covers((0, 0, 8, 8), (8, 8), 1.0)
    assert not box_covers((1, 1, 7, 7), (8, 8))


def test_caption_and_colorbar_add_space() -> None:
    img = np.zeros((50, 80, 3), np.uint8)
    assert add_caption(img, "tabby  p=0.87").shape[:2][1] == 80 and add_caption(img, "x").shape[0] > 50
    bar = add_colorbar(img, "jet")
    assert bar.shape[0] == 50 and bar.shape[1] > 80
    assert np.array_equal(bar[:, :80], img)


def test_explain_overlays_are_at_the_original_resolution(ws: tuple[Path, Path, Path]) -> None:
    model, images, out = ws
    code, _, err = _explain(str(model), str(images), "--out", str(out), "-q", "-m", "gradcam,eigencam", "-k", "2",
                            "--save-npy", "--colorbar")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    for item in summary["images"]:
        w, h = item["size"]
        for e in item["explanations"]:
            overlay = cv2.imread(str(out / e["overlay"]))
            assert overlay.shape[0] > h and overlay.shape[1] > w  # the caption below, the colour bar beside
            assert np.load(out / e["npy"]).shape == (8, 8)  # raw maps stay at model-input resolution
            assert 0.0 < e["probability"] <= 1.0
        assert [(e["method"], e["class"]) for e in item["explanations"]][:2] == [
            ("gradcam", item["predictions"][0]["class"]), ("gradcam", item["predictions"][1]["class"])]
    # Grid: rows = the top-2 targets, columns = the 2 methods.
    grid = cv2.imread(str(out / summary["images"][0]["grid"]))
    tile = cv2.imread(str(out / summary["images"][0]["explanations"][0]["overlay"]))
    assert grid.shape[1] < 3 * tile.shape[1] and grid.shape[0] > 2 * tile.shape[0]


def test_center_crop_box_is_mapped_to_the_original(ws: tuple[Path, Path, Path]) -> None:
    model, images, out = ws
    code, _, err = _explain(str(model), str(images / "img0.png"), "--out", str(out), "-q", "--center-crop")
    assert code == 0, err
    e = json.loads((out / "summary.json").read_text())["images"][0]["explanations"][0]
    if "box" in e:  # the 20 x 40 image: the model sees about the central 17 x 17 pixels
        x0, y0, x1, y1 = e["box_original"]
        assert 10 <= x0 < x1 <= 31 and 0 <= y0 < y1 <= 20


# ------------------------------------------------------------------------------------------ progress


@pytest.mark.parametrize("cls", [ScoreCAM, AblationCAM])
def test_perturbation_methods_report_progress_within_a_batch(cls: type, tmp_path: Path) -> None:
    model = load(save(residual_net(), tmp_path / "res.onnx"))
    x = np.random.default_rng(0).normal(size=(3, 3, 8, 8)).astype(np.float32)
    cam = cls(model, "b", batch_size=2)
    steps: list[float] = []
    maps = cam.explain(x, progress=steps.append).maps
    # 6 channels x 3 images in chunks of 2: several reports, summing to the whole call.
    assert len(steps) >= 6 and sum(steps) == pytest.approx(1.0) and all(s > 0 for s in steps)
    assert np.array_equal(maps, cls(model, "b", batch_size=2).explain(x).maps)


def test_explain_job_reports_stages_and_every_image(ws: tuple[Path, Path, Path]) -> None:
    model_path, images, out = ws
    (images / "broken.png").write_bytes(b"not a png")
    model = load(model_path)
    calls: list[tuple[float, str | None]] = []
    config = ExplainConfig(preprocess=get_preset("imagenet", model.input.size, model.input.layout),
                           methods=["scorecam", "gradcam"], batch_size=2)
    paths = sorted(images.iterdir())
    explain_images(model, paths, out, config, progress=lambda n, stage=None: calls.append((n, stage)))
    stages = [s for _, s in calls if s]
    assert stages == ["building sessions", "explaining"]
    assert sum(n for n, _ in calls) == pytest.approx(len(paths))
    assert sum(1 for n, _ in calls if 0 < n < 1) >= 2  # fractions while a batch is explained


# ----------------------------------------------------------------------------- warnings, exit codes


def test_warnings_become_one_line_notes_naming_the_file(ws: tuple[Path, Path, Path],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    model, images, out = ws

    def reasons(maps, **kwargs):  # type: ignore[no-untyped-def]
        return ["" if i != 1 else "every activation is zero" for i in range(len(maps))]

    # The second image of every batch gets a blank-map warning.
    monkeypatch.setattr("onnxcam.explainers.base.live_maps", lambda maps: np.arange(len(maps)) != 1)
    monkeypatch.setattr("onnxcam.explainers.base.zero_map_reasons", reasons)
    code, _, err = _explain(str(model), str(images), "--out", str(out), "-q", "--batch-size", "3")
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [f"onnxcam: note: gradcam map of image {images / 'img1.png'} at layer 'e' is all zeros: every "
                     "activation is zero; try another layer or method"], err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["notes"] == [lines[0].removeprefix("onnxcam: note: ")]


def test_stray_warnings_print_one_line(ws: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    model, images, out = ws
    import onnxcam.model as om  # the command imports load from here when it runs

    real_load = om.load

    def noisy_load(*args, **kwargs):  # type: ignore[no-untyped-def]
        warnings.warn("something odd\n  across lines", RuntimeWarning, stacklevel=1)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(om, "load", noisy_load)
    code, _, err = _explain(str(model), str(images), "--out", str(out), "-q")
    assert code == 0, err
    assert err.strip() == "onnxcam: note: RuntimeWarning: something odd across lines"


def test_a_run_that_reads_no_image_fails_and_writes_nothing(ws: tuple[Path, Path, Path]) -> None:
    model, images, out = ws
    empty = images / "empty.png"
    empty.write_bytes(b"")
    text = images / "text.jpg"
    text.write_text("hello")
    code, stdout, err = _explain(str(model), str(empty), str(text), "--out", str(out))
    assert code == 5 and "no image could be read (2 of 2 failed)" in err
    assert not out.exists() and stdout == ""


def test_skipped_images_are_counted_in_the_last_line(ws: tuple[Path, Path, Path]) -> None:
    model, images, out = ws
    (images / "broken.png").write_bytes(b"\x89PNG broken")
    code, stdout, err = _explain(str(model), str(images), "--out", str(out))
    assert code == 0, err
    assert "explained 3 image(s)" in stdout and "skipped 1 unreadable image(s)" in stdout.strip().splitlines()[-1]


def test_rerun_replaces_the_previous_outputs_but_keeps_user_files(ws: tuple[Path, Path, Path]) -> None:
    model, images, out = ws
    code, _, err = _explain(str(model), str(images), "--out", str(out), "-q", "-m", "gradcam,eigencam", "--save-npy")
    assert code == 0, err
    (out / "my_notes.txt").write_text("mine")
    (out / "img2_eigencam.npy").write_bytes(b"changed by the user")  # no longer what onnxcam wrote
    code, _, err = _explain(str(model), str(images), "--out", str(out), "-q", "-m", "gradcam")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    listed = {e["overlay"] for item in summary["images"] for e in item["explanations"]}
    present = {p.name for p in out.iterdir()}
    assert present == listed | {"summary.json", MANIFEST, "my_notes.txt", "img2_eigencam.npy"}
    assert (out / "img2_eigencam.npy").read_bytes() == b"changed by the user"
    assert sorted(json.loads((out / MANIFEST).read_text())["files"]) == sorted(listed | {"summary.json"})
