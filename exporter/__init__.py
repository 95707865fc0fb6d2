"""favor.exporter: torch to ONNX and TorchScript, with a manifest and hard validation."""
