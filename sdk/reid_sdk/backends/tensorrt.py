"""TensorRT backend for ``.plan`` / ``.engine`` files (TensorRT >= 10 Python API, cuda-python).

NEVER EXECUTED: TensorRT cannot be installed on the machines this was written on, and the GPU
machine has none. The code follows the documented TensorRT 10 Python API (name-based I/O:
``get_tensor_name``, ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``;
``IPluginRegistry.load_library``) and cuda-python's runtime bindings. Everything that does not
need TensorRT itself (sidecar parsing, size and sha256 checks, plugin library lookup, batch
planning from optimisation profiles) is plain Python and tested on CPU; the rest is covered by
tests marked ``trt`` that have never run.

Loading order, each step failing with an error that names the fix:

1. ``<engine>.json`` (the sidecar) is read: ``{"spec": {...}, "engine_sha256": "...",
   "engine_bytes": N}``; a missing or malformed sidecar or spec, or an unknown spec version,
   raises :class:`~reid_sdk.errors.SpecError`.
2. The engine file's size and sha256 are checked against the sidecar (a truncated or modified
   engine raises :class:`~reid_sdk.errors.EngineFileError`) -- all before TensorRT is imported.
3. When the spec lists custom ops, ``libreid_trt_plugins.so`` (``$REID_SDK_TRT_PLUGINS``, else
   beside the ``reid_sdk`` package) is loaded into TensorRT's plugin registry, *before*
   deserialisation.
4. The engine is deserialised, its I/O checked against the spec, and the batch range taken from
   optimisation profile 0.

One execution context, one stream and device buffers sized for ``max_batch`` serve all calls;
``run`` holds a lock, since an execution context must not be used by two threads at once.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import threading
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from reid_sdk.backends import (Backend, TensorDesc, check_io, file_sha256, io_contract,
                               resolve_batch_limits)
from reid_sdk._atomic import atomic_write
from reid_sdk.errors import (BackendError, BackendUnavailableError, EngineFileError, InputError,
                             SpecError)
from reid_sdk.spec import EngineSpec

SIDECAR_SUFFIX = ".json"
PLUGIN_LIBRARY = "libreid_trt_plugins.so"
PLUGIN_ENV = "REID_SDK_TRT_PLUGINS"
MIN_TENSORRT_MAJOR = 10
_REBUILD = "rebuild the engine with `reid-export trt`, which writes <engine>.json beside it"
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


@dataclasses.dataclass(frozen=True)
class Sidecar:
    """The parsed ``<engine>.json``: the engine's spec and the size and sha256 of its bytes."""

    spec: EngineSpec
    engine_sha256: str
    engine_bytes: int


def sidecar_path(engine_path: str | os.PathLike) -> str:
    """``<engine>.json``: the engine path with ``.json`` appended (``model.plan.json``)."""
    return os.fspath(engine_path) + SIDECAR_SUFFIX


def write_sidecar(engine_path: str | os.PathLike, spec: EngineSpec | Mapping) -> str:
    """Write ``<engine>.json`` for an engine file that exists; returns the sidecar path."""
    spec = spec if isinstance(spec, EngineSpec) else EngineSpec(spec)
    record = {"spec": spec.data, "engine_sha256": file_sha256(engine_path),
              "engine_bytes": os.path.getsize(engine_path)}
    path = sidecar_path(engine_path)
    with atomic_write(path) as f:
        f.write(json.dumps(record, indent=2, sort_keys=True).encode())
    return path


