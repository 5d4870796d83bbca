#!/usr/bin/env python
"""Parity of our KeyRe-ID with the official modules (issue 3 item 4).

The official ``KeyRe_ID`` (KeyRe_ID_model.py + vit_ID.py) and ours get the same random weights:
ours are loaded into theirs with ``load_state_dict(strict=True)``, which is itself the check
that the keys and shapes agree. Both then embed the same clips of one synthetic tracklet with
the same camera, and the 19200-d clip embeddings are compared in three settings:

* ``paper``: keypoints -> the official paper-era heatmap generator
  (keypoint/keypoints_to_masks.py at 66475a9) -> the official test loader
  (heatmap_loader.Heatmap_Dataset: per-channel max, bilinear resize, min-max, mean/std 0.5, and
  zero heatmaps on the loop-padded frames of the last clip) -> their model; the same keypoints
  -> our ``forward`` (keypoint_patch_pool, mode ``paper``).
* ``constant``: the released generator (HEAD keypoint/keypoint_to_mask.py, which draws nothing)
  -> the same loader -> their model; our ``forward`` with mode ``constant``.
* ``signed``: smooth random heatmaps of both signs -> their model; patch weights computed here
  from the same heatmaps (16x16 average pooling, mean over the frames) -> our
  ``forward_part_weights``. Keypoint heatmaps give mostly negative patch weights and only
  their sign reaches the output (MODELS.md 2.7), so this is the setting that exercises the
  local branch with weights of both signs.

Their code is materialised from a git repository (``git archive``) into a temporary directory
and never modified. Their constructor gets ``pretrainpath=None``, which skips the ImageNet ViT
load; while their generator files are imported, the modules those files import but their
generator classes never use (cv2, matplotlib, torchreid) are stubbed. Nothing of theirs is
copied into this repository.

    python tools/parity_keyreid.py                   # official config, 2 clips, float32
    python tools/parity_keyreid.py --dtype float64

Exit status 1 when a setting misses the tolerance (``TOLERANCES``: minimum cosine and maximum
absolute difference relative to the largest official value). The ``paper`` setting is always
held to the float32 tolerance: the official loader stores heatmaps in float32.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from reid_sdk.clips import consecutive_chunks

from official_source import extract_commit  # beside this script: tools/ is sys.path[0]

DEFAULT_REPO = "/work/.mirror/JinSeong0115+KeyRe-ID/repo"
PAPER_ERA_COMMIT = "66475a9"  # last commit of keypoint/keypoints_to_masks.py before 524ca52
FRAMES_PER_CLIP = 4
IMAGE_HW = (256, 128)
PATCH = 16
# (minimum per-clip cosine, maximum |ours - official| / max |official|) per arithmetic.
TOLERANCES = {"float32": (0.99999, 1e-4), "float64": (1 - 1e-12, 1e-10)}


# ------------------------------------------------------------------------------------------
# The official code, materialised and imported
# ------------------------------------------------------------------------------------------

def materialise(repo: str, commit: str, dest: Path) -> Path:
    """Extract ``commit`` of the git repository ``repo`` into ``dest/official`` and the
    paper-era heatmap generator beside it; returns the source directory."""
    source = extract_commit(repo, commit, dest)
    paper_era = subprocess.run(
        ["git", "-C", repo, "show", f"{PAPER_ERA_COMMIT}:keypoint/keypoints_to_masks.py"],
        check=True, capture_output=True).stdout
    (dest / "paper_era_keypoints_to_masks.py").write_bytes(paper_era)
    return source


@contextlib.contextmanager
def stubbed_modules(*names):
    """Empty stand-ins for modules that a file imports at the top but whose members the code
    we call never touches."""
    saved = {name: sys.modules.get(name) for name in names}
    for name in names:
        stub = types.ModuleType(name)
        stub.gkern = None  # `from torchreid.utils.imagetools import gkern`, redefined there
        sys.modules[name] = stub
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def import_file(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Official:
    """The official model class, test loader and both heatmap generators."""

    def __init__(self, source: Path, paper_era_file: Path):
        sys.path.insert(0, str(source))
        import heatmap_loader
        import KeyRe_ID_model
        self.model_class = KeyRe_ID_model.KeyRe_ID
        self.heatmap_loader = heatmap_loader
        with stubbed_modules("cv2", "matplotlib", "matplotlib.pyplot", "torchreid",
                             "torchreid.utils", "torchreid.utils.imagetools"):
            self.paper_era = import_file(paper_era_file, "keyreid_paper_era_keypoints_to_masks")
            self.released = import_file(source / "keypoint" / "keypoint_to_mask.py",
                                        "keyreid_released_keypoint_to_mask")

    def heatmaps(self, generator, keypoints: np.ndarray, crop_hw) -> np.ndarray:
        """[6, h, w] heatmaps of one crop at crop resolution. A fresh generator per crop: the
        official class caches the kernel of the first crop size it sees (all MARS crops are
        256x128), and the per-crop radius int(w / 11) is what the method means."""
        h, w = crop_hw
        return generator.KeypointsToMasks(g_scale=11, vis_thresh=0.1)(keypoints, (w, h), (w, h))

    def test_clips(self, image_paths, camera, heatmap_root):
        """Their test-time clips of one tracklet: imgs [clips, 4, 3, 256, 128],
        heatmaps [clips, 4, 6, 256, 128], per-frame camera list."""
        dataset = self.heatmap_loader.Heatmap_Dataset(
            heatmap_transform=self.heatmap_loader.CustomHeatmapTransform(list(IMAGE_HW)),
            heatmap_root=str(heatmap_root), dataset=[(image_paths, 0, camera)],
            seq_len=FRAMES_PER_CLIP, transform=frames_transform())
        imgs, heatmaps, _, cameras, _ = dataset[0]
        return imgs, heatmaps, cameras


# ------------------------------------------------------------------------------------------
# A synthetic tracklet
# ------------------------------------------------------------------------------------------

def frames_transform():
    """The official test transform of a frame (MODELS.md 2.4): PIL bilinear resize to 256x128,
    [0, 1], mean/std 0.5."""
    import torchvision.transforms as T
    return T.Compose([T.Resize(list(IMAGE_HW), interpolation=T.InterpolationMode.BILINEAR),
                      T.ToTensor(), T.Normalize(mean=[0.5] * 3, std=[0.5] * 3)])


def make_tracklet(rng, num_frames: int):
    """Crops of varying size with COCO-17 keypoints that stay near the same patch centres from
    frame to frame (so that some patch weights come out positive), a few below the confidence
    threshold and a few on the crop border. Returns (images, keypoints [n,17,3], crop_hw)."""
    rows, cols = IMAGE_HW[0] // PATCH, IMAGE_HW[1] // PATCH
    cells = np.stack([rng.integers(0, rows, 17), rng.integers(0, cols, 17)], axis=1)
    relative = (cells[:, ::-1] + 0.5) / [cols, rows]  # (x, y) of the patch centres, in [0, 1)
    images, keypoints, crop_hw = [], [], []
    for _ in range(num_frames):
        h, w = int(rng.integers(200, 300)), int(rng.integers(80, 150))
        xy = relative * [w, h] + rng.uniform(-1.5, 1.5, (17, 2))
        xy[rng.integers(0, 17)] = [0.3, rng.uniform(0, h)]  # on the left border
        xy = np.clip(xy, 0, [w - 1e-3, h - 1e-3])
        confidence = rng.uniform(0.3, 1.0, 17)
        confidence[rng.choice(17, 3, replace=False)] = rng.uniform(0.0, 0.1, 3)
        keypoints.append(np.concatenate([xy, confidence[:, None]], axis=1).astype(np.float32))
        coarse = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        images.append(Image.fromarray(coarse).resize((w, h), Image.BILINEAR))
        crop_hw.append((h, w))
    return images, np.stack(keypoints), crop_hw


def write_tracklet(official, directory: Path, images, keypoints, crop_hw, camera):
    """Write the frames (JPEG) and, per frame, the heatmaps of the paper-era and the released
    generator (npy) in the layout their loader reads. Returns the frame paths and the
    heatmap roots ``{"paper": ..., "released": ...}``."""
    roots = {name: directory / name for name in ("images", "paper", "released")}
    paths, drawn = [], 0
    for index, (image, kp, hw) in enumerate(zip(images, keypoints, crop_hw, strict=True)):
        name = f"0001C{camera + 1}T0001F{index:03d}"
        for root in roots.values():
            (root / "0001").mkdir(parents=True, exist_ok=True)
        paths.append(str(roots["images"] / "0001" / f"{name}.jpg"))
        image.save(paths[-1])
        np.save(roots["paper"] / "0001" / f"{name}.npy",
                official.heatmaps(official.paper_era, kp, hw))
        released = official.heatmaps(official.released, kp, hw)
        drawn += int(np.count_nonzero(released))
        np.save(roots["released"] / "0001" / f"{name}.npy", released)
    print(f"tracklet: {len(images)} frames, camera {camera}, crops (h, w) from "
          f"{min(crop_hw)} to {max(crop_hw)}; the released generator drew {drawn} nonzero "
          f"heatmap pixels")
    return paths, roots


def signed_heatmaps(rng, clips: int) -> torch.Tensor:
    """Smooth random heatmaps [clips, 4, 6, 256, 128] whose patch means take both signs."""
    coarse = torch.from_numpy(rng.normal(0.0, 1.0, (clips * FRAMES_PER_CLIP, 6, 8, 4)))
    fine = F.interpolate(coarse.float(), size=IMAGE_HW, mode="bilinear", align_corners=False)
    return fine.reshape(clips, FRAMES_PER_CLIP, 6, *IMAGE_HW)


def patch_weights_from_heatmaps(heatmaps: torch.Tensor) -> torch.Tensor:
    """[b, 4, 6, 256, 128] -> W [b, 128, 6]: 16x16 block means, then the mean over frames."""
    pooled = F.avg_pool2d(heatmaps.flatten(0, 1), PATCH)  # [b*4, 6, 16, 8]
    return pooled.flatten(2).unflatten(0, (-1, FRAMES_PER_CLIP)).mean(1).transpose(1, 2)


# ------------------------------------------------------------------------------------------
# Comparison
# ------------------------------------------------------------------------------------------

def check_clip_layout(imgs, heatmaps, cameras, paths, slots, valid, camera):
    """Our (clip, slot) -> frame mapping, validity flags and cameras describe their clips."""
    transform = frames_transform()
    for clip, (frame_indices, flags) in enumerate(zip(slots, valid, strict=True)):
        for slot, (index, real) in enumerate(zip(frame_indices, flags, strict=True)):
            expected = transform(Image.open(paths[index]).convert("RGB"))
            if not torch.equal(imgs[clip, slot], expected):
                raise AssertionError(f"clip {clip} slot {slot} is not frame {index}")
            # The loader maps every real frame to [-1, 1) and pads the rest with exact zeros.
            if bool((heatmaps[clip, slot] == 0).all()) == real:
                raise AssertionError(f"clip {clip} slot {slot}: frame_valid {real} disagrees "
                                     f"with their heatmap padding")
    if list(cameras) != [camera] * (len(slots) * FRAMES_PER_CLIP):
        raise AssertionError(f"their per-frame cameras {list(cameras)} differ from {camera}")


def compare(name, ours, theirs, weights, min_cosine, max_relative, global_dim):
    """Print the agreement of [b, D] embeddings, overall and per branch (global ``[:global_dim]``,
    local parts after it); True when within tolerance."""
    ours, theirs = ours.double(), theirs.double()
    cosine = F.cosine_similarity(ours, theirs, dim=1)
    max_abs = (ours - theirs).abs().max().item()
    scale = theirs.abs().max().item()
    ok = cosine.min().item() >= min_cosine and max_abs <= max_relative * scale
    local = slice(global_dim, None)
    local_cosine = F.cosine_similarity(ours[:, local], theirs[:, local], dim=1).min().item()
    print(f"{name:9s} max|ours-official| {max_abs:.3e} (max|official| {scale:.3f}), cosine min "
          f"{cosine.min().item():.10f} | global max diff "
          f"{(ours[:, :global_dim] - theirs[:, :global_dim]).abs().max().item():.3e} | local "
          f"max diff {(ours[:, local] - theirs[:, local]).abs().max().item():.3e} (max|official| "
          f"{theirs[:, local].abs().max().item():.3f}), cosine min {local_cosine:.10f} | "
          f"positive patch weights {(weights > 0).sum().item()}/{weights.numel()}  "
          f"{'PASS' if ok else 'FAIL'}")
    return ok


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", default=DEFAULT_REPO, help="official KeyRe-ID git repository")
    parser.add_argument("--commit", default="HEAD", help="commit of the model and loader code")
    parser.add_argument("--clips", type=int, default=2, help="clips in the tracklet (b)")
    parser.add_argument("--camera", type=int, default=3, help="camera index (0..5)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-cosine", type=float, default=None,
                        help="per-clip cosine threshold (default: by dtype, see TOLERANCES)")
    parser.add_argument("--max-relative", type=float, default=None,
                        help="max |diff| / max |official| (default: by dtype, see TOLERANCES)")
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)

    def tolerance(precision):
        min_cosine, max_relative = TOLERANCES[precision]
        return (min_cosine if args.min_cosine is None else args.min_cosine,
                max_relative if args.max_relative is None else args.max_relative)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    from reid_export.models import create, keyreid
    from reid_export.ops import keypoint_patch_pool

    with tempfile.TemporaryDirectory(prefix="keyreid_parity_") as tmp:
        tmp = Path(tmp)
        official = Official(materialise(args.repo, args.commit, tmp),
                            tmp / "paper_era_keypoints_to_masks.py")

        ours = keyreid.randomize_(create("keyreid", "official"),
                                  torch.Generator().manual_seed(args.seed))
        theirs = official.model_class(num_classes=ours.reid_config["classes"],
                                      camera_num=ours.reid_config["cameras"], pretrainpath=None)
        ours_layout = [(k, tuple(v.shape)) for k, v in ours.state_dict().items()]
        theirs_layout = [(k, tuple(v.shape)) for k, v in theirs.state_dict().items()]
        print(f"state_dict: {len(ours_layout)} keys; same keys, order and shapes as the "
              f"official: {ours_layout == theirs_layout}")
        theirs.load_state_dict(ours.state_dict(), strict=True)
        print("official KeyRe_ID.load_state_dict(ours.state_dict(), strict=True): OK")
        ours, theirs = ours.to(dtype).eval(), theirs.to(dtype).eval()
        constant_mode = copy.copy(ours)  # same modules and weights, another heatmap mode
        constant_mode.reid_config = {**ours.reid_config, "heatmap_mode": "constant"}

        # One tracklet whose last clip is loop-padded (2 real frames).
        num_frames = FRAMES_PER_CLIP * (args.clips - 1) + 2
        images, keypoints, crop_hw = make_tracklet(rng, num_frames)
        paths, roots = write_tracklet(official, tmp, images, keypoints, crop_hw, args.camera)
        # The SDK's own clip plan, checked against their loader in check_clip_layout.
        slots, valid = consecutive_chunks(num_frames, FRAMES_PER_CLIP, None)
        ours_keypoints = torch.from_numpy(keypoints[slots])
        ours_crop_hw = torch.tensor(crop_hw, dtype=torch.int32)[torch.from_numpy(slots)]
        frame_valid = torch.from_numpy(valid)
        camera = torch.full((args.clips,), args.camera, dtype=torch.int64)

        ok = True
        global_dim = ours.reid_config["embed_dim"]
        local_outputs = {}
        with torch.no_grad():
            for setting, root, model in (("paper", roots["paper"], ours),
                                         ("constant", roots["released"], constant_mode)):
                imgs, heatmaps, cameras = official.test_clips(paths, args.camera, root)
                check_clip_layout(imgs, heatmaps, cameras, paths, slots, valid, args.camera)
                frames = imgs.to(dtype)
                reference = theirs(frames, heatmaps.to(dtype), cam_label=cameras)
                weights = keypoint_patch_pool(ours_keypoints, ours_crop_hw, frame_valid,
                                              out_hw=IMAGE_HW, patch=PATCH, vis_thresh=0.1,
                                              mode=setting)
                from_their_heatmaps = patch_weights_from_heatmaps(heatmaps.double())
                print(f"{setting:9s} patch weights, our op vs pooled official heatmaps: max diff "
                      f"{(weights.double().transpose(1, 2) - from_their_heatmaps).abs().max():.3e}")
                result = model(frames, ours_keypoints, ours_crop_hw, frame_valid, camera)
                # Their loader holds heatmaps in float32 whatever the model's dtype.
                ok &= compare(setting, result, reference, weights,
                              *tolerance("float32" if setting == "paper" else args.dtype),
                              global_dim)
                local_outputs[setting] = result[:, global_dim:]

            heatmaps = signed_heatmaps(rng, args.clips).to(dtype)
            reference = theirs(frames, heatmaps, cam_label=cameras)
            weights = patch_weights_from_heatmaps(heatmaps)
            result = ours.forward_part_weights(frames, weights, camera)
            ok &= compare("signed", result, reference, weights, *tolerance(args.dtype),
                          global_dim)
            local_outputs["signed"] = result[:, global_dim:]
        # The weights must matter: the settings differ only in them.
        spread = max((local_outputs[a] - local_outputs[b]).abs().max().item()
                     for a in local_outputs for b in local_outputs)
        print(f"largest local-branch difference between the settings: {spread:.3f}")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
