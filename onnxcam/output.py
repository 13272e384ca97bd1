"""Writing results without endangering inputs or leaving half-written output behind.

Three layers:
- ``write_png`` / ``write_npy`` / ``write_json`` / ``write_text``: one file each, atomically
  (a temp file in the same folder, then ``os.replace``), so a reader never sees a torn file;
- ``OutputDir``: checks once, before any work, that the output folder is not an input folder
  and can be created and written;
- ``OutputDir.transaction()``: a context manager whose writers only write inside the folder,
  never over an input, and which on any exception (KeyboardInterrupt included) removes what it
  wrote, puts back files it overwrote, and removes folders it created if they are left empty.
  When it succeeds, the files the folder's previous run wrote and this run did not are removed
  (a re-run replaces the previous results; see ``MANIFEST``), so the folder never holds stale
  outputs that the new summary does not list.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path, PurePath
from types import TracebackType
from typing import Any, BinaryIO

import cv2
import numpy as np

from onnxcam.errors import ArgumentError, OutputError

__all__ = [
    "MANIFEST",
    "OutputDir",
    "OutputTransaction",
    "encode_png",
    "write_json",
    "write_npy",
    "write_png",
    "write_text",
]

_HINT = "choose another output folder (--out)"

#: The list of files the last successful run wrote into a folder (with size and mtime), so the next
#: run removes exactly those it does not write again, and never a file onnxcam did not write
#: (or one changed since: a different size or mtime means someone else wrote it).
MANIFEST = ".onnxcam-manifest.json"


# --------------------------------------------------------------------------- atomic writers


def _atomic_write(path: Path, fill: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` via a temp file in its folder and ``os.replace``; no temp file survives."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        # os.open with 0o666 lets the umask decide permissions, as a normal open() would;
        # tempfile.mkstemp would leave every output readable by its owner only.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as exc:
        raise OutputError(f"cannot write {str(path)!r}: {exc.strerror or exc}; {_HINT}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
        os.replace(tmp, path)
    except BaseException as exc:
        with suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {str(path)!r}: {exc.strerror or exc}; {_HINT}") from exc
        raise


def write_png(path: str | Path, rgb: np.ndarray) -> None:
    """Write ``(H, W, 3)`` RGB or ``(H, W)`` gray uint8 ``rgb`` as a PNG, atomically."""
    data = encode_png(rgb, path)
    _atomic_write(Path(path), lambda f: f.write(data))


def encode_png(rgb: np.ndarray, path: str | Path = "image") -> bytes:
    """PNG bytes of ``(H, W, 3)`` RGB or ``(H, W)`` gray uint8 ``rgb`` (``path`` names it in errors)."""
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ArgumentError(
            f"write_png({str(path)!r}) needs a (H, W, 3) or (H, W) uint8 array, got {arr.dtype} of shape {arr.shape}"
        )
    # imencode + our own write instead of imwrite: imwrite cannot handle non-ASCII paths on
    # Windows and writes in place.
    bgr = arr if arr.ndim == 2 else np.ascontiguousarray(arr[:, :, ::-1])
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise OutputError(f"OpenCV could not encode {str(path)!r} as PNG (shape {arr.shape})")
    return buf.tobytes()


def write_npy(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` in NumPy ``.npy`` format (no pickling), atomically."""
    arr = np.asarray(array)
    if arr.dtype.hasobject:
        raise ArgumentError(
            f"write_npy({str(path)!r}) got an object array; only numeric arrays are saved "
            "(pickled objects would be unsafe to load)"
        )
    _atomic_write(Path(path), lambda f: np.save(f, arr, allow_pickle=False))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as UTF-8 JSON (indent 2; numpy values and paths converted), atomically.

    NaN/Infinity are refused rather than written as the non-standard tokens Python emits.
    """
    try:
        text = json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise ArgumentError(f"cannot write {str(path)!r} as JSON: {exc}") from exc
    write_text(path, text + "\n")


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` as UTF-8, atomically (newlines written as given)."""
    data = text.encode("utf-8")
    _atomic_write(Path(path), lambda f: f.write(data))


# --------------------------------------------------------------------------- output folder


def _resolve(p: Path) -> Path:
    return Path(os.path.abspath(p)).resolve()


def _stat(p: Path) -> os.stat_result | None:
    try:
        return os.stat(p)
    except OSError:
        return None


