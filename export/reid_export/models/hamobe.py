"""HAMoBE (ICCV 2025) as the official code computes it at inference (MODELS.md section 1).

The module tree mirrors the official ``ResNet503D`` (models/vid_resnet.py of GeoGebra2/hamobe):
``state_dict()`` keys, order and shapes equal the official ones for the same configuration
(126 keys at T=8 in the official ``freeze_fp16`` mode, where the CLIP backbone is not part of
the state_dict), so official checkpoints load strictly and unchanged. Training-only parts
(losses, id/clothes classifiers, the unused ``Gating`` class, the broken two-input path) are not
built.

    model = build(**PRESETS["tiny"])                     # random weights, eval mode
    embedding = model(frames)                            # [B, T, 3, H, W] -> [B, D]

``frames`` are already normalised with the CLIP mean/std (the ONNX export wrapper does that in
the graph). T and the resolution are fixed by the weights; B is free (the forward has no
Python branch on B, so ``torch.export`` keeps it dynamic).

Backbone: the CLIP ViT in the official layout (q/k/v projections as separate Linear layers,
patch embedding as a Linear over (C, kh, kw) patches), so that the official ``finetune`` mode's
``backbone.*`` names are this module's names and the per-head q/k of the last blocks are taps.
Precision as the official ``freeze_fp16`` mode: Linear weights, ``cls_token`` and ``pos_embed``
in ``backbone_dtype``, LayerNorm weights and arithmetic in fp32 with the result cast back, the
input cast to ``backbone_dtype`` and the taps converted to fp32. Everything after the backbone
runs in fp32. In ``backbone_mode="freeze"`` (the official default) the backbone is registered
(it moves with ``.to()`` and exports as weights) but hidden from ``state_dict()`` and filled from
itself on ``load_state_dict``, which is what the official code's ``self.backbone = [backbone]``
achieves; ``"finetune"`` makes ``backbone.*`` ordinary, trainable state.
"""
from __future__ import annotations

import functools
import math
import warnings
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

import reid_export.ops  # noqa: F401  (registers torch.ops.reid.moe_combine)

ARCH = "hamobe"

PRESETS = {
    "official": {
        "frames": 8, "image_size": 224, "patch_size": 14, "width": 1024, "layers": 24,
        "heads": 16, "tapped_layers": 4, "expert_dim": 512, "experts": 8, "gate_heads": 8,
        "gate_head_dim": 64, "pose_qkv_dim": 768, "pose_heads": 12, "token_pool_dim": 128,
        "embedding_dim": 2048, "backbone_mode": "freeze", "backbone_dtype": "float16",
    },
    "tiny": {
        "frames": 4, "image_size": 56, "patch_size": 8, "width": 64, "layers": 5,
        "heads": 4, "tapped_layers": 4, "expert_dim": 32, "experts": 8, "gate_heads": 2,
        "gate_head_dim": 16, "pose_qkv_dim": 48, "pose_heads": 3, "token_pool_dim": 16,
        "embedding_dim": 128, "backbone_mode": "finetune", "backbone_dtype": "float32",
    },
}

BACKBONE_PREFIX = "backbone."
BACKBONE_MODES = ("freeze", "finetune")
BACKBONE_DTYPES = {"float16": torch.float16, "float32": torch.float32}
# Fixed by the official code rather than by a constructor argument.
BRANCHES = 3  # second-level experts: canonical (long-term), appearance (short-term), pose
FRAME_POOL_DIM = 4  # gating_second.fc2: Linear(T, 4) -> LeakyReLU -> Linear(4, 1)
MLP_RATIO = 4
POSE_MLP_DROPOUT = 0.5  # inert at eval; kept so the tiny preset trains like the official
LAYERNORM_EPS = 1e-5
LEAKY_SLOPE = 0.01
QUICK_GELU_ALPHA = 1.702


