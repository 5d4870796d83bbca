"""ONNX Runtime backend for ``.onnx`` engines.

Execution providers are tried in order (TensorRT EP, CUDA EP, CPU EP by default, or the ones
asked for), keeping the first that is both listed by this onnxruntime build *and* actually
starts. A provider that is listed but cannot start (the TensorRT EP of onnxruntime-gpu without
the TensorRT libraries, the CUDA EP without a usable GPU) is dropped with a ``RuntimeWarning``;
the session never aborts the process over it. The engine spec is read from the model's
``metadata_props`` (key ``reid_sdk.spec``) and the graph's inputs/outputs are checked against it.
"""
from __future__ import annotations

import os
import warnings
from typing import Mapping, Sequence

import numpy as np

from reid_sdk.backends import Backend, TensorDesc, check_io, resolve_batch_limits
from reid_sdk.errors import (BackendError, BackendUnavailableError, EngineFileError, InputError,
                             SpecError)
from reid_sdk.spec import METADATA_KEY, EngineSpec

DEFAULT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
# Clips per run when the graph's batch is dynamic and the caller gives no max_batch.
DEFAULT_MAX_BATCH_CPU = 8
DEFAULT_MAX_BATCH_GPU = 32

_ORT_DTYPES = {
    "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(int32)": np.int32,
    "tensor(int64)": np.int64, "tensor(bool)": np.bool_, "tensor(float16)": np.float16,
    "tensor(float)": np.float32, "tensor(double)": np.float64,
}
# onnxruntime exception classes that mean "the file is not a loadable model", not "this
# provider cannot start".
_FILE_ERRORS = ("InvalidProtobuf", "NoSuchFile", "InvalidGraph")


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailableError(
            "onnxruntime is not installed: `pip install onnxruntime` (CPU) or "
            "`pip install onnxruntime-gpu` (CUDA; not both) to run .onnx engines") from exc
    return onnxruntime


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def create_session(ort, path: str, providers: Sequence[tuple], device: int):
    """One ``InferenceSession`` attempt with ``providers`` ((name, options) pairs) in order,
    ``device_id`` set for GPU providers; ORT's own silent fallback is disabled, so failures
    surface here."""
    names = [name for name, _ in providers]
    options = [{**({"device_id": str(device)} if name in GPU_PROVIDERS else {}), **extra}
               for name, extra in providers]
    return ort.InferenceSession(path, providers=names, provider_options=options,
                                enable_fallback=0)


def provider_candidates(available: Sequence[str], requested) -> list[tuple[str, dict]]:
    """The providers to try, in order, as (name, options) pairs: the default order filtered by
    ``available``, or the requested ones (names or (name, options) pairs) that are available,
    the others dropped with a warning."""
    if requested is None:
        return [(p, {}) for p in DEFAULT_PROVIDERS if p in available]
    requested = [requested] if isinstance(requested, (str, tuple)) else list(requested)
    pairs = []
    for entry in requested:
        if isinstance(entry, str):
            entry = (entry, {})
        if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str)
                and isinstance(entry[1], dict)):
            raise InputError(f"providers must be execution provider names or (name, options) "
                             f"pairs, got {entry!r}")
        pairs.append(entry)
    if not pairs:
        raise InputError("providers is empty: pass None for the best available")
    kept = [p for p in pairs if p[0] in available]
    names = [name for name, _ in pairs]
    if not kept:
        raise BackendUnavailableError(
            f"none of the requested providers {names} is available in this onnxruntime "
            f"(available: {list(available)}); for the CUDA / TensorRT EPs install onnxruntime-gpu, "
            "or pass providers=None to take the best available")
    missing = [name for name in names if name not in available]
    if missing:
        warnings.warn(f"execution providers {missing} are not available in this onnxruntime "
                      f"(available: {list(available)}); trying {[p[0] for p in kept]}",
                      RuntimeWarning, stacklevel=4)
    return kept


