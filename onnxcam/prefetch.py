"""Decode images on worker threads, ahead of the batch being explained.

Decoding a photo (JPEG/PNG) costs as much per image as EfficientNet-Lite0's whole forward pass on
two cores, and OpenCV releases the GIL while it decodes and resizes. Reading the next batches on
threads overlaps that work with model loading, session building and the onnxruntime runs, instead
of adding it to them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Generic, TypeVar

from onnxcam.errors import ImageError
from onnxcam.runtime import physical_cores

T = TypeVar("T")
U = TypeVar("U")
V = TypeVar("V")

# Batches decoded ahead of the one being explained: one hides decoding behind the current batch;
# more would only queue ahead of the work ``map`` hands the same workers, and hold more memory.
AHEAD = 1


def default_workers() -> int:
    # Past four, decoding outruns any onnxruntime batch it feeds and only holds more images.
    return min(4, physical_cores())


class Prefetcher(Generic[T]):
    """``with Prefetcher(paths, read, batch_size) as batches: for batch in batches: ...``

    Each batch is a list of ``(path, read(path))`` or ``(path, ImageError)`` pairs, in the order of
    ``paths``: an unreadable image is handed over as its error, never raised, so one bad file
    cannot stop the others. Any other exception from ``read`` is raised when its batch is reached.
    Work starts on construction; leaving the block cancels what has not started.
    """

    def __init__(self, paths: Sequence[Path], read: Callable[[Path], T], batch_size: int,
                 workers: int | None = None) -> None:
        self._paths = list(paths)
        self._read = read
        self._batch = max(1, batch_size)
        self._pool = ThreadPoolExecutor(max_workers=workers or default_workers(), thread_name_prefix="onnxcam-read")
        self._futures: list[Future[T] | None] = []
        self._submit_until(min(len(self._paths), (AHEAD + 1) * self._batch))

    def _submit_until(self, end: int) -> None:
        for p in self._paths[len(self._futures): end]:
            self._futures.append(self._pool.submit(self._read, p))

    def __iter__(self) -> Iterator[list[tuple[Path, T | ImageError]]]:
        for start in range(0, len(self._paths), self._batch):
            self._submit_until(min(len(self._paths), start + (AHEAD + 1) * self._batch))
            batch: list[tuple[Path, T | ImageError]] = []
            for k in range(start, min(len(self._paths), start + self._batch)):
                future = self._futures[k]
                assert future is not None
                self._futures[k] = None  # the decoded image leaves with its batch
                try:
                    batch.append((self._paths[k], future.result()))
                except ImageError as exc:
                    batch.append((self._paths[k], exc))
            yield batch

    def map(self, fn: Callable[[U], V], items: Sequence[U]) -> list[V]:
        """``[fn(item) for item in items]`` on the same workers (in order; the first error is raised)."""
        return list(self._pool.map(fn, items))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


__all__ = ["AHEAD", "Prefetcher", "default_workers"]
