"""Training, evaluation and ONNX export of the project's EDSR-family models (needs the ``train`` extra)."""
