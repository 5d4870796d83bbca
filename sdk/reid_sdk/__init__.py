"""reid-sdk: video person re-identification inference (HAMoBE, KeyRe-ID) on ONNX Runtime and
TensorRT.

    import reid_sdk
    engine = reid_sdk.Engine("hamobe.onnx")          # or .plan / .engine (TensorRT)
    emb = engine.embed(tracklets)                     # (N, D) float32, one row per tracklet
    gallery = reid_sdk.Gallery(emb.shape[1])
    gallery.add(ids, emb); ids, scores = gallery.search(query_emb, k=10)

Importing this package is light: numpy only. The runtime never imports torch; onnxruntime,
tensorrt and cuda-python are imported when a backend needs them.
"""
from importlib import import_module

from reid_sdk.errors import (BackendError, BackendUnavailableError, EngineFileError, GalleryError,
                             InputError, KernelError, NativeUnavailableError, ReidError, SpecError)

__version__ = "0.1.0"

# Public names resolved on first use (PEP 562), so `import reid_sdk` stays cheap.
_LAZY = {
    "Engine": "reid_sdk.engine",
    "Gallery": "reid_sdk.gallery",
    "evaluate": "reid_sdk.metrics",
    "EngineSpec": "reid_sdk.spec",
}

__all__ = ["__version__", "ReidError", "InputError", "SpecError", "EngineFileError",
           "BackendUnavailableError", "BackendError", "NativeUnavailableError", "KernelError",
           "GalleryError", *_LAZY]


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'reid_sdk' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
