"""The user-facing CAM classes: they run the model (body, head, gradient graph) and hand arrays to
the pure functions of ``onnxcam.methods``."""