def _same(a: Path, b: Path) -> bool:
    """Same file or folder; samefile also catches case-insensitive file systems and hard links."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return _resolve(a) == _resolve(b)


def _is_within(child: Path, parent: Path) -> bool:
    """``child`` is ``parent`` or below it."""
    if _resolve(child).is_relative_to(_resolve(parent)):
        return True
    if not parent.exists():
        return False
    return any(_same(anc, parent) for anc in (child, *_resolve(child).parents) if anc.exists())


class OutputDir:
    """An output folder checked against the inputs; nothing is created until a transaction.

    Refused (``OutputError``): the folder is an existing file; it is an input folder or inside
    one (``inputs`` may hold folders); it is the folder an input file lies in (writing next to
    inputs is how they get overwritten); its nearest existing ancestor is not a writable folder.
    A sibling of the inputs' folder, or a subfolder of an input file's folder, is fine. Pass the
    model file among ``inputs`` too, so that it is protected like the images.
    """

    def __init__(self, path: str | Path, inputs: Sequence[str | Path] = ()) -> None:
        self.path = Path(path)
        self.inputs = [Path(p) for p in inputs]
        self._check()
        # Every written file is checked against every input: resolve the inputs once, not per file.
        self._input_paths = {_resolve(p) for p in self.inputs}
        self._input_ids = {(st.st_dev, st.st_ino) for st in (_stat(p) for p in self.inputs) if st is not None}
        self._root = _resolve(self.path)

    def _check(self) -> None:
        out = self.path
        if out.exists() and not out.is_dir():
            raise OutputError(f"output path {str(out)!r} is an existing file, not a folder; {_HINT}")
        for inp in self.inputs:
            if inp.is_dir():
                if _is_within(out, inp):
                    raise OutputError(
                        f"output folder {str(out)!r} is inside the input folder {str(inp)!r}; "
                        f"results would mix with the inputs; {_HINT}, e.g. a sibling folder"
                    )
            elif _same(out, inp.parent):
                raise OutputError(
                    f"output folder {str(out)!r} is the folder of input {str(inp)!r}; writing "
                    f"next to the inputs risks overwriting them; {_HINT}, e.g. a subfolder"
                )
        anc = _resolve(out)
        while not anc.exists():
            anc = anc.parent
        if not anc.is_dir():
            raise OutputError(f"cannot create output folder {str(out)!r}: {str(anc)!r} is a file; {_HINT}")
        if not os.access(anc, os.W_OK | os.X_OK):
            what = "write to output folder" if anc == _resolve(out) else "create output folder"
            raise OutputError(f"cannot {what} {str(out)!r}: no write permission on {str(anc)!r}; {_HINT}")

    def target(self, name: str | Path) -> Path:
        """The path for output ``name`` (relative, may contain subfolders) inside the folder.

        Refuses absolute names, ``..``, and any name that would land on an input file.
        """
        rel = Path(name)
        if not str(name) or rel.is_absolute() or rel.drive or ".." in rel.parts:
            raise OutputError(
                f"output name {str(name)!r} must be a relative path inside {str(self.path)!r} "
                "(no absolute paths, no '..')"
            )
        dest = self.path / rel
        resolved = _resolve(dest)
        if not resolved.is_relative_to(self._root):
            # A symlinked subfolder could point anywhere.
            raise OutputError(f"output {str(dest)!r} resolves outside {str(self.path)!r}")
        st = _stat(dest)
        if resolved in self._input_paths or (st is not None and (st.st_dev, st.st_ino) in self._input_ids):
            inp = next((p for p in self.inputs if _resolve(p) == resolved or _same(dest, p)), dest)
            raise OutputError(f"output {str(dest)!r} would overwrite input {str(inp)!r}; {_HINT}")
        return dest

    def transaction(self, replace_previous: bool = False) -> OutputTransaction:
        """All-or-nothing writing into this folder; see ``OutputTransaction``.

        ``replace_previous``: on success, remove the files the previous such run recorded in the
        folder's ``MANIFEST`` and did not write again, and record this run's files there.
        """
        return OutputTransaction(self, replace_previous)


class OutputTransaction:
    """Context manager for writing a run's outputs; undone entirely if the block raises.

    ``with OutputDir(out, inputs).transaction() as tx: tx.write_png("cat_cam.png", rgb)``.
    On an exception (``KeyboardInterrupt`` too) every file written is removed, files it replaced
    are restored, and folders it created are removed when empty; then the exception propagates.
    Writing the same name twice in one transaction is refused: it means two inputs map to the
    same output name and one result would silently replace the other.
    """

    def __init__(self, out: OutputDir, replace_previous: bool = False) -> None:
        self.out = out
        self.replace_previous = replace_previous
        self.written: list[Path] = []
        self._written_resolved: set[Path] = set()
        self._created_dirs: list[Path] = []
        self._backups: list[tuple[Path, Path]] = []  # (original, backup)
        self._backup_dir: Path | None = None
        self._active = False

    def __enter__(self) -> OutputTransaction:
        self._makedirs(self.out.path)
        self._active = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._active = False
        if exc_type is None:
            if self._backup_dir is not None:
                shutil.rmtree(self._backup_dir, ignore_errors=True)
            if self.replace_previous:
                self._replace_previous()
        else:
            self.rollback()

    def _replace_previous(self) -> None:
        """Remove the previous run's files that this run did not write; record this run's files."""
        root = self.out.path
        manifest = root / MANIFEST
        previous: dict[str, Any] = {}
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
            if isinstance(data, dict) and isinstance(data.get("files"), dict):
                previous = data["files"]
        except (OSError, ValueError):
            previous = {}
        current: dict[str, list[int]] = {}
        for path in self.written:
            st = _stat(path)
            if st is not None:
                current[path.relative_to(root).as_posix()] = [st.st_size, st.st_mtime_ns]
        for name, facts in previous.items():
            if name in current or not isinstance(name, str) or ".." in PurePath(name).parts:
                continue
            path = root / name
            st = _stat(path)
            unchanged = isinstance(facts, list) and st is not None and [st.st_size, st.st_mtime_ns] == facts
            if unchanged and path.is_file() and not path.is_symlink() and _resolve(path).is_relative_to(
                    self.out._root) and _resolve(path) not in self.out._input_paths:
                with suppress(OSError):
                    path.unlink()
                    with suppress(OSError):
                        parent = path.parent
                        while parent != root and _resolve(parent).is_relative_to(self.out._root):
                            parent.rmdir()  # only when emptied by this removal
                            parent = parent.parent
        with suppress(OutputError):
            write_json(manifest, {"tool": "onnxcam", "files": current})

    def rollback(self) -> None:
        """Undo everything this transaction did (called automatically on an exception)."""
        for path in reversed(self.written):
            with suppress(OSError):
                path.unlink()
        for original, backup in reversed(self._backups):
            with suppress(OSError):
                os.replace(backup, original)
        if self._backup_dir is not None:
            shutil.rmtree(self._backup_dir, ignore_errors=True)
        for d in reversed(self._created_dirs):
            with suppress(OSError):
                d.rmdir()  # fails, as wanted, if something else was put there
        self.written.clear()
        self._written_resolved.clear()
        self._backups.clear()
        self._created_dirs.clear()

    def _makedirs(self, d: Path) -> None:
        missing = []
        cur = d
        while not cur.exists():
            missing.append(cur)
            cur = cur.parent
        for m in reversed(missing):
            try:
                m.mkdir()
            except FileExistsError:
                continue  # created concurrently; not ours to remove
            except OSError as exc:
                raise OutputError(f"cannot create output folder {str(m)!r}: {exc.strerror or exc}; {_HINT}") from exc
            self._created_dirs.append(m)

    def _prepare(self, name: str | Path) -> Path:
        if not self._active:
            raise OutputError("write outside 'with OutputDir(...).transaction() as tx:' block")
        dest = self.out.target(name)
        if _resolve(dest) in self._written_resolved:
            raise OutputError(
                f"output {str(dest)!r} was already written in this run; two inputs map to the "
                "same output name (same file name in different folders?); rename one"
            )
        self._makedirs(dest.parent)
        if dest.is_dir():
            raise OutputError(f"output {str(dest)!r} is an existing folder; {_HINT}")
        if dest.exists() or dest.is_symlink():
            self._backup(dest)
        return dest

    def _backup(self, dest: Path) -> None:
        if self._backup_dir is None:
            self._backup_dir = self.out.path / f".onnxcam-backup-{secrets.token_hex(4)}"
            self._backup_dir.mkdir()
        backup = self._backup_dir / str(len(self._backups))
        # A hard link (or copy) keeps the old file in place until os.replace swaps in the new
        # one, so the output path never goes missing; a symlink is moved aside instead.
        try:
            if dest.is_symlink():
                os.replace(dest, backup)
            else:
                try:
                    os.link(dest, backup)
                except OSError:
                    shutil.copy2(dest, backup)
        except OSError as exc:
            raise OutputError(
                f"cannot keep a backup of existing {str(dest)!r} before replacing it: {exc.strerror or exc}; {_HINT}"
            ) from exc
        self._backups.append((dest, backup))

    def write_with(self, name: str | Path, writer: Callable[[Path], None]) -> Path:
        """Write ``name`` with ``writer(path)`` (which must write atomically, e.g. streamed to a temporary
        file then renamed), under the transaction's checks and rollback."""
        dest = self._prepare(name)
        try:
            writer(dest)
        except BaseException:
            # The atomic write left ``dest`` as it was; restore or drop its backup right away.
            if self._backups and self._backups[-1][0] == dest:
                _, backup = self._backups.pop()
                with suppress(OSError):
                    if dest.exists() or dest.is_symlink():
                        backup.unlink()
                    else:
                        os.replace(backup, dest)
            raise
        self.written.append(dest)
        self._written_resolved.add(_resolve(dest))
        return dest

    def write_png(self, name: str | Path, rgb: np.ndarray) -> Path:
        """``write_png`` to ``name`` inside the folder; returns the path written."""
        return self.write_with(name, lambda p: write_png(p, rgb))

    def write_bytes(self, name: str | Path, data: bytes) -> Path:
        """``data`` as the file ``name`` inside the folder (e.g. from ``encode_png``); returns the path written."""
        return self.write_with(name, lambda p: _atomic_write(p, lambda f: f.write(data)))

    def write_npy(self, name: str | Path, array: np.ndarray) -> Path:
        """``write_npy`` to ``name`` inside the folder; returns the path written."""
        return self.write_with(name, lambda p: write_npy(p, array))

    def write_json(self, name: str | Path, obj: Any) -> Path:
        """``write_json`` to ``name`` inside the folder; returns the path written."""
        return self.write_with(name, lambda p: write_json(p, obj))

    def write_text(self, name: str | Path, text: str) -> Path:
        """``write_text`` to ``name`` inside the folder; returns the path written."""
        return self.write_with(name, lambda p: write_text(p, text))
