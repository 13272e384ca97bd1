"""Warnings as one-line notes on stderr.

The library warns with ``OnnxCamWarning`` (and the explain job collects the warnings of each batch
into ``summary.notes``, naming the image file). A command calls ``install()`` first thing, so any
warning raised outside the jobs (loading the model, checking the install) also comes out as one
line, never as Python's ``file:line: Category: message`` plus the source line. Notes are printed
even with ``--quiet``: a warning that is hidden looks like a clean run.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any, TextIO

import typer

from onnxcam.errors import OnnxCamWarning

PREFIX = "onnxcam: note: "


def one_line(message: Warning | str, category: type[Warning] = OnnxCamWarning) -> str:
    """The note for a warning: its text on one line, the category named unless it is onnxcam's own."""
    text = " ".join(str(message).split())
    return text if issubclass(category, OnnxCamWarning) else f"{category.__name__}: {text}"


def _show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
          file: TextIO | None = None, line: str | None = None) -> None:
    typer.echo(PREFIX + one_line(message, category), err=True)


def install() -> None:
    """Print every warning of this process as one ``onnxcam: note:`` line on stderr."""
    warnings.showwarning = _show


def print_notes(notes: Iterable[str]) -> None:
    """The job's notes (``summary.notes``), one line each on stderr."""
    for note in notes:
        typer.echo(PREFIX + note, err=True)


def skipped_suffix(failed: Any) -> str:
    """``"; skipped 2 unreadable image(s)"`` for a summary line, or ``""``."""
    n = len(failed or ())
    return f"; skipped {n} unreadable image(s)" if n else ""


__all__ = ["PREFIX", "install", "one_line", "print_notes", "skipped_suffix"]