# ------------------------------------------------------------------------------------------------
# Building blocks (official models/vision_transformer.py)
# ------------------------------------------------------------------------------------------------
def _at_least_fp32(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


class LayerNormFp32(nn.LayerNorm):
    """LayerNorm computed in fp32 (fp64 for fp64 input), result cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _at_least_fp32(x.dtype)
        return F.layer_norm(x.to(dtype), self.normalized_shape, self.weight.to(dtype),
                            self.bias.to(dtype), self.eps).to(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(QUICK_GELU_ALPHA * x)


def _transformer_mlp(dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(OrderedDict([
        ("fc1", nn.Linear(dim, MLP_RATIO * dim)),
        ("act", QuickGELU()),
        ("dropout", nn.Dropout(dropout)),
        ("fc2", nn.Linear(MLP_RATIO * dim, dim)),
    ]))


class ProjectedAttention(nn.Module):
    """Multi-head attention with biased q/k/v/out projections (official ``Attention``):
    softmax((q / sqrt(dh)) k^T) v. Computed by ``scaled_dot_product_attention``: identical math;
    with fp16 activations the fused kernels keep the logits and softmax in fp32 where the
    official einsum rounds them to fp16 (a difference within fp16 tolerance, measured by
    tools/parity_hamobe.py)."""

    def __init__(self, in_dim: int, qkv_dim: int, heads: int):
        super().__init__()
        self.q_proj = nn.Linear(in_dim, qkv_dim)
        self.k_proj = nn.Linear(in_dim, qkv_dim)
        self.v_proj = nn.Linear(in_dim, qkv_dim)
        self.out_proj = nn.Linear(qkv_dim, in_dim)
        self.heads = heads

    def forward(self, query: torch.Tensor, memory: torch.Tensor):
        """query [N, Lq, C], memory [N, Lk, C] -> (out [N, Lq, C], q [N, Lq, H, dh],
        k [N, Lk, H, dh]); q and k are the per-head projections before scaling."""
        q = self.q_proj(query).unflatten(-1, (self.heads, -1))
        k = self.k_proj(memory).unflatten(-1, (self.heads, -1))
        v = self.v_proj(memory).unflatten(-1, (self.heads, -1))
        mixed = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                               v.transpose(1, 2))
        return self.out_proj(mixed.transpose(1, 2).flatten(-2)), q, k


class ViTBlock(nn.Module):
    """Pre-norm CLIP block (official ``TransformerEncoderLayer``)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = ProjectedAttention(width, width, heads)
        self.mlp = _transformer_mlp(width, 0.0)
        self.norm1 = LayerNormFp32(width, eps=LAYERNORM_EPS)
        self.norm2 = LayerNormFp32(width, eps=LAYERNORM_EPS)

    def forward(self, x: torch.Tensor):
        """x [N, L, C] -> (out [N, L, C], q [N, L, H, dh], k [N, L, H, dh])."""
        normed = self.norm1(x)
        attended, q, k = self.attn(normed, normed)
        x = x + attended
        x = x + self.mlp(self.norm2(x))
        return x, q, k


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> ``proj`` Linear over the (C, kh, kw)-ordered patch vector,
    computed as the equivalent strided convolution."""

    def __init__(self, patch_size: int, width: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(3 * patch_size * patch_size, width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, H, W] -> tokens [N, (H/p)*(W/p), C], row-major over the grid."""
        p = self.patch_size
        kernel = self.proj.weight.view(-1, 3, p, p)
        return F.conv2d(images, kernel, self.proj.bias, stride=p).flatten(2).transpose(1, 2)


class ClipVisionTransformer(nn.Module):
    """CLIP ViT with ln_pre and no ln_post/proj (official ``VisionTransformer2D``)."""

    def __init__(self, image_size: int, patch_size: int, width: int, layers: int, heads: int):
        super().__init__()
        tokens = (image_size // patch_size) ** 2 + 1
        self.patch_embed = PatchEmbed(patch_size, width)
        self.cls_token = nn.Parameter(torch.zeros(width))
        self.pos_embed = nn.Parameter(torch.zeros(tokens, width))
        self.blocks = nn.ModuleList(ViTBlock(width, heads) for _ in range(layers))
        self.ln_pre = LayerNormFp32(width, eps=LAYERNORM_EPS)

    def cast_(self, dtype: torch.dtype) -> ClipVisionTransformer:
        """Official ``model_to_fp16`` for any dtype: Linear layers, cls_token and pos_embed in
        ``dtype``; LayerNorms stay fp32."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                module.to(dtype)
        self.cls_token.data = self.cls_token.data.to(dtype)
        self.pos_embed.data = self.pos_embed.data.to(dtype)
        return self

    def forward(self, images: torch.Tensor, taps: int):
        """images [N, 3, H, W] -> the last ``taps`` blocks as (out [N, L, C],
        q [N, L, H, dh], k [N, L, H, dh]) in fp32 (computed in the Linear weights' dtype;
        fp64 stays fp64)."""
        x = self.patch_embed(images.to(self.patch_embed.proj.weight.dtype))
        cls = self.cls_token.view(1, 1, -1).expand(x.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.pos_embed)
        tapped = []
        first_tap = len(self.blocks) - taps
        for index, block in enumerate(self.blocks):
            x, q, k = block(x)
            if index >= first_tap:
                dtype = _at_least_fp32(x.dtype)
                tapped.append((x.to(dtype), q.to(dtype), k.to(dtype)))
        return tapped


# ------------------------------------------------------------------------------------------------
# EVL temporal decoder
# ------------------------------------------------------------------------------------------------
@functools.cache
def relative_canvas_index(grid: int) -> torch.Tensor:
    """Constant gather index of the exact TemporalCrossAttention (MODELS.md 1.9).

    For a query patch p and a relative slot r of the (2g-1)^2 table, the key patch k with
    ``rel(p, k) = r`` (rel = (p_row - k_row + g - 1) * (2g - 1) + p_col - k_col + g - 1) is
    unique when it exists. Indexing a [g^2, g^2 + 1] attention map (one zero column appended)
    flattened to 1-D at ``index[p * (2g-1)^2 + r] = p * (g^2 + 1) + k`` (k = g^2, the zero
    column, where no key lands on r) yields the canvas C[p, r] = A[p, k], so that
    ``sum_k A[p, k] w[rel(p, k)] = (C @ w)[p]`` exactly, without the [g^2, g^2, C] gather.
    Returns int64 [g^2 * (2g-1)^2] on the CPU (cached: treat as read-only).
    """
    side = 2 * grid - 1
    patches = grid * grid
    query = torch.arange(patches, device="cpu").view(-1, 1)
    slot = torch.arange(side * side, device="cpu").view(1, -1)
    key_row = query // grid - (slot // side - (grid - 1))
    key_col = query % grid - (slot % side - (grid - 1))
    inside = (key_row >= 0) & (key_row < grid) & (key_col >= 0) & (key_col < grid)
    key = torch.where(inside, key_row * grid + key_col, torch.full_like(key_row, patches))
    return (query * (patches + 1) + key).flatten()


class TemporalCrossAttention(nn.Module):
    """EVL temporal cross attention between neighbouring frames with relative-position tables
    ``w1`` (queries of frame t, keys of frame t-1) and ``w2`` (keys of frame t+1)."""

    def __init__(self, grid: int, width: int):
        super().__init__()
        slots = (2 * grid - 1) ** 2
        self.grid = grid
        self.w1 = nn.Parameter(torch.zeros(slots, width))
        self.w2 = nn.Parameter(torch.zeros(slots, width))
        self.register_buffer("canvas_index", relative_canvas_index(grid).clone(),
                             persistent=False)

    def _half(self, q: torch.Tensor, k: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """q, k [B, T', L, H, dh] (CLS first) -> [B, T', g^2, C]: head-averaged softmax
        attention of each query patch over the key patches, mixed through ``table``."""
        q, k = q[:, :, 1:].transpose(2, 3), k[:, :, 1:].transpose(2, 3)  # [B, T', H, P, dh]
        logits = (q / math.sqrt(q.shape[-1])) @ k.transpose(-1, -2)
        attention = logits.softmax(dim=-1).mean(dim=2)  # [B, T', P, P]
        patches = attention.shape[-1]
        canvas = F.pad(attention, (0, 1)).flatten(-2).index_select(-1, self.canvas_index)
        return canvas.unflatten(-1, (patches, -1)) @ table

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """q, k [B, T, L, H, dh] -> [B, T, L, C]; the CLS row and the missing neighbour of the
        first/last frame stay zero."""
        forward_half = self._half(q[:, 1:], k[:, :-1], self.w1)
        backward_half = self._half(q[:, :-1], k[:, 1:], self.w2)
        return (F.pad(forward_half, (0, 0, 1, 0, 1, 0))
                + F.pad(backward_half, (0, 0, 1, 0, 0, 1)))


class EVLDecoder(nn.Module):
    """Temporal conv + temporal position embedding + temporal cross attention on each tapped
    layer, then one Linear fusing the layers (official ``EVLDecoder``)."""

    def __init__(self, frames: int, grid: int, layers: int, width: int):
        super().__init__()
        self.decoder_layers = nn.Linear(width * layers, width)
        self.temporal_conv = nn.ModuleList(
            nn.Conv1d(width, width, kernel_size=3, stride=1, padding=1, groups=width)
            for _ in range(layers))
        self.temporal_pos_embed = nn.ParameterList(
            nn.Parameter(torch.zeros(frames, width)) for _ in range(layers))
        self.cross_attention = nn.ModuleList(
            TemporalCrossAttention(grid, width) for _ in range(layers))

    def forward(self, taps) -> torch.Tensor:
        """taps: per layer (out [B, T, L, C], q [B, T, L, H, dh], k [B, T, L, H, dh]) in fp32
        -> [B, T, L, C]."""
        fused = []
        for conv, pos_embed, cross, (out, q, k) in zip(
                self.temporal_conv, self.temporal_pos_embed, self.cross_attention, taps):
            frames, tokens, width = out.shape[1:]
            along_time = out.permute(0, 2, 3, 1).reshape(-1, width, frames)  # [B*L, C, T]
            conv_out = conv(along_time).unflatten(0, (-1, tokens)).permute(0, 3, 1, 2)
            features = out + conv_out
            features = features + pos_embed.view(1, frames, 1, width)
            features = features + cross(q, k)
            fused.append(features)
        return self.decoder_layers(torch.cat(fused, dim=-1))


# ------------------------------------------------------------------------------------------------
# Gatings and experts (official models/vid_resnet.py, x-transformers Attention)
# ------------------------------------------------------------------------------------------------
class AbsolutePositionalEmbedding(nn.Module):
    """x-transformers' learned positions, scaled by dim^-0.5 (no l2norm)."""

    def __init__(self, dim: int, max_seq_len: int):
        super().__init__()
        self.scale = dim ** -0.5
        self.emb = nn.Embedding(max_seq_len, dim)

    def forward(self, tokens: int) -> torch.Tensor:
        """-> [tokens, dim]"""
        return self.emb.weight[:tokens] * self.scale


class TokenSelfAttention(nn.Module):
    """x-transformers ``Attention`` as HAMoBE configures it: no norm, bias-free projections,
    logits (q k^T) * dh^-0.5, softmax in fp32 (fp64 for fp64 input), dropout 0."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.heads = heads
        self.scale = head_dim ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, L, dim] -> [N, L, dim]"""
        q, k, v = (proj(x).unflatten(-1, (self.heads, -1)).transpose(1, 2)
                   for proj in (self.to_q, self.to_k, self.to_v))
        logits = (q @ k.transpose(-1, -2)) * self.scale
        weights = logits.softmax(dim=-1, dtype=_at_least_fp32(logits.dtype)).to(logits.dtype)
        return self.to_out((weights @ v).transpose(1, 2).flatten(-2))


def _mix_tokens(y: torch.Tensor, pos_embed: AbsolutePositionalEmbedding,
                attn: TokenSelfAttention) -> torch.Tensor:
    """Both gatings: y + pos, then y + Attn(y). y [N, L, dim]."""
    y = y + pos_embed(y.shape[1])
    return y + attn(y)


def _two_layer(in_dim: int, hidden: int, out_dim: int, act: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), act, nn.Linear(hidden, out_dim))


class FirstLayerAdaptiveGating(nn.Module):
    """Per-token logits of the first-level mixture: [B, T, L, C] -> [B, T, L, E1 * 3]
    (flat index m * 3 + j, expert-major)."""

    def __init__(self, width: int, dim: int, tokens: int, experts: int, heads: int,
                 head_dim: int):
        super().__init__()
        self.fc_pre = nn.Sequential(nn.Linear(width, dim), nn.ReLU())
        self.fc_post = nn.Linear(dim, experts * BRANCHES)
        self.pos_embed = AbsolutePositionalEmbedding(dim, tokens)
        self.attn = TokenSelfAttention(dim, heads, head_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _mix_tokens(self.fc_pre(x.flatten(0, 1)), self.pos_embed, self.attn)
        return self.fc_post(y).unflatten(0, (-1, x.shape[1]))


class FirstMoE(nn.Module):
    """E1 token-wise experts mixed into 3 branch inputs by ``reid::MoECombine``."""

    def __init__(self, width: int, dim: int, tokens: int, experts: int, heads: int,
                 head_dim: int):
        super().__init__()
        self.experts = nn.ModuleList(_two_layer(width, dim, dim, nn.ReLU())
                                     for _ in range(experts))
        self.gating = FirstLayerAdaptiveGating(width, dim, tokens, experts, heads, head_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, L, C] -> Z [B, T, L, d, 3]: Z[..., c, j] = sum_m softmax_m(G[..., m, j])
        * f_m(x)[..., c]."""
        expert_features = torch.stack([expert(x) for expert in self.experts], dim=-1)
        gate_logits = self.gating(x).unflatten(-1, (len(self.experts), BRANCHES))
        return torch.ops.reid.moe_combine(expert_features, gate_logits, True)


def _token_pool(tokens: int, hidden: int) -> nn.Sequential:
    """``patch_agg``: an MLP over the token axis (CLS included) down to one value."""
    return _two_layer(tokens, hidden, 1, nn.ReLU())


class GeneralMoE(nn.Module):
    """Canonical / appearance branch: token MLP, then a learned pooling over tokens."""

    def __init__(self, dim: int, tokens: int, pool_dim: int):
        super().__init__()
        self.layer = _two_layer(dim, dim, dim, nn.ReLU())
        self.patch_agg = _token_pool(tokens, pool_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, L, d] -> [B, T, d]"""
        return self.patch_agg(self.layer(x).transpose(-1, -2)).squeeze(-1)


class PoseDecoderLayer(nn.Module):
    """One query attends to a token memory (official ``TransformerDecoderLayer``)."""

    def __init__(self, dim: int, qkv_dim: int, heads: int):
        super().__init__()
        self.attn = ProjectedAttention(dim, qkv_dim, heads)
        self.mlp = _transformer_mlp(dim, POSE_MLP_DROPOUT)
        self.norm1 = LayerNormFp32(dim, eps=LAYERNORM_EPS)
        self.norm2 = LayerNormFp32(dim, eps=LAYERNORM_EPS)
        self.norm3 = LayerNormFp32(dim, eps=LAYERNORM_EPS)

    def forward(self, query: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """query [N, Lq, d], memory [N, Lk, d] -> [N, Lq, d]"""
        memory = self.norm3(memory)
        query = query + self.attn(self.norm1(query), memory)[0]
        return query + self.mlp(self.norm2(query))


class PoseMoE(nn.Module):
    """Gait branch: token MLP, then a learned query decodes all T*L tokens."""

    def __init__(self, dim: int, qkv_dim: int, heads: int):
        super().__init__()
        self.layer = _two_layer(dim, dim, dim, nn.ReLU())
        self.pose_agg = PoseDecoderLayer(dim, qkv_dim, heads)
        self.cls_token = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, L, d] -> [B, d]"""
        memory = self.layer(x).flatten(1, 2)
        query = self.cls_token.view(1, 1, -1).expand(memory.shape[0], 1, -1)
        return self.pose_agg(query, memory)[:, 0]


class SecondLayerAdaptiveGating(nn.Module):
    """Per-clip weights of the 3 branches: Z [B, T, L, d, 3] -> softmax weights [B, 3]."""

    def __init__(self, dim: int, tokens: int, frames: int, pool_dim: int, heads: int,
                 head_dim: int):
        super().__init__()
        self.fc1_pre = nn.Sequential(nn.Linear(dim * BRANCHES, dim), nn.LeakyReLU(LEAKY_SLOPE))
        self.fc1_post = nn.Linear(dim, BRANCHES)
        self.patch_agg = _token_pool(tokens, pool_dim)
        self.fc2 = _two_layer(frames, FRAME_POOL_DIM, 1, nn.LeakyReLU(LEAKY_SLOPE))
        self.pos_embed = AbsolutePositionalEmbedding(dim, tokens)
        self.attn = TokenSelfAttention(dim, heads, head_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        frames = z.shape[1]
        # Channel index c * 3 + j (branches inner), the order fc1_pre.0.weight was trained on.
        y = self.fc1_pre(z.flatten(-2).flatten(0, 1))
        logits = self.fc1_post(_mix_tokens(y, self.pos_embed, self.attn))  # [B*T, L, 3]
        per_frame = self.patch_agg(logits.unflatten(0, (-1, frames)).transpose(-1, -2))
        per_clip = self.fc2(per_frame.squeeze(-1).transpose(1, 2)).squeeze(-1)  # [B, 3]
        return per_clip.softmax(dim=-1)


# ------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------
def _hide_frozen_backbone(module, state_dict, prefix, local_metadata):
    if module.backbone_frozen:
        for key in [k for k in state_dict if k.startswith(prefix + BACKBONE_PREFIX)]:
            del state_dict[key]


def _fill_frozen_backbone(module, state_dict, prefix, local_metadata, strict, missing_keys,
                          unexpected_keys, error_msgs):
    # A frozen backbone is not part of official checkpoints: keys the caller did not pass keep
    # the backbone's current weights (given keys do load, e.g. from our own checkpoints).
    if module.backbone_frozen:
        for key, value in module.backbone.state_dict().items():
            state_dict.setdefault(prefix + BACKBONE_PREFIX + key, value)


class HAMoBE(nn.Module):
    """HAMoBE inference model: ``forward(frames [B, T, 3, H, W]) -> [B, embedding_dim]``
    (post-BN clip embedding, not L2-normalised)."""

    def __init__(self, config: dict):
        super().__init__()
        self.reid_config = {"arch": ARCH, **config}
        grid = config["image_size"] // config["patch_size"]
        tokens = grid * grid + 1
        width, dim = config["width"], config["expert_dim"]
        self.frames = config["frames"]
        self.image_size = config["image_size"]
        self.tapped_layers = config["tapped_layers"]
        self.embedding_dim = config["embedding_dim"]
        self.backbone_frozen = config["backbone_mode"] == "freeze"

        # Registered first, as in the official finetune mode (backbone.* keys lead).
        self.backbone = ClipVisionTransformer(config["image_size"], config["patch_size"],
                                              width, config["layers"], config["heads"])
        self.decoder = EVLDecoder(self.frames, grid, self.tapped_layers, width)
        gate = (config["gate_heads"], config["gate_head_dim"])
        self.moe_first = FirstMoE(width, dim, tokens, config["experts"], *gate)
        self.moe_canonical = GeneralMoE(dim, tokens, config["token_pool_dim"])
        self.moe_appearance = GeneralMoE(dim, tokens, config["token_pool_dim"])
        self.moe_pose = PoseMoE(dim, config["pose_qkv_dim"], config["pose_heads"])
        self.gating_second = SecondLayerAdaptiveGating(dim, tokens, self.frames,
                                                       config["token_pool_dim"], *gate)
        self.fc = nn.Linear(dim, self.embedding_dim)
        self.bn = nn.BatchNorm1d(self.embedding_dim)

        self.register_state_dict_post_hook(_hide_frozen_backbone)
        self.register_load_state_dict_pre_hook(_fill_frozen_backbone)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames float32 [B, T, 3, H, W], CLIP-normalised -> embeddings float32 [B, D]."""
        expected = (self.frames, 3, self.image_size, self.image_size)
        if frames.dim() != 5 or tuple(frames.shape[1:]) != expected:
            raise ValueError(f"HAMoBE expects frames [B, {', '.join(map(str, expected))}] "
                             f"(T frames of 3 x H x W, fixed by the weights), got "
                             f"{list(frames.shape)}; sample clips of {self.frames} frames resized "
                             f"to {self.image_size}x{self.image_size}")
        taps = self.backbone(frames.flatten(0, 1), self.tapped_layers)
        taps = [tuple(t.unflatten(0, (-1, self.frames)) for t in tap) for tap in taps]
        z = self.moe_first(self.decoder(taps))  # [B, T, L, d, 3]
        canonical = self.moe_canonical(z[..., 0]).mean(dim=1)
        appearance = self.moe_appearance(z[..., 1]).mean(dim=1)
        pose = self.moe_pose(z[..., 2])
        weights = self.gating_second(z)
        fused = weights[:, 0:1] * canonical + weights[:, 1:2] * appearance \
            + weights[:, 2:3] * pose
        return self.bn(self.fc(fused))


# ------------------------------------------------------------------------------------------------
# The arch module interface (reid_export.models)
# ------------------------------------------------------------------------------------------------
def _validate_config(config: dict) -> None:
    known = set(PRESETS["official"])
    missing, unknown = known - set(config), set(config) - known
    if missing or unknown:
        raise ValueError(f"HAMoBE config: missing fields {sorted(missing)}, unknown fields "
                         f"{sorted(unknown)}; start from reid_export.models.hamobe.PRESETS")
    for field in known - {"backbone_mode", "backbone_dtype"}:
        value = config[field]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"HAMoBE config: {field} must be a positive int, got {value!r}")
    checks = [
        (config["image_size"] % config["patch_size"] == 0,
         f"image_size {config['image_size']} must be a multiple of patch_size "
         f"{config['patch_size']}"),
        (config["width"] % config["heads"] == 0,
         f"width {config['width']} must be divisible by heads {config['heads']}"),
        (config["pose_qkv_dim"] % config["pose_heads"] == 0,
         f"pose_qkv_dim {config['pose_qkv_dim']} must be divisible by pose_heads "
         f"{config['pose_heads']}"),
        (config["tapped_layers"] <= config["layers"],
         f"tapped_layers {config['tapped_layers']} exceeds the backbone's {config['layers']} "
         f"layers"),
        (config["frames"] >= 2, f"frames must be >= 2 (temporal cross attention pairs "
                                f"neighbouring frames), got {config['frames']}"),
        (config["backbone_mode"] in BACKBONE_MODES,
         f"backbone_mode must be one of {BACKBONE_MODES}, got {config['backbone_mode']!r}"),
        (config["backbone_dtype"] in BACKBONE_DTYPES,
         f"backbone_dtype must be one of {tuple(BACKBONE_DTYPES)}, got "
         f"{config['backbone_dtype']!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(f"HAMoBE config: {message}")


def _construct(config: dict) -> HAMoBE:
    """The module tree on the default device, backbone cast to ``backbone_dtype`` (and frozen
    in freeze mode), with unfilled parameters and valid constant buffers. Building on the meta
    device first means every tensor is filled once (by :func:`_init_weights` or by a loader),
    not by PyTorch's default init and then again."""
    device = torch.get_default_device()
    with torch.device("meta"):
        model = HAMoBE(config)
    model.backbone.cast_(BACKBONE_DTYPES[config["backbone_dtype"]])
    model.backbone.requires_grad_(not model.backbone_frozen)
    model.to_empty(device=device)
    for module in model.modules():
        if isinstance(module, TemporalCrossAttention):
            module.canvas_index = relative_canvas_index(module.grid).to(device, copy=True)
    return model


def _init_weights(model: HAMoBE) -> None:
    """Fill every parameter and buffer once: PyTorch's default initialisation, except where the
    official code initialises otherwise (attention and MLP Linears of the backbone and the pose
    decoder; cls/pos embeddings; w1/w2, temporal position embeddings and the pose cls_token
    are zero there, as here; bn.weight ~ N(1, 0.02)); the patch bias starts at zero, as every
    official model has it (CLIP's conv1 has no bias)."""
    zero_bias, tiny_bias = set(), set()
    for owner in list(model.backbone.blocks) + [model.moe_pose.pose_agg]:
        attn = owner.attn
        zero_bias.update((attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj))
        tiny_bias.update((owner.mlp.fc1, owner.mlp.fc2))
    for module in model.modules():
        if module in zero_bias or module in tiny_bias:
            nn.init.xavier_uniform_(module.weight)
            if module in zero_bias:
                nn.init.zeros_(module.bias)
            else:
                nn.init.normal_(module.bias, std=1e-6)
        elif hasattr(module, "reset_parameters"):
            module.reset_parameters()
    nn.init.normal_(model.backbone.cls_token, std=0.02)
    nn.init.normal_(model.backbone.pos_embed, std=0.02)
    nn.init.zeros_(model.backbone.patch_embed.proj.bias)  # as loaded from CLIP (bias-free conv1)
    for cross in model.decoder.cross_attention:
        nn.init.zeros_(cross.w1)
        nn.init.zeros_(cross.w2)
    for pos_embed in model.decoder.temporal_pos_embed:
        nn.init.zeros_(pos_embed)
    nn.init.zeros_(model.moe_pose.cls_token)
    nn.init.normal_(model.bn.weight, 1.0, 0.02)
    nn.init.zeros_(model.bn.bias)


def _checked_config(config: dict) -> dict:
    arch = config.pop("arch", ARCH)
    if arch != ARCH:
        raise ValueError(f"config is for arch {arch!r}, not {ARCH!r}")
    _validate_config(config)
    return config


def build(**config) -> HAMoBE:
    """HAMoBE with random weights (official initialisation), in eval mode.

    ``config``: the fields of a ``PRESETS`` entry (an ``arch`` field, as in
    ``model.reid_config``, is accepted when it is ``"hamobe"``). Works under
    ``torch.device("meta")`` too. The backbone is cast to ``backbone_dtype`` and, in
    ``backbone_mode="freeze"``, has ``requires_grad=False`` and stays out of ``state_dict()``.
    """
    model = _construct(_checked_config(config))
    _init_weights(model)
    return model.eval()


def build_empty(**config) -> HAMoBE:
    """:func:`build` with the parameters left unfilled, for a loader that then loads every
    tensor of :func:`checkpoint_state_dict` (skips seconds of random fill for ViT-L/14)."""
    return _construct(_checked_config(config)).eval()


# Config fields a checkpoint decides even when the caller names a preset (load_checkpoint).
CHECKPOINT_FIELDS = ("frames", "backbone_mode", "backbone_dtype")
# Keys only HAMoBE has (KeyRe-ID shares none of them).
_SIGNATURE_KEYS = ("decoder.temporal_pos_embed.0", "decoder.cross_attention.0.w1",
                   "moe_first.gating.fc_post.weight", "gating_second.fc2.0.weight",
                   "moe_pose.cls_token", "fc.weight", "bn.running_var")


def matches(state_dict) -> bool:
    """Whether ``state_dict`` (official ``ResNet503D`` keys, no ``module.`` prefix) is HAMoBE."""
    return all(key in state_dict for key in _SIGNATURE_KEYS)


def _count(keys, prefix: str, suffix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in keys
                if k.startswith(prefix) and k.endswith(suffix)})


def config_from_state_dict(state_dict) -> dict:
    """The ``build`` config implied by the tensors of a HAMoBE state_dict.

    From shapes: frames (``decoder.temporal_pos_embed.0`` rows), width, tapped_layers, the patch
    grid (the (2g-1)^2 relative tables), expert_dim, experts, pose_qkv_dim, token_pool_dim,
    embedding_dim and, when ``backbone.*`` keys are present, patch_size and layers (then
    ``backbone_mode="finetune"`` with an fp32 backbone, as the official finetune mode runs it;
    otherwise ``"freeze"``). From the closest preset (same width and expert_dim, else
    official): the head counts, which shapes do not determine (checked to divide their widths),
    ``backbone_dtype`` in freeze mode, and the backbone's patch size and depth when the
    checkpoint does not carry the backbone (the CLIP file is checked against them when it is
    loaded). Raises ValueError naming what is missing or inconsistent.
    """
    if not matches(state_dict):
        absent = [k for k in _SIGNATURE_KEYS if k not in state_dict]
        raise ValueError(f"not a HAMoBE state_dict: keys {absent} are missing (expected the "
                         f"keys of the official ResNet503D.state_dict(); strip any 'module.' "
                         f"prefix first)")
    shape = {k: tuple(v.shape) for k, v in state_dict.items()}
    frames, width = shape["decoder.temporal_pos_embed.0"]
    dim = shape["moe_first.experts.0.0.weight"][0]
    config = dict(next((p for p in PRESETS.values()
                        if p["width"] == width and p["expert_dim"] == dim), PRESETS["official"]))
    slots = shape["decoder.cross_attention.0.w1"][0]
    grid = (math.isqrt(slots) + 1) // 2
    if (2 * grid - 1) ** 2 != slots:
        raise ValueError(f"decoder.cross_attention.0.w1 has {slots} rows, not a (2g-1)^2 "
                         f"relative table of a g x g patch grid")
    keys = list(state_dict)
    config.update(
        frames=frames, width=width, expert_dim=dim,
        tapped_layers=_count(keys, "decoder.temporal_pos_embed.", ""),
        experts=_count(keys, "moe_first.experts.", ".0.weight"),
        pose_qkv_dim=shape["moe_pose.pose_agg.attn.q_proj.weight"][0],
        token_pool_dim=shape["moe_canonical.patch_agg.0.weight"][0],
        embedding_dim=shape["fc.weight"][0])
    patch_key = BACKBONE_PREFIX + "patch_embed.proj.weight"
    if patch_key in shape:
        config["patch_size"] = math.isqrt(shape[patch_key][1] // 3)
        config["layers"] = _count(keys, BACKBONE_PREFIX + "blocks.", ".norm1.weight")
        config.update(backbone_mode="finetune", backbone_dtype="float32")
    else:
        config["backbone_mode"] = "freeze"
    config["image_size"] = grid * config["patch_size"]
    gate_inner = shape["moe_first.gating.attn.to_q.weight"][0]
    if gate_inner != config["gate_heads"] * config["gate_head_dim"]:
        head_dim = config["gate_head_dim"]
        if gate_inner % head_dim:
            raise ValueError(f"cannot infer the gating heads: attention width {gate_inner} is "
                             f"not a multiple of head_dim {head_dim}; pass gate_heads= and "
                             f"gate_head_dim= explicitly")
        config["gate_heads"] = gate_inner // head_dim
    for field, heads_field in (("width", "heads"), ("pose_qkv_dim", "pose_heads")):
        if config[field] % config[heads_field]:
            raise ValueError(f"cannot infer {heads_field} for {field} {config[field]} (the "
                             f"preset's {config[heads_field]} does not divide it); pass "
                             f"{heads_field}= explicitly")
    return config


def checkpoint_state_dict(model: HAMoBE) -> dict:
    """Everything a self-contained checkpoint holds: ``model.state_dict()`` plus, in freeze
    mode, the backbone under ``backbone.*`` (the official finetune names)."""
    state = model.state_dict()
    if model.backbone_frozen:
        state = {**{BACKBONE_PREFIX + k: v for k, v in model.backbone.state_dict().items()},
                 **state}
    return state


def set_backbone_dtype(model: HAMoBE, dtype: str) -> HAMoBE:
    """Run the backbone in ``dtype`` ("float16" as the official code, "float32" e.g. for a CPU
    export); updates ``model.reid_config``. Returns ``model``."""
    if dtype not in BACKBONE_DTYPES:
        raise ValueError(f"backbone dtype must be one of {tuple(BACKBONE_DTYPES)}, got {dtype!r}")
    model.backbone.cast_(BACKBONE_DTYPES[dtype])
    model.reid_config["backbone_dtype"] = dtype
    return model


def backbone_keys(model: HAMoBE) -> list:
    """The ``backbone.*`` keys of :func:`checkpoint_state_dict` (official finetune names)."""
    return [BACKBONE_PREFIX + k for k in model.backbone.state_dict()]


# ------------------------------------------------------------------------------------------------
# OpenAI CLIP files <-> backbone
# ------------------------------------------------------------------------------------------------
# Per block: OpenAI / open_clip name -> official HAMoBE name (q/k/v come from attn.in_proj_*).
_CLIP_BLOCK_RENAMES = {"attn.out_proj": "attn.out_proj", "mlp.c_fc": "mlp.fc1",
                       "mlp.c_proj": "mlp.fc2", "ln_1": "norm1", "ln_2": "norm2"}
_CLIP_TOP_RENAMES = {"class_embedding": "cls_token", "positional_embedding": "pos_embed",
                     "ln_pre.weight": "ln_pre.weight", "ln_pre.bias": "ln_pre.bias"}
_QKV = ("q", "k", "v")


def _open_clip_visual_tower(config: dict, output_dim: int):
    """open_clip's ``VisionTransformer`` for ``config`` on the meta device (OpenAI CLIP:
    QuickGELU, LayerNorm eps 1e-5)."""
    from open_clip.model import VisionTransformer
    from open_clip.transformer import LayerNorm
    from open_clip.transformer import QuickGELU as OpenClipQuickGELU

    with torch.device("meta"):
        return VisionTransformer(
            image_size=config["image_size"], patch_size=config["patch_size"],
            width=config["width"], layers=config["layers"], heads=config["heads"],
            mlp_ratio=MLP_RATIO, output_dim=output_dim, act_layer=OpenClipQuickGELU,
            norm_layer=LayerNorm)


def clip_backbone_state(clip_state: dict, config: dict) -> dict:
    """Backbone weights (``backbone.*`` official names, fp32) from an OpenAI CLIP state_dict.

    ``clip_state``: the tensors of an OpenAI CLIP file (``visual.*`` keys; a visual tower saved
    alone, without the prefix, works too). The visual tower is loaded strictly into open_clip's
    ``VisionTransformer`` built for ``config`` (a file of another architecture fails with
    open_clip's key/shape report), then converted as the official ``load_weights_clip`` does:
    ``in_proj`` split into q/k/v, ``conv1`` flattened to the patch Linear with a zero bias,
    ``ln_1/ln_2 -> norm1/norm2``, ``c_fc/c_proj -> fc1/fc2``; ``ln_post`` and ``proj`` unused.
    """
    visual = {k[len("visual."):]: v for k, v in clip_state.items() if k.startswith("visual.")}
    visual = visual or dict(clip_state)
    if "conv1.weight" not in visual or "proj" not in visual:
        raise ValueError("not an OpenAI CLIP file: it has no visual.conv1.weight / visual.proj; "
                         "pass the OpenAI CLIP ViT file (ViT-L-14.pt for the official preset)")
    found = {
        "width": visual["conv1.weight"].shape[0],
        "patch_size": visual["conv1.weight"].shape[-1],
        "grid": math.isqrt(visual["positional_embedding"].shape[0] - 1),
        "layers": _count(visual, "transformer.resblocks.", ".attn.in_proj_weight"),
    }
    wanted = {"width": config["width"], "patch_size": config["patch_size"],
              "grid": config["image_size"] // config["patch_size"], "layers": config["layers"]}
    if found != wanted:
        wrong = ", ".join(f"{k} {found[k]} (model: {wanted[k]})" for k in wanted
                          if found[k] != wanted[k])
        raise ValueError(f"the CLIP file does not fit this HAMoBE model: {wrong}; the official "
                         f"preset needs OpenAI CLIP ViT-L/14 at 224 px (ViT-L-14.pt)")
    tower = _open_clip_visual_tower(config, visual["proj"].shape[1])
    tower.load_state_dict({k: v.float() for k, v in visual.items()}, strict=True, assign=True)
    src = tower.state_dict()

    conv = src["conv1.weight"]
    out = {ours: src[theirs] for theirs, ours in _CLIP_TOP_RENAMES.items()}
    out["patch_embed.proj.weight"] = conv.flatten(1)
    out["patch_embed.proj.bias"] = torch.zeros(conv.shape[0], dtype=conv.dtype)
    for i in range(config["layers"]):
        block, dst = f"transformer.resblocks.{i}.", f"blocks.{i}."
        for leaf in ("weight", "bias"):
            for name, chunk in zip(_QKV, src[f"{block}attn.in_proj_{leaf}"].chunk(3)):
                out[f"{dst}attn.{name}_proj.{leaf}"] = chunk
            for theirs, ours in _CLIP_BLOCK_RENAMES.items():
                out[f"{dst}{ours}.{leaf}"] = src[f"{block}{theirs}.{leaf}"]
    return {BACKBONE_PREFIX + k: v.contiguous() for k, v in out.items()}


def save_openai_clip(path, backbone_state: dict, config: dict, *, torchscript: bool = True,
                     embed_dim: int = 32) -> None:
    """Write a backbone as OpenAI distributes CLIP, so the same weights can be handed to the
    official code (whose loader runs ``torch.jit.load(path).visual``) and to ours.

    ``backbone_state``: ``backbone.*`` tensors (official names, e.g. from
    :func:`checkpoint_state_dict`); the patch bias must be zero (CLIP's conv1 has none).
    The file holds a full open_clip ``CLIP`` with OpenAI key names: this visual tower, a random
    ``proj`` to ``embed_dim`` and ``ln_post``, and a one-layer random text tower.
    ``torchscript=True`` writes a traced archive, as OpenAI's ``ViT-L-14.pt``; ``False`` a
    plain ``torch.save`` state_dict.
    """
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    state = {k[len(BACKBONE_PREFIX):]: v.detach().float() for k, v in backbone_state.items()
             if k.startswith(BACKBONE_PREFIX)}
    if state["patch_embed.proj.bias"].abs().max() > 0:
        raise ValueError("the backbone has a non-zero patch_embed.proj.bias, which CLIP's conv1 "
                         "(bias-free) cannot hold")
    width, patch = config["width"], config["patch_size"]
    clip = CLIP(embed_dim, quick_gelu=True,
                vision_cfg=CLIPVisionCfg(layers=config["layers"], width=width,
                                         head_width=width // config["heads"], patch_size=patch,
                                         image_size=config["image_size"]),
                text_cfg=CLIPTextCfg(context_length=8, vocab_size=64, width=64, heads=1,
                                     layers=1))
    visual = {theirs: state[ours] for theirs, ours in _CLIP_TOP_RENAMES.items()}
    visual["conv1.weight"] = state["patch_embed.proj.weight"].view(width, 3, patch, patch)
    for i in range(config["layers"]):
        block, src = f"transformer.resblocks.{i}.", f"blocks.{i}."
        for leaf in ("weight", "bias"):
            visual[f"{block}attn.in_proj_{leaf}"] = torch.cat(
                [state[f"{src}attn.{name}_proj.{leaf}"] for name in _QKV])
            for theirs, ours in _CLIP_BLOCK_RENAMES.items():
                visual[f"{block}{theirs}.{leaf}"] = state[f"{src}{ours}.{leaf}"]
    missing, _ = clip.visual.load_state_dict(visual, strict=False)
    if set(missing) - {"ln_post.weight", "ln_post.bias", "proj"}:
        raise ValueError(f"backbone state lacks {sorted(missing)}")
    clip.eval()
    if torchscript:
        images = torch.zeros(1, 3, config["image_size"], config["image_size"])
        text = torch.zeros(1, clip.context_length, dtype=torch.int64)
        with warnings.catch_warnings():
            # TorchScript is the format being written; its deprecation and tracer notes are
            # expected. check_trace off: MultiheadAttention's fast path makes re-traces differ
            # textually.
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace_module(clip, {"forward": (images, text),
                                                   "encode_image": (images,)},
                                            check_trace=False)
        traced.save(str(path))
    else:
        torch.save(clip.state_dict(), str(path))


__all__ = [
    "ARCH",
    "CHECKPOINT_FIELDS",
    "PRESETS",
    "HAMoBE",
    "backbone_keys",
    "build",
    "build_empty",
    "checkpoint_state_dict",
    "clip_backbone_state",
    "config_from_state_dict",
    "matches",
    "relative_canvas_index",
    "save_openai_clip",
    "set_backbone_dtype",
]
