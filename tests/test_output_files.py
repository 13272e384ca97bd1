"""Safe output writing: refusals next to inputs, atomic writes, all-or-nothing transactions."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from onnxcam.errors import ArgumentError, OutputError
from onnxcam.output import OutputDir, write_json, write_npy, write_png, write_text


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    d = tmp_path / "imgs"
    d.mkdir()
    f = d / "cat.jpg"
    f.write_bytes(b"jpeg")
    return d, f


# --------------------------------------------------------------------------- refusals


def test_refuses_input_folder_and_inside_it(inputs: tuple[Path, Path]) -> None:
    d, _ = inputs
    with pytest.raises(OutputError, match=r"inside the input folder .*imgs.*--out"):
        OutputDir(d, [d])
    with pytest.raises(OutputError, match="inside the input folder"):
        OutputDir(d / "cams", [d])
    with pytest.raises(OutputError, match="inside the input folder"):
        OutputDir(d / "x" / ".." / "cams", [d])  # '..' does not hide it


def test_refuses_folder_of_input_file(inputs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    d, f = inputs
    with pytest.raises(OutputError, match=r"is the folder of input .*cat\.jpg.*--out"):
        OutputDir(d, [f])
    monkeypatch.chdir(d)
    with pytest.raises(OutputError, match="is the folder of input"):
        OutputDir(".", [Path("cat.jpg")])


def test_allows_sibling_and_subfolder_of_file_folder(inputs: tuple[Path, Path]) -> None:
    d, f = inputs
    OutputDir(d.parent / "cams", [d, f])
    OutputDir(d / "cams", [f])  # only files given: a subfolder cannot overwrite them
    assert not (d.parent / "cams").exists() and not (d / "cams").exists()  # nothing created


def test_refuses_existing_file_and_file_ancestor(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match=r"'.*f' is an existing file, not a folder"):
        OutputDir(tmp_path / "f", [])
    with pytest.raises(OutputError, match=r"cannot create output folder .*is a file"):
        OutputDir(tmp_path / "f" / "out", [])


def test_refuses_unwritable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    # CI runs as root, which ignores permission bits: report the folder as unwritable instead.
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == ro else real_access(p, mode))
    with pytest.raises(OutputError, match=r"cannot create output folder .*no write permission"):
        OutputDir(ro / "out", [])


def test_target_refuses_escapes_and_inputs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    protected = out / "sub" / "a.png"
    protected.write_bytes(b"input")
    od = OutputDir(out, [protected])
    for bad in ("../x.png", str(tmp_path / "abs.png"), ""):
        with pytest.raises(OutputError, match="relative path inside"):
            od.target(bad)
    with pytest.raises(OutputError, match=r"would overwrite input .*a\.png"):
        od.target("sub/a.png")
    with pytest.raises(OutputError, match="would overwrite input"), od.transaction() as tx:
        tx.write_text("sub/./a.png", "boom")
    assert protected.read_bytes() == b"input"


# --------------------------------------------------------------------------- writers


def test_writers_round_trip(tmp_path: Path) -> None:
    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[2, 3] = (1, 2, 3)
    out = tmp_path / "out"
    with OutputDir(out, []).transaction() as tx:
        p = tx.write_png("cat_cam.png", rgb)
        tx.write_png("gray.png", rgb[..., 0])
        tx.write_npy("cat_cam.npy", np.arange(6, dtype=np.float32).reshape(2, 3))
        tx.write_json("summary.json", {"score": np.float32(0.5), "cls": np.int64(3), "p": p})
        tx.write_text("notes/readme.txt", "größe ✓\n")
    assert _tree(out) == [
        "cat_cam.npy", "cat_cam.png", "gray.png", "notes", "notes/readme.txt", "summary.json",
    ]  # fmt: skip
    back = cv2.imdecode(np.fromfile(out / "cat_cam.png", np.uint8), cv2.IMREAD_UNCHANGED)
    gray = cv2.imdecode(np.fromfile(out / "gray.png", np.uint8), cv2.IMREAD_UNCHANGED)
    assert back is not None and gray is not None
    np.testing.assert_array_equal(back[..., ::-1], rgb)  # stored as a real RGB PNG
    assert gray.ndim == 2
    np.testing.assert_array_equal(np.load(out / "cat_cam.npy"), np.arange(6).reshape(2, 3))
    assert json.loads((out / "summary.json").read_text()) == {"score": 0.5, "cls": 3, "p": str(p)}
    assert (out / "notes/readme.txt").read_text(encoding="utf-8") == "größe ✓\n"
    assert tx.written == [out / n for n in ("cat_cam.png", "gray.png", "cat_cam.npy",
                                             "summary.json", "notes/readme.txt")]  # fmt: skip


def test_written_file_mode_follows_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_text(tmp_path / "t.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "t.txt").stat().st_mode & 0o777 == 0o644


def test_failed_write_keeps_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "a.npy"
    target.write_bytes(b"old")

    def half_save(f: object, arr: object, allow_pickle: bool = False) -> None:
        f.write(b"partial")  # type: ignore[attr-defined]
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(np, "save", half_save)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_npy(target, np.zeros(3))
    assert target.read_bytes() == b"old"
    assert _tree(tmp_path) == ["a.npy"]


def test_writer_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(ArgumentError, match="uint8"):
        write_png(tmp_path / "x.png", np.zeros((2, 2, 3), np.float32))
    with pytest.raises(ArgumentError, match="JSON"):
        write_json(tmp_path / "x.json", {"v": float("nan")})
    with pytest.raises(ArgumentError, match="object array"):
        write_npy(tmp_path / "x.npy", np.array([{}, 1], dtype=object))
    with pytest.raises(OutputError, match=r"cannot write .*nodir.*--out"):
        write_text(tmp_path / "nodir" / "x.txt", "x")
    assert _tree(tmp_path) == []


# --------------------------------------------------------------------------- transactions


@pytest.mark.parametrize("exc", [RuntimeError("model failed"), KeyboardInterrupt()])
def test_rollback_removes_everything_it_created(tmp_path: Path, exc: BaseException) -> None:
    out = tmp_path / "a" / "b" / "out"
    with pytest.raises(type(exc)), OutputDir(out, []).transaction() as tx:
        tx.write_png("x.png", np.zeros((2, 2, 3), np.uint8))
        tx.write_json("deep/y.json", {"a": 1})
        assert (out / "deep" / "y.json").exists()
        raise exc
    assert _tree(tmp_path) == []  # files, subfolder, out and its created parents all gone


def test_rollback_restores_overwritten_and_keeps_foreign_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.png").write_bytes(b"previous run")
    (out / "mine.txt").write_text("user file")
    with pytest.raises(ValueError), OutputDir(out, []).transaction() as tx:
        tx.write_text("x.png", "new")
        tx.write_text("z.txt", "new")
        assert (out / "x.png").read_text() == "new"
        raise ValueError
    assert _tree(out) == ["mine.txt", "x.png"]
    assert (out / "x.png").read_bytes() == b"previous run"


def test_commit_overwrites_and_cleans_backups(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.txt").write_text("old")
    with OutputDir(out, []).transaction() as tx:
        tx.write_text("x.txt", "new")
    assert _tree(out) == ["x.txt"] and (out / "x.txt").read_text() == "new"


def test_failed_write_inside_transaction_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.npy").write_bytes(b"old")

    def boom(f: object, arr: object, allow_pickle: bool = False) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", boom)
    with (
        pytest.raises(OutputError, match=r"a\.npy.*No space left"),
        OutputDir(out, []).transaction() as tx,
    ):
        tx.write_npy("a.npy", np.zeros(2))
    assert _tree(out) == ["a.npy"] and (out / "a.npy").read_bytes() == b"old"


def test_duplicate_name_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with (
        pytest.raises(OutputError, match="already written in this run"),
        OutputDir(out, []).transaction() as tx,
    ):
        tx.write_text("cat_cam.png", "1")
        tx.write_text("cat_cam.png", "2")
    assert not out.exists()


def test_write_outside_block_refused(tmp_path: Path) -> None:
    tx = OutputDir(tmp_path / "out", []).transaction()
    with pytest.raises(OutputError, match="transaction"):
        tx.write_text("a.txt", "x")
    assert not (tmp_path / "out").exists()


def test_refuses_without_write_permission(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Simulated, so the check is exercised even when the tests run as root.
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    with pytest.raises(OutputError, match=r"cannot create output folder .*new.*no write permission"):
        OutputDir(tmp_path / "new", [])
    with pytest.raises(OutputError, match=r"cannot write to output folder .*no write permission"):
        OutputDir(tmp_path, [])


def test_mkdir_failure_is_output_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def deny(self: Path, *a: object, **k: object) -> None:
        raise PermissionError(13, "Permission denied")

    od = OutputDir(tmp_path / "new", [])
    monkeypatch.setattr(Path, "mkdir", deny)
    with pytest.raises(OutputError, match=r"cannot create output folder .*new.*Permission denied"):
        od.transaction().__enter__()
