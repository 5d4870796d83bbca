"""reid-export trt: what can run without TensorRT (stripping, profiles, errors) on CPU; the
real build marked `trt` (never run where reid-sdk is developed: no TensorRT there)."""
import importlib.util

import numpy as np
import onnx
import pytest

from reid_export import cli, onnx_export, trt_build


@pytest.fixture(scope="module")
def keyreid_onnx(tiny_export):
    return tiny_export("keyreid")[1]


def test_stripped_copy_keeps_the_custom_node_and_drops_its_body(keyreid_onnx, tmp_path):
    stripped = trt_build.stripped_copy(onnx.load(str(keyreid_onnx)), tmp_path / "k.onnx")
    proto = onnx.load(str(stripped))
    original = onnx.load(str(keyreid_onnx))
    assert [n.op_type for n in proto.graph.node] == [n.op_type for n in original.graph.node]
    assert any(n.domain == "reid" for n in proto.graph.node)
    assert not [f for f in proto.functions if f.domain == "reid"]
    assert [f for f in original.functions if f.domain == "reid"]  # the source is untouched


def test_profile_covers_every_input_over_the_batch_axis(keyreid_onnx):
    spec = onnx_export.read_spec(keyreid_onnx)
    shapes = trt_build.profile_shapes(spec, max_batch=16, opt_batch=None)
    assert set(shapes) == {"frames", "keypoints", "crop_hw", "frame_valid", "camera"}
    low, opt, high = shapes["frames"]
    assert (low[0], opt[0], high[0]) == (1, 8, 16)
    assert low[1:] == (4, spec.height, spec.width, 3) == high[1:]
    assert shapes["camera"] == ((1,), (8,), (16,))
    with pytest.raises(ValueError, match="opt-batch"):
        trt_build.profile_shapes(spec, max_batch=4, opt_batch=9)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None,
                    reason="TensorRT is installed: the trt-marked test builds for real")
def test_cli_without_tensorrt_says_how_to_get_it(keyreid_onnx, tmp_path, capsys):
    assert cli.main(["trt", str(keyreid_onnx), "--out", str(tmp_path / "k.plan")]) == 2
    assert "pip install tensorrt" in capsys.readouterr().err
    assert not (tmp_path / "k.plan").exists()


def test_cli_refuses_a_wrong_suffix(keyreid_onnx, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["trt", str(keyreid_onnx), "--out", str(tmp_path / "k.onnx")])
    assert ".plan or .engine" in capsys.readouterr().err


@pytest.mark.trt
def test_built_engine_matches_onnxruntime(keyreid_onnx, tmp_path, rng):
    import reid_sdk
    plan = trt_build.build_engine(keyreid_onnx, tmp_path / "k.plan", max_batch=8)
    tracklets = [[rng.integers(0, 256, (96, 48, 3), dtype=np.uint8) for _ in range(9)]]
    keypoints = [rng.random((9, 17, 3), dtype=np.float32) * [48, 96, 1]]
    trt_emb = reid_sdk.Engine(plan).embed(tracklets, keypoints=keypoints, camera=[1])
    ort_emb = reid_sdk.Engine(keyreid_onnx).embed(tracklets, keypoints=keypoints, camera=[1])
    cos = (trt_emb * ort_emb).sum() / np.linalg.norm(trt_emb) / np.linalg.norm(ort_emb)
    assert cos >= 0.99999


