"""Graph surgery on ONNX protobufs: splitting, shape fixing, building new models."""