def open_session(ort, path: str, candidates: Sequence[tuple], device: int):
    """``(session, providers_in_use)``: the first of ``candidates`` ((name, options) pairs)
    that starts, then the rest as ORT's per-node fallback. A provider that raises is dropped with
    a warning and the next is tried; a provider ORT silently skips (it logs why) is reported with
    a warning."""
    remaining = list(candidates)
    while True:
        names = [name for name, _ in remaining]
        try:
            session = create_session(ort, path, remaining, device)
        except Exception as exc:  # onnxruntime raises its own exception classes
            if type(exc).__name__ in _FILE_ERRORS:
                raise EngineFileError(
                    f"ONNX Runtime cannot read {path}: {_first_line(exc)}. The file is missing, "
                    "truncated, corrupt or not an ONNX model: copy it again or re-export it with "
                    "`reid-export onnx`") from None
            if len(remaining) == 1:
                if names[0] in GPU_PROVIDERS:
                    raise BackendUnavailableError(
                        f"{names[0]} could not start for {path}: {_first_line(exc)}; check "
                        "the GPU driver / CUDA libraries or allow CPUExecutionProvider") from None
                raise EngineFileError(
                    f"ONNX Runtime could not load {path}: {_first_line(exc)}. The model may use an "
                    "op this onnxruntime lacks or be damaged: upgrade onnxruntime or re-export "
                    "with `reid-export onnx`") from None
            warnings.warn(f"{names[0]} is listed by onnxruntime but failed to start "
                          f"({_first_line(exc)}); falling back to {names[1:]}",
                          RuntimeWarning, stacklevel=4)
            remaining = remaining[1:]
            continue
        used = tuple(session.get_providers())
        if not any(name in used for name in names):
            raise BackendUnavailableError(
                f"onnxruntime could not start any of {names} for {path} (it runs on "
                f"{list(used)}; its log says why); allow CPUExecutionProvider or fix the GPU setup")
        lost = [name for name in names if name not in used]
        if lost and lost[0] == names[0]:
            warnings.warn(f"onnxruntime did not start {lost} (its log above says why); running "
                          f"on {list(used)}", RuntimeWarning, stacklevel=4)
        return session, used


def _desc(node_arg) -> TensorDesc:
    dtype = _ORT_DTYPES.get(node_arg.type)
    shape = tuple(d if isinstance(d, int) else None for d in (node_arg.shape or ()))
    return TensorDesc(node_arg.name, np.dtype(dtype) if dtype is not None else node_arg.type,
                      shape)


class OnnxRuntimeBackend(Backend):
    """An ``.onnx`` engine in an ONNX Runtime session (thread-safe ``run``).

    providers: execution provider names (or ORT-style (name, options) pairs) in order of
    preference, or None for the best available (TensorRT EP, CUDA EP, CPU EP); device: CUDA
    device index for GPU providers; max_batch: clips per run (default 8 on CPU, 32 on a GPU
    provider, or the graph's fixed batch).
    """

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, *, providers: Sequence | str | None = None,
                 device: int = 0, max_batch: int | None = None):
        ort = import_onnxruntime()
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise EngineFileError(f"no engine file at {self.path!r}: check the path, or export one "
                                  "with `reid-export onnx`")
        candidates = provider_candidates(ort.get_available_providers(), providers)
        self._session, self.providers = open_session(ort, self.path, candidates, device)
        on_gpu = any(p in GPU_PROVIDERS for p in self.providers)
        self.device = device if on_gpu else None

        text = self._session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if text is None:
            raise SpecError(
                f"{self.path} carries no engine spec (metadata_props[{METADATA_KEY!r}]): it was "
                "not exported by `reid-export onnx`, another tool stripped its metadata, or the "
                "file is truncated; re-export it with `reid-export onnx`")
        self.spec = EngineSpec.from_json(text)
        self.inputs = tuple(_desc(a) for a in self._session.get_inputs())
        self.outputs = tuple(_desc(a) for a in self._session.get_outputs())
        check_io(self.spec, self.inputs, self.outputs, self.path)
        self.min_batch, self.max_batch = resolve_batch_limits(
            [t.shape[0] for t in self.inputs], max_batch,
            DEFAULT_MAX_BATCH_GPU if on_gpu else DEFAULT_MAX_BATCH_CPU, self.path)
        self._output_name = self.spec.output_name

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        try:
            return self._session.run([self._output_name], dict(feeds))[0]
        except Exception as exc:  # onnxruntime raises its own exception classes
            raise BackendError(f"ONNX Runtime failed running {self.path} on {list(self.providers)}"
                               f": {_first_line(exc)}") from exc

    def close(self) -> None:
        self._session = None
