"""load_checkpoint / save_checkpoint: official containers, raw state_dicts, our safetensors, the
OpenAI CLIP backbone file in both forms, and every error of issue 3 item 8."""
import hashlib
import io
import json
import struct
import zipfile

import pytest
import torch

from reid_export.models import checkpoint, create, hamobe
from reid_export.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def _randomize(model, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in hamobe.checkpoint_state_dict(model).items():
            if not tensor.is_floating_point() or name.endswith("patch_embed.proj.bias"):
                continue  # CLIP files have no patch bias
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            else:
                tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.2)
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A random tiny HAMoBE in freeze mode (as official checkpoints are), its outputs on a clip,
    and the official-format files: training container, CLIP TorchScript and state_dict."""
    root = tmp_path_factory.mktemp("hamobe")
    torch.manual_seed(0)
    model = _randomize(create("hamobe", "tiny", backbone_mode="freeze"), 1)
    frames = torch.randn(2, 4, 3, 56, 56, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(frames)
    head = model.state_dict()
    container = root / "best_model.pth.tar"
    torch.save({"model": head, "id_head": {"weight": torch.randn(7, 128)},
                "clothes_head": {"weight": torch.randn(9, 128)},
                "optimizer": {"state": {0: {"step": torch.tensor(3.0),
                                            "exp_avg": torch.randn(4)}},
                              "param_groups": [{"lr": 3.5e-4, "betas": (0.9, 0.999),
                                                "params": [0]}]},
                "scheduler": {"milestones": {40: 1, 80: 1}, "gamma": 0.1, "last_epoch": 12},
                "epoch": 12, "best_map": 0.61}, container)
    clip_script, clip_plain = root / "ViT-tiny.pt", root / "ViT-tiny-state.pt"
    full = hamobe.checkpoint_state_dict(model)
    hamobe.save_openai_clip(clip_script, full, model.reid_config, torchscript=True)
    hamobe.save_openai_clip(clip_plain, full, model.reid_config, torchscript=False)
    return {"root": root, "model": model, "frames": frames, "expected": expected, "head": head,
            "container": container, "clip_script": clip_script, "clip_plain": clip_plain}


def _embed(model, frames):
    with torch.no_grad():
        return model(frames)


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------
# Round trips
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("clip", ["clip_script", "clip_plain"])
def test_official_container_with_openai_clip_file(files, clip):
    model = load_checkpoint(files["container"], backbone_path=files[clip])
    assert torch.equal(_embed(model, files["frames"]), files["expected"])
    assert model.reid_config["frames"] == 4 and model.reid_config["backbone_mode"] == "freeze"
    assert list(model.state_dict()) == list(files["head"])
    assert model.reid_source == {
        "checkpoint": "best_model.pth.tar", "checkpoint_sha256": _sha256(files["container"]),
        "backbone": files[clip].name, "backbone_sha256": _sha256(files[clip])}
    assert not model.training


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_clip_is_read_without_torch_jit_load(files):
    tensors, metadata = checkpoint.read_tensors(files["clip_script"])
    reference = torch.jit.load(str(files["clip_script"]), map_location="cpu").state_dict()
    assert metadata == {"torchscript": "1"}
    assert set(tensors) == set(reference)
    for key, value in reference.items():
        assert tensors[key].dtype == value.dtype and torch.equal(tensors[key], value), key


@pytest.mark.parametrize("wrap", ["module_prefix", "raw", "state_dict_wrapper"])
def test_raw_and_wrapped_state_dicts(files, tmp_path, wrap):
    head = files["head"]
    content = {"module_prefix": {"module." + k: v for k, v in head.items()},
               "raw": head, "state_dict_wrapper": {"state_dict": head, "epoch": 3}}[wrap]
    path = tmp_path / "model.pth"
    torch.save(content, path)
    model = load_checkpoint(path, arch="hamobe", preset="tiny", backbone_path=files["clip_plain"])
    assert torch.equal(_embed(model, files["frames"]), files["expected"])


def test_clip_file_in_safetensors(files, tmp_path):
    from safetensors.torch import save_file

    state = torch.load(files["clip_plain"], weights_only=True)
    path = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    model = load_checkpoint(files["container"], backbone_path=path)
    assert torch.equal(_embed(model, files["frames"]), files["expected"])


def test_our_safetensors_round_trip_carries_the_frozen_backbone(files, tmp_path):
    path = save_checkpoint(files["model"], tmp_path / "hamobe.safetensors")
    model = load_checkpoint(path)  # no backbone_path: ours carry it
    assert torch.equal(_embed(model, files["frames"]), files["expected"])
    assert model.reid_config == files["model"].reid_config
    assert not any(k.startswith("backbone.") for k in model.state_dict())
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        keys = set(handle.keys())
    assert metadata["reid_arch"] == "hamobe"
    assert json.loads(metadata["reid_config"])["backbone_mode"] == "freeze"
    assert set(hamobe.backbone_keys(model)) < keys
    assert [p.name for p in tmp_path.iterdir()] == ["hamobe.safetensors"]  # no temp file left


def test_finetune_checkpoints_load_with_their_backbone(files, tmp_path):
    model = _randomize(create("hamobe", "tiny"), 3)  # finetune: backbone.* in the state_dict
    frames = files["frames"]
    raw = tmp_path / "finetune.pth"
    torch.save({"model": model.state_dict()}, raw)
    loaded = load_checkpoint(raw)
    assert loaded.reid_config["backbone_mode"] == "finetune"
    assert loaded.reid_config["backbone_dtype"] == "float32"
    assert torch.equal(_embed(loaded, frames), _embed(model, frames))
    assert list(loaded.state_dict()) == list(model.state_dict())
    ours = load_checkpoint(save_checkpoint(model, tmp_path / "finetune.safetensors"))
    assert torch.equal(_embed(ours, frames), _embed(model, frames))


def test_overrides_change_the_backbone_precision(files):
    model = load_checkpoint(files["container"], backbone_path=files["clip_script"],
                            overrides={"backbone_dtype": "float16"})
    assert model.backbone.blocks[0].mlp.fc1.weight.dtype == torch.float16
    out = _embed(model, files["frames"])
    assert torch.nn.functional.cosine_similarity(out, files["expected"]).min() > 0.999
    with pytest.raises(CheckpointError, match="unknown HAMoBE config fields \\['depth'\\]"):
        load_checkpoint(files["container"], backbone_path=files["clip_script"],
                        overrides={"depth": 3})


def test_save_is_atomic(files, tmp_path, monkeypatch):
    path = save_checkpoint(files["model"], tmp_path / "model.safetensors")
    before = path.read_bytes()
    import safetensors.torch

    during = []

    def fail(*args, **kwargs):
        during.extend(p.name for p in tmp_path.iterdir())
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(files["model"], path)
    assert len(during) == 2  # the failure came while a temporary file existed beside the target
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_shared_tensors_are_stored_once(tmp_path):
    keyreid = create("keyreid", "tiny")
    state = keyreid.state_dict()
    shared = [k for k in state if k.startswith("b2.0.")]
    assert shared and state[shared[0]].data_ptr() == state["block1" + shared[0][4:]].data_ptr()
    path = save_checkpoint(keyreid, tmp_path / "keyreid.safetensors")
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as handle:
        aliases = json.loads(handle.metadata()["reid_aliases"])
        stored = set(handle.keys())
    assert set(aliases) == set(shared) and not stored & set(shared)
    loaded = load_checkpoint(path, arch="keyreid")
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in state.items())


# ------------------------------------------------------------------------------------------------
# Errors (issue 3 item 8)
# ------------------------------------------------------------------------------------------------
def test_checkpoint_of_the_other_architecture(files, tmp_path):
    path = tmp_path / "Marsbest.pth"
    torch.save(create("keyreid", "tiny").state_dict(), path)
    with pytest.raises(CheckpointError, match="this is a KeyRe-ID checkpoint, not HAMoBE"):
        load_checkpoint(path, arch="hamobe")
    with pytest.raises(CheckpointError, match="this is a HAMoBE checkpoint, not KeyRe-ID"):
        load_checkpoint(files["container"], arch="keyreid", backbone_path=files["clip_script"])
    with pytest.raises(CheckpointError, match="backbone_path is for HAMoBE"):
        load_checkpoint(path, backbone_path=files["clip_script"])


@pytest.mark.parametrize("source", ["container", "safetensors", "legacy"])
def test_truncated_files(files, tmp_path, source):
    if source == "container":
        data = files["container"].read_bytes()
    elif source == "safetensors":
        data = save_checkpoint(files["model"], tmp_path / "m.safetensors").read_bytes()
    else:
        buffer = io.BytesIO()
        torch.save(files["head"], buffer, _use_new_zipfile_serialization=False)
        data = buffer.getvalue()
    path = tmp_path / "cut.bin"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"\x89PNG\r\n\x1a\n" + bytes(64), "not a checkpoint: neither safetensors"),
    (b"epoch,mAP\n1,0.5\n", "not a checkpoint: neither safetensors"),
])
def test_foreign_files(tmp_path, content, message):
    path = tmp_path / "file.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_non_state_dict_contents(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="holds a list, not a state_dict"):
        load_checkpoint(tmp_path / "list.pth")
    torch.save({"fc.weight": torch.zeros(2, 2), "conv.bias": torch.zeros(2)}, tmp_path / "o.pth")
    with pytest.raises(CheckpointError, match="neither a HAMoBE nor a KeyRe-ID checkpoint"):
        load_checkpoint(tmp_path / "o.pth")
    torch.save({"epoch": 3, "best_map": 0.5}, tmp_path / "meta.pth")
    with pytest.raises(CheckpointError, match="not a state_dict of tensors"):
        load_checkpoint(tmp_path / "meta.pth")
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "missing.pth")


class _Pickled:  # a class weights_only loading must refuse
    pass


def test_arbitrary_pickles_are_refused(files, tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"model": files["head"], "args": _Pickled()}, path)
    with pytest.raises(CheckpointError, match="weights_only loading refuses"):
        load_checkpoint(path, backbone_path=files["clip_script"])


def test_torchscript_archive_with_a_foreign_global_is_refused(files, tmp_path):
    with zipfile.ZipFile(files["clip_script"]) as archive:
        records = {name: archive.read(name) for name in archive.namelist()}
    data_pkl = next(n for n in records if n.endswith("/data.pkl"))
    marker = tmp_path / "executed"
    command = f"touch {marker}".encode()
    # pickle protocol 2: os.system(command)
    records[data_pkl] = (b"\x80\x02cos\nsystem\nX" + struct.pack("<I", len(command)) + command
                         + b"\x85R.")
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in records.items():
            archive.writestr(name, data)
    with pytest.raises(CheckpointError, match="refusing global os.system"):
        checkpoint.read_tensors(path)
    assert not marker.exists()


def test_preset_that_does_not_fit(files):
    with pytest.raises(CheckpointError, match="preset 'official' does not fit .*"
                                              "decoder.decoder_layers.weight: checkpoint "
                                              "\\[64, 256\\], model \\[1024, 4096\\]"):
        load_checkpoint(files["container"], preset="official", backbone_path=files["clip_script"])
    with pytest.raises(CheckpointError, match="unknown preset 'large' for HAMoBE"):
        load_checkpoint(files["container"], preset="large", backbone_path=files["clip_script"])


def test_unknown_arch(files, tmp_path):
    with pytest.raises(CheckpointError, match="unknown arch 'resnet': choose one of hamobe, "
                                              "keyreid"):
        load_checkpoint(files["container"], arch="resnet")
    from safetensors.torch import save_file
    path = tmp_path / "future.safetensors"
    save_file({"w": torch.zeros(1)}, path, metadata={"reid_arch": "next", "reid_config": "{}"})
    with pytest.raises(CheckpointError, match="arch 'next', which this version does not know"):
        load_checkpoint(path)


def test_missing_backbone(files, tmp_path):
    with pytest.raises(CheckpointError, match="official HAMoBE checkpoints do not contain the "
                                              "frozen CLIP ViT-L/14; pass backbone_path=\\.\\.\\. "
                                              "\\(the OpenAI CLIP file ViT-L-14.pt\\)"):
        load_checkpoint(files["container"])
    carrying = save_checkpoint(files["model"], tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="already carries the backbone"):
        load_checkpoint(carrying, backbone_path=files["clip_script"])
    with pytest.raises(CheckpointError, match="TorchScript archive .* goes to backbone_path"):
        load_checkpoint(files["clip_script"])


def test_clip_file_of_another_architecture(files, tmp_path):
    other = create("hamobe", "tiny", layers=4, tapped_layers=4)
    path = tmp_path / "ViT-other.pt"
    hamobe.save_openai_clip(path, hamobe.checkpoint_state_dict(other), other.reid_config,
                            torchscript=False)
    with pytest.raises(CheckpointError, match="does not fit this HAMoBE model: layers 4 "
                                              "\\(model: 5\\)"):
        load_checkpoint(files["container"], backbone_path=path)
    with pytest.raises(CheckpointError, match="is not a CLIP model file"):
        load_checkpoint(files["container"], backbone_path=files["container"])
    head_only = tmp_path / "head.pth"
    torch.save(files["head"], head_only)
    with pytest.raises(CheckpointError, match="not an OpenAI CLIP file: it has no "
                                              "visual.conv1.weight"):
        load_checkpoint(files["container"], backbone_path=head_only)


def test_missing_unexpected_and_misshaped_tensors_are_named(files, tmp_path):
    head = dict(files["head"])
    del head["moe_canonical.layer.0.bias"]
    head["moe_pose.extra"] = torch.zeros(3)
    head["fc.bias"] = torch.zeros(7)
    path = tmp_path / "damaged.pth"
    torch.save({"model": head}, path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path, backbone_path=files["clip_script"])
    message = str(error.value)
    assert "missing (1): moe_canonical.layer.0.bias" in message
    assert "unexpected (1): moe_pose.extra" in message
    assert "mis-shaped (1): fc.bias: checkpoint [7], model [128]" in message
    del head["moe_pose.cls_token"]  # one of the keys that identify HAMoBE
    torch.save(head, path)
    with pytest.raises(CheckpointError, match="neither a HAMoBE nor a KeyRe-ID"):
        load_checkpoint(path, backbone_path=files["clip_script"])
    with pytest.raises(CheckpointError, match="not a HAMoBE state_dict: keys "
                                              "\\['moe_pose.cls_token'\\] are missing"):
        load_checkpoint(path, arch="hamobe", backbone_path=files["clip_script"])
    partial = {**files["head"], "backbone.cls_token": torch.zeros(64)}
    torch.save(partial, path)
    with pytest.raises(CheckpointError, match="missing \\(85\\): backbone.pos_embed"):
        load_checkpoint(path)
