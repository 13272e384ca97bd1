"""Turn library errors into one line on stderr and a distinct exit code."""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from onnxcam.errors import OnnxCamError

F = TypeVar("F", bound=Callable[..., Any])

DEBUG = {"on": False}


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"onnxcam: error: {message}", err=True)
    raise typer.Exit(code)


def friendly(func: F) -> F:
    """Run a command; onnxcam errors become ``onnxcam: error: ...`` and the family's exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except OnnxCamError as exc:
            if DEBUG["on"]:
                traceback.print_exc()
            message = " ".join(str(exc).split())
            fail(message, exc.exit_code)
        except KeyboardInterrupt:
            typer.echo("onnxcam: interrupted; no partial output was kept", err=True)
            raise typer.Exit(130) from None
        except MemoryError:
            fail("out of memory: lower --batch-size", 9)
        except typer.Exit:
            raise
        except Exception as exc:  # a bug: still one line unless --debug
            if DEBUG["on"]:
                traceback.print_exc()
            name = type(exc).__name__
            fail(f"unexpected {name}: {' '.join(str(exc).split())[:400]} (rerun with --debug for the traceback "
                 "and report it)", 10)
        return None

    return wrapper  # type: ignore[return-value]


def report_skipped(failed: list[dict[str, str]]) -> None:
    """One stderr line per unreadable input, even with --quiet: a silent partial result looks complete."""
    for item in failed:
        typer.echo(f"onnxcam: skipped {item['file']}: {item['error']}", err=True)

