"""The ``onnxcam`` command line (installed as the ``onnxcam_cli`` package)."""
