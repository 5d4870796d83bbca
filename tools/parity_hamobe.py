#!/usr/bin/env python
"""Parity of our HAMoBE with the official modules (issue 3 item 4).

Our model gets random weights everywhere (including the tensors the official code initialises
to zero: the relative tables w1/w2, the temporal position embeddings, the pose query), then:

* its backbone is written as an OpenAI CLIP TorchScript archive (``save_openai_clip``), which
  the official ``ResNet503D`` reads with its own loader (``torch.jit.load(path).visual``,
  ``load_weights_clip``) and ours with ``load_checkpoint(..., backbone_path=...)``;
* its head is written as the official training container (``model`` next to ``id_head``,
  ``clothes_head``, ``optimizer`` ...), which the official model loads with
  ``load_state_dict(strict=True)`` (the key-compatibility check, together with an equality
  check of the key order and shapes, also in the official ``finetune`` mode where the
  backbone is part of the state_dict) and ours with ``load_checkpoint``;
* both embed the same random clips; the 2048-d post-BN outputs are compared: per-sample cosine,
  cosine of the sample-to-sample differences, and the largest absolute difference relative to
  the largest sample-to-sample difference (so that biases, which dominate random-weight
  embeddings, cannot hide an error in the input-dependent part).

``--dtype float32`` runs both backbones in fp32 (official ``freeze_fp32``), ``float16`` as the
official default ``freeze_fp16`` (fp16 Linear layers, fp32 LayerNorm; slow on a CPU). The head
runs in fp32 in both.

Their code is materialised from a git repository (``git archive``) into a temporary directory
and patched there only as far as needed to run: the body of ``ResNet503D.forward_two_inputs``
(unused, an IndentationError as released) is removed, ``TemporalCrossAttention`` allocates its
output on the input's device instead of the hard-coded ``'cuda'``, the missing
``models/x_transformers/__init__.py`` is added, ``wandb`` / ``matplotlib`` (imported, unused at
inference) are stubbed when absent, and the ``small`` configuration adds a ViT preset to their
``vit_presets``. Their code needs ``einops`` (``pip install einops``). Nothing of theirs is
copied into this repository.

    python tools/parity_hamobe.py                              # ViT-L/14, T=8, B=2, fp32
    python tools/parity_hamobe.py --config small --dtype float16

``small`` keeps every head size of the official code (which hard-codes 257 tokens and 512-d
experts) and shrinks the backbone to 6 layers at 112 px with 7 px patches, and T to 4.
Exit status 1 when a run misses its tolerance (``TOLERANCES``).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

from reid_export.models import checkpoint, hamobe

from official_source import extract_commit  # beside this script: tools/ is sys.path[0]

DEFAULT_REPO = "/work/.mirror/GeoGebra2+hamobe/repo"
CONFIGS = {
    "official": {},
    "small": {"frames": 4, "layers": 6, "image_size": 112, "patch_size": 7},
}
PARITY_PRESET = "ViT-parity"
# Per backbone dtype: (minimum cosine, per sample and of the sample differences; maximum
# |ours - official| / max |official(x_i) - official(x_0)|).
TOLERANCES = {"float32": (0.99999, 1e-4), "float16": (0.999, 1e-2)}


# ------------------------------------------------------------------------------------------------
# The official code, materialised, patched to run, imported
# ------------------------------------------------------------------------------------------------
def _replace_once(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    if text.count(old) != 1:
        raise SystemExit(f"{path}: expected exactly one {old[:60]!r}: the official code changed; "
                         f"update the patches of tools/parity_hamobe.py")
    path.write_text(text.replace(old, new))


def materialise(repo: str, commit: str, dest: Path) -> Path:
    """Extract ``commit`` of ``repo`` into ``dest/official`` and patch it to run on a CPU."""
    source = extract_commit(repo, commit, dest)
    vid_resnet = source / "models" / "vid_resnet.py"
    text = vid_resnet.read_text()
    start = text.index("\n    def forward_two_inputs(self, x1")
    end = text.index("\ndef C2DResNet50")
    vid_resnet.write_text(text[:start] + "\n\n" + text[end:])
    _replace_once(vid_resnet, "self.w1.size(-1)], device='cuda')",
                  "self.w1.size(-1)], device=q.device)")
    (source / "models" / "x_transformers" / "__init__.py").write_text(
        "from .x_transformers import AbsolutePositionalEmbedding, Attention\n")
    return source


def import_official(source: Path):
    """``models.vid_resnet`` and ``models.vision_transformer`` of the official code."""
    for name in ("wandb", "matplotlib", "matplotlib.pyplot"):
        try:
            __import__(name)
        except ImportError:
            sys.modules[name] = types.ModuleType(name)
    sys.path.insert(0, str(source))
    from models import vid_resnet, vision_transformer
    return vid_resnet, vision_transformer


# ------------------------------------------------------------------------------------------------
# Weights
# ------------------------------------------------------------------------------------------------
def randomize_(model: hamobe.HAMoBE, generator: torch.Generator) -> None:
    """Random values for every tensor, scaled so that the embedding depends on the input
    rather than on biases: matrices N(0, 1/fan_in) (variance-preserving), the relative tables,
    temporal position embeddings and pose query (zero in the official initialisation)
    N(0, 0.5), norms 1 + N(0, 0.1), biases N(0, 0.02), BN statistics random. The patch bias
    stays zero: CLIP's conv1 has none."""
    def normal(shape, std, mean=0.0):
        return torch.randn(shape, generator=generator) * std + mean

    with torch.no_grad():
        for name, tensor in hamobe.checkpoint_state_dict(model).items():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "num_batches_tracked":
                continue
            if name.endswith("patch_embed.proj.bias"):
                value = torch.zeros(tensor.shape)
            elif leaf == "running_var":
                value = torch.rand(tensor.shape, generator=generator) * 1.5 + 0.5
            elif leaf == "running_mean":
                value = normal(tensor.shape, 0.02)
            elif "norm" in name or "ln_pre" in name or name.startswith("bn."):
                value = normal(tensor.shape, 0.1, 1.0 if leaf == "weight" else 0.0)
            elif leaf in ("w1", "w2", "cls_token") or "temporal_pos_embed" in name:
                value = normal(tensor.shape, 0.5)
            elif leaf == "bias" or tensor.dim() < 2:
                value = normal(tensor.shape, 0.02)
            else:
                value = normal(tensor.shape, tensor[0].numel() ** -0.5)
            tensor.copy_(value)


