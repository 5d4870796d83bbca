"""HAMoBE: official state_dict layout, exact semantics against literal float64 references written
from the official code (models/vid_resnet.py, vision_transformer.py, x_transformers), and a
dynamic-batch torch.export."""
import math
import re

import pytest
import torch
import torch.nn.functional as F
from reid_export.models import create, hamobe

# ------------------------------------------------------------------------------------------------
# MODELS.md 1.1: the official keys and shapes at T = 8 (D = 1024, d = 512, 16 x 16 grid), written
# out here independently of the model code, in the official registration order.
# ------------------------------------------------------------------------------------------------


def _official_table(frames=8):
    D, d, rel = 1024, 512, 961
    table = [("decoder.decoder_layers.weight", [D, 4 * D]), ("decoder.decoder_layers.bias", [D])]
    for i in range(4):
        table += [(f"decoder.temporal_conv.{i}.weight", [D, 1, 3]),
                  (f"decoder.temporal_conv.{i}.bias", [D])]
    table += [(f"decoder.temporal_pos_embed.{i}", [frames, D]) for i in range(4)]
    for i in range(4):
        table += [(f"decoder.cross_attention.{i}.w1", [rel, D]),
                  (f"decoder.cross_attention.{i}.w2", [rel, D])]
    for m in range(8):
        expert = f"moe_first.experts.{m}"
        table += [(f"{expert}.0.weight", [d, D]), (f"{expert}.0.bias", [d]),
                  (f"{expert}.2.weight", [d, d]), (f"{expert}.2.bias", [d])]
    table += [("moe_first.gating.fc_pre.0.weight", [d, D]), ("moe_first.gating.fc_pre.0.bias", [d]),
              ("moe_first.gating.fc_post.weight", [24, d]), ("moe_first.gating.fc_post.bias", [24]),
              ("moe_first.gating.pos_embed.emb.weight", [257, d])]
    table += [(f"moe_first.gating.attn.to_{n}.weight", [d, d]) for n in ("q", "k", "v", "out")]
    for branch in ("moe_canonical", "moe_appearance"):
        table += [(f"{branch}.layer.0.weight", [d, d]), (f"{branch}.layer.0.bias", [d]),
                  (f"{branch}.layer.2.weight", [d, d]), (f"{branch}.layer.2.bias", [d]),
                  (f"{branch}.patch_agg.0.weight", [128, 257]),
                  (f"{branch}.patch_agg.0.bias", [128]),
                  (f"{branch}.patch_agg.2.weight", [1, 128]), (f"{branch}.patch_agg.2.bias", [1])]
    table += [("moe_pose.cls_token", [d]), ("moe_pose.layer.0.weight", [d, d]),
              ("moe_pose.layer.0.bias", [d]), ("moe_pose.layer.2.weight", [d, d]),
              ("moe_pose.layer.2.bias", [d])]
    for n in ("q", "k", "v"):
        table += [(f"moe_pose.pose_agg.attn.{n}_proj.weight", [768, d]),
                  (f"moe_pose.pose_agg.attn.{n}_proj.bias", [768])]
    table += [("moe_pose.pose_agg.attn.out_proj.weight", [d, 768]),
              ("moe_pose.pose_agg.attn.out_proj.bias", [d]),
              ("moe_pose.pose_agg.mlp.fc1.weight", [2048, d]),
              ("moe_pose.pose_agg.mlp.fc1.bias", [2048]),
              ("moe_pose.pose_agg.mlp.fc2.weight", [d, 2048]),
              ("moe_pose.pose_agg.mlp.fc2.bias", [d])]
    for n in (1, 2, 3):
        table += [(f"moe_pose.pose_agg.norm{n}.weight", [d]),
                  (f"moe_pose.pose_agg.norm{n}.bias", [d])]
    table += [("gating_second.fc1_pre.0.weight", [d, 3 * d]), ("gating_second.fc1_pre.0.bias", [d]),
              ("gating_second.fc1_post.weight", [3, d]), ("gating_second.fc1_post.bias", [3]),
              ("gating_second.patch_agg.0.weight", [128, 257]),
              ("gating_second.patch_agg.0.bias", [128]),
              ("gating_second.patch_agg.2.weight", [1, 128]),
              ("gating_second.patch_agg.2.bias", [1]),
              ("gating_second.fc2.0.weight", [4, frames]), ("gating_second.fc2.0.bias", [4]),
              ("gating_second.fc2.2.weight", [1, 4]), ("gating_second.fc2.2.bias", [1]),
              ("gating_second.pos_embed.emb.weight", [257, d])]
    table += [(f"gating_second.attn.to_{n}.weight", [d, d]) for n in ("q", "k", "v", "out")]
    table += [("fc.weight", [2048, d]), ("fc.bias", [2048]), ("bn.weight", [2048]),
              ("bn.bias", [2048]), ("bn.running_mean", [2048]), ("bn.running_var", [2048]),
              ("bn.num_batches_tracked", [])]
    return table


