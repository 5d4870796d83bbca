"""The TensorRT backend.

On CPU: the sidecar / size / sha256 checks (before TensorRT is imported), plugin library lookup,
batch planning from optimisation profiles, and the backend's whole call sequence against a
*simulated* TensorRT + cuda-python (``FakeTensorRT`` / ``FakeCudart`` below: an "engine" file that
holds ONNX bytes, executed by onnxruntime, device memory in numpy buffers). The simulation checks
our glue (plugins loaded before deserialisation, shapes and addresses set, copies both ways, the
lock); it says nothing about real TensorRT.

Real TensorRT: tests marked ``trt`` build an engine from a hand-built ONNX model
and compare with ONNX Runtime. They have never run: no TensorRT exists on our machines.
"""
import ctypes
import hashlib
import json
import sys
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import engine_fixtures as fx  # noqa: E402

import reid_sdk  # noqa: E402
from reid_sdk.backends import TensorDesc  # noqa: E402
from reid_sdk.backends import tensorrt as trt_backend  # noqa: E402
from reid_sdk.errors import (BackendUnavailableError, EngineFileError, InputError,  # noqa: E402
                             SpecError)
from reid_sdk.spec import EngineSpec  # noqa: E402


# -- sidecar and file checks (no TensorRT needed) -------------------------------------------------
class ReachedTensorRT(Exception):
    """Raised by a patched import_tensorrt: every check before it passed."""


@pytest.fixture
def no_tensorrt(monkeypatch):
    def reached():
        raise ReachedTensorRT()
    monkeypatch.setattr(trt_backend, "import_tensorrt", reached)


def make_plan(tmp_path, rng, spec=None, name="model.plan"):
    path = tmp_path / name
    path.write_bytes(rng.integers(0, 256, size=4096, dtype=np.uint8).tobytes())
    trt_backend.write_sidecar(path, spec or fx.hamobe_like_spec())
    return path


