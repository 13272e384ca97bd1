"""The threaded image reader: order kept, unreadable images handed over as errors, bounded look-ahead."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from onnxcam.errors import ImageError
from onnxcam.prefetch import AHEAD, Prefetcher


def test_batches_keep_order_and_hand_over_image_errors() -> None:
    paths = [Path(f"img{k:02d}.png") for k in range(11)]

    def read(p: Path) -> str:
        time.sleep(0.01 * (hash(p.name) % 3))  # finish out of order
        if p.name == "img05.png":
            raise ImageError(f"cannot decode {p}")
        return p.stem.upper()

    with Prefetcher(paths, read, batch_size=4, workers=3) as batches:
        got = list(batches)
        assert batches.map(lambda k: k * k, [3, 1, 2]) == [9, 1, 4]
    assert [len(b) for b in got] == [4, 4, 3]
    flat = [item for batch in got for item in batch]
    assert [p for p, _ in flat] == paths
    assert isinstance(flat[5][1], ImageError) and "img05" in str(flat[5][1])
    expected = [p.stem.upper() for p in paths if p.name != "img05.png"]
    assert [v for _, v in flat if not isinstance(v, ImageError)] == expected


def test_reads_at_most_one_batch_ahead_and_other_errors_propagate() -> None:
    started: list[str] = []
    lock = threading.Lock()

    def read(p: Path) -> str:
        with lock:
            started.append(p.name)
        if p.name == "c5":
            raise MemoryError("boom")
        return p.name

    paths = [Path(f"c{k}") for k in range(8)]
    with Prefetcher(paths, read, batch_size=2, workers=2) as batches:
        it = iter(batches)
        first = next(it)
        time.sleep(0.05)
        assert [v for _, v in first] == ["c0", "c1"]
        with lock:
            assert len(started) <= (AHEAD + 1) * 2  # the current batch and the next one, no more
        assert [v for _, v in next(it)] == ["c2", "c3"]
        with pytest.raises(MemoryError):
            next(it)
