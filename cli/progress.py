"""A Rich progress bar on stderr for runs that last: off in --quiet mode and when stderr is not a
terminal, and shown only once a run has taken ``DELAY_S``.

The delay is for the sub-second runs (a few photos with Grad-CAM), where a bar would flash by and
importing and driving Rich would cost more than a tenth of the run. It is shown from a timer
thread, so a slow first batch (Score-CAM, Ablation-CAM) gets its bar on time.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

DELAY_S = 0.5


@contextlib.contextmanager
def progress_bar(total: int, what: str, enabled: bool = True,
                 delay: float = DELAY_S) -> Iterator[Callable[[int], None]]:
    """Yields ``advance(n)``; draws on stderr only when ``enabled``, stderr is a terminal, and the
    block is still running after ``delay`` seconds."""
    if not enabled or not sys.stderr.isatty():
        yield lambda n: None
        return
    lock = threading.Lock()
    state: dict[str, Any] = {"done": 0, "bar": None, "task": None, "closed": False}

    def start() -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn(f"[bold]{what}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                       console=Console(stderr=True), transient=True)
        with lock:
            if state["closed"]:
                return
            bar.start()
            state["task"] = bar.add_task(what, total=total, completed=state["done"])
            state["bar"] = bar

    timer = threading.Timer(delay, start)
    timer.daemon = True
    timer.start()

    def advance(n: int) -> None:
        with lock:
            state["done"] += n
            if state["bar"] is not None:
                state["bar"].advance(state["task"], n)

    try:
        yield advance
    finally:
        timer.cancel()
        with lock:
            state["closed"] = True
            bar = state["bar"]
        if bar is not None:
            bar.stop()
