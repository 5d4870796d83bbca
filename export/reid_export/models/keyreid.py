"""KeyRe-ID (``JinSeong0115/KeyRe-ID``) as an official-compatible inference model.

The module tree reproduces the official ``KeyRe_ID`` state_dict key for key and shape
(MODELS.md 2.1): the TransReID backbone under ``base.`` (all 12 blocks, ``norm`` and the
ImageNet ``fc``, although inference runs blocks 0..depth-2 only), the global branch ``b1``, the
shared local block registered twice (``block1`` and ``b2.0`` are the same module, so both key sets
appear with identical tensors), the bottlenecks, the training-only classifiers (kept as
parameters so strict loading of an official checkpoint works) and the temporal attention convs.

Inference follows MODELS.md 2.2 exactly, with two reformulations that change nothing but speed:

* the six parts go through the shared 3072-d block as one batch of ``6 * B`` sequences;
* only row 0 (the token) of ``b1`` and ``b2`` is used, so those blocks compute the attention
  query, the projection and the MLP for row 0 alone (keys and values still come from all rows).

Checkpoints: the official ``train.py`` saves ``model.state_dict()``, whose keys start with
``base.``, ``b1.`` ... :func:`matches` and :func:`config_from_state_dict` accept exactly those
names (any ``module.`` prefix must be stripped by the caller). A state_dict that carries only one
of the two names of the shared block (``block1.*`` or ``b2.0.*``, as a deduplicating writer such
as safetensors leaves it) is recognised too; filling in the other name is the loader's job.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from reid_export.contracts import COCO17_JOINTS
from reid_export.ops.keypoint_patch_pool import KEYREID_PARTS, keypoint_patch_pool_op
from reid_export.ops.keypoint_patch_pool import MODES as HEATMAP_MODES

ARCH = "keyreid"
# Fixed by the official code (KeyRe_ID.shift_num, KeyRe_ID.part), not by a constructor argument.
TCSS_SHIFT = 5
NUM_PARTS = len(KEYREID_PARTS)  # one per joint group
# LayerNorm eps: 1e-6 inside every ViT block and after b1; nn.LayerNorm's default after b2.
VIT_LAYERNORM_EPS = 1e-6
LOCAL_HEAD_LAYERNORM_EPS = 1e-5

PRESETS = {
    "official": {
        "img_size": [256, 128], "patch_size": 16, "embed_dim": 768, "depth": 12,
        "num_heads": 12, "mlp_ratio": 4.0, "frames": 4, "local_heads": 12,
        "attention_dim": 256, "cameras": 6, "classes": 625, "backbone_classes": 1000,
        "cam_lambda": 3.0, "heatmap_mode": "paper", "vis_thresh": 0.1,
        "unseen_camera_index": None,
    },
    "tiny": {
        "img_size": [64, 32], "patch_size": 8, "embed_dim": 48, "depth": 4,
        "num_heads": 4, "mlp_ratio": 4.0, "frames": 4, "local_heads": 4,
        "attention_dim": 16, "cameras": 6, "classes": 16, "backbone_classes": 10,
        "cam_lambda": 3.0, "heatmap_mode": "paper", "vis_thresh": 0.1,
        "unseen_camera_index": None,
    },
}


# ------------------------------------------------------------------------------------------
# Transformer pieces (key names as in the official vit_ID.py)
# ------------------------------------------------------------------------------------------

class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact erf GELU, as the official Block
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` projection (q, k, v in that order)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, first_token_only: bool = False):
        """x [N, L, C] -> [N, L, C], or [N, 1, C] (row 0 only) when ``first_token_only``."""
        dim = x.shape[-1]
        if first_token_only:
            # Row 0 needs its own query but every row's key and value.
            q = F.linear(x[:, :1], self.qkv.weight[:dim], self.qkv.bias[:dim])
            k, v = F.linear(x, self.qkv.weight[dim:], self.qkv.bias[dim:]).chunk(2, dim=-1)
        else:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) * self.scale
        out = (scores.softmax(dim=-1) @ v).transpose(1, 2).flatten(2)
        return self.proj(out)


class Block(nn.Module):
    """Pre-norm ViT block (LayerNorm eps 1e-6, exact GELU)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=VIT_LAYERNORM_EPS)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=VIT_LAYERNORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        """x [N, L, C] -> [N, L, C]."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))

    def forward_first_token(self, x):
        """Row 0 of ``forward(x)``: x [N, L, C] -> [N, 1, C]. The other rows' outputs are never
        read by KeyRe-ID's heads, so their queries, projections and MLPs are skipped."""
        first = x[:, :1] + self.attn(self.norm1(x), first_token_only=True)
        return first + self.mlp(self.norm2(first))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images):
        """images [N, 3, H, W] -> [N, (H/p)*(W/p), D], patches in row-major order."""
        return self.proj(images).flatten(2).transpose(1, 2)


