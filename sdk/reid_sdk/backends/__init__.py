"""Backends: what runs the engine graph. Chosen by file suffix (ARCHITECTURE.md 4.3).

* ``.onnx`` -> :class:`~reid_sdk.backends.onnxruntime.OnnxRuntimeBackend`
* ``.plan`` / ``.engine`` -> :class:`~reid_sdk.backends.tensorrt.TensorRTBackend`

A backend owns the loaded graph and its spec and runs one batch of clips:
``backend.run(feeds) -> [B, D] float32``, where ``feeds`` maps input names to the arrays of the
engine I/O contract (:func:`io_contract`). It validates, once, that the graph's inputs and outputs
match the spec (:func:`check_io`) and reports the batch sizes it accepts
(``min_batch``..``max_batch``). Preprocessing, clip sampling and aggregation live in
:mod:`reid_sdk.engine`, shared by all backends.
"""
from __future__ import annotations

import abc
import dataclasses
import hashlib
import os
from typing import Mapping, Sequence

import numpy as np

from reid_sdk.errors import InputError, SpecError
from reid_sdk.spec import EngineSpec

BACKENDS = ("onnxruntime", "tensorrt")
SUFFIXES = {".onnx": "onnxruntime", ".plan": "tensorrt", ".engine": "tensorrt"}

# Extra inputs a spec may declare (``spec.extra_inputs``): key -> (dtype, shape after [B, T]).
# "J" is the spec's keypoints.num_joints. A spec entry may rename the tensor with "name".
EXTRA_INPUTS = {
    "keypoints": (np.float32, ("T", "J", 3)),
    "crop_hw": (np.int32, ("T", 2)),
    "frame_valid": (np.bool_, ("T",)),
    "camera": (np.int64, ()),
}


@dataclasses.dataclass(frozen=True)
class TensorDesc:
    """One graph input or output: name, dtype (a numpy dtype, or the backend's own type name
    when numpy has none), shape (an int per fixed dimension, None per dynamic one)."""

    name: str
    dtype: object
    shape: tuple

    def as_dict(self) -> dict:
        return {"name": self.name, "dtype": str(self.dtype), "shape": list(self.shape)}


def extra_input_name(spec: EngineSpec, key: str) -> str | None:
    """The graph input name of extra input ``key`` (see :data:`EXTRA_INPUTS`), or None when the
    spec does not declare it."""
    entry = spec.extra_inputs.get(key)
    if entry is None:
        return None
    return entry.get("name", key) if isinstance(entry, Mapping) else key


def io_contract(spec: EngineSpec) -> tuple[tuple[TensorDesc, ...], TensorDesc]:
    """The inputs and the output a graph with this spec must have. The batch dimension is None.

    frames uint8 [B, T, H, W, 3]; the declared extra inputs (keypoints float32 [B, T, J, 3],
    crop_hw int32 [B, T, 2], frame_valid bool [B, T], camera int64 [B]); output float32 [B, D].
    """
    unknown = sorted(set(spec.extra_inputs) - set(EXTRA_INPUTS))
    if unknown:
        raise SpecError(f"the spec declares extra inputs {unknown} that this reid-sdk does not "
                        f"know (it knows {sorted(EXTRA_INPUTS)}); upgrade reid-sdk")
    sizes = {"T": spec.frames_per_clip,
             "J": spec.extra_inputs.get("keypoints", {}).get("num_joints")}
    inputs = [TensorDesc(spec.input_name, np.dtype(np.uint8),
                         (None, spec.frames_per_clip, spec.height, spec.width, 3))]
    for key, (dtype, tail) in EXTRA_INPUTS.items():
        name = extra_input_name(spec, key)
        if name is not None:
            inputs.append(TensorDesc(name, np.dtype(dtype),
                                     (None, *(sizes.get(d, d) for d in tail))))
    output = TensorDesc(spec.output_name, np.dtype(np.float32), (None, spec.embedding_dim))
    return tuple(inputs), output


def _fix(source: str) -> str:
    return (f"{source} does not fit its own engine spec; re-export it with `reid-export onnx` "
            "(and rebuild TensorRT engines with `reid-export trt`)")


def _check_tensor(expected: TensorDesc, actual: TensorDesc, role: str, source: str) -> None:
    if not isinstance(actual.dtype, np.dtype) or actual.dtype != expected.dtype:
        raise SpecError(f"{role} {expected.name!r} has dtype {actual.dtype}, the spec needs "
                        f"{expected.dtype}: {_fix(source)}")
    if len(actual.shape) != len(expected.shape):
        raise SpecError(f"{role} {expected.name!r} has rank {len(actual.shape)} (shape "
                        f"{list(actual.shape)}), the spec needs {list(expected.shape)}: "
                        f"{_fix(source)}")
    for axis, (want, have) in enumerate(zip(expected.shape, actual.shape)):
        if want is not None and have is not None and want != have:
            raise SpecError(f"{role} {expected.name!r} has size {have} on axis {axis} (shape "
                            f"{list(actual.shape)}), the spec needs {want} (shape "
                            f"{['B' if s is None else s for s in expected.shape]}): {_fix(source)}")