def write_official_files(model: hamobe.HAMoBE, directory: Path) -> tuple[Path, Path]:
    """The official training container (head) and the OpenAI CLIP archive (backbone)."""
    container = directory / "best_model.pth.tar"
    head = model.state_dict()
    torch.save({"model": head, "id_head": {"weight": torch.randn(11, 2048)},
                "clothes_head": {"weight": torch.randn(17, 2048)},
                "optimizer": {"state": {}, "param_groups": [{"lr": 3.5e-4, "params": [0]}]},
                "scheduler": {"milestones": {40: 1}, "gamma": 0.1}, "epoch": 12,
                "best_map": 0.5}, container)
    clip_file = directory / "ViT-parity.pt"
    hamobe.save_openai_clip(clip_file, hamobe.checkpoint_state_dict(model), model.reid_config)
    return container, clip_file


# ------------------------------------------------------------------------------------------------
# The comparison
# ------------------------------------------------------------------------------------------------
def official_model(vid_resnet, backbone_name: str, frames: int, clip_file: Path, mode: str):
    return vid_resnet.ResNet503D(num_frames=frames, backbone_name=backbone_name,
                                 backbone_path=str(clip_file), backbone_mode=mode).eval()


def check_keys(ours: dict, theirs: dict, what: str) -> None:
    ours_keys = [(k, tuple(v.shape)) for k, v in ours.items()]
    their_keys = [(k, tuple(v.shape)) for k, v in theirs.items()]
    if ours_keys != their_keys:
        diff = [a for a in ours_keys if a not in their_keys][:5], \
            [b for b in their_keys if b not in ours_keys][:5]
        raise SystemExit(f"{what}: state_dict keys differ (ours only, theirs only): {diff}")
    print(f"{what}: {len(ours_keys)} keys, same order and shapes as the official model")


def compare(ours: torch.Tensor, theirs: torch.Tensor) -> dict:
    """Per-sample cosine, and the error against what varies with the input: the cosine of the
    sample-to-sample differences and the largest error relative to the largest such
    difference (a model dominated by constant biases cannot pass by being constant)."""
    cosine = torch.nn.functional.cosine_similarity
    ours, theirs = ours.double(), theirs.double()
    their_spread = theirs[1:] - theirs[:1]
    return {
        "min_cosine": cosine(ours, theirs, dim=1).min().item(),
        "spread_cosine": cosine((ours[1:] - ours[:1]).flatten(), their_spread.flatten(),
                                dim=0).item(),
        "max_abs": (ours - theirs).abs().max().item(),
        "relative": ((ours - theirs).abs().max() / their_spread.abs().max()).item(),
        "spread": their_spread.abs().max().item(),
    }