class TransReIDBackbone(nn.Module):
    """The official ``base`` (TransReID): patch embedding, CLS, position and camera embeddings,
    ``depth`` blocks of which the last one is never run (``b1`` holds its trained copy)."""

    def __init__(self, num_patches, patch_size, embed_dim, depth, num_heads, mlp_ratio,
                 cameras, backbone_classes, cam_lambda):
        super().__init__()
        self.cam_lambda = cam_lambda
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.Cam = nn.Parameter(torch.zeros(cameras, 1, embed_dim))
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=VIT_LAYERNORM_EPS)  # unused at inference
        self.fc = nn.Linear(embed_dim, backbone_classes)  # ImageNet head, unused

    def forward(self, frames, camera):
        """frames [B, T, 3, H, W], camera [B] -> tokens [B*T, 1+K, D] after blocks 0..depth-2.

        Every token of every frame of clip b gets ``pos_embed + cam_lambda * Cam[camera[b]]``.
        """
        frames_per_clip = frames.shape[1]
        x = self.patch_embed(frames.flatten(0, 1))
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        camera_embedding = self.Cam.index_select(0, camera).unsqueeze(1)  # [B, 1, 1, D]
        x = x.unflatten(0, (-1, frames_per_clip))
        x = x + self.pos_embed + self.cam_lambda * camera_embedding
        x = x.flatten(0, 1)
        for block in self.blocks[:-1]:
            x = block(x)
        return x


# ------------------------------------------------------------------------------------------
# The fixed token permutation
# ------------------------------------------------------------------------------------------

def temporal_clip_shift_shuffle(tokens, frames_per_clip: int, shift: int = TCSS_SHIFT):
    """KeyRe-ID's TCSS (MODELS.md 2.2 step 4), a fixed permutation built from views and slices.

    tokens [B*T, 1+K, D] (clip-major, frame-minor) -> (token [B, 1, T*D], patches [B, K, T*D]).

    The features are reshaped *raw* to [B, 1+K, T*D], so row r concatenates the T consecutive
    (frame, token) embeddings with flat index T*r .. T*r+T-1. Row 0 is the token; rows
    ``shift..K`` followed by rows ``1..shift-1`` form S, and the output interleaves the two
    halves of S: out[2i] = S[i], out[2i+1] = S[K/2+i]. K must be even.
    """
    rows = tokens.reshape(-1, tokens.shape[1], frames_per_clip * tokens.shape[2])
    num_patches = rows.shape[1] - 1
    shifted = torch.cat([rows[:, shift:], rows[:, 1:shift]], dim=1)
    half = num_patches // 2
    interleaved = torch.stack([shifted[:, :half], shifted[:, half:]], dim=2).flatten(1, 2)
    return rows[:, :1], interleaved


# ------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------

