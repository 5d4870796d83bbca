"""reid-export: the training side of reid-sdk (torch allowed): official-compatible HAMoBE and
KeyRe-ID definitions and checkpoint loading, the two custom ops (torch reference, custom op,
ONNX export), ONNX export with the engine spec, validation, quantisation, TensorRT build,
synthetic data and a minimal trainer."""

__version__ = "0.1.0"
