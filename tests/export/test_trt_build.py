"""reid-export trt: what can run without TensorRT (stripping, profiles, errors) on CPU; the
real build marked `trt` (never run where reid-sdk is developed: no TensorRT there)."""
import importlib.util

import numpy as np
import onnx
import pytest
import torch

from reid_export import cli, models, onnx_export, trt_build


@pytest.fixture(scope="module")
def keyreid_onnx(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("trt") / "keyreid.onnx"
    onnx_export.export_onnx(models.create("keyreid", preset="tiny"), path)
    return path


def test_stripped_copy_keeps_the_custom_node_and_drops_its_body(keyreid_onnx, tmp_path):
    stripped = trt_build.stripped_copy(keyreid_onnx, tmp_path)
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