def read_sidecar(engine_path: str | os.PathLike) -> Sidecar:
    """Parse and validate ``<engine>.json``; :class:`SpecError` names what is wrong."""
    path = sidecar_path(engine_path)
    if not os.path.isfile(path):
        raise SpecError(f"{os.fspath(engine_path)} has no sidecar {path} (its engine spec and "
                        f"sha256); {_REBUILD}")
    try:
        with open(path, "rb") as f:
            record = json.loads(f.read())
    except (OSError, ValueError) as exc:
        raise SpecError(f"sidecar {path} is not readable JSON ({exc}); {_REBUILD}") from None
    if not isinstance(record, dict):
        raise SpecError(f"sidecar {path} must hold a JSON object; {_REBUILD}")
    for key in ("spec", "engine_sha256", "engine_bytes"):
        if key not in record:
            raise SpecError(f"sidecar {path} has no {key!r} field; {_REBUILD}")
    sha = record["engine_sha256"]
    if not isinstance(sha, str) or not _SHA256_HEX.match(sha):
        raise SpecError(f"sidecar {path}: engine_sha256 must be 64 lowercase hex digits, got "
                        f"{sha!r}; {_REBUILD}")
    size = record["engine_bytes"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise SpecError(f"sidecar {path}: engine_bytes must be a non-negative int, got {size!r}; "
                        f"{_REBUILD}")
    return Sidecar(EngineSpec(record["spec"]), sha, size)


def read_verified_engine(engine_path: str | os.PathLike) -> tuple[bytes, Sidecar]:
    """The engine's bytes and its sidecar, after checking size and sha256 against it."""
    engine_path = os.fspath(engine_path)
    if not os.path.isfile(engine_path):
        raise EngineFileError(f"no engine file at {engine_path!r}: check the path, or build one "
                              "with `reid-export trt`")
    sidecar = read_sidecar(engine_path)
    size = os.path.getsize(engine_path)
    if size != sidecar.engine_bytes:
        raise EngineFileError(f"{engine_path} has {size} bytes but its sidecar records "
                              f"{sidecar.engine_bytes}: the engine is truncated or was modified "
                              f"after it was built; copy it again, or {_REBUILD}")
    with open(engine_path, "rb") as f:
        data = f.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sidecar.engine_sha256:
        raise EngineFileError(f"{engine_path} has sha256 {digest} but its sidecar records "
                              f"{sidecar.engine_sha256}: the engine is corrupt or is not the one "
                              f"the sidecar describes; copy it again, or {_REBUILD}")
    return data, sidecar


def find_plugin_library() -> str | None:
    """``$REID_SDK_TRT_PLUGINS`` when set (it must exist), else ``libreid_trt_plugins.so``
    beside the ``reid_sdk`` package, else None."""
    configured = os.environ.get(PLUGIN_ENV)
    if configured:
        if not os.path.isfile(configured):
            raise BackendUnavailableError(f"${PLUGIN_ENV} points at {configured!r}, which does not "
                                          "exist: fix or unset it")
        return configured
    beside = Path(__file__).resolve().parent.parent / PLUGIN_LIBRARY
    return str(beside) if beside.is_file() else None


def plan_batch_limits(engine_inputs: Sequence[TensorDesc], profiles: Mapping[str, Sequence],
                      spec: EngineSpec, requested_max: int | None,
                      source: str) -> tuple[int, int]:
    """(min_batch, max_batch) an engine accepts, from its inputs and optimisation profile 0.

    engine_inputs: as the engine declares them (None = dynamic dimension); profiles: input name
    -> (min, opt, max) shapes of profile 0, for inputs with a dynamic dimension. The spec's
    fixed sizes (T, H, W, ...) must lie inside every profile range; ``requested_max`` must lie
    inside the batch range.
    """
    if not any(None in t.shape for t in engine_inputs):
        return resolve_batch_limits([t.shape[0] for t in engine_inputs], requested_max, 0, source)
    contract = {t.name: t for t in io_contract(spec)[0]}
    low, high = 1, None
    for tensor in engine_inputs:
        if None not in tensor.shape:
            low = max(low, tensor.shape[0])
            high = tensor.shape[0] if high is None else min(high, tensor.shape[0])
            continue
        if tensor.name not in profiles:
            raise SpecError(f"{source}: input {tensor.name!r} is dynamic but has no optimisation "
                            f"profile; {_REBUILD}")
        shape_min, _, shape_max = (tuple(int(d) for d in s) for s in profiles[tensor.name])
        for axis, want in enumerate(contract[tensor.name].shape[1:], start=1):
            if not shape_min[axis] <= want <= shape_max[axis]:
                raise SpecError(f"{source}: the optimisation profile of {tensor.name!r} allows "
                                f"{shape_min[axis]}..{shape_max[axis]} on axis {axis}, the spec "
                                f"feeds {want}; {_REBUILD}")
        low = max(low, shape_min[0])
        high = shape_max[0] if high is None else min(high, shape_max[0])
    if low > high:
        raise SpecError(f"{source}: the inputs' batch ranges do not overlap ({low} > {high}); "
                        f"{_REBUILD}")
    if requested_max is None:
        return low, high
    if isinstance(requested_max, bool) or not isinstance(requested_max, (int, np.integer)) \
            or not low <= requested_max <= high:
        raise InputError(f"max_batch={requested_max!r} is outside the batch range {low}..{high} "
                         f"of {source}'s optimisation profile; pass max_batch in that range, or "
                         "rebuild with a larger profile (`reid-export trt`)")
    return low, int(requested_max)


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError(
            "TensorRT's Python package is not installed: `pip install tensorrt` (>= 10) on a "
            "machine with an NVIDIA GPU, or run the .onnx model through ONNX Runtime") from exc
    major = int(str(trt.__version__).split(".")[0])
    if major < MIN_TENSORRT_MAJOR:
        raise BackendUnavailableError(f"TensorRT {trt.__version__} is too old: reid-sdk needs "
                                      f">= {MIN_TENSORRT_MAJOR} (`pip install -U tensorrt`)")
    return trt


def import_cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6 layout
        except ImportError as exc:
            raise BackendUnavailableError(
                "cuda-python is not installed: `pip install cuda-python` (TensorRT engines need it "
                "for device memory and streams)") from exc
    return cudart


def _cuda(cudart, result, what: str):
    """Unpack a cuda-python ``(error, *values)`` result, raising BackendError on failure."""
    error, *values = result
    if error != cudart.cudaError_t.cudaSuccess:
        name = cudart.cudaGetErrorName(error)[1]
        name = name.decode() if isinstance(name, bytes) else name
        raise BackendError(f"CUDA {what} failed: {name}")
    return values[0] if len(values) == 1 else tuple(values)


_PLUGIN_LOCK = threading.Lock()
_LOADED_PLUGIN_LIBRARIES: dict[str, object] = {}
_LOGGER = None


def tensorrt_logger(trt):
    """The process-wide TensorRT logger (warnings and errors)."""
    global _LOGGER
    if _LOGGER is None:  # TensorRT wants one logger per process
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


def load_plugins(trt, spec: EngineSpec) -> str | None:
    """Register libreid_trt_plugins.so with TensorRT (once per process) when the spec lists
    custom ops; returns the library path, or None when the engine needs no plugin."""
    if not spec.custom_ops:
        return None
    path = find_plugin_library()
    if path is None:
        raise BackendUnavailableError(
            f"this engine uses custom ops {sorted(spec.custom_ops)}, whose TensorRT plugins live "
            f"in {PLUGIN_LIBRARY}; it is not beside reid_sdk and ${PLUGIN_ENV} is unset: build it "
            "with `REID_SDK_TENSORRT_ROOT=/path/to/TensorRT pip install -e .` or point "
            f"${PLUGIN_ENV} at it")
    with _PLUGIN_LOCK:
        if path not in _LOADED_PLUGIN_LIBRARIES:
            handle = trt.get_plugin_registry().load_library(path)
            if handle is None:
                raise BackendUnavailableError(f"TensorRT could not load the plugin library {path} "
                                              "(its log above says why)")
            _LOADED_PLUGIN_LIBRARIES[path] = handle
    return path


class TensorRTBackend(Backend):
    """A serialised TensorRT engine with its ``<engine>.json`` sidecar. Never executed (see the
    module docstring).

    device: CUDA device index; max_batch: clips per run, within optimisation profile 0 (default:
    the profile's maximum).
    """

    name = "tensorrt"

    def __init__(self, path: str | os.PathLike, *, device: int = 0, max_batch: int | None = None):
        self.path = os.fspath(path)
        self._buffers: dict[str, int] = {}
        self._stream = None
        data, sidecar = read_verified_engine(self.path)  # before anything imports TensorRT
        self.spec = sidecar.spec
        self.sha256 = sidecar.engine_sha256
        trt = import_tensorrt()
        self._cudart = cudart = import_cudart()
        self.plugin_library = load_plugins(trt, self.spec)
        self.device = int(device)
        _cuda(cudart, cudart.cudaSetDevice(self.device), f"cudaSetDevice({self.device})")

        self._runtime = trt.Runtime(tensorrt_logger(trt))
        self._engine = engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise EngineFileError(
                f"TensorRT {trt.__version__} could not deserialise {self.path} (its log above says "
                "why): an engine only loads on the TensorRT version and GPU it was built for; "
                f"{_REBUILD} on this machine")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        described = {name: TensorDesc(name, np.dtype(trt.nptype(engine.get_tensor_dtype(name))),
                                      tuple(None if d < 0 else int(d)
                                            for d in engine.get_tensor_shape(name)))
                     for name in names}
        is_input = {name: engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT for name in names}
        self.inputs = tuple(described[n] for n in names if is_input[n])
        self.outputs = tuple(described[n] for n in names if not is_input[n])
        check_io(self.spec, self.inputs, self.outputs, self.path)
        profiles = {t.name: engine.get_tensor_profile_shape(t.name, 0)
                    for t in self.inputs if None in t.shape}
        self.min_batch, self.max_batch = plan_batch_limits(self.inputs, profiles, self.spec,
                                                           max_batch, self.path)
        self.providers = (f"TensorRT {trt.__version__}",)

        self._context = engine.create_execution_context()
        self._stream = _cuda(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._lock = threading.Lock()
        # Buffers sized by the shapes at max_batch, outputs included, allocated once.
        contract = {t.name: t for t in io_contract(self.spec)[0]}
        for tensor in self.inputs:
            shape = (self.max_batch, *contract[tensor.name].shape[1:])
            if not self._context.set_input_shape(tensor.name, shape):
                raise SpecError(f"{self.path}: TensorRT refuses shape {shape} for input "
                                f"{tensor.name!r}; {_REBUILD}")
        for tensor in (*self.inputs, *self.outputs):
            shape = tuple(self._context.get_tensor_shape(tensor.name))
            nbytes = int(np.prod(shape)) * tensor.dtype.itemsize
            self._buffers[tensor.name] = _cuda(cudart, cudart.cudaMalloc(max(nbytes, 1)),
                                               f"cudaMalloc({nbytes}) for {tensor.name!r}")
            self._context.set_tensor_address(tensor.name, self._buffers[tensor.name])
        self._dtypes = {t.name: t.dtype for t in (*self.inputs, *self.outputs)}

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        cudart = self._cudart
        to_device = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        to_host = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        output_name = self.spec.output_name
        batch = {np.shape(v)[0] for v in feeds.values()}
        if len(batch) != 1 or not self.min_batch <= next(iter(batch)) <= self.max_batch:
            raise InputError(f"feeds must share one batch size in {self.min_batch}.."
                             f"{self.max_batch}, got {sorted(batch)}")
        with self._lock:
            _cuda(cudart, cudart.cudaSetDevice(self.device), "cudaSetDevice")
            staged = []  # host arrays must outlive the async copies
            for name, value in feeds.items():
                host = np.ascontiguousarray(value, dtype=self._dtypes[name])
                staged.append(host)
                if not self._context.set_input_shape(name, host.shape):
                    raise BackendError(f"TensorRT refused shape {host.shape} for input {name!r} "
                                       f"of {self.path}")
                _cuda(cudart, cudart.cudaMemcpyAsync(self._buffers[name], host.ctypes.data,
                                                     host.nbytes, to_device, self._stream),
                      f"copy of {name!r} to the device")
            if not self._context.execute_async_v3(int(self._stream)):
                raise BackendError(f"TensorRT execution of {self.path} failed (its log above says "
                                   "why)")
            out = np.empty(tuple(self._context.get_tensor_shape(output_name)),
                           dtype=self._dtypes[output_name])
            _cuda(cudart, cudart.cudaMemcpyAsync(out.ctypes.data, self._buffers[output_name],
                                                 out.nbytes, to_host, self._stream),
                  "copy of the embeddings to the host")
            _cuda(cudart, cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return out

    def close(self) -> None:
        cudart = getattr(self, "_cudart", None)
        if cudart is None:
            return
        for pointer in self._buffers.values():
            cudart.cudaFree(pointer)
        self._buffers = {}
        if self._stream is not None:
            cudart.cudaStreamDestroy(self._stream)
            self._stream = None
        self._context = self._engine = None

    def __del__(self):
        self.close()
