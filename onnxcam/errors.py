"""The exceptions onnxcam raises.

Every message names the thing involved (file, tensor, shape, argument) and the fix, because
the cheapest support ticket is the error message. The CLI maps each family to its own exit code
(``exit_code``) and prints the message on one line.
"""

from __future__ import annotations


def first_line(exc: BaseException, limit: int = 400) -> str:
    """The first line of a third-party exception's message, for one-line error messages."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:limit]


class OnnxCamError(Exception):
    """Base class of every error onnxcam raises on purpose."""

    exit_code = 1


class ModelError(OnnxCamError):
    """The model file cannot be used: missing, unreadable, invalid or of an unsupported kind."""

    exit_code = 3


class ModelNotFoundError(ModelError):
    """The model path does not exist or is not a file."""


class ModelLoadError(ModelError):
    """The file exists but is not a valid ONNX model (empty, garbage, truncated, fails the checker)."""


class ExternalDataError(ModelError):
    """External tensor data is missing or points outside the model's own folder."""


class UnsupportedModelError(ModelError):
    """Valid ONNX, but onnxcam cannot explain it (no image-like input, unsupported opset/IR, ...)."""


class HeadStructureError(ModelError):
    """A method needs a structure the model lacks (e.g. CAM needs a GAP -> linear head)."""


class LayerError(OnnxCamError):
    """The layer (feature tensor) to explain could not be resolved."""

    exit_code = 4


class LayerNotFoundError(LayerError):
    """No tensor matches the given layer name."""


class AmbiguousLayerError(LayerError):
    """Several tensors match the given layer name."""


class LayerShapeError(LayerError):
    """The tensor exists but is not a 4-D float feature map."""


class InputError(OnnxCamError):
    """An input image or array is unusable (unreadable, wrong shape, wrong layout)."""

    exit_code = 5


class ImageError(InputError):
    """An image file cannot be read or decoded."""


class ArgumentError(OnnxCamError):
    """An argument value is invalid (unknown method, preset, colormap, batch size 0, ...)."""

    exit_code = 2


class IllConditionedError(ArgumentError):
    """A (method, layer) pair whose map float32 rounding decides: export refuses it, naming the fix."""


class TargetError(OnnxCamError):
    """Targets do not fit the model outputs or the batch (index out of range, length mismatch)."""

    exit_code = 6


class GradientError(OnnxCamError):
    """Gradients could not be computed (no rule for an op and finite differences disabled, ...)."""

    exit_code = 7


class UnsupportedOpError(GradientError):
    """An op in the head has no reverse-mode rule; finite differences can stand in."""

    def __init__(self, message: str, op_types: list[str] | None = None) -> None:
        super().__init__(message)
        self.op_types = list(op_types or [])


class OnnxRuntimeError(OnnxCamError):
    """onnxruntime failed to build a session or to run one; also NaN/Inf in model outputs."""

    exit_code = 7


class OutputError(OnnxCamError):
    """The output path cannot be written, or writing it would overwrite an input."""

    exit_code = 8


class OnnxCamWarning(UserWarning):
    """Something worked but the result deserves a look (constant map, finite-difference fallback)."""
