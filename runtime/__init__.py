"""favor.runtime: ONNX Runtime sessions and streaming decode; imports only numpy and onnxruntime."""
