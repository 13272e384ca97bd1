"""onnxcam: class activation maps for exported ONNX vision models, run with onnxruntime."""

from onnxcam import errors
from onnxcam.model import InputSpec, Model, load

__version__ = "0.1.0"

__all__ = ["InputSpec", "Model", "errors", "load", "__version__"]
