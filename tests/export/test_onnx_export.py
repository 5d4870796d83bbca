"""reid-export onnx / validate on the tiny presets: graph contract, spec, custom nodes, parity."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from reid_export import cli, models, onnx_export
from reid_export.contracts import contract_for
from reid_export.validate import cosine_rows
from reid_sdk.spec import METADATA_KEY, EngineSpec

EXPECTED_INPUTS = {
    "hamobe": [("frames", onnx.TensorProto.UINT8, 5)],
    "keyreid": [("frames", onnx.TensorProto.UINT8, 5), ("keypoints", onnx.TensorProto.FLOAT, 4),
                ("crop_hw", onnx.TensorProto.INT32, 3), ("frame_valid", onnx.TensorProto.BOOL, 2),
                ("camera", onnx.TensorProto.INT64, 1)],
}
CUSTOM_NODE = {"hamobe": "MoECombine", "keyreid": "KeypointPatchPool"}


@pytest.fixture(scope="module", params=["hamobe", "keyreid"])
def exported(request, tiny_export):
    return (request.param, *tiny_export(request.param))


def _run_both(model, path, batch, seed):
    contract = contract_for(model)
    arrays = contract.example_inputs(batch, np.random.default_rng(seed))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ours = session.run(None, {i.name: a for i, a in zip(contract.inputs, arrays)})[0]
    with torch.no_grad():
        ref = onnx_export.EngineModel(model, contract.mean, contract.std)(
            *onnx_export.torch_inputs(arrays)).numpy()
    return ours, ref


def test_graph_contract_checker_and_shape_inference(exported):
    arch, _, path, _ = exported
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path))
    inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    got = [(i.name, i.type.tensor_type.elem_type, len(i.type.tensor_type.shape.dim))
           for i in proto.graph.input]
    assert got == EXPECTED_INPUTS[arch]
    for value in list(proto.graph.input) + list(proto.graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param, f"{value.name}: batch not dynamic"
    (output,) = proto.graph.output
    assert output.name == "embedding" and output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert inferred.graph.output[0].type.tensor_type.shape.dim[1].dim_value > 0
    assert max(e.version for e in proto.opset_import if e.domain in ("", "ai.onnx")) >= 17


def test_custom_node_present_with_standard_op_function_body(exported):
    arch, _, path, _ = exported
    proto = onnx.load(str(path))
    nodes = [n for n in proto.graph.node if n.domain == "reid"]
    assert [n.op_type for n in nodes] == [CUSTOM_NODE[arch]]
    (function,) = [f for f in proto.functions if f.domain == "reid"]
    assert function.name == CUSTOM_NODE[arch]
    assert all(n.domain in ("", "ai.onnx") for n in function.node)
    assert any(e.domain == "reid" and e.version == 1 for e in proto.opset_import)


def test_constants_are_folded(exported):
    # After folding, no standard node computes from initializers / constants alone.
    _, _, path, _ = exported
    proto = onnx.load(str(path))
    constant = {i.name for i in proto.graph.initializer}
    constant |= {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    foldable = [n.name or n.op_type for n in proto.graph.node
                if n.op_type not in ("Constant", "Shape") and n.domain == "" and n.input
                and all(i in constant for i in n.input if i)]
    assert not foldable, f"unfolded constant computations: {foldable[:10]}"


def test_spec_is_complete_and_matches_the_model(exported):
    arch, model, path, spec = exported
    proto = onnx.load(str(path), load_external_data=False)
    stored = {p.key: p.value for p in proto.metadata_props}[METADATA_KEY]
    parsed = EngineSpec.from_json(stored)
    assert parsed == spec
    data = json.loads(stored)
    for field in ("spec_version", "arch", "frames_per_clip", "input", "normalize", "extra_inputs",
                  "clips", "aggregate", "output_l2", "embedding_dim", "metric", "precision",
                  "opset", "custom_ops", "source"):
        assert field in data, field
    assert data["arch"] == arch and data["preset"] == "tiny"
    assert data["custom_ops"] == {f"reid::{CUSTOM_NODE[arch]}": 1}
    assert data["source"]["exporter"].startswith("reid-export ")
    out_dim = _run_both(model, path, 1, 0)[0].shape[1]
    assert data["embedding_dim"] == out_dim
    if arch == "hamobe":
        assert data["input"]["resize"] == {"policy": "pad_to_square", "interpolation": "bicubic",
                                           "pad_value": 0, "reference": "PIL"}
        assert data["clips"]["policy"] == "hamobe_recombination" and data["output_l2"] is True
        assert data["metric"] == "cosine"
    else:
        assert data["input"]["resize"]["policy"] == "stretch"
        assert data["clips"] == {"policy": "consecutive_chunks", "seq_len": 4, "max_clips": 41,
                                 "pad": "loop"}
        assert data["output_l2"] is False and data["metric"] == "squared_euclidean"
        assert data["extra_inputs"]["camera"]["num_cameras"] == model.reid_config["cameras"]


@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_matches_pytorch_at_any_batch(exported, batch):
    _, model, path, _ = exported
    ours, ref = _run_both(model, path, batch, seed=batch)
    assert ours.shape == ref.shape and ours.shape[0] == batch
    assert cosine_rows(ours, ref).min() >= 0.99999
    assert np.abs(ours - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())


def test_export_writes_external_data_above_the_limit(monkeypatch, tmp_path):
    # The 2 GiB switch, exercised with a tiny limit: weights go to <name>.data, still loadable.
    monkeypatch.setattr(onnx_export, "TWO_GIB", 1)
    torch.manual_seed(0)
    model = models.create("hamobe", preset="tiny")
    path = tmp_path / "h.onnx"
    onnx_export.export_onnx(model, path)
    data_files = [p for p in tmp_path.iterdir() if p.name != "h.onnx"]
    assert data_files and path.stat().st_size < sum(p.stat().st_size for p in data_files)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export-")]
    ours, ref = _run_both(model, path, 2, 0)
    assert cosine_rows(ours, ref).min() >= 0.99999


def test_cli_export_unseen_camera_and_validate(tmp_path, capsys):
    out = tmp_path / "k.onnx"
    assert cli.main(["onnx", "--arch", "keyreid", "--random", "--preset", "tiny",
                     "--unseen-camera", "--seed", "5", "--out", str(out)]) == 0
    spec = onnx_export.read_spec(out)
    camera = spec.extra_inputs["camera"]
    assert camera["unseen_camera_index"] == camera["num_cameras"] == 6
    assert "not part of the official method" in camera["unseen_camera_note"]
    assert spec.source["random_seed"] == 5
    capsys.readouterr()
    assert cli.main(["validate", str(out), "--random", "--batch", "3",
                     "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] and report["cosine_min"] >= 0.99999 and report["samples"] == 3
    assert "PASS" in capsys.readouterr().out


def test_validate_fails_against_other_weights(exported, tmp_path, capsys):
    arch, _, path, _ = exported
    # Weights of another seed: the exported graph no longer matches them.
    from reid_export.models.checkpoint import save_checkpoint
    torch.manual_seed(1)
    other = tmp_path / "other.safetensors"
    save_checkpoint(models.create(arch, preset="tiny"), other)
    assert cli.main(["validate", str(path), "--checkpoint", str(other), "--batch", "2"]) == 1
    assert "FAIL" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["onnx", "--arch", "resnet", "--random", "--out", "x.onnx"], "invalid choice"),
    (["onnx", "--arch", "hamobe", "--random", "--preset", "tiny", "--out", "x.pt"], ".onnx"),
])
def test_cli_errors_name_the_problem(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) if "invalid choice" in message else _no_raise():
        code = cli.main(argv)
        assert code == 2
    assert message in capsys.readouterr().err


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_cli_refuses_a_checkpoint_of_the_other_arch(tmp_path, capsys):
    from reid_export.models.checkpoint import save_checkpoint
    path = tmp_path / "keyreid.safetensors"
    save_checkpoint(models.create("keyreid", preset="tiny"), path)
    code = cli.main(["onnx", "--arch", "hamobe", "--checkpoint", str(path),
                     "--out", str(tmp_path / "x.onnx")])
    assert code == 2
    err = capsys.readouterr().err
    assert "KeyRe-ID" in err or "keyreid" in err
