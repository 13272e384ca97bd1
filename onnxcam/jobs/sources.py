"""Where a job's images come from: files, folders, globs, a manifest, or a tree of class folders.

A source is read lazily and always in the same order, so it can be walked again (to count, to
fingerprint, to run) without holding the list of images: a manifest of a million lines is read a
line at a time. Each image gets its position in that order as its id, so a job's records are keyed
by ``index`` whatever the file names (two files may share a name in different folders).

Manifests: CSV with a header, or JSON Lines, with a ``path`` (relative paths are relative to the
manifest's folder), an optional ``label`` (a class index, or a class name found in the labels, or
anything else for per-label statistics only) and an optional ``box`` (``[x0, y0, x1, y1]`` in
original-image pixels, or a list of such boxes; in a CSV cell, JSON or four numbers separated by
spaces).

Class trees (ImageNet style): ``root/<class>/<image>``; labels are the folder names. A folder name
that is a class name of the model's labels, or an integer, gives that class; otherwise classes are
numbered by the sorted folder names, as torchvision's ``ImageFolder`` does (ImageNet's ``n01440764``
... folders are classes 0 ... 999 that way).
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxcam.errors import ArgumentError, ImageError
from onnxcam.image import expand_image_paths, is_image_name

__all__ = ["Item", "Source", "class_tree", "from_paths", "manifest", "open_source"]


@dataclass(frozen=True)
class Item:
    """One image of a job. ``label``: as given (a folder name, a manifest cell); ``class_index``: the
    class it names when the source knows it (class trees); ``box``: ``(k, 4)`` boxes as lists."""

    index: int
    path: str
    label: str | None = None
    class_index: int | None = None
    box: list[list[float]] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "path": self.path, "label": self.label, "class_index": self.class_index,
                "box": self.box}

    @staticmethod
    def from_json(data: dict[str, Any]) -> Item:
        return Item(int(data["index"]), str(data["path"]), data.get("label"), data.get("class_index"),
                    data.get("box"))


@dataclass
class Source:
    """A re-readable, ordered stream of ``Item``; ``roots``: what the output folder must stay out of."""

    kind: str
    describe: str
    roots: list[Path]
    labelled: bool = False
    boxed: bool = False
    _walk: Any = None  # () -> Iterator[Item]
    _count: int | None = field(default=None, repr=False)

    def items(self) -> Iterator[Item]:
        it: Iterator[Item] = self._walk()
        return it

    def count(self) -> int:
        if self._count is None:
            self._count = sum(1 for _ in self.items())
        return self._count

    def fingerprint(self) -> str:
        """A hash of every item (path, label, box) in order: resuming needs the same images."""
        h = hashlib.sha256()
        for item in self.items():
            h.update(json.dumps([item.path, item.label, item.class_index, item.box]).encode("utf-8"))
            h.update(b"\n")
        return h.hexdigest()


def from_paths(paths: Sequence[str | Path], roots: Sequence[str | Path] = ()) -> Source:
    """A source over an explicit list of image paths (what ``expand_image_paths`` returns)."""
    listed = [str(p) for p in paths]

    def walk() -> Iterator[Item]:
        return (Item(i, p) for i, p in enumerate(listed))

    return Source("files", f"{len(listed)} image(s)", [Path(p) for p in (roots or listed)],
                  _walk=walk, _count=len(listed))


def _parse_box(raw: Any, where: str) -> list[list[float]] | None:
    if raw is None or raw == "":
        return None
    value = raw
    if isinstance(raw, str):
        text = raw.strip()
        try:
            value = json.loads(text) if text.startswith("[") else [float(v) for v in text.replace(",", " ").split()]
        except ValueError as exc:
            raise ArgumentError(f"{where}: box {raw!r} is not [x0, y0, x1, y1] or 'x0 y0 x1 y1'") from exc
    try:
        rows = value if value and isinstance(value[0], (list, tuple)) else [value]
        boxes = [[float(v) for v in row] for row in rows]
    except (TypeError, ValueError, IndexError) as exc:
        raise ArgumentError(f"{where}: box {raw!r} is not [x0, y0, x1, y1] or a list of them") from exc
    if not boxes or any(len(b) != 4 or b[2] <= b[0] or b[3] <= b[1] for b in boxes):
        raise ArgumentError(f"{where}: box {raw!r} needs [x0, y0, x1, y1] with x1 > x0 and y1 > y0 "
                            "(original-image pixels)")
    return boxes


def _manifest_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, row)``; CSV (with a header) or JSON Lines, by extension."""
    jsonl = path.suffix.lower() in (".jsonl", ".ndjson", ".json")
    with path.open(encoding="utf-8", newline="") as f:
        if jsonl:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ArgumentError(f"manifest {path}, line {n}: not JSON ({exc.msg}); one object per line, "
                                        'e.g. {"path": "a.jpg", "label": 3}') from exc
                if not isinstance(row, dict):
                    raise ArgumentError(f"manifest {path}, line {n}: expected an object with a \"path\"")
                yield n, row
        else:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "path" not in reader.fieldnames:
                raise ArgumentError(f"manifest {path} needs a header row with a 'path' column (and optional "
                                    f"'label', 'box'); got {reader.fieldnames}")
            for n, row in enumerate(reader, 2):
                yield n, dict(row)