def run(args) -> bool:
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    config = dict(hamobe.PRESETS["official"], **CONFIGS[args.config])
    with tempfile.TemporaryDirectory(prefix="parity-hamobe-") as tmp:
        tmp = Path(tmp)
        source = materialise(args.repo, args.commit, tmp)
        vid_resnet, vision_transformer = import_official(source)
        backbone_name = "ViT-L/14-lnpre" if args.config == "official" else PARITY_PRESET
        vision_transformer.vit_presets[PARITY_PRESET] = dict(
            feature_dim=config["width"], input_size=(config["image_size"],) * 2,
            patch_size=(config["patch_size"],) * 2, num_heads=config["heads"],
            num_layers=config["layers"], mlp_factor=4.0, ln_pre=True)

        reference = hamobe.build(**dict(config, backbone_dtype="float32"))
        randomize_(reference, generator)
        container, clip_file = write_official_files(reference, tmp)
        frames = torch.randn(args.batch, config["frames"], 3, config["image_size"],
                             config["image_size"], generator=generator)

        finetune_ours = hamobe.build(**dict(config, backbone_mode="finetune",
                                            backbone_dtype="float32"))
        finetune_theirs = official_model(vid_resnet, backbone_name, config["frames"], clip_file,
                                         "finetune")
        check_keys(finetune_ours.state_dict(), finetune_theirs.state_dict(),
                   "finetune mode (backbone.* included)")
        del finetune_ours, finetune_theirs

        passed = True
        official_fp32 = None
        dtypes = ["float32", "float16"] if args.dtype == "both" else [args.dtype]
        for dtype in dtypes:
            mode = "freeze_fp16" if dtype == "float16" else "freeze_fp32"
            theirs = official_model(vid_resnet, backbone_name, config["frames"], clip_file, mode)
            their_state = torch.load(container, map_location="cpu", weights_only=True)["model"]
            theirs.load_state_dict(their_state, strict=True)
            ours = checkpoint.load_checkpoint(
                container, arch="hamobe", backbone_path=clip_file,
                overrides={k: config[k] for k in ("layers", "image_size", "patch_size")}
                | {"backbone_dtype": dtype})
            check_keys(ours.state_dict(), theirs.state_dict(), f"{mode} mode")

            with torch.no_grad():
                start = time.perf_counter()
                out_theirs = theirs(frames.permute(0, 2, 1, 3, 4), None, False, 0, 0)
                their_s = time.perf_counter() - start
                start = time.perf_counter()
                out_ours = ours(frames)
                our_s = time.perf_counter() - start
            figures = compare(out_ours, out_theirs)
            min_cos_floor, rel_ceiling = TOLERANCES[dtype]
            ok = (min(figures["min_cosine"], figures["spread_cosine"]) >= min_cos_floor
                  and figures["relative"] <= rel_ceiling)
            passed &= ok
            print(f"{args.config} config, backbone {dtype}, B={args.batch} T={config['frames']} "
                  f"{config['image_size']}px {config['layers']} layers: min cosine "
                  f"{figures['min_cosine']:.9f}, cosine of the sample differences "
                  f"{figures['spread_cosine']:.9f}, max |ours - official| "
                  f"{figures['max_abs']:.3e} = {figures['relative']:.2e} x the largest sample "
                  f"difference {figures['spread']:.3f}; official {their_s:.1f} s, ours "
                  f"{our_s:.1f} s -> {'PASS' if ok else 'FAIL'} (cosines >= {min_cos_floor}, "
                  f"relative <= {rel_ceiling:g})")
            if dtype == "float32":
                official_fp32 = out_theirs
            elif official_fp32 is not None:
                print("  fp16 error against the official fp32 result, relative to the largest "
                      "sample difference: ours "
                      f"{compare(out_ours, official_fp32)['relative']:.2e}, official "
                      f"{compare(out_theirs, official_fp32)['relative']:.2e}")
            del theirs, ours
    return passed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", default=DEFAULT_REPO, help="git repository of GeoGebra2/hamobe")
    parser.add_argument("--commit", default="HEAD")
    parser.add_argument("--config", choices=sorted(CONFIGS), default="official")
    parser.add_argument("--dtype", choices=["float32", "float16", "both"], default="float32",
                        help="backbone arithmetic of both models (the head is fp32)")
    parser.add_argument("--batch", type=int, default=2,
                        help="clips (>= 2: the error is measured against sample differences)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.batch < 2:
        parser.error("--batch must be >= 2")
    return 0 if run(args) else 1


if __name__ == "__main__":
    sys.exit(main())
