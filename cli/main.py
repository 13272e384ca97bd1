"""The Typer app: argument parsing only; all work happens in the ``onnxcam`` library."""

from __future__ import annotations

import typer

from . import commands_audit, commands_bench, commands_explain, commands_export, commands_gradients, commands_inspect
from .errors import DEBUG

app = typer.Typer(
    name="onnxcam",
    help="Class activation maps (Grad-CAM and family) for exported ONNX vision models, run with onnxruntime.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
) -> None:
    """onnxcam: explain where an ONNX vision model looks."""
    DEBUG["on"] = debug


commands_inspect.register(app)
commands_explain.register(app)
commands_gradients.register(app)
commands_bench.register(app)
commands_audit.register(app)
commands_export.register(app)

if __name__ == "__main__":  # pragma: no cover
    app()