def test_valid_sidecar_passes_every_check_before_tensorrt(tmp_path, rng, no_tensorrt):
    path = make_plan(tmp_path, rng)
    record = json.loads(Path(str(path) + ".json").read_text())
    assert record["engine_bytes"] == 4096
    assert record["engine_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert EngineSpec(record["spec"]) == EngineSpec(fx.hamobe_like_spec())
    with pytest.raises(ReachedTensorRT):
        reid_sdk.Engine(path)
    for name, backend in (("model.engine", None), ("model.bin", "tensorrt")):
        other = make_plan(tmp_path, rng, name=name)
        with pytest.raises(ReachedTensorRT):
            reid_sdk.Engine(other, backend=backend)


def test_truncated_or_modified_engine(tmp_path, rng, no_tensorrt):
    path = make_plan(tmp_path, rng)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(EngineFileError, match="3996 bytes but its sidecar records 4096.*truncated"):
        reid_sdk.Engine(path)
    flipped = bytearray(data)
    flipped[1234] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(EngineFileError, match="sha256 .* but its sidecar records .*corrupt"):
        reid_sdk.Engine(path)
    with pytest.raises(EngineFileError, match="no engine file"):
        reid_sdk.Engine(tmp_path / "absent.plan")


def test_sidecar_missing_malformed_or_of_another_version(tmp_path, rng, no_tensorrt):
    path = make_plan(tmp_path, rng)
    sidecar = Path(str(path) + ".json")
    good = json.loads(sidecar.read_text())
    cases = [
        ("{broken", "not readable JSON"),
        ("[1, 2]", "must hold a JSON object"),
        (json.dumps({k: v for k, v in good.items() if k != "spec"}), "no 'spec' field"),
        (json.dumps({k: v for k, v in good.items() if k != "engine_sha256"}),
         "no 'engine_sha256'"),
        (json.dumps({**good, "engine_sha256": "abc"}), "64 lowercase hex"),
        (json.dumps({**good, "engine_bytes": "4096"}), "engine_bytes must be"),
        (json.dumps({**good, "spec": {**good["spec"], "spec_version": 7}}),
         "spec_version 7 is not supported"),
        (json.dumps({**good, "spec": {**good["spec"], "arch": "resnet"}}), "arch 'resnet'"),
    ]
    for text, match in cases:
        sidecar.write_text(text)
        with pytest.raises(SpecError, match=match):
            reid_sdk.Engine(path)
        with pytest.raises(SpecError, match="reid-export trt"):
            reid_sdk.Engine(path)
    sidecar.unlink()
    with pytest.raises(SpecError, match="has no sidecar .*model.plan.json"):
        reid_sdk.Engine(path)


def test_missing_tensorrt_or_cuda_python_is_reported(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendUnavailableError, match="pip install tensorrt"):
        trt_backend.import_tensorrt()
    monkeypatch.setitem(sys.modules, "cuda", None)
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    with pytest.raises(BackendUnavailableError, match="pip install cuda-python"):
        trt_backend.import_cudart()


def test_plugin_library_lookup(tmp_path, monkeypatch):
    library = tmp_path / "libreid_trt_plugins.so"
    library.write_bytes(b"\x7fELF")
    monkeypatch.setenv(trt_backend.PLUGIN_ENV, str(library))
    assert trt_backend.find_plugin_library() == str(library)
    monkeypatch.setenv(trt_backend.PLUGIN_ENV, str(tmp_path / "absent.so"))
    with pytest.raises(BackendUnavailableError, match="REID_SDK_TRT_PLUGINS points at"):
        trt_backend.find_plugin_library()
    monkeypatch.setattr(trt_backend, "find_plugin_library", lambda: None)
    spec = EngineSpec({**fx.hamobe_like_spec(), "custom_ops": {"reid::MoECombine": 1}})
    with pytest.raises(BackendUnavailableError, match="MoECombine.*REID_SDK_TENSORRT_ROOT"):
        trt_backend.load_plugins(None, spec)
    assert trt_backend.load_plugins(None, EngineSpec(fx.hamobe_like_spec())) is None


def test_batch_limits_from_profiles():
    spec = EngineSpec(fx.hamobe_like_spec())
    frames = TensorDesc("frames", np.dtype(np.uint8), (None, 8, 32, 32, 3))
    profile = {"frames": [(1, 8, 32, 32, 3), (8, 8, 32, 32, 3), (16, 8, 32, 32, 3)]}
    plan = trt_backend.plan_batch_limits
    assert plan([frames], profile, spec, None, "e") == (1, 16)
    assert plan([frames], profile, spec, 5, "e") == (1, 5)
    for bad in (17, 0, 2.0):
        with pytest.raises(InputError, match="outside the batch range 1..16"):
            plan([frames], profile, spec, bad, "e")
    lifted = {"frames": [(2, 8, 32, 32, 3), (4, 8, 32, 32, 3), (4, 8, 32, 32, 3)]}
    assert plan([frames], lifted, spec, None, "e") == (2, 4)
    dynamic_hw = TensorDesc("frames", np.dtype(np.uint8), (None, 8, None, None, 3))
    small = {"frames": [(1, 8, 16, 16, 3), (1, 8, 16, 16, 3), (4, 8, 24, 24, 3)]}
    with pytest.raises(SpecError, match="allows 16..24 on axis 2, the spec feeds 32"):
        plan([dynamic_hw], small, spec, None, "e")
    with pytest.raises(SpecError, match="no optimisation profile"):
        plan([frames], {}, spec, None, "e")
    fixed = TensorDesc("frames", np.dtype(np.uint8), (4, 8, 32, 32, 3))
    assert plan([fixed], {}, spec, None, "e") == (4, 4)
    with pytest.raises(InputError, match="fixed batch of 4"):
        plan([fixed], {}, spec, 8, "e")


# -- the backend's call sequence against a simulated TensorRT -------------------------------------
_NP = {"UINT8": np.uint8, "FLOAT": np.float32, "INT32": np.int32, "INT64": np.int64,
       "BOOL": np.bool_}
_ORT_TO_TRT = {"tensor(uint8)": "UINT8", "tensor(float)": "FLOAT", "tensor(int32)": "INT32",
               "tensor(int64)": "INT64", "tensor(bool)": "BOOL"}


class FakeCudart:
    """cuda-python's runtime module, with device memory in numpy buffers."""

    class cudaError_t:  # noqa: N801 (mirrors cuda-python)
        cudaSuccess = 0

    class cudaMemcpyKind:  # noqa: N801
        cudaMemcpyHostToDevice = "H2D"
        cudaMemcpyDeviceToHost = "D2H"

    def __init__(self, calls):
        self.calls = calls
        self.memory = {}
        self.next_pointer = 0x10000

    def cudaGetErrorName(self, error):  # noqa: N802
        return 0, b"cudaErrorFake"

    def cudaSetDevice(self, device):  # noqa: N802
        return (0,)

    def cudaStreamCreate(self):  # noqa: N802
        return 0, 0xBEEF

    def cudaMalloc(self, nbytes):  # noqa: N802
        pointer = self.next_pointer
        self.next_pointer += nbytes + 256
        self.memory[pointer] = np.zeros(nbytes, np.uint8)
        return 0, pointer

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):  # noqa: N802
        if kind == "H2D":
            self.memory[dst][:count] = np.frombuffer((ctypes.c_char * count).from_address(src),
                                                     np.uint8)
        else:
            ctypes.memmove(dst, self.memory[src].ctypes.data, count)
        return (0,)

    def cudaStreamSynchronize(self, stream):  # noqa: N802
        return (0,)

    def cudaFree(self, pointer):  # noqa: N802
        self.calls.append(("free", pointer))
        del self.memory[pointer]
        return (0,)

    def cudaStreamDestroy(self, stream):  # noqa: N802
        return (0,)