def _meta_model(**overrides):
    with torch.device("meta"):
        return create("hamobe", "official", **overrides)


def test_official_state_dict_equals_the_models_md_table():
    state = _meta_model().state_dict()
    assert [(k, list(v.shape)) for k, v in state.items()] == _official_table()
    groups = {}
    for key in state:
        groups[key.split(".")[0]] = groups.get(key.split(".")[0], 0) + 1
    assert groups == {"decoder": 22, "moe_first": 41, "moe_canonical": 8, "moe_appearance": 8,
                      "moe_pose": 23, "gating_second": 17, "fc": 2, "bn": 5}
    model = _meta_model()
    head = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("backbone."))
    assert head == 28_511_687


def test_frames_follow_the_config():
    state = _meta_model(frames=16).state_dict()
    assert [(k, list(v.shape)) for k, v in state.items()] == _official_table(frames=16)


def test_official_backbone_precision_and_freeze():
    model = _meta_model()
    backbone = model.backbone
    linears = [m for m in backbone.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 1 + 24 * 6
    assert all(m.weight.dtype == m.bias.dtype == torch.float16 for m in linears)
    assert backbone.cls_token.dtype == backbone.pos_embed.dtype == torch.float16
    norms = [m for m in backbone.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 1 + 24 * 2 and all(m.weight.dtype == torch.float32 for m in norms)
    assert not any(p.requires_grad for p in backbone.parameters())
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("backbone"))
    assert model.fc.weight.dtype == torch.float32


def test_finetune_mode_has_the_official_backbone_names_first():
    model = create("hamobe", "tiny")  # finetune mode: the backbone is trained with the model
    width, patch = model.reid_config["width"], model.reid_config["patch_size"]
    tokens = (model.reid_config["image_size"] // patch) ** 2 + 1
    expected = [("backbone.cls_token", [width]), ("backbone.pos_embed", [tokens, width]),
                ("backbone.patch_embed.proj.weight", [width, 3 * patch * patch]),
                ("backbone.patch_embed.proj.bias", [width])]
    for i in range(model.reid_config["layers"]):
        block = f"backbone.blocks.{i}."
        for n in ("q", "k", "v", "out"):
            expected += [(f"{block}attn.{n}_proj.weight", [width, width]),
                         (f"{block}attn.{n}_proj.bias", [width])]
        expected += [(f"{block}mlp.fc1.weight", [4 * width, width]),
                     (f"{block}mlp.fc1.bias", [4 * width]),
                     (f"{block}mlp.fc2.weight", [width, 4 * width]),
                     (f"{block}mlp.fc2.bias", [width])]
        for n in (1, 2):
            expected += [(f"{block}norm{n}.weight", [width]), (f"{block}norm{n}.bias", [width])]
    expected += [("backbone.ln_pre.weight", [width]), ("backbone.ln_pre.bias", [width])]
    items = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert items[:len(expected)] == expected
    assert not any(k.startswith("backbone.") for k, _ in items[len(expected):])
    assert all(p.requires_grad for p in model.backbone.parameters())


def test_frozen_backbone_is_hidden_and_kept_on_strict_load():
    model = create("hamobe", "tiny", backbone_mode="freeze")
    state = model.state_dict()
    assert not any(k.startswith("backbone.") for k in state)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    donor = create("hamobe", "tiny", backbone_mode="freeze")
    model.load_state_dict(donor.state_dict(), strict=True)  # head only, as official checkpoints
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in before.items())
    assert torch.equal(model.fc.weight, donor.fc.weight)
    full = hamobe.checkpoint_state_dict(donor)  # a checkpoint that carries the backbone loads it
    model.load_state_dict(full, strict=True)
    assert all(torch.equal(v, model.backbone.state_dict()[k])
               for k, v in donor.backbone.state_dict().items())


# ------------------------------------------------------------------------------------------------
# Literal references (float64), written from the official code
# ------------------------------------------------------------------------------------------------
def literal_temporal_cross_attention(q, k, w1, w2, grid):
    """models/vid_resnet.py TemporalCrossAttention, with its [P, P, C] gather of the table."""
    patches = grid * grid
    index = torch.zeros(patches, patches, dtype=torch.long)
    for query in range(patches):
        for key in range(patches):
            rows = query // grid - key // grid + grid - 1
            cols = query % grid - key % grid + grid - 1
            index[query, key] = rows * (2 * grid - 1) + cols

    def half(q, k, table):
        q, k = q[:, :, 1:], k[:, :, 1:]
        attn = torch.einsum("ntqhd,ntkhd->ntqkh", q / q.shape[-1] ** 0.5, k)
        attn = attn.softmax(dim=-2).mean(dim=-1)
        return torch.einsum("ntqk,qkc->ntqc", attn, table[index])

    batch, frames, tokens = q.shape[:3]
    out = torch.zeros(batch, frames, tokens, w1.shape[-1], dtype=q.dtype)
    out[:, 1:, 1:] += half(q[:, 1:], k[:, :-1], w1)
    out[:, :-1, 1:] += half(q[:, :-1], k[:, 1:], w2)
    return out


def _linear(S, x, name):
    return x @ S[name + ".weight"].T + (S[name + ".bias"] if name + ".bias" in S else 0)


def _layer_norm(S, x, name):
    return F.layer_norm(x, x.shape[-1:], S[name + ".weight"], S[name + ".bias"], 1e-5)


def _vit_attention(S, query, memory, name, heads):
    """vision_transformer.Attention: q/sqrt(dh) then einsum, softmax over keys."""
    n, lq, lk = query.shape[0], query.shape[1], memory.shape[1]
    q = _linear(S, query, name + ".q_proj").view(n, lq, heads, -1)
    k = _linear(S, memory, name + ".k_proj").view(n, lk, heads, -1)
    v = _linear(S, memory, name + ".v_proj").view(n, lk, heads, -1)
    aff = torch.einsum("nqhc,nkhc->nqkh", q / q.shape[-1] ** 0.5, k).softmax(dim=-2)
    mix = torch.einsum("nqlh,nlhc->nqhc", aff, v)
    return _linear(S, mix.flatten(-2), name + ".out_proj"), q, k


def _vit_mlp(S, x, name):
    h = _linear(S, x, name + ".fc1")
    return _linear(S, h * torch.sigmoid(1.702 * h), name + ".fc2")


def _x_attention(S, y, name, heads):
    """x-transformers Attention: bias-free, (q k^T) * dh^-0.5, softmax, no norm."""
    q, k, v = (_linear(S, y, f"{name}.to_{n}") for n in ("q", "k", "v"))
    q, k, v = (t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
    dots = torch.einsum("bhid,bhjd->bhij", q, k) * q.shape[-1] ** -0.5
    out = torch.einsum("bhij,bhjd->bhid", dots.softmax(dim=-1), v)
    return _linear(S, out.transpose(1, 2).flatten(-2), name + ".to_out")


def literal_hamobe(S, config, frames):
    """ResNet503D.forward (is_train=False) step by step from the state_dict ``S``."""
    B, T = frames.shape[:2]
    p, D, heads = config["patch_size"], config["width"], config["heads"]
    grid = config["image_size"] // p
    L = grid * grid + 1
    # VisionTransformer2D: Linear over (C, kh, kw) patches, cls, pos, ln_pre, pre-norm blocks.
    x = frames.reshape(B * T, 3, grid * p, grid * p)
    n = x.shape[0]
    x = x.view(n, 3, grid, p, grid, p).permute(0, 2, 4, 1, 3, 5).flatten(3).flatten(1, 2)
    x = _linear(S, x, "backbone.patch_embed.proj")
    x = torch.cat([S["backbone.cls_token"].view(1, 1, -1).repeat(n, 1, 1), x], 1)
    x = _layer_norm(S, x + S["backbone.pos_embed"], "backbone.ln_pre")
    features = []
    for i in range(config["layers"]):
        name = f"backbone.blocks.{i}"
        attended, q, k = _vit_attention(S, *[_layer_norm(S, x, name + ".norm1")] * 2,
                                        name + ".attn", heads)
        x = x + attended
        x = x + _vit_mlp(S, _layer_norm(S, x, name + ".norm2"), name + ".mlp")
        features.append({"out": x, "q": q, "k": k})
    features = [{key: v.view(B, T, *v.shape[1:]) for key, v in f.items()}
                for f in features[-config["tapped_layers"]:]]
    # EVLDecoder
    fused = []
    for i, f in enumerate(features):
        w = S[f"decoder.temporal_conv.{i}.weight"][:, 0]  # [D, 3]
        padded = F.pad(f["out"], (0, 0, 0, 0, 1, 1))  # zero-pad the time axis
        conv = (w[:, 0] * padded[:, :-2] + w[:, 1] * padded[:, 1:-1] + w[:, 2] * padded[:, 2:]
                + S[f"decoder.temporal_conv.{i}.bias"])
        feature = f["out"] + conv + S[f"decoder.temporal_pos_embed.{i}"].view(1, T, 1, D)
        feature = feature + literal_temporal_cross_attention(
            f["q"], f["k"], S[f"decoder.cross_attention.{i}.w1"],
            S[f"decoder.cross_attention.{i}.w2"], grid)
        fused.append(feature)
    X = _linear(S, torch.cat(fused, -1), "decoder.decoder_layers")
    # FirstMoE: experts, gating with expert-major logits, the official expanded einsum.
    E, d = config["experts"], config["expert_dim"]
    experts = torch.cat([_linear(S, _linear(S, X, f"moe_first.experts.{m}.0").relu(),
                                 f"moe_first.experts.{m}.2").unsqueeze(4) for m in range(E)], 4)
    y = _linear(S, X.reshape(B * T, L, D), "moe_first.gating.fc_pre.0").relu()
    y = y + S["moe_first.gating.pos_embed.emb.weight"][:L] * d ** -0.5
    y = y + _x_attention(S, y, "moe_first.gating.attn", config["gate_heads"])
    w = _linear(S, y, "moe_first.gating.fc_post").view(B, T, L, E, 3).softmax(dim=3)
    w = w.unsqueeze(3).expand(-1, -1, -1, d, -1, -1)
    Z = torch.einsum("ijklnm,ijklmo->ijklno", experts.unsqueeze(-2), w).squeeze(-2)

    def general(z, name):
        h = _linear(S, _linear(S, z, name + ".layer.0").relu(), name + ".layer.2")
        pooled = _linear(S, _linear(S, h.permute(0, 1, 3, 2), name + ".patch_agg.0").relu(),
                         name + ".patch_agg.2")
        return pooled.squeeze(-1).mean(1)

    canonical = general(Z[..., 0], "moe_canonical")
    appearance = general(Z[..., 1], "moe_appearance")
    memory = _linear(S, _linear(S, Z[..., 2], "moe_pose.layer.0").relu(), "moe_pose.layer.2")
    memory = _layer_norm(S, memory.flatten(1, 2), "moe_pose.pose_agg.norm3")
    query = S["moe_pose.cls_token"].view(1, 1, -1).repeat(B, 1, 1)
    query = query + _vit_attention(S, _layer_norm(S, query, "moe_pose.pose_agg.norm1"), memory,
                                   "moe_pose.pose_agg.attn", config["pose_heads"])[0]
    query = query + _vit_mlp(S, _layer_norm(S, query, "moe_pose.pose_agg.norm2"),
                             "moe_pose.pose_agg.mlp")
    pose = query[:, 0]
    # SecondLayerAdaptiveGating: fc1_pre written as a contraction over (c, j), which is what
    # the official '(c d)' flattening (c outer, j inner) means for the weight's columns.
    weight = S["gating_second.fc1_pre.0.weight"].view(d, d, 3)
    y = torch.einsum("nlcj,ocj->nlo", Z.reshape(B * T, L, d, 3), weight)
    y = F.leaky_relu(y + S["gating_second.fc1_pre.0.bias"], 0.01)
    y = y + S["gating_second.pos_embed.emb.weight"][:L] * d ** -0.5
    y = y + _x_attention(S, y, "gating_second.attn", config["gate_heads"])
    logits = _linear(S, y, "gating_second.fc1_post").view(B, T, L, 3).permute(0, 1, 3, 2)
    per_frame = _linear(S, _linear(S, logits, "gating_second.patch_agg.0").relu(),
                        "gating_second.patch_agg.2").squeeze(-1).permute(0, 2, 1)
    per_clip = _linear(S, F.leaky_relu(_linear(S, per_frame, "gating_second.fc2.0"), 0.01),
                       "gating_second.fc2.2").squeeze(-1)
    g = per_clip.softmax(dim=-1)
    final = g[:, [0]] * canonical + g[:, [1]] * appearance + g[:, [2]] * pose
    out = _linear(S, final, "fc")
    return (out - S["bn.running_mean"]) / torch.sqrt(S["bn.running_var"] + 1e-5) \
        * S["bn.weight"] + S["bn.bias"]


def _randomized_tiny(seed, **overrides):
    """Tiny HAMoBE with every tensor random (the zero-initialised tables too)."""
    torch.manual_seed(seed)
    model = create("hamobe", "tiny", **overrides)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in hamobe.checkpoint_state_dict(model).items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif tensor.dim() >= 2 and not name.endswith(("w1", "w2", "pos_embed")):
                tensor.copy_(torch.randn(tensor.shape, generator=generator)
                             * tensor[0].numel() ** -0.5)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.5
                             + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
    return model


def test_forward_equals_the_literal_reference_in_float64():
    model = _randomized_tiny(1).double()
    config = model.reid_config
    frames = torch.randn(2, config["frames"], 3, config["image_size"], config["image_size"],
                         generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        ours = model(frames)
        reference = literal_hamobe(hamobe.checkpoint_state_dict(model), config, frames)
    assert ours.dtype == torch.float64 and ours.shape == (2, config["embedding_dim"])
    spread = (reference[1] - reference[0]).abs().max()
    assert spread > 0.1  # the embedding depends on the clip, not only on biases
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("grid, width", [(4, 6), (16, 3)])
def test_temporal_cross_attention_exact_form(grid, width):
    """The canvas form equals the official [P, P, C] gather, also at the official 16 x 16 grid."""
    generator = torch.Generator().manual_seed(grid)
    module = hamobe.TemporalCrossAttention(grid, width).double()
    with torch.no_grad():
        module.w1.copy_(torch.randn(module.w1.shape, generator=generator, dtype=torch.float64))
        module.w2.copy_(torch.randn(module.w2.shape, generator=generator, dtype=torch.float64))
    shape = (2, 3, grid * grid + 1, 2, 5)
    q = torch.randn(shape, generator=generator, dtype=torch.float64) * 3
    k = torch.randn(shape, generator=generator, dtype=torch.float64) * 3
    with torch.no_grad():
        ours = module(q, k)
    reference = literal_temporal_cross_attention(q, k, module.w1, module.w2, grid)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    assert module.canvas_index.shape == (grid * grid * (2 * grid - 1) ** 2,)


def test_first_moe_routes_expert_major_logits_through_moe_combine():
    model = _randomized_tiny(3)
    moe = model.moe_first
    E, d = model.reid_config["experts"], model.reid_config["expert_dim"]
    x = torch.randn(2, 4, 50, model.reid_config["width"],
                    generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        z = moe(x)
        experts = torch.stack([expert(x) for expert in moe.experts], dim=-1)
        gates = moe.gating(x).view(2, 4, 50, E, 3).softmax(dim=3)
        reference = torch.einsum("btlcm,btlmj->btlcj", experts, gates)
    torch.testing.assert_close(z, reference, rtol=1e-5, atol=1e-6)
    # Logit m * 3 + j routes expert m to branch j: make logit (m=5, j=1) dominate everywhere.
    with torch.no_grad():
        moe.gating.fc_post.weight.zero_()
        moe.gating.fc_post.bias.zero_()
        moe.gating.fc_post.bias[5 * 3 + 1] = 60.0
        z = moe(x)
    torch.testing.assert_close(z[..., 1], moe.experts[5](x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z[..., 0], experts.mean(dim=-1), rtol=1e-5, atol=1e-5)
    assert d == z.shape[-2]


def test_forward_calls_the_moe_combine_custom_op(monkeypatch):
    calls = []
    original = torch.ops.reid.moe_combine

    class Recorder:
        def __call__(self, experts, gate_logits, softmax):
            calls.append((tuple(experts.shape), tuple(gate_logits.shape), softmax))
            return original(experts, gate_logits, softmax)

    monkeypatch.setattr(torch.ops.reid, "moe_combine", Recorder())
    model = create("hamobe", "tiny")
    with torch.no_grad():
        model(torch.randn(2, 4, 3, 56, 56))
    assert calls == [((2, 4, 50, 32, 8), (2, 4, 50, 8, 3), True)]


def test_tiny_forward_is_deterministic_and_per_sample():
    model = _randomized_tiny(5)
    frames = torch.randn(3, 4, 3, 56, 56, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        first, second = model(frames), model(frames)
        alone = model(frames[1:2])
    assert first.shape == (3, 128) and first.dtype == torch.float32
    assert torch.equal(first, second)
    torch.testing.assert_close(alone, first[1:2], rtol=1e-5, atol=1e-5)
    assert (first[0] - first[2]).abs().max() > 1e-2


def test_float16_backbone_stays_close_to_float32():
    model = _randomized_tiny(7)
    frames = torch.randn(2, 4, 3, 56, 56, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        full = model(frames)
        hamobe.set_backbone_dtype(model, "float16")
        half = model(frames)
    assert model.backbone.blocks[0].attn.q_proj.weight.dtype == torch.float16
    assert model.backbone.ln_pre.weight.dtype == torch.float32
    assert model.reid_config["backbone_dtype"] == "float16" and half.dtype == torch.float32
    assert not torch.equal(full, half)
    assert F.cosine_similarity(full, half).min() > 0.999


def test_forward_rejects_frames_of_the_wrong_shape():
    model = create("hamobe", "tiny")
    with pytest.raises(ValueError, match=re.escape("expects frames [B, 4, 3, 56, 56]")):
        model(torch.zeros(2, 8, 3, 56, 56))
    with pytest.raises(ValueError, match="resized to 56x56"):
        model(torch.zeros(2, 4, 3, 64, 64))


def test_export_keeps_the_batch_dynamic():
    model = _randomized_tiny(9)
    batch = torch.export.Dim("batch", min=1, max=64)
    example = torch.randn(2, 4, 3, 56, 56, generator=torch.Generator().manual_seed(10))
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert "reid.moe_combine.default" in targets
    frames = torch.randn(5, 4, 3, 56, 56, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(frames), model(frames), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Config inference and validation
# ------------------------------------------------------------------------------------------------
def test_config_from_state_dict():
    official = {**hamobe.PRESETS["official"]}
    assert hamobe.config_from_state_dict(_meta_model().state_dict()) == official
    inferred = hamobe.config_from_state_dict(_meta_model(frames=16).state_dict())
    assert inferred == {**official, "frames": 16}
    tiny = create("hamobe", "tiny")
    assert hamobe.config_from_state_dict(tiny.state_dict()) == hamobe.PRESETS["tiny"]
    head_only = {k: v for k, v in tiny.state_dict().items() if not k.startswith("backbone.")}
    assert hamobe.config_from_state_dict(head_only) == {**hamobe.PRESETS["tiny"],
                                                        "backbone_mode": "freeze"}
    assert hamobe.matches(head_only) and not hamobe.matches({"base.Cam": torch.zeros(1)})
    broken = dict(head_only, **{"decoder.cross_attention.0.w1": torch.zeros(170, 64)})
    with pytest.raises(ValueError, match="not a \\(2g-1\\)\\^2 relative table"):
        hamobe.config_from_state_dict(broken)
    with pytest.raises(ValueError, match="not a HAMoBE state_dict"):
        hamobe.config_from_state_dict({"fc.weight": torch.zeros(2, 2)})


@pytest.mark.parametrize("overrides, message", [
    ({"image_size": 60}, "multiple of patch_size"),
    ({"heads": 5}, "divisible by heads"),
    ({"tapped_layers": 6}, "exceeds the backbone's 5 layers"),
    ({"frames": 1}, "frames must be >= 2"),
    ({"backbone_dtype": "int8"}, "backbone_dtype must be one of"),
    ({"backbone_mode": "train"}, "backbone_mode must be one of"),
    ({"width": 0}, "width must be a positive int"),
])
def test_invalid_configs_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        create("hamobe", "tiny", **overrides)


def test_relative_canvas_index_places_each_key_once():
    grid = 5
    side = 2 * grid - 1
    index = hamobe.relative_canvas_index(grid).view(grid * grid, side * side)
    for query in range(grid * grid):
        keys = index[query] - query * (grid * grid + 1)
        real = keys[keys < grid * grid]
        assert sorted(real.tolist()) == list(range(grid * grid))  # every key exactly once
        for slot in range(side * side):
            key = int(keys[slot])
            if key < grid * grid:
                rows = query // grid - key // grid + grid - 1
                cols = query % grid - key % grid + grid - 1
                assert rows * side + cols == slot
    assert math.isclose(index.numel(), grid ** 2 * side ** 2)


# ------------------------------------------------------------------------------------------------
# GPU (run on the GPU machine: python -m pytest -m gpu tests/models/test_hamobe.py)
# ------------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_cuda_forward_matches_cpu(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    model = _randomized_tiny(12)
    frames = torch.randn(3, 4, 3, 56, 56, generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        cpu = model(frames)
        gpu = model.cuda()(frames.cuda()).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_official_preset_on_cuda(monkeypatch):
    """ViT-L/14 with random weights on the GPU: the exact cross attention equals the official
    gather at full width, and the fp16 backbone (official default) stays close to fp32."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    generator = torch.Generator(device="cuda").manual_seed(14)
    with torch.device("cuda"):
        model = create("hamobe", "official", backbone_dtype="float32")
        cross = model.decoder.cross_attention[0]
        with torch.no_grad():
            for table in (cross.w1, cross.w2):
                table.copy_(torch.randn(table.shape, generator=generator) * 0.5)
        q = torch.randn(2, 8, 257, 16, 64, generator=generator)
        k = torch.randn(2, 8, 257, 16, 64, generator=generator)
        with torch.no_grad():
            torch.testing.assert_close(
                cross(q, k), literal_temporal_cross_attention(q, k, cross.w1, cross.w2, 16),
                rtol=1e-4, atol=1e-4)
            frames = torch.randn(2, 8, 3, 224, 224, generator=generator)
            full = model(frames)
            half = hamobe.set_backbone_dtype(model, "float16")(frames)
    assert F.cosine_similarity(full, half).min() > 0.9995
