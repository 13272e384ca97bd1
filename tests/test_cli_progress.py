"""The CLI's progress bar: drawn on a terminal once a run lasts, never for quick runs or pipes."""

from __future__ import annotations

import io
import time

import pytest

from cli.progress import progress_bar


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("delay", "drawn"), [(0.0, True), (30.0, False)])
def test_bar_appears_only_after_the_delay(monkeypatch: pytest.MonkeyPatch, delay: float, drawn: bool) -> None:
    err = _Tty()
    monkeypatch.setattr("sys.stderr", err)
    with progress_bar(4, "explaining", delay=delay) as advance:
        time.sleep(0.3)  # let the timer thread start the bar
        advance(3)
        advance(1)
    assert ("explaining" in err.getvalue()) is drawn
    if drawn:
        assert "4/4" in err.getvalue() or "3/4" in err.getvalue()


def test_no_bar_when_stderr_is_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    with progress_bar(2, "explaining", delay=0.0) as advance:
        time.sleep(0.1)
        advance(2)
    assert err.getvalue() == ""
