"""The Typer app: argument parsing only; all work happens in the ``onnxcam`` library.

Command modules import onnxcam's heavy parts (onnx, onnxruntime, OpenCV) inside the commands, so
``onnxcam --help`` and ``onnxcam --version`` answer at once (tests/benchmarks/cli_startup.py).
"""

from __future__ import annotations

import typer

from . import commands_audit, commands_bench, commands_explain, commands_gradients, commands_inspect
from .errors import DEBUG

app = typer.Typer(
    name="onnxcam",
    help="Class activation maps (Grad-CAM and family) for exported ONNX vision models, run with onnxruntime.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from onnxcam import __version__

        typer.echo(f"onnxcam {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
    version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """onnxcam: explain where an ONNX vision model looks."""
    DEBUG["on"] = debug


commands_inspect.register(app)
commands_explain.register(app)
commands_gradients.register(app)
commands_bench.register(app)
commands_audit.register(app)

if __name__ == "__main__":  # pragma: no cover
    app()
