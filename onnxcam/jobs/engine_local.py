"""The embedded engine: the job's chunks run one after the other in this process (the default; no Ray)."""

from __future__ import annotations

from collections.abc import Callable

from onnxcam.jobs.sources import Source
from onnxcam.jobs.work import ChunkResult, Worker, chunks

__all__ = ["run_local"]


def run_local(worker: Worker, source: Source, done: set[int], write: Callable[[ChunkResult], None],
              progress: Callable[[float], None]) -> None:
    """Run every chunk not in ``done`` through ``worker`` and hand each result to ``write`` at once."""
    units = len(worker.cams)
    for index, items in chunks(source.items(), worker.spec.config.batch_size):
        if index in done:
            progress(len(items) * units)
            continue
        write(worker.run_chunk(index, items, progress))
