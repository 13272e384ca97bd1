"""ONNX models used by the tests, the benchmarks and the demo.

``python -m models.build`` exports them to ``models/<name>.onnx``; ``models.build.MODELS`` describes
each one (input layout, classes, torch factory with the same weights, layer name mapping).
This package may import torch; the ``onnxcam`` library never imports it.
"""