def check_io(spec: EngineSpec, inputs: Sequence[TensorDesc], outputs: Sequence[TensorDesc],
             source: str) -> None:
    """Raise :class:`SpecError` unless the graph's ``inputs`` / ``outputs`` honour the spec's
    I/O contract: same input names (no more, no fewer), dtypes, ranks, and equal sizes wherever
    both sides fix one; the output is present with [B, D] float32. ``source`` names the file."""
    want_inputs, want_output = io_contract(spec)
    have = {t.name: t for t in inputs}
    for expected in want_inputs:
        if expected.name not in have:
            raise SpecError(f"the graph has no input {expected.name!r}, which its spec declares "
                            f"(graph inputs: {sorted(have)}): {_fix(source)}")
        _check_tensor(expected, have[expected.name], "input", source)
    extra = sorted(set(have) - {t.name for t in want_inputs})
    if extra:
        raise SpecError(f"graph inputs {extra} are not in its spec, so the SDK cannot feed them: "
                        f"{_fix(source)}")
    have_out = {t.name: t for t in outputs}
    if want_output.name not in have_out:
        raise SpecError(f"the graph has no output {want_output.name!r} (outputs: "
                        f"{sorted(have_out)}): {_fix(source)}")
    _check_tensor(want_output, have_out[want_output.name], "output", source)


def resolve_batch_limits(batch_dims: Sequence[int | None], requested_max: int | None,
                         default_max: int, source: str) -> tuple[int, int]:
    """(min_batch, max_batch) for a graph whose inputs have these batch dimensions.

    A fixed batch dimension (all fixed ones must agree) gives min = max = that size, and a
    ``requested_max`` other than it is refused. Dynamic ones give 1..(requested_max or
    default_max).
    """
    if requested_max is not None and (not isinstance(requested_max, (int, np.integer))
                                      or isinstance(requested_max, bool) or requested_max < 1):
        raise InputError(f"max_batch must be a positive int or None, got {requested_max!r}")
    fixed = {int(d) for d in batch_dims if d is not None}
    if len(fixed) > 1:
        raise SpecError(f"the graph's inputs disagree on the batch size ({sorted(fixed)}): "
                        f"{_fix(source)}")
    if fixed:
        size = fixed.pop()
        if requested_max is not None and requested_max != size:
            raise InputError(f"max_batch={requested_max} but {source} has a fixed batch of "
                             f"{size} clips; pass max_batch=None (or {size}), or re-export with "
                             "a dynamic batch")
        return size, size
    return 1, int(requested_max if requested_max is not None else default_max)


class Backend(abc.ABC):
    """A loaded engine graph. Subclasses set the attributes below in ``__init__``.

    name: "onnxruntime" or "tensorrt"; path: the file; spec: its :class:`EngineSpec`;
    inputs / outputs: :class:`TensorDesc` tuples as the graph declares them; providers: what
    actually runs it (ORT execution providers, or ("TensorRT",)); device: CUDA device index or
    None on CPU; min_batch / max_batch: accepted clips per ``run``.

    ``run`` must be safe to call from several threads at once.
    """

    name: str
    path: str
    spec: EngineSpec
    inputs: tuple
    outputs: tuple
    providers: tuple
    device: int | None
    min_batch: int
    max_batch: int

    @abc.abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """Run one batch. feeds: input name -> array per :func:`io_contract` with the same
        batch size B (min_batch <= B <= max_batch). Returns the output [B, D] float32."""

    def close(self) -> None:
        """Release what the backend holds (sessions, device memory). Idempotent."""


def file_sha256(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_bytes), b""):
            digest.update(block)
    return digest.hexdigest()


def backend_for(path: str | os.PathLike, backend: str | None) -> str:
    """The backend name for ``path``: ``backend`` when given, else from the file suffix."""
    if backend is not None:
        if backend not in BACKENDS:
            raise InputError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
        return backend
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in SUFFIXES:
        raise InputError(f"cannot tell the backend of {os.fspath(path)!r} from its suffix "
                         f"{suffix!r}: pass a .onnx (ONNX Runtime) or .plan / .engine (TensorRT) "
                         "file, or backend='onnxruntime' / 'tensorrt'")
    return SUFFIXES[suffix]


def open_backend(path: str | os.PathLike, *, backend: str | None = None,
                 providers: Sequence | str | None = None, device: int = 0,
                 max_batch: int | None = None) -> Backend:
    """Load ``path`` with the backend its suffix (or ``backend``) names."""
    kind = backend_for(path, backend)
    if kind == "onnxruntime":
        from reid_sdk.backends.onnxruntime import OnnxRuntimeBackend
        return OnnxRuntimeBackend(path, providers=providers, device=device, max_batch=max_batch)
    if providers is not None:
        raise InputError("providers= only applies to ONNX Runtime (.onnx files); a TensorRT "
                         "engine always runs on TensorRT")
    from reid_sdk.backends.tensorrt import TensorRTBackend
    return TensorRTBackend(path, device=device, max_batch=max_batch)


__all__ = ["BACKENDS", "EXTRA_INPUTS", "Backend", "TensorDesc", "backend_for", "check_io",
           "extra_input_name", "file_sha256", "io_contract", "open_backend", "resolve_batch_limits"]
