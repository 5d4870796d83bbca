"""Test selection: `gpu` tests run only where a CUDA device is visible, `trt` tests only where
TensorRT imports, `cuda_ep` tests only where onnxruntime has the CUDA execution provider. Deselected tests are counted in the summary line, never skipped silently; ask
for them explicitly (`pytest -m gpu`) and they run, and fail, wherever you are."""
import importlib.util
import os

import pytest


def _cuda_available():
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _tensorrt_available():
    return importlib.util.find_spec("tensorrt") is not None


def _cuda_ep_available():
    try:
        import onnxruntime
    except ImportError:
        return False
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def pytest_collection_modifyitems(config, items):
    if config.getoption("-m"):
        return  # an explicit marker expression decides
    available = {"gpu": _cuda_available(), "trt": _tensorrt_available(),
                 "cuda_ep": _cuda_ep_available()}
    why = {"gpu": "no CUDA device here (run `pytest -m gpu` on a GPU machine)",
           "trt": "TensorRT is not installed (pip install tensorrt; run `pytest -m trt`)",
           "cuda_ep": "onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu "
                      "on a GPU machine; run `pytest -m cuda_ep`)"}
    keep, dropped = [], {}
    for item in items:
        missing = [m for m in available if item.get_closest_marker(m) and not available[m]]
        if missing:
            dropped.setdefault(missing[0], []).append(item)
        else:
            keep.append(item)
    if dropped:
        config.hook.pytest_deselected(items=[i for group in dropped.values() for i in group])
        items[:] = keep
        config._reid_dropped = {m: (len(v), why[m]) for m, v in dropped.items()}


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    for marker, (count, reason) in getattr(config, "_reid_dropped", {}).items():
        terminalreporter.write_line(f"reid-sdk: deselected {count} `{marker}` tests: {reason}",
                                    yellow=True)


@pytest.fixture
def rng():
    """A fresh numpy Generator per test, seeded from the test id (reproducible, not constant)."""
    import zlib

    import numpy as np
    seed = zlib.crc32(os.environ.get("PYTEST_CURRENT_TEST", "reid").encode())
    return np.random.default_rng(seed)