class FakeTensorRT:
    """The slice of the tensorrt module the backend uses. An 'engine' is ONNX bytes run by
    onnxruntime; optimisation profile 0 allows batches 1..profile_max."""

    __version__ = "10.99.0-simulated"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    class TensorIOMode:
        INPUT = "input"
        OUTPUT = "output"

    def __init__(self, calls, cudart, profile_max=6):
        self.calls, self.cudart, self.profile_max = calls, cudart, profile_max
        trt = self

        class Registry:
            def load_library(self, path):
                calls.append(("load_library", path))
                return object()
        self._registry = Registry()

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, data):
                calls.append(("deserialize", len(data)))
                try:
                    return FakeEngine(trt, data)
                except Exception:
                    return None
        self.Runtime = Runtime

    def get_plugin_registry(self):
        return self._registry

    @staticmethod
    def nptype(dtype):
        return _NP[dtype]


class FakeEngine:
    def __init__(self, trt, data):
        self.trt = trt
        self.session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        self.io = [(a, trt.TensorIOMode.INPUT) for a in self.session.get_inputs()] + \
                  [(a, trt.TensorIOMode.OUTPUT) for a in self.session.get_outputs()]
        self.by_name = {a.name: (a, mode) for a, mode in self.io}
        self.num_io_tensors = len(self.io)

    def get_tensor_name(self, i):
        return self.io[i][0].name

    def get_tensor_mode(self, name):
        return self.by_name[name][1]

    def get_tensor_dtype(self, name):
        return _ORT_TO_TRT[self.by_name[name][0].type]

    def get_tensor_shape(self, name):
        return tuple(d if isinstance(d, int) else -1 for d in self.by_name[name][0].shape)

    def get_tensor_profile_shape(self, name, profile):
        assert profile == 0
        tail = self.get_tensor_shape(name)[1:]
        return [(1, *tail), (2, *tail), (self.trt.profile_max, *tail)]

    def create_execution_context(self):
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine):
        self.engine, self.shapes, self.addresses = engine, {}, {}
        self.busy = threading.Lock()

    def set_input_shape(self, name, shape):
        if not 1 <= shape[0] <= self.engine.trt.profile_max:
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        if name in self.shapes:
            return self.shapes[name]
        batch = next(iter(self.shapes.values()))[0]
        return (batch, *self.engine.get_tensor_shape(name)[1:])

    def set_tensor_address(self, name, pointer):
        self.addresses[name] = pointer

    def execute_async_v3(self, stream_handle):
        assert stream_handle == 0xBEEF
        if not self.busy.acquire(blocking=False):
            raise AssertionError("execution context used by two threads at once")
        try:
            memory = self.engine.trt.cudart.memory
            feeds = {}
            for name, shape in self.shapes.items():
                dtype = np.dtype(_NP[self.engine.get_tensor_dtype(name)])
                size = int(np.prod(shape)) * dtype.itemsize
                feeds[name] = memory[self.addresses[name]][:size].view(dtype).reshape(shape).copy()
            (out,) = self.engine.session.run(None, feeds)
            out_name = self.engine.session.get_outputs()[0].name
            memory[self.addresses[out_name]][:out.nbytes] = out.reshape(-1).view(np.uint8)
            return True
        finally:
            self.busy.release()


@pytest.fixture
def simulated_tensorrt(monkeypatch, tmp_path):
    calls = []
    cudart = FakeCudart(calls)
    trt = FakeTensorRT(calls, cudart)
    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda: trt)
    monkeypatch.setattr(trt_backend, "import_cudart", lambda: cudart)
    monkeypatch.setattr(trt_backend, "_LOGGER", None)
    monkeypatch.setattr(trt_backend, "_LOADED_PLUGIN_LIBRARIES", {})
    library = tmp_path / "libreid_trt_plugins.so"
    library.write_bytes(b"\x7fELF")
    monkeypatch.setenv(trt_backend.PLUGIN_ENV, str(library))
    return trt


def onnx_as_plan(onnx_path, plan_path, spec):
    plan_path.write_bytes(Path(onnx_path).read_bytes())
    trt_backend.write_sidecar(plan_path, spec)
    return plan_path


