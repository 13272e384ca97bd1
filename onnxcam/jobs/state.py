"""A job's state in its output folder: what job it is, which chunks are done, whether it finished.

- ``job.json``: the spec's and the source's fingerprints, written when a job starts; ``--resume``
  continues only the same job (same model, settings and images).
- ``parts/``: one file per finished chunk (``onnxcam.jobs.records``).
- ``_DONE``: written last, atomically, once every record file and the report are in place. It is
  removed before anything else when a job starts or resumes, so a folder without it never passes
  for a finished job, whatever moment the previous run was killed at.
"""

from __future__ import annotations

import json
import re
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxcam.errors import ArgumentError
from onnxcam.jobs.records import PARTS, done_chunks
from onnxcam.output import OutputDir, write_json

__all__ = ["DONE", "JOB_FILE", "JobState", "begin", "is_finished"]

JOB_FILE = "job.json"
DONE = "_DONE"
OVERLAYS = "overlays"
#: What a finished job wrote beside its parts and overlays (removed when a new job starts in the folder).
FINAL_FILES = ("records.parquet", "records.jsonl", "metrics.csv", "metrics.json", "report.html")


@dataclass
class JobState:
    folder: Path
    done: set[int]  # chunks already written
    fresh: bool  # nothing of an earlier run was kept
    created: bool  # this run created the output folder


def is_finished(folder: str | Path) -> bool:
    return (Path(folder) / DONE).is_file()


#: The names a job gives its parts and overlays: only those are removed when a new job starts.
_OURS = {PARTS: re.compile(r"^(part-\d{8}\.json|\..*\.tmp)$"), OVERLAYS: re.compile(r"^(\d{7}_.*\.jpg|\..*\.tmp)$")}


def _clear(folder: Path) -> None:
    """Remove an earlier job's state and outputs: only the files a job writes (a user's file stays)."""
    for name in (DONE, JOB_FILE, *FINAL_FILES):
        with suppress(OSError):
            (folder / name).unlink()
    for sub, pattern in _OURS.items():
        d = folder / sub
        if d.is_dir() and not d.is_symlink():
            for p in d.iterdir():
                if pattern.match(p.name) and p.is_file():
                    with suppress(OSError):
                        p.unlink()
            with suppress(OSError):
                d.rmdir()  # only when emptied


def _remove_temp_files(folder: Path) -> None:
    """The temp files of atomic writes a killed run left behind (``.name.xxxx.tmp``)."""
    for d in (folder, folder / PARTS, folder / OVERLAYS):
        if d.is_dir():
            for p in d.glob(".*.tmp"):
                with suppress(OSError):
                    p.unlink()


def begin(out: OutputDir, job: dict[str, Any], resume: bool) -> JobState:
    """Open the folder for ``job`` (its fingerprints): continue it (``resume``) or start afresh.

    An unfinished job in the folder is never overwritten silently: without ``resume`` it is an error.
    """
    folder = out.path
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    job_file = folder / JOB_FILE
    previous: dict[str, Any] | None = None
    if job_file.is_file():
        try:
            previous = json.loads(job_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = None
    finished = is_finished(folder)
    if previous is not None and not finished and not resume:
        n = len(done_chunks(folder))
        raise ArgumentError(f"{folder} holds an unfinished audit ({n} batch(es) done): pass --resume to continue "
                            "it, or choose another --out")
    if resume and previous is not None:
        changed = [k for k in ("spec", "source") if previous.get(k) != job.get(k)]
        if changed:
            what = " and ".join({"spec": "the model or settings", "source": "the images"}[k] for k in changed)
            raise ArgumentError(f"--resume: the job in {folder} was started with other {what}; run it with the same "
                                "arguments, or drop --resume to start again (its results will be replaced)")
        with suppress(OSError):
            (folder / DONE).unlink()  # first: from here on the folder is an unfinished job
        _remove_temp_files(folder)
        return JobState(folder, done_chunks(folder), False, created)
    _clear(folder)
    write_json(out.target(JOB_FILE), job)
    return JobState(folder, set(), True, created)


def finish(out: OutputDir, summary: dict[str, Any]) -> Path:
    """Mark the job finished: the last file a job writes."""
    path = out.target(DONE)
    write_json(path, summary)
    return path


def abandon(state: JobState) -> None:
    """Undo a fresh job that produced nothing (no image could be read): the folder is as before."""
    if not state.fresh:
        return
    _clear(state.folder)
    if state.created:
        with suppress(OSError):
            state.folder.rmdir()