class _FakeBuilderTensorRT:
    """The slice of the TensorRT Python API that build_engine drives, recording its calls. Its
    ONNX parser checks what ours must hand over: a file whose reid nodes have no function
    bodies, parsed after the plugin library was registered."""

    __version__ = "10.16.0"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 1

    class MemoryPoolType:
        WORKSPACE = "workspace"

    def __init__(self, plan: bytes, parse_ok: bool = True):
        calls = self.calls = []

        class Registry:
            def load_library(self, path):
                calls.append(("load_library", path))
                return object()
        self._registry = Registry()

        class Profile:
            def set_shape(self, name, low, opt, high):
                calls.append(("set_shape", name, tuple(low), tuple(opt), tuple(high)))

        class Config:
            def set_memory_pool_limit(self, pool, size):
                calls.append(("pool_limit", pool, size))

            def add_optimization_profile(self, profile):
                calls.append(("add_profile",))

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                calls.append(("create_network", flags))
                return "network"

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                calls.append(("build",))
                return plan

        class OnnxParser:
            num_errors = 0 if parse_ok else 1

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                proto = onnx.load(path)
                calls.append(("parse", [n.op_type for n in proto.graph.node if n.domain == "reid"],
                              [f.name for f in proto.functions if f.domain == "reid"]))
                return parse_ok

            def get_error(self, index):
                return "unsupported node"

        self.Builder, self.OnnxParser = Builder, OnnxParser

    def get_plugin_registry(self):
        return self._registry


@pytest.fixture
def fake_tensorrt(monkeypatch, tmp_path):
    """Install a fake ``tensorrt`` and plugin library; yields a factory of fake modules."""
    import sys

    from reid_sdk.backends import tensorrt as trt_backend
    library = tmp_path / "libreid_trt_plugins.so"
    library.write_bytes(b"not really a library")
    monkeypatch.setenv(trt_backend.PLUGIN_ENV, str(library))
    # Process-wide caches of the SDK: start empty, and leave nothing fake behind.
    monkeypatch.setattr(trt_backend, "_LOADED_PLUGIN_LIBRARIES", {})
    monkeypatch.setattr(trt_backend, "_LOGGER", None)

    def install(plan: bytes, parse_ok: bool = True):
        trt = _FakeBuilderTensorRT(plan, parse_ok)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        return trt
    install.library = str(library)
    return install


def test_build_engine_drives_tensorrt_and_writes_plan_and_sidecar(keyreid_onnx, tmp_path,
                                                                  fake_tensorrt):
    from reid_sdk.backends.tensorrt import read_verified_engine
    plan_bytes = np.random.default_rng(7).bytes(1000)
    trt = fake_tensorrt(plan_bytes)
    out = tmp_path / "k.plan"
    assert trt_build.build_engine(keyreid_onnx, out, max_batch=8, workspace_gib=0.5) == out
    data, sidecar = read_verified_engine(out)
    spec = onnx_export.read_spec(keyreid_onnx)
    assert data == plan_bytes and sidecar.spec == spec
    shapes = trt_build.profile_shapes(spec, 8, None)
    names = [c[0] for c in trt.calls]
    assert names.index("load_library") < names.index("parse") < names.index("build")
    assert ("load_library", fake_tensorrt.library) in trt.calls
    assert ("parse", ["KeypointPatchPool"], []) in trt.calls
    assert ("create_network", 2) in trt.calls
    assert ("pool_limit", "workspace", 1 << 29) in trt.calls
    assert {c[1]: c[2:] for c in trt.calls if c[0] == "set_shape"} == shapes
    assert sorted(p.name for p in keyreid_onnx.parent.iterdir()) == ["keyreid.onnx"]

    # A second build in the same process registers the plugin library only once.
    trt.calls.clear()
    trt_build.build_engine(keyreid_onnx, tmp_path / "k2.plan", max_batch=4)
    assert "load_library" not in [c[0] for c in trt.calls] and ("build",) in trt.calls


def test_build_engine_reports_a_parser_error_and_cleans_up(keyreid_onnx, tmp_path, fake_tensorrt):
    fake_tensorrt(b"plan", parse_ok=False)
    with pytest.raises(RuntimeError, match="rejected .*unsupported node"):
        trt_build.build_engine(keyreid_onnx, tmp_path / "k.plan")
    assert not (tmp_path / "k.plan").exists()
    assert sorted(p.name for p in keyreid_onnx.parent.iterdir()) == ["keyreid.onnx"]