def manifest(path: str | Path) -> Source:
    """A source over a CSV / JSON Lines manifest (see the module docstring)."""
    mpath = Path(path)
    if not mpath.is_file():
        raise ArgumentError(f"manifest {str(mpath)!r} does not exist; pass a CSV or JSONL file with a 'path' column")
    base = mpath.parent
    labelled = boxed = False
    for _, row in _manifest_rows(mpath):  # the header (CSV) or the first row (JSONL) says which columns exist
        labelled, boxed = "label" in row, "box" in row
        break

    def walk() -> Iterator[Item]:
        for i, (n, row) in enumerate(_manifest_rows(mpath)):
            where = f"manifest {mpath}, line {n}"
            raw = row.get("path")
            if not raw:
                raise ArgumentError(f"{where}: no 'path'")
            p = Path(str(raw))
            label = row.get("label")
            yield Item(i, str(p if p.is_absolute() else base / p),
                       None if label is None or label == "" else str(label), None,
                       _parse_box(row.get("box"), where))

    return Source("manifest", f"manifest {mpath}", [mpath], labelled, boxed, walk)


def class_tree(root: str | Path) -> Source:
    """A source over ``root/<class>/<image>`` (see the module docstring)."""
    top = Path(root)
    if not top.is_dir():
        raise ArgumentError(f"--class-folders: {str(top)!r} is not a folder of class folders")
    classes = sorted(d.name for d in top.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ImageError(f"--class-folders: {str(top)!r} holds no class folders (root/<class>/<image>)")

    def walk() -> Iterator[Item]:
        i = 0
        for k, name in enumerate(classes):
            for f in sorted((c for c in (top / name).iterdir() if c.is_file() and is_image_name(c)), key=str):
                yield Item(i, str(f), name, k)
                i += 1

    return Source("class-tree", f"{len(classes)} class folder(s) in {top}", [top], True, False, walk)


def open_source(inputs: Sequence[str], manifest_path: str | Path | None = None,
                class_folders: bool = False) -> Source:
    """The source the CLI's arguments name: a manifest, a class tree, or files / folders / globs."""
    if manifest_path is not None:
        if inputs:
            raise ArgumentError("give images or --manifest, not both")
        return manifest(manifest_path)
    if class_folders:
        if len(inputs) != 1:
            raise ArgumentError(f"--class-folders takes one root folder (root/<class>/<image>), got {len(inputs)}")
        return class_tree(inputs[0])
    paths = expand_image_paths(list(inputs))
    # The output folder may be neither an input folder nor the folder of an input file.
    return from_paths(paths, [*paths, *(Path(i) for i in inputs if Path(i).is_dir())])