class KeyReID(nn.Module):
    """KeyRe-ID inference model; ``state_dict()`` equals the official ``KeyRe_ID``'s.

    ``forward(frames, keypoints, crop_hw, frame_valid, camera) -> [B, D_out]`` with
    D_out = D + 6 * T * D (19200 for the official configuration).
    """

    def __init__(self, config: dict):
        super().__init__()
        self.reid_config = {"arch": ARCH, **config, "img_size": list(config["img_size"])}
        img_h, img_w = config["img_size"]
        patch, dim, frames = config["patch_size"], config["embed_dim"], config["frames"]
        self.frames_per_clip = frames
        self.image_hw = (img_h, img_w)
        self.patch_size = patch
        self.num_patches = (img_h // patch) * (img_w // patch)
        local_dim = frames * dim
        self.embedding_dim = dim + NUM_PARTS * local_dim

        self.base = TransReIDBackbone(self.num_patches, patch, dim, config["depth"],
                                      config["num_heads"], config["mlp_ratio"],
                                      config["cameras"], config["backbone_classes"],
                                      config["cam_lambda"])
        # Global branch: a copy of the last backbone block and norm (separately trained).
        self.b1 = nn.Sequential(Block(dim, config["num_heads"], config["mlp_ratio"]),
                                nn.LayerNorm(dim, eps=VIT_LAYERNORM_EPS))
        self.bottleneck = nn.BatchNorm1d(dim)
        self.classifier = nn.Linear(dim, config["classes"], bias=False)  # training only
        # Local branch: one block registered under two names, as the official code does.
        self.block1 = Block(local_dim, config["local_heads"], config["mlp_ratio"])
        self.b2 = nn.Sequential(self.block1,
                                nn.LayerNorm(local_dim, eps=LOCAL_HEAD_LAYERNORM_EPS))
        for part in range(1, NUM_PARTS + 1):
            self.add_module(f"bottleneck_{part}", nn.BatchNorm1d(local_dim))
        for part in range(1, NUM_PARTS + 1):  # training only
            self.add_module(f"classifier_{part}",
                            nn.Linear(local_dim, config["classes"], bias=False))
        self.attention_conv = nn.Conv2d(dim, config["attention_dim"], kernel_size=1)
        self.attention_tconv = nn.Conv1d(config["attention_dim"], 1, kernel_size=3, padding=1)

    @property
    def part_bottlenecks(self):
        """``bottleneck_1 .. bottleneck_6`` in part order."""
        return [getattr(self, f"bottleneck_{p}") for p in range(1, NUM_PARTS + 1)]

    # -- public entry points ---------------------------------------------------------------

    def forward(self, frames, keypoints, crop_hw, frame_valid, camera):
        """Clip embeddings from frames and COCO-17 keypoints.

        frames [B, T, 3, H, W] float32, already normalised ((x/255 - 0.5) / 0.5);
        keypoints [B, T, 17, 3] float32 (x, y, confidence in pixels of the original crop);
        crop_hw [B, T, 2] int32 (original crop height, width); frame_valid [B, T] bool
        (False for loop-padding frames, whose heatmaps count as 0); camera [B] int64
        (0-based, one per clip) -> [B, D + 6*T*D] float32 (19200 for the official preset).
        """
        self._check_keypoint_inputs(frames, keypoints, crop_hw, frame_valid)
        weights = keypoint_patch_pool_op(keypoints, crop_hw, frame_valid,
                                         **self.patch_pool_attributes)
        return self.forward_part_weights(frames, weights.transpose(1, 2), camera)

    def forward_part_weights(self, frames, part_weights, camera):
        """Clip embeddings from given patch weights (what the official model derives from its
        heatmap input). frames [B, T, 3, H, W]; part_weights [B, K, 6] (K patches, row-major,
        parts head, torso, left arm, right arm, left leg, right leg); camera [B]
        -> [B, D + 6*T*D]."""
        self._check_frames_and_camera(frames, camera)
        self._check_part_weights(frames, part_weights)
        tokens = self.base(frames, camera)
        return torch.cat([self._global_feature(tokens), self._part_features(tokens, part_weights)],
                         dim=1)

    # -- branches --------------------------------------------------------------------------

    def _global_feature(self, tokens):
        """tokens [B*T, 1+K, D] -> temporally attended, batch-normed CLS feature [B, D]."""
        frames = self.frames_per_clip
        cls = self.b1[1](self.b1[0].forward_first_token(tokens)).flatten(1)  # [B*T, D]
        scores = F.relu(self.attention_conv(cls[:, :, None, None]))  # [B*T, A, 1, 1]
        scores = scores.reshape(-1, frames, scores.shape[1]).transpose(1, 2)  # [B, A, T]
        scores = F.relu(self.attention_tconv(scores)).reshape(-1, frames)
        alpha = scores.softmax(dim=1).unsqueeze(-1)  # [B, T, 1]
        pooled = (cls.reshape(-1, frames, cls.shape[1]) * alpha).sum(dim=1)
        return self.bottleneck(pooled)

    def _part_features(self, tokens, part_weights):
        """tokens [B*T, 1+K, D], part_weights [B, K, 6] -> [B, 6*T*D], each part / 6."""
        token, patches = temporal_clip_shift_shuffle(tokens, self.frames_per_clip)
        # Row j of the shuffled patches is scaled by the weight of spatial patch j, as the
        # official code does (the rows are not spatially aligned: MODELS.md 2.7 item 1).
        part_weights = part_weights.to(patches.dtype).transpose(1, 2).unsqueeze(-1)  # [B, 6, K, 1]
        weighted = patches.unsqueeze(1) * part_weights  # [B, 6, K, T*D]
        sequences = torch.cat([token.unsqueeze(1).expand(-1, NUM_PARTS, -1, -1), weighted], dim=2)
        part_tokens = self.b2[1](self.b2[0].forward_first_token(sequences.flatten(0, 1)))
        part_tokens = part_tokens.reshape(-1, NUM_PARTS, part_tokens.shape[-1])  # [B, 6, TD]
        return torch.cat([bn(part_tokens[:, p]) for p, bn in enumerate(self.part_bottlenecks)],
                         dim=1) / NUM_PARTS

    @property
    def patch_pool_attributes(self) -> dict:
        """Keyword attributes of ``keypoint_patch_pool`` for this model: the six KeyRe-ID parts,
        the model's image size and patch, ``vis_thresh`` and ``heatmap_mode``."""
        config = self.reid_config
        return {"parts": KEYREID_PARTS, "out_hw": self.image_hw, "patch": self.patch_size,
                "vis_thresh": float(config["vis_thresh"]), "mode": config["heatmap_mode"]}

    # -- input checks (shapes always; values only in eager mode, where they can be read) ----

    def _check_frames_and_camera(self, frames, camera):
        expected = (self.frames_per_clip, 3, *self.image_hw)
        if frames.dim() != 5 or tuple(frames.shape[1:]) != expected:
            raise ValueError(f"frames must be [B, {', '.join(map(str, expected))}] (normalised "
                             f"clips of {self.frames_per_clip} frames), got {tuple(frames.shape)}")
        if not frames.dtype.is_floating_point:
            raise TypeError(f"frames must be floating point and already normalised to [-1, 1], "
                            f"got {frames.dtype}; convert with (x / 255 - 0.5) / 0.5")
        if frames.dtype != self.base.cls_token.dtype:
            raise TypeError(f"frames are {frames.dtype} but the model is "
                            f"{self.base.cls_token.dtype}; cast one of them")
        if camera.dim() != 1 or camera.dtype.is_floating_point or camera.dtype == torch.bool:
            raise TypeError(f"camera must be an integer tensor [B] (one camera index per clip), "
                            f"got {camera.dtype} {tuple(camera.shape)}")
        if torch.compiler.is_compiling():
            return
        if camera.shape[0] != frames.shape[0]:
            raise ValueError(f"camera has {camera.shape[0]} entries for {frames.shape[0]} clips; "
                             f"pass one camera index per clip")
        cameras = self.base.Cam.shape[0]
        if camera.numel() and (int(camera.min()) < 0 or int(camera.max()) >= cameras):
            raise ValueError(f"camera indices must lie in 0..{cameras - 1} (the model was trained "
                             f"with {cameras} cameras), got {camera.tolist()}; for cameras the "
                             f"model never saw use add_unseen_camera_row()")

    def _check_part_weights(self, frames, part_weights):
        expected = (self.num_patches, NUM_PARTS)
        if part_weights.dim() != 3 or tuple(part_weights.shape[1:]) != expected:
            raise ValueError(f"part_weights must be [B, {self.num_patches}, {NUM_PARTS}] "
                             f"(patches x parts), got {tuple(part_weights.shape)}")
        if not torch.compiler.is_compiling() and part_weights.shape[0] != frames.shape[0]:
            raise ValueError(f"part_weights has {part_weights.shape[0]} clips, frames "
                             f"{frames.shape[0]}; pass one weight map per clip")

    def _check_keypoint_inputs(self, frames, keypoints, crop_hw, frame_valid):
        frames_per_clip = self.frames_per_clip
        for name, tensor, tail in (("keypoints", keypoints, (frames_per_clip, COCO17_JOINTS, 3)),
                                   ("crop_hw", crop_hw, (frames_per_clip, 2)),
                                   ("frame_valid", frame_valid, (frames_per_clip,))):
            if tensor.dim() != len(tail) + 1 or tuple(tensor.shape[1:]) != tail:
                raise ValueError(f"{name} must be [B, {', '.join(map(str, tail))}], "
                                 f"got {tuple(tensor.shape)}")
            if not torch.compiler.is_compiling() and tensor.shape[0] != frames.shape[0]:
                raise ValueError(f"{name} has {tensor.shape[0]} clips, frames {frames.shape[0]}; "
                                 f"pass one entry per clip")


# ------------------------------------------------------------------------------------------
# Construction, recognition, configuration
# ------------------------------------------------------------------------------------------

def _validate_config(config: dict) -> None:
    missing = set(PRESETS["official"]) - set(config)
    unknown = set(config) - set(PRESETS["official"])
    if missing or unknown:
        raise ValueError(f"KeyRe-ID config: missing fields {sorted(missing)}, unknown fields "
                         f"{sorted(unknown)}; start from keyreid.PRESETS")
    img_h, img_w = config["img_size"]
    patch = config["patch_size"]
    if img_h % patch or img_w % patch:
        raise ValueError(f"img_size {config['img_size']} must be a multiple of patch_size {patch}")
    num_patches = (img_h // patch) * (img_w // patch)
    if num_patches % 2 or num_patches < TCSS_SHIFT:
        raise ValueError(f"TCSS needs an even number of patches >= {TCSS_SHIFT}, got "
                         f"{num_patches} ({img_h // patch}x{img_w // patch}); change img_size")
    if config["embed_dim"] % config["num_heads"]:
        raise ValueError(f"embed_dim {config['embed_dim']} is not divisible by num_heads "
                         f"{config['num_heads']}")
    if (config["frames"] * config["embed_dim"]) % config["local_heads"]:
        raise ValueError(f"the local width frames*embed_dim = "
                         f"{config['frames'] * config['embed_dim']} is not divisible by "
                         f"local_heads {config['local_heads']}")
    if config["depth"] < 2:
        raise ValueError(f"depth must be >= 2 (the last block is the global branch's template), "
                         f"got {config['depth']}")
    if config["heatmap_mode"] not in HEATMAP_MODES:
        raise ValueError(f"heatmap_mode must be one of {HEATMAP_MODES}, got "
                         f"{config['heatmap_mode']!r}")
    unseen = config["unseen_camera_index"]
    if unseen is not None and unseen != config["cameras"] - 1:
        raise ValueError(f"unseen_camera_index must be the last camera row "
                         f"({config['cameras'] - 1}) or None, got {unseen}")


def _init_weights(model: KeyReID) -> None:
    """Random initialisation in the spirit of the official one (truncated normal 0.02 for the
    transformer, Kaiming for the attention convs, small classifiers), so random-weight exports
    give non-degenerate embeddings."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(module.weight, mode="fan_in")
            nn.init.zeros_(module.bias)
    for name in ("classifier", *(f"classifier_{p}" for p in range(1, NUM_PARTS + 1))):
        nn.init.normal_(getattr(model, name).weight, std=0.001)
    patch_conv = model.base.patch_embed.proj
    fan_out = patch_conv.kernel_size[0] * patch_conv.kernel_size[1] * patch_conv.out_channels
    nn.init.normal_(patch_conv.weight, std=math.sqrt(2.0 / fan_out))
    for parameter in (model.base.cls_token, model.base.pos_embed, model.base.Cam):
        nn.init.trunc_normal_(parameter, std=0.02)
    # b1 starts as a copy of the last backbone block and norm, as in the official constructor.
    model.b1[0].load_state_dict(model.base.blocks[-1].state_dict())
    model.b1[1].load_state_dict(model.base.norm.state_dict())


def randomize_(model: KeyReID, generator: torch.Generator) -> KeyReID:
    """Fill every parameter and floating buffer in place with random values that keep the
    activations O(1) (matrices N(0, 1/fan_in), norm scales 1 + N(0, 0.2^2), biases
    N(0, 0.1^2), embeddings N(0, 0.5^2), BN running means N(0, 0.1^2) and variances
    U(0.5, 1.5)), so that a comparison exercises every tensor, including those that the
    default initialisation leaves at 0 or 1. Returns ``model``."""
    def draw(shape, kind):
        values = torch.randn(shape, generator=generator, dtype=torch.float64)
        return {"matrix": values / math.sqrt(max(1, math.prod(shape[1:]))),
                "scale": 1 + 0.2 * values, "bias": 0.1 * values, "embedding": 0.5 * values,
                "variance": 0.5 + torch.rand(shape, generator=generator, dtype=torch.float64)}[kind]

    with torch.no_grad():
        for name, tensor in model.named_parameters():  # the shared block is listed once
            leaf = name.rsplit(".", 1)[-1]
            kind = ("bias" if leaf == "bias" else "embedding" if tensor.dim() != 1 and
                    name.startswith("base.") and "." not in name[len("base."):]
                    else "scale" if tensor.dim() == 1 else "matrix")
            tensor.copy_(draw(tuple(tensor.shape), kind))
        for name, tensor in model.named_buffers():
            if name.endswith("running_mean"):
                tensor.copy_(draw(tuple(tensor.shape), "bias"))
            elif name.endswith("running_var"):
                tensor.copy_(draw(tuple(tensor.shape), "variance"))
    return model


def build(**config) -> KeyReID:
    """KeyRe-ID with random weights, in eval mode, from the fields of a ``PRESETS`` entry
    (an ``arch`` field, as ``model.reid_config`` carries it, is accepted when it is
    ``"keyreid"``). ``model.reid_config`` holds ``{"arch": "keyreid", **config}``. Works under
    ``torch.device("meta")`` too.
    """
    model = build_empty(**config)
    _init_weights(model)
    return model


def build_empty(**config) -> KeyReID:
    """Like :func:`build` without the random initialisation, for loading a checkpoint (the
    official model has 219M values: drawing them only to overwrite them costs seconds)."""
    arch = config.pop("arch", ARCH)
    if arch != ARCH:
        raise ValueError(f"config is for arch {arch!r}, not {ARCH!r}")
    _validate_config(config)
    return KeyReID(config).eval()


# Config fields a checkpoint decides even when the caller names a preset: the dataset's camera
# and identity counts (MARS 6 / 625, iLIDS-VID 2 / 150, ...).
CHECKPOINT_FIELDS = ("cameras", "classes", "backbone_classes", "unseen_camera_index")

# Keys only KeyRe-ID has (HAMoBE shares none of them).
_SIGNATURE_KEYS = ("base.Cam", "base.pos_embed", "base.patch_embed.proj.weight",
                   "attention_conv.weight", "attention_tconv.weight", "bottleneck_6.weight",
                   "b1.1.weight")
_SHARED_BLOCK_PREFIXES = ("block1.", "b2.0.")


def matches(state_dict) -> bool:
    """Whether ``state_dict`` (keys as the official ``KeyRe_ID.state_dict()``, no ``module.``
    prefix) is a KeyRe-ID state_dict. Either name of the shared local block suffices."""
    keys = set(state_dict)
    return (all(k in keys for k in _SIGNATURE_KEYS)
            and any(p + "attn.qkv.weight" in keys for p in _SHARED_BLOCK_PREFIXES))


def config_from_state_dict(state_dict) -> dict:
    """The ``build`` config implied by the tensor shapes of a KeyRe-ID state_dict.

    Inferred: embed_dim, patch_size, depth, mlp_ratio, frames (local width / embed_dim),
    cameras (``base.Cam`` rows), classes (``classifier`` rows), backbone_classes, attention_dim,
    img_size (the preset's when it gives the checkpoint's patch count, otherwise the 2:1 person
    aspect). Taken from the closest preset (same embed_dim, else official): num_heads and
    local_heads (shapes do not determine them), cam_lambda, heatmap_mode, vis_thresh.
    Raises ValueError naming what is missing or inconsistent.
    """
    if not matches(state_dict):
        absent = [k for k in _SIGNATURE_KEYS if k not in state_dict]
        raise ValueError(f"not a KeyRe-ID state_dict: keys {absent or ['block1.* / b2.0.*']} are "
                         f"missing (expected the keys of the official KeyRe_ID.state_dict(); "
                         f"strip any 'module.' prefix first)")
    shape = {k: tuple(v.shape) for k, v in state_dict.items()}
    embed_dim = shape["base.cls_token"][-1] if "base.cls_token" in shape else shape["base.Cam"][-1]
    config = dict(next((p for p in PRESETS.values() if p["embed_dim"] == embed_dim),
                       PRESETS["official"]))
    patch_h, patch_w = shape["base.patch_embed.proj.weight"][-2:]
    if patch_h != patch_w:
        raise ValueError(f"non-square patch {patch_h}x{patch_w} in base.patch_embed.proj.weight; "
                         f"KeyRe-ID uses square non-overlapping patches")
    num_patches = shape["base.pos_embed"][1] - 1
    depth = len({k.split(".")[2] for k in shape if k.startswith("base.blocks.")})
    shared = next(p for p in _SHARED_BLOCK_PREFIXES if p + "norm1.weight" in shape)
    local_dim = shape[shared + "norm1.weight"][0]
    if local_dim % embed_dim:
        raise ValueError(f"local block width {local_dim} is not a multiple of embed_dim "
                         f"{embed_dim}; this is not a KeyRe-ID checkpoint")
    config.update(
        embed_dim=embed_dim, patch_size=patch_h, depth=depth,
        mlp_ratio=shape["base.blocks.0.mlp.fc1.weight"][0] / embed_dim,
        frames=local_dim // embed_dim, cameras=shape["base.Cam"][0],
        classes=(shape["classifier.weight"][0] if "classifier.weight" in shape
                 else config["classes"]),
        backbone_classes=shape["base.fc.weight"][0] if "base.fc.weight" in shape
        else config["backbone_classes"],
        attention_dim=shape["attention_conv.weight"][0], unseen_camera_index=None)
    config["img_size"] = _image_size_for(num_patches, patch_h, config["img_size"])
    for field in ("num_heads", "local_heads"):
        width = embed_dim if field == "num_heads" else local_dim
        if width % config[field]:
            raise ValueError(f"cannot infer {field} for width {width} (the preset's "
                             f"{config[field]} does not divide it); pass {field}= explicitly")
    return config


def _image_size_for(num_patches: int, patch: int, preset_size) -> list:
    preset_h, preset_w = preset_size
    if (preset_h // patch) * (preset_w // patch) == num_patches and not (preset_h % patch
                                                                        or preset_w % patch):
        return list(preset_size)
    cols = math.isqrt(num_patches // 2)
    if 2 * cols * cols != num_patches:
        raise ValueError(f"cannot infer the image size from {num_patches} patches of {patch} px "
                         f"(not a 2:1 grid); pass img_size= explicitly")
    return [2 * cols * patch, cols * patch]


def trained_config(config: dict) -> dict:
    """``config`` (a KeyRe-ID build config or ``reid_config``) as it was before
    :func:`add_unseen_camera_row`: ``cameras`` back to the trained count and no
    ``unseen_camera_index``. A copy; ``config`` itself is not changed."""
    config = dict(config)
    unseen = config.get("unseen_camera_index")
    if unseen is not None:
        config.update(cameras=unseen, unseen_camera_index=None)
    return config


def add_unseen_camera_row(model: KeyReID) -> KeyReID:
    """Append one camera embedding equal to the mean of the trained rows, for crops from
    cameras the model never saw; records its index as ``model.reid_config['unseen_camera_index']``
    (and ``cameras`` grows by one). Modifies ``model`` in place and returns it.

    NOT part of the official KeyRe-ID method: the official code requires a trained camera
    index and has no fallback (MODELS.md 2.5). Embeddings computed with this row are an SDK
    convenience whose retrieval quality is not established by the paper.
    """
    if model.reid_config["unseen_camera_index"] is not None:
        raise ValueError(f"the model already has an unseen-camera row (index "
                         f"{model.reid_config['unseen_camera_index']}); add it once")
    cam = model.base.Cam
    with torch.no_grad():
        model.base.Cam = nn.Parameter(torch.cat([cam, cam.mean(dim=0, keepdim=True)], dim=0),
                                      requires_grad=cam.requires_grad)
    trained = cam.shape[0]
    model.reid_config.update(cameras=trained + 1, unseen_camera_index=trained)
    return model


__all__ = [
    "CHECKPOINT_FIELDS",
    "HEATMAP_MODES",
    "PRESETS",
    "KeyReID",
    "add_unseen_camera_row",
    "build",
    "build_empty",
    "config_from_state_dict",
    "matches",
    "randomize_",
    "temporal_clip_shift_shuffle",
    "trained_config",
]
