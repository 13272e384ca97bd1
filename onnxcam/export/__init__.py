"""Export an explainer: one ONNX file that returns the model's outputs and their CAMs.

    onnxcam.export_explainer("model.onnx", ["gradcam", "layercam"], path="model_cam.onnx")

Rooms: ``seed`` (the explained class and its one-hot seed, in-graph), ``splice`` (the gradient graph
spliced into the model, weights and forward nodes shared), ``arithmetic`` (the methods and the
post-processing as ONNX ops), ``eigen`` (EigenCAM by power iteration), ``explainer`` (assembly and
the atomic save). Dynamic batch: ``onnxcam.gradients.dynamic``.
"""

from onnxcam.export.explainer import (
           CLASS_OUTPUT,
           EXPORTABLE,
           TARGET_INPUT,
           ExportedExplainer,
           export_explainer,
           output_name,
           parse_methods,
)

__all__ = ["CLASS_OUTPUT", "EXPORTABLE", "TARGET_INPUT", "ExportedExplainer", "export_explainer", "output_name",
           "parse_methods"]