def test_simulated_tensorrt_engine_equals_onnxruntime(tmp_path, rng, simulated_tensorrt):
    spec = {**fx.keyreid_like_spec(), "custom_ops": {"reid::KeypointPatchPool": 1}}
    onnx_path = fx.build_keyreid_like(tmp_path / "k.onnx", spec, seed=3)
    plan = onnx_as_plan(onnx_path, tmp_path / "k.plan", spec)
    engine = reid_sdk.Engine(plan)
    calls = simulated_tensorrt.calls
    assert [c[0] for c in calls[:2]] == ["load_library", "deserialize"]  # plugins first
    info = engine.info()
    assert info["backend"] == "tensorrt" and (info["min_batch"], info["max_batch"]) == (1, 6)
    assert info["sha256"] == hashlib.sha256(plan.read_bytes()).hexdigest()
    tracklets, keypoints, cameras = fx.keyreid_inputs(rng, [1, 5, 30, 170])
    got = engine.embed(tracklets, keypoints=keypoints, camera=cameras)
    want = reid_sdk.Engine(onnx_path).embed(tracklets, keypoints=keypoints, camera=cameras)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # a second engine in the same process does not load the plugin library again
    reid_sdk.Engine(plan, max_batch=4)
    assert [c[0] for c in calls].count("load_library") == 1
    with pytest.raises(InputError, match="outside the batch range 1..6"):
        reid_sdk.Engine(plan, max_batch=7)
    buffers = set(engine._backend._buffers.values())
    assert len(buffers) == 5 + 1  # five inputs, one output
    engine.close()
    assert buffers <= {c[1] for c in calls if c[0] == "free"}


def test_simulated_tensorrt_is_locked_across_threads(tmp_path, rng, simulated_tensorrt):
    spec = fx.hamobe_like_spec()
    onnx_path = fx.build_hamobe_like(tmp_path / "h.onnx", spec, seed=4)
    engine = reid_sdk.Engine(onnx_as_plan(onnx_path, tmp_path / "h.plan", spec))
    jobs = [fx.random_tracklets(rng, rng.integers(1, 40, size=3)) for _ in range(6)]
    fx.assert_threads_match_sequential(engine.embed, jobs)


def test_simulated_deserialisation_failure(tmp_path, rng, simulated_tensorrt):
    plan = make_plan(tmp_path, rng)  # random bytes with a valid sidecar
    with pytest.raises(EngineFileError, match="could not deserialise.*TensorRT version and GPU"):
        reid_sdk.Engine(plan)


def test_simulated_engine_that_does_not_fit_its_spec(tmp_path, simulated_tensorrt):
    onnx_path = fx.build_hamobe_like(tmp_path / "h.onnx", fx.hamobe_like_spec(height=24,
                                                                              width=24))
    plan = onnx_as_plan(onnx_path, tmp_path / "h.plan", fx.hamobe_like_spec())
    with pytest.raises(SpecError, match="'frames' has size 24 on axis 2.*needs 32"):
        reid_sdk.Engine(plan)


# -- real TensorRT (never run: no TensorRT on our machines) ---------------------------------------
def build_real_engine(onnx_path, plan_path, spec, max_batch=8):
    """Build a TensorRT engine from ``onnx_path`` with profile 1..max_batch, plus its sidecar."""
    import tensorrt as trt
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        raise AssertionError([str(parser.get_error(i)) for i in range(parser.num_errors)])
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        tail = tuple(tensor.shape)[1:]
        profile.set_shape(tensor.name, (1, *tail), (max(1, max_batch // 2), *tail),
                          (max_batch, *tail))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    assert serialized is not None, "TensorRT build failed"
    plan_path.write_bytes(bytes(serialized))
    trt_backend.write_sidecar(plan_path, spec)
    return plan_path


# Marked trt only (TensorRT implies a GPU): `pytest -m gpu` on the TensorRT-less GPU machine
# must not pick these up.
@pytest.mark.trt
@pytest.mark.parametrize("arch", ["hamobe", "keyreid"])
def test_real_tensorrt_engine_equals_onnxruntime(tmp_path, rng, arch):
    build = fx.build_hamobe_like if arch == "hamobe" else fx.build_keyreid_like
    spec = fx.hamobe_like_spec() if arch == "hamobe" else fx.keyreid_like_spec()
    onnx_path = build(tmp_path / f"{arch}.onnx", spec, seed=5)
    plan = build_real_engine(onnx_path, tmp_path / f"{arch}.plan", spec)
    engine = reid_sdk.Engine(plan)
    assert engine.info()["max_batch"] == 8
    tracklets, keypoints, cameras = fx.keyreid_inputs(rng, [1, 9, 40, 170])
    kwargs = {"keypoints": keypoints, "camera": cameras} if arch == "keyreid" else {}
    np.testing.assert_allclose(engine.embed(tracklets, **kwargs),
                               reid_sdk.Engine(onnx_path).embed(tracklets, **kwargs),
                               rtol=1e-3, atol=1e-3)
