"""KeyRe-ID: official state_dict layout, and inference checked against a literal float64
re-statement of MODELS.md 2.2 (loops over clips, frames, rows and parts; einsum attention;
explicit LayerNorm / BatchNorm / GELU formulas)."""
import math

import pytest
import torch
import torch.nn.functional as F
from reid_export.models import create, keyreid
from reid_export.ops import keypoint_patch_pool

TINY = keyreid.PRESETS["tiny"]


def _randomized(preset="tiny", seed=0, dtype=torch.float64, **overrides):
    model = create("keyreid", preset, **overrides)
    keyreid.randomize_(model, torch.Generator().manual_seed(seed))
    return model.to(dtype)


def _clip_inputs(model, batch, rng, dtype=torch.float64):
    img_h, img_w = model.image_hw
    frames = torch.from_numpy(rng.uniform(-1, 1, (batch, model.frames_per_clip, 3, img_h, img_w)))
    # Weights of both signs: only the sign of a patch weight reaches the output (MODELS.md 2.7).
    weights = torch.from_numpy(rng.normal(0.0, 1.0, (batch, model.num_patches, 6)))
    camera = torch.from_numpy(rng.integers(0, model.base.Cam.shape[0], batch))
    return frames.to(dtype), weights.to(dtype), camera


# ------------------------------------------------------------------------------------------
# The literal reference (float64)
# ------------------------------------------------------------------------------------------

def _layer_norm(norm, x):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def _batch_norm(bn, x):
    return (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias


def _linear(layer, x):
    out = torch.einsum("...i,oi->...o", x, layer.weight)
    return out if layer.bias is None else out + layer.bias


def _literal_block(block, x):
    """The official vit_ID.Block arithmetic: x [N, L, C] -> [N, L, C]."""
    n, length, dim = x.shape
    heads = block.attn.num_heads
    head_dim = dim // heads
    qkv = _linear(block.attn.qkv, _layer_norm(block.norm1, x))
    qkv = qkv.reshape(n, length, 3, heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    attention = (torch.einsum("nihd,njhd->nhij", q, k) / math.sqrt(head_dim)).softmax(-1)
    mixed = torch.einsum("nhij,njhd->nihd", attention, v).reshape(n, length, dim)
    x = x + _linear(block.attn.proj, mixed)
    hidden = _linear(block.mlp.fc1, _layer_norm(block.norm2, x))
    hidden = 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2.0)))
    return x + _linear(block.mlp.fc2, hidden)


