"""Class names: built in (``"imagenet"``), from a text file, or from the model's own metadata.

``resolve_labels(spec, proto)`` is the one place the jobs (explain, audit, compare) turn what the
user said into a list of names:

- ``"imagenet"``: the 1000 ImageNet-1k class names in index order (the short names torchvision
  uses, shipped as ``onnxcam/data/imagenet_classes.txt``);
- a path: a UTF-8 text file, one name per line (blank lines skipped);
- a sequence of strings: used as given;
- ``None``: the names stored in the model's ``metadata_props`` when there are any (ultralytics
  writes ``names`` as ``"{0: 'person', 1: 'bicycle'}"``; JSON lists or ``{"0": ...}`` objects under
  ``names`` / ``labels`` / ``classes`` / ``class_names`` / ``id2label`` are read too), else ``None``.

A 1000-class model without labels is *not* assumed to be an ImageNet classifier (many 1000-way
heads are not); ``labels_hint`` gives the sentence a summary can show instead.
"""

from __future__ import annotations

import ast
import functools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from onnxcam.errors import ArgumentError

__all__ = ["BUILTIN_LABELS", "IMAGENET_FILE", "builtin_labels", "labels_hint", "metadata_labels", "read_labels",
           "resolve_labels"]

IMAGENET_FILE = Path(__file__).resolve().parent / "data" / "imagenet_classes.txt"

#: Built-in label sets by name -> their file.
BUILTIN_LABELS: dict[str, Path] = {"imagenet": IMAGENET_FILE}

#: ``metadata_props`` keys that may hold class names, in the order they are tried.
METADATA_KEYS = ("names", "labels", "classes", "class_names", "id2label")

LabelsSpec = str | Path | Sequence[str] | None


def read_labels(path: str | Path) -> list[str]:
    """One label per line (blank lines kept out); ``ArgumentError`` if unreadable or empty.

    ``path`` may also name a built-in set (``"imagenet"``) when no file of that name exists.
    """
    p = Path(path)
    if not p.exists() and str(path).lower() in BUILTIN_LABELS:
        return builtin_labels(str(path))
    try:
        lines = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        builtins = ", ".join(BUILTIN_LABELS)
        raise ArgumentError(f"cannot read labels file {p}: {exc}; pass a UTF-8 text file, one label per line, "
                            f"or a built-in set ({builtins})") from exc
    labels = [line for line in lines if line]
    if not labels:
        raise ArgumentError(f"labels file {p} is empty: it needs one class name per line")
    return labels


def builtin_labels(name: str) -> list[str]:
    """The built-in label set ``name`` (``"imagenet"``)."""
    if name.lower() not in BUILTIN_LABELS:
        raise ArgumentError(f"unknown built-in labels {name!r}: use one of {', '.join(BUILTIN_LABELS)} or a file")
    return list(_builtin(name.lower()))


@functools.cache
def _builtin(name: str) -> tuple[str, ...]:
    text = BUILTIN_LABELS[name].read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def _parse_names(text: str) -> list[str] | None:
    """Class names from a metadata value: a JSON or Python-literal list, or a dict keyed 0..K-1."""
    value: Any
    try:
        value = json.loads(text)
    except ValueError:
        try:
            # ultralytics writes str(dict): single quotes, int keys. literal_eval evaluates literals only.
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return None
    if isinstance(value, Mapping):
        try:
            indexed = {int(k): str(v) for k, v in value.items()}
        except (TypeError, ValueError):
            return None
        if not indexed or sorted(indexed) != list(range(len(indexed))):
            return None
        return [indexed[k] for k in range(len(indexed))]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return [str(v) for v in value]
    return None


def metadata_labels(metadata: Mapping[str, str]) -> list[str] | None:
    """Class names stored in a model's ``metadata_props`` (``{key: value}``), or None."""
    lowered = {k.lower(): v for k, v in metadata.items()}
    for key in METADATA_KEYS:
        if key in lowered:
            names = _parse_names(lowered[key])
            if names:
                return names
    return None


def _metadata(proto: Any) -> dict[str, str]:
    props = getattr(proto, "metadata_props", None) or ()
    return {p.key: p.value for p in props}


def resolve_labels(spec: LabelsSpec, proto: Any = None) -> list[str] | None:
    """Class names from ``spec`` (see the module docstring); ``proto`` is the ``onnx.ModelProto``
    whose metadata is read when ``spec`` is None."""
    if spec is None:
        return metadata_labels(_metadata(proto)) if proto is not None else None
    if isinstance(spec, (str, Path)):
        return read_labels(spec)
    labels = [str(s) for s in spec]
    if not labels:
        raise ArgumentError("labels is an empty list: pass one name per class, 'imagenet', or None")
    return labels


def labels_hint(num_classes: int, have_labels: bool) -> str | None:
    """What to tell a user whose 1000-class model has no labels (None when there is nothing to say)."""
    if have_labels or num_classes != len(_builtin("imagenet")):
        return None
    return ("the model has 1000 classes and no labels: if it is an ImageNet-1k classifier, pass --labels imagenet "
            "(labels='imagenet' in Python) to see class names")
