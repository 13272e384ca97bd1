"""A Rich progress bar on stderr for runs that last: off in --quiet mode and when stderr is not a
terminal, and shown only once a run has taken ``DELAY_S``.

The delay is for the sub-second runs (a few photos with Grad-CAM), where a bar would flash by and
importing and driving Rich would cost more than a tenth of the run. It is shown from a timer
thread, so a slow first batch (Score-CAM, Ablation-CAM) gets its bar on time.

The bar shows the stage ("building sessions", "explaining", "sanity check"), images done (the
library reports fractions of an image while Score-CAM / Ablation-CAM work through a batch), the
elapsed time and the time remaining.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

DELAY_S = 0.5

#: ``advance(n, stage=None)``: ``n`` more units done (may be fractional); ``stage`` names what runs now.
Advance = Callable[..., None]


class _State:
    """What the bar shows, kept apart from Rich so it can be tested (and used) without a terminal."""

    def __init__(self, total: float, what: str) -> None:
        self.total = total
        self.done = 0.0
        self.stage = what

    def advance(self, n: float = 0.0, stage: str | None = None) -> None:
        self.done = min(self.total, self.done + float(n)) if self.total else self.done + float(n)
        if stage:
            self.stage = stage

    def counter(self) -> str:
        """``"3/16"``; fractions of a unit show as one decimal while a unit is partly done."""
        done = self.done
        shown = f"{done:.1f}" if 0 < done - int(done) < 0.95 and done < self.total else f"{int(round(done))}"
        return f"{shown}/{int(self.total)}"


@contextlib.contextmanager
def progress_bar(total: float, what: str, enabled: bool = True, delay: float = DELAY_S) -> Iterator[Advance]:
    """Yields ``advance(n, stage=None)``; draws on stderr only when ``enabled``, stderr is a terminal,
    and the block is still running after ``delay`` seconds."""
    state = _State(total, what)
    if not enabled or not sys.stderr.isatty():
        yield state.advance
        return
    lock = threading.Lock()
    ui: dict[str, Any] = {"bar": None, "task": None, "closed": False}

    def start() -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        bar = Progress(TextColumn("[bold]{task.fields[stage]}"), BarColumn(), TextColumn("{task.fields[counter]}"),
                       TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                       console=Console(stderr=True), transient=True)
        with lock:
            if ui["closed"]:
                return
            bar.start()
            ui["task"] = bar.add_task(what, total=total, completed=int(state.done), stage=state.stage,
                                      counter=state.counter())
            ui["bar"] = bar

    timer = threading.Timer(delay, start)
    timer.daemon = True
    timer.start()

    def advance(n: float = 0.0, stage: str | None = None) -> None:
        with lock:
            state.advance(n, stage)
            if ui["bar"] is not None:
                ui["bar"].update(ui["task"], completed=state.done, stage=state.stage, counter=state.counter())

    try:
        yield advance
    finally:
        timer.cancel()
        with lock:
            ui["closed"] = True
            bar = ui["bar"]
        if bar is not None:
            bar.stop()