def _tcss_rows(tokens, clip, frames_per_clip):
    """Row r of clip ``clip`` after the raw reshape: the T consecutive (frame, token)
    embeddings with flat index T*r .. T*r+T-1, flat = frame * (1+K) + token."""
    length = tokens.shape[1]
    rows = []
    for r in range(length):
        parts = []
        for j in range(frames_per_clip):
            flat = frames_per_clip * r + j
            parts.append(tokens[clip * frames_per_clip + flat // length, flat % length])
        rows.append(torch.cat(parts))
    return rows


def _tcss_source_row(out_index, num_patches, shift=5):
    """Original row feeding output row ``out_index``: S = rows shift..K, then rows 1..shift-1;
    out[2i] = S[i], out[2i+1] = S[K/2 + i]."""
    i, odd = divmod(out_index, 2)
    s = i + odd * (num_patches // 2)
    return s + shift if s <= num_patches - shift else s - (num_patches - shift)


def _reference_forward(model, frames, weights, camera):
    """MODELS.md 2.2 written out step by step (eval mode)."""
    base = model.base
    batch, frames_per_clip = frames.shape[:2]
    patch = model.patch_size
    dim = base.cls_token.shape[-1]
    # 1. patch embedding (unfold + matmul), CLS, pos_embed + 3.0 * Cam[camid], blocks 0..10
    sequences = []
    for b in range(batch):
        for t in range(frames_per_clip):
            cols = F.unfold(frames[b, t][None], patch, stride=patch)[0].T  # [K, 3*p*p]
            proj = base.patch_embed.proj
            patches = cols @ proj.weight.reshape(dim, -1).T + proj.bias
            seq = torch.cat([base.cls_token[0], patches])
            sequences.append(seq + base.pos_embed[0] + 3.0 * base.Cam[int(camera[b]), 0])
    tokens = torch.stack(sequences)
    for block in base.blocks[:-1]:
        tokens = _literal_block(block, tokens)
    # 2. global branch: b1, CLS, temporal attention, bottleneck
    cls = _layer_norm(model.b1[1], _literal_block(model.b1[0], tokens))[:, 0]
    conv_w = model.attention_conv.weight.reshape(model.attention_conv.out_channels, dim)
    hidden = torch.relu(cls @ conv_w.T + model.attention_conv.bias)
    hidden = hidden.reshape(batch, frames_per_clip, -1)
    tconv_w, tconv_b = model.attention_tconv.weight[0], model.attention_tconv.bias[0]
    global_feats = []
    for b in range(batch):
        scores = []
        for t in range(frames_per_clip):
            s = tconv_b.clone()
            for k in range(3):
                if 0 <= t + k - 1 < frames_per_clip:
                    s = s + (tconv_w[:, k] * hidden[b, t + k - 1]).sum()
            scores.append(torch.relu(s))
        alpha = torch.softmax(torch.stack(scores), 0)
        pooled = sum(alpha[t] * cls[b * frames_per_clip + t] for t in range(frames_per_clip))
        global_feats.append(_batch_norm(model.bottleneck, pooled))
    # 4.-6. TCSS, weighted parts through block1 + LayerNorm(eps 1e-5), bottlenecks, / 6
    num_patches = tokens.shape[1] - 1
    outputs = []
    for b in range(batch):
        rows = _tcss_rows(tokens, b, frames_per_clip)
        shuffled = torch.stack([rows[_tcss_source_row(i, num_patches)] for i in range(num_patches)])
        feats = [global_feats[b]]
        for p in range(6):
            seq = torch.cat([rows[0][None], shuffled * weights[b, :, p:p + 1]])[None]
            part = _layer_norm(model.b2[1], _literal_block(model.block1, seq))[0, 0]
            feats.append(_batch_norm(getattr(model, f"bottleneck_{p + 1}"), part) / 6)
        outputs.append(torch.cat(feats))
    return torch.stack(outputs)


# ------------------------------------------------------------------------------------------
# state_dict layout
# ------------------------------------------------------------------------------------------

def _expected_official_layout(classes=625, cameras=6):
    """MODELS.md 2.1, in registration order."""
    def block(prefix, dim):
        return [(f"{prefix}norm1.weight", [dim]), (f"{prefix}norm1.bias", [dim]),
                (f"{prefix}attn.qkv.weight", [3 * dim, dim]), (f"{prefix}attn.qkv.bias", [3 * dim]),
                (f"{prefix}attn.proj.weight", [dim, dim]), (f"{prefix}attn.proj.bias", [dim]),
                (f"{prefix}norm2.weight", [dim]), (f"{prefix}norm2.bias", [dim]),
                (f"{prefix}mlp.fc1.weight", [4 * dim, dim]), (f"{prefix}mlp.fc1.bias", [4 * dim]),
                (f"{prefix}mlp.fc2.weight", [dim, 4 * dim]), (f"{prefix}mlp.fc2.bias", [dim])]

    def bn(prefix, dim):
        return [(f"{prefix}.weight", [dim]), (f"{prefix}.bias", [dim]),
                (f"{prefix}.running_mean", [dim]), (f"{prefix}.running_var", [dim]),
                (f"{prefix}.num_batches_tracked", [])]

    layout = [("base.cls_token", [1, 1, 768]), ("base.pos_embed", [1, 129, 768]),
              ("base.Cam", [cameras, 1, 768]), ("base.patch_embed.proj.weight", [768, 3, 16, 16]),
              ("base.patch_embed.proj.bias", [768])]
    for i in range(12):
        layout += block(f"base.blocks.{i}.", 768)
    layout += [("base.norm.weight", [768]), ("base.norm.bias", [768]),
               ("base.fc.weight", [1000, 768]), ("base.fc.bias", [1000])]
    layout += block("b1.0.", 768) + [("b1.1.weight", [768]), ("b1.1.bias", [768])]
    layout += bn("bottleneck", 768) + [("classifier.weight", [classes, 768])]
    layout += block("block1.", 3072) + block("b2.0.", 3072)
    layout += [("b2.1.weight", [3072]), ("b2.1.bias", [3072])]
    for p in range(1, 7):
        layout += bn(f"bottleneck_{p}", 3072)
    layout += [(f"classifier_{p}.weight", [classes, 3072]) for p in range(1, 7)]
    layout += [("attention_conv.weight", [256, 768, 1, 1]), ("attention_conv.bias", [256]),
               ("attention_tconv.weight", [1, 256, 3]), ("attention_tconv.bias", [1])]
    return layout


@pytest.fixture(scope="module")
def official_meta():
    with torch.device("meta"):
        return create("keyreid", "official")


def test_official_state_dict_layout_equals_models_md(official_meta):
    ours = [(k, list(v.shape)) for k, v in official_meta.state_dict().items()]
    assert ours == _expected_official_layout()
    # MODELS.md 2.0: 219,176,169 fp32 values with the shared block stored once.
    values = sum(p.numel() for p in official_meta.parameters())
    values += sum(b.numel() for b in official_meta.buffers() if b.dtype.is_floating_point)
    assert values == 219_176_169


def test_official_layout_follows_cameras_and_classes():
    with torch.device("meta"):
        model = create("keyreid", "official", cameras=2, classes=150)
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert ours == _expected_official_layout(classes=150, cameras=2)


def test_shared_block_keys_hold_the_same_tensors():
    model = _randomized()
    state = model.state_dict()
    shared = [k for k in state if k.startswith("block1.")]
    assert len(shared) == 12
    for key in shared:
        twin = "b2.0." + key[len("block1."):]
        assert state[key].data_ptr() == state[twin].data_ptr()
        assert torch.equal(state[key], state[twin])
    assert model.b2[0] is model.block1
    eps = {name: m.eps for name, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)}
    assert eps.pop("b2.1") == 1e-5  # nn.LayerNorm's default, unlike every other norm
    # 4 backbone blocks x 2, base.norm, b1 block x 2, b1.1, the shared block x 2
    assert set(eps.values()) == {1e-6} and len(eps) == 2 * 4 + 1 + 2 + 1 + 2


# ------------------------------------------------------------------------------------------
# TCSS
# ------------------------------------------------------------------------------------------

def test_tcss_at_official_size_equals_models_md_formula(rng):
    batch, frames_per_clip, width = 2, 4, 3
    tokens = torch.from_numpy(rng.normal(size=(batch * frames_per_clip, 129, width)))
    token, patches = keyreid.temporal_clip_shift_shuffle(tokens, frames_per_clip)
    assert token.shape == (batch, 1, frames_per_clip * width)
    assert patches.shape == (batch, 128, frames_per_clip * width)
    for b in range(batch):
        rows = _tcss_rows(tokens, b, frames_per_clip)
        assert torch.equal(token[b, 0], rows[0])
        for i in range(64):
            assert torch.equal(patches[b, 2 * i], rows[i + 5])
            assert torch.equal(patches[b, 2 * i + 1], rows[i + 69] if i < 60 else rows[i - 59])


def test_tcss_at_tiny_size_is_the_same_shift_and_interleave(rng):
    frames_per_clip, length = 4, 33
    tokens = torch.from_numpy(rng.normal(size=(3 * frames_per_clip, length, 5)))
    _, patches = keyreid.temporal_clip_shift_shuffle(tokens, frames_per_clip)
    for b in range(3):
        rows = _tcss_rows(tokens, b, frames_per_clip)
        expected = torch.stack([rows[_tcss_source_row(i, length - 1)] for i in range(length - 1)])
        assert torch.equal(patches[b], expected)
    # The source rows are a permutation of 1..K (every patch row used exactly once).
    assert sorted(_tcss_source_row(i, 32) for i in range(32)) == list(range(1, 33))


# ------------------------------------------------------------------------------------------
# Inference
# ------------------------------------------------------------------------------------------

def test_forward_part_weights_equals_literal_reference(rng):
    model = _randomized(seed=int(rng.integers(1 << 30)))
    frames, weights, camera = _clip_inputs(model, 3, rng)
    with torch.no_grad():
        ours = model.forward_part_weights(frames, weights, camera)
        reference = _reference_forward(model, frames, weights, camera)
    assert ours.shape == (3, 48 + 6 * 4 * 48)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-10)


def test_first_token_path_equals_row_zero_of_the_full_block(rng):
    model = _randomized(seed=int(rng.integers(1 << 30)))
    x = torch.from_numpy(rng.normal(size=(5, 33, model.block1.norm1.weight.shape[0])))
    with torch.no_grad():
        full = model.block1(x)[:, :1]
        first = model.block1.forward_first_token(x)
    torch.testing.assert_close(first, full, rtol=0, atol=1e-11)
    torch.testing.assert_close(full, _literal_block(model.block1, x)[:, :1], rtol=0, atol=1e-11)


def test_batched_parts_equal_six_separate_passes(rng):
    model = _randomized(seed=int(rng.integers(1 << 30)))
    frames, weights, camera = _clip_inputs(model, 2, rng)
    with torch.no_grad():
        tokens = model.base(frames, camera)
        batched = model._part_features(tokens, weights)
        token, patches = keyreid.temporal_clip_shift_shuffle(tokens, model.frames_per_clip)
        separate = []
        for p, bn in enumerate(model.part_bottlenecks):
            sequence = torch.cat([token, patches * weights[:, :, p:p + 1]], dim=1)
            separate.append(bn(model.b2(sequence)[:, 0]) / 6)
    torch.testing.assert_close(batched, torch.cat(separate, dim=1), rtol=0, atol=1e-11)


def test_each_part_reads_its_own_weights_and_only_their_signs(rng):
    model = _randomized(seed=int(rng.integers(1 << 30)))
    frames, weights, camera = _clip_inputs(model, 2, rng)
    # Magnitudes well above sqrt(LayerNorm eps), where the sign-only property holds.
    weights = torch.sign(weights) * torch.from_numpy(rng.uniform(0.2, 1.5, weights.shape))
    local = model.embedding_dim - 48
    part_slice = [slice(48 + p * local // 6, 48 + (p + 1) * local // 6) for p in range(6)]
    flipped = weights.clone()
    flipped[:, :7, 2] *= -1  # part 2 (left arm): seven patch weights change sign
    scaled = weights * torch.from_numpy(rng.uniform(2.0, 5.0, weights.shape))
    with torch.no_grad():
        base_out = model.forward_part_weights(frames, weights, camera)
        flipped_out = model.forward_part_weights(frames, flipped, camera)
        scaled_out = model.forward_part_weights(frames, scaled, camera)
    changed = [not torch.allclose(base_out[:, s], flipped_out[:, s], atol=1e-6) for s in part_slice]
    assert changed == [False, False, True, False, False, False]
    torch.testing.assert_close(base_out[:, :48], flipped_out[:, :48], rtol=0, atol=0)
    # LN(w * x) = sign(w) LN(x) up to the LayerNorm eps: positive rescaling barely matters.
    torch.testing.assert_close(scaled_out, base_out, rtol=0, atol=1e-4)


def test_camera_embedding_is_added_to_every_token_of_every_frame(rng):
    model = _randomized(seed=int(rng.integers(1 << 30)))
    frames, weights, _ = _clip_inputs(model, 2, rng)
    camera = torch.tensor([4, 1])
    with torch.no_grad():
        ours = model.forward_part_weights(frames, weights, camera)
        # Same clips through camera 0 with pos_embed carrying 3 * (Cam[c] - Cam[0]) instead.
        expected = []
        for b, cam in enumerate(camera.tolist()):
            shifted = _randomized(seed=0)
            shifted.load_state_dict(model.state_dict())
            shifted.base.pos_embed += 3.0 * (model.base.Cam[cam] - model.base.Cam[0])
            expected.append(shifted.forward_part_weights(frames[b:b + 1], weights[b:b + 1],
                                                         torch.tensor([0])))
        other = model.forward_part_weights(frames, weights, torch.tensor([2, 2]))
    torch.testing.assert_close(ours, torch.cat(expected), rtol=0, atol=1e-10)
    assert (ours - other).abs().max() > 1e-3


def test_unseen_camera_row_is_the_mean_of_the_trained_rows(rng):
    model = _randomized(seed=int(rng.integers(1 << 30)))
    trained = model.base.Cam.detach().clone()
    frames, weights, _ = _clip_inputs(model, 2, rng)
    assert keyreid.add_unseen_camera_row(model) is model
    assert model.base.Cam.shape == (7, 1, 48)
    assert torch.equal(model.base.Cam[:6], trained)
    torch.testing.assert_close(model.base.Cam[6, 0], trained[:, 0].sum(0) / 6, rtol=0, atol=1e-15)
    assert model.reid_config == {**TINY, "arch": "keyreid", "cameras": 7, "unseen_camera_index": 6}
    with torch.no_grad():
        unseen = model.forward_part_weights(frames, weights, torch.tensor([6, 6]))
        twin = _randomized(seed=0)
        twin.load_state_dict({k: v for k, v in model.state_dict().items() if k != "base.Cam"},
                             strict=False)
        twin.base.Cam[0] = trained.mean(0)
        expected = twin.forward_part_weights(frames, weights, torch.tensor([0, 0]))
    torch.testing.assert_close(unseen, expected, rtol=0, atol=1e-10)
    # The config it records rebuilds a model that loads the extended state_dict strictly.
    rebuilt = keyreid.build(**model.reid_config)
    rebuilt.load_state_dict(model.state_dict())
    with pytest.raises(ValueError, match="already has an unseen-camera row"):
        keyreid.add_unseen_camera_row(model)


def _keypoint_inputs(model, batch, rng):
    frames_per_clip = model.frames_per_clip
    crop_hw = rng.integers(40, 160, (batch, frames_per_clip, 2)).astype("int32")
    keypoints = rng.uniform(0, 1, (batch, frames_per_clip, 17, 3))
    keypoints[..., 0] *= crop_hw[..., None, 1]
    keypoints[..., 1] *= crop_hw[..., None, 0]
    frame_valid = rng.uniform(size=(batch, frames_per_clip)) < 0.8
    frame_valid[:, 0] = True
    return (torch.from_numpy(keypoints).float(), torch.from_numpy(crop_hw),
            torch.from_numpy(frame_valid))


def test_tiny_forward_shapes_batch_independence_and_determinism(rng):
    model = create("keyreid", "tiny")
    frames, _, camera = _clip_inputs(model, 3, rng, dtype=torch.float32)
    keypoints, crop_hw, frame_valid = _keypoint_inputs(model, 3, rng)
    with torch.no_grad():
        out = model(frames, keypoints, crop_hw, frame_valid, camera)
        again = model(frames, keypoints, crop_hw, frame_valid, camera)
        single = torch.cat([model(frames[i:i + 1], keypoints[i:i + 1], crop_hw[i:i + 1],
                                  frame_valid[i:i + 1], camera[i:i + 1]) for i in range(3)])
        weights = keypoint_patch_pool(
            keypoints, crop_hw, frame_valid, out_hw=(64, 32), patch=8, vis_thresh=0.1,
            mode="paper")
        via_weights = model.forward_part_weights(frames, weights.transpose(1, 2), camera)
    assert out.shape == (3, 1200) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert torch.equal(out, again)
    torch.testing.assert_close(single, out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, via_weights, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["max", "constant"])
def test_heatmap_mode_reaches_the_op(rng, mode):
    model = create("keyreid", "tiny", heatmap_mode=mode, vis_thresh=0.3)
    frames, _, camera = _clip_inputs(model, 2, rng, dtype=torch.float32)
    keypoints, crop_hw, frame_valid = _keypoint_inputs(model, 2, rng)
    weights = keypoint_patch_pool(
        keypoints, crop_hw, frame_valid, out_hw=(64, 32), patch=8, vis_thresh=0.3, mode=mode)
    with torch.no_grad():
        out = model(frames, keypoints, crop_hw, frame_valid, camera)
        expected = model.forward_part_weights(frames, weights.transpose(1, 2), camera)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_dynamic_batch_torch_export(rng):
    model = create("keyreid", "tiny")
    keyreid.randomize_(model, torch.Generator().manual_seed(3))
    frames, _, camera = _clip_inputs(model, 2, rng, dtype=torch.float32)
    keypoints, crop_hw, frame_valid = _keypoint_inputs(model, 2, rng)
    batch = torch.export.Dim("batch", min=1, max=64)
    shapes = tuple({0: batch} for _ in range(5))
    exported = torch.export.export(model, (frames, keypoints, crop_hw, frame_valid, camera),
                                   dynamic_shapes=shapes)
    frames3, _, camera3 = _clip_inputs(model, 3, rng, dtype=torch.float32)
    inputs3 = (frames3, *_keypoint_inputs(model, 3, rng), camera3)
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(*inputs3), model(*inputs3),
                                   rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------
# Recognition, configuration, errors
# ------------------------------------------------------------------------------------------

def test_config_from_state_dict_recovers_the_build_config(official_meta):
    assert keyreid.config_from_state_dict(official_meta.state_dict()) == keyreid.PRESETS["official"]
    tiny = keyreid.build(**TINY).state_dict()
    assert keyreid.config_from_state_dict(tiny) == TINY
    with torch.device("meta"):
        other = create("keyreid", "official", cameras=2, classes=150, depth=6, img_size=[128, 64])
    config = keyreid.config_from_state_dict(other.state_dict())
    assert config == {**keyreid.PRESETS["official"], "cameras": 2, "classes": 150, "depth": 6,
                      "img_size": [128, 64]}


def test_matches_recognises_keyreid_only(official_meta):
    state = official_meta.state_dict()
    assert keyreid.matches(state)
    deduplicated = {k: v for k, v in state.items() if not k.startswith("b2.0.")}
    assert keyreid.matches(deduplicated)
    assert keyreid.config_from_state_dict(deduplicated) == keyreid.PRESETS["official"]
    assert not keyreid.matches({k: v for k, v in state.items() if not k.startswith("base.")})
    hamobe_like = {"decoder.temporal_pos_embed.0": torch.zeros(8, 1024),
                   "fc.weight": torch.zeros(2, 2)}
    assert not keyreid.matches(hamobe_like)
    with pytest.raises(ValueError, match="not a KeyRe-ID state_dict"):
        keyreid.config_from_state_dict(hamobe_like)


@pytest.mark.parametrize("override, message", [
    ({"img_size": [60, 32]}, "multiple of patch_size"),
    ({"img_size": [72, 24]}, "even number of patches"),
    ({"num_heads": 5}, "not divisible by num_heads"),
    ({"local_heads": 5}, "not divisible by local_heads"),
    ({"heatmap_mode": "head"}, "heatmap_mode must be one of"),
    ({"unseen_camera_index": 2}, "unseen_camera_index"),
])
def test_build_rejects_inconsistent_configs(override, message):
    with pytest.raises(ValueError, match=message):
        create("keyreid", "tiny", **override)


def test_bad_inputs_get_clear_errors(rng):
    model = create("keyreid", "tiny")
    frames, weights, camera = _clip_inputs(model, 2, rng, dtype=torch.float32)
    keypoints, crop_hw, frame_valid = _keypoint_inputs(model, 2, rng)
    with pytest.raises(ValueError, match=r"frames must be \[B, 4, 3, 64, 32\]"):
        model.forward_part_weights(frames[:, :3], weights, camera)
    with pytest.raises(TypeError, match="floating point"):
        model.forward_part_weights((frames * 100).to(torch.uint8), weights, camera)
    with pytest.raises(TypeError, match="frames are torch.float64 but the model is torch.float32"):
        model.forward_part_weights(frames.double(), weights, camera)
    with pytest.raises(ValueError, match=r"camera indices must lie in 0\.\.5"):
        model.forward_part_weights(frames, weights, torch.tensor([0, 6]))
    with pytest.raises(ValueError, match="one camera index per clip"):
        model.forward_part_weights(frames, weights, torch.tensor([0]))
    with pytest.raises(TypeError, match="camera must be an integer tensor"):
        model.forward_part_weights(frames, weights, camera.float())
    with pytest.raises(ValueError, match=r"part_weights must be \[B, 32, 6\]"):
        model.forward_part_weights(frames, weights.transpose(1, 2), camera)
    with pytest.raises(ValueError, match=r"keypoints must be \[B, 4, 17, 3\]"):
        model(frames, keypoints[:, :, :16], crop_hw, frame_valid, camera)
    with pytest.raises(ValueError, match="frame_valid has 1 clips"):
        model(frames, keypoints, crop_hw, frame_valid[:1], camera)


def test_official_preset_accepts_another_datasets_cameras_and_classes(tmp_path):
    # iLIDS-VID: 2 cameras, 150 identities; the preset fixes the architecture, not the dataset.
    from reid_export import models
    model = models.create("keyreid", preset="tiny", cameras=2, classes=150)
    path = tmp_path / "ilids.pth"
    torch.save(model.state_dict(), path)
    loaded = models.load_checkpoint(path, preset="tiny")
    assert (loaded.reid_config["cameras"], loaded.reid_config["classes"]) == (2, 150)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
