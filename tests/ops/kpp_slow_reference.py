"""Independent slow float64 reference of KeypointPatchPool: the official KeyRe-ID steps, literally.

One frame at a time, one joint at a time, at crop resolution, in numpy: the generators stamp
``scipy.signal.windows.gaussian`` kernels into per-part heatmaps with the official slicing
arithmetic (JinSeong0115/KeyRe-ID keypoint/keypoints_to_masks.py at 66475a9 for ``paper``,
keypoint/keypoint_to_mask.py at HEAD for ``max`` without, and ``constant`` with, its off-by-one);
then the test loader's normalisation (heatmap_loader.py: per-part max, F.interpolate bilinear,
min-max, Normalize), then the model's F.unfold patch mean and the mean over the clip's frames,
with zero tensors for padding frames. Written from the official semantics, sharing no code with
reid_export.ops.keypoint_patch_pool.

Where the official code raises (a window that misses the crop, a non-finite coordinate), the
joint is skipped, as the op's contract says.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.signal.windows import gaussian


def _kernel(width: int, normalise: str) -> tuple[np.ndarray, int]:
    radius = int(width / 11)
    size = radius * 2 + 1
    window = gaussian(size, std=size / 4).reshape(size, 1)
    kernel = np.outer(window, window)
    kernel = kernel / (np.sum(kernel) if normalise == "sum" else np.max(kernel))
    return kernel, radius


def _visible_joint(keypoint, vis_thresh32):
    x, y, confidence = (float(v) for v in keypoint)
    if not confidence > vis_thresh32:  # official: skip when conf <= vis_thresh (NaN: skip)
        return None
    if not (math.isfinite(x) and math.isfinite(y)):
        return None
    return int(x), int(y)  # Python int(): truncation toward zero


def _paper_era(keypoints, height, width, parts, vis_thresh32):
    kernel, radius = _kernel(width, "sum")
    heat = np.zeros((len(parts), height, width))
    count = np.zeros((len(parts), height, width))
    for part_index, joints in enumerate(parts):
        for joint in joints:
            centre = _visible_joint(keypoints[joint], vis_thresh32)
            if centre is None:
                continue
            kpx, kpy = centre
            top, bottom = max(0, kpy - radius), min(height, kpy + radius + 1)
            left, right = max(0, kpx - radius), min(width, kpx + radius + 1)
            if bottom <= top or right <= left:
                continue
            sub = kernel[radius - (kpy - top):radius + (bottom - kpy),
                         radius - (kpx - left):radius + (right - kpx)]
            heat[part_index, top:bottom, left:right] += sub
            count[part_index, top:bottom, left:right] += 1
        count[part_index][count[part_index] == 0] = 1
        heat[part_index] = heat[part_index] / count[part_index]
    return heat


def _later(keypoints, height, width, parts, vis_thresh32, off_by_one: bool):
    """The later generator: max-1 kernel, element-wise maximum. With ``off_by_one`` its
    released slicing, whose sub-kernel is one row and one column short (so nothing is drawn);
    without it, the slicing it meant. The released one also skips joints whose truncated
    position lies outside the crop; the fixed one draws every window that meets the crop."""
    kernel, radius = _kernel(width, "max")
    short = 1 if off_by_one else 0
    heat = np.zeros((len(parts), height, width))
    for part_index, joints in enumerate(parts):
        for joint in joints:
            centre = _visible_joint(keypoints[joint], vis_thresh32)
            if centre is None:
                continue
            kpx, kpy = centre
            if off_by_one and not (0 <= kpx < width and 0 <= kpy < height):
                continue
            top, bottom = max(0, kpy - radius), min(height, kpy + radius + 1)
            left, right = max(0, kpx - radius), min(width, kpx + radius + 1)
            if bottom <= top or right <= left:
                continue
            sub = kernel[radius - (kpy - top):radius + (bottom - kpy - short),
                         radius - (kpx - left):radius + (right - kpx - short)]
            target = heat[part_index, top:bottom, left:right]
            if target.shape == sub.shape:
                heat[part_index, top:bottom, left:right] = np.maximum(target, sub)
    return heat


def _loader_and_pool(heat: np.ndarray, out_hw, patch: int) -> np.ndarray:
    maps = torch.tensor(heat, dtype=torch.float64)
    for c in range(maps.shape[0]):
        peak = maps[c].max()
        maps[c] = maps[c] / peak if peak > 0 else torch.zeros_like(maps[c])
    maps = F.interpolate(maps[None], size=tuple(out_hw), mode="bilinear",
                         align_corners=False)[0]
    low = maps.amin(dim=(1, 2), keepdim=True)
    high = maps.amax(dim=(1, 2), keepdim=True)
    maps = (maps - low) / (high - low + 1e-6)
    maps = (maps - 0.5) / 0.5
    blocks = F.unfold(maps[None], kernel_size=patch, stride=patch)[0]  # [P * patch^2, K]
    return blocks.reshape(maps.shape[0], patch * patch, -1).mean(dim=1).numpy()


def slow_keypoint_patch_pool(keypoints, crop_hw, frame_valid, parts, out_hw=(256, 128),
                             patch=16, vis_thresh=0.1, mode="paper") -> np.ndarray:
    """[B, T, J, 3], [B, T, 2], [B, T] (numpy or torch) -> [B, P, K] float64."""
    keypoints = np.asarray(torch.as_tensor(keypoints).to(torch.float64))
    crop_hw = np.asarray(crop_hw)
    frame_valid = np.asarray(frame_valid)
    vis_thresh32 = float(np.float32(vis_thresh))
    batch, frames = keypoints.shape[:2]
    patches = (out_hw[0] // patch) * (out_hw[1] // patch)
    out = np.zeros((batch, len(parts), patches))
    for b in range(batch):
        for t in range(frames):
            if not frame_valid[b, t]:
                continue  # the loader pads the clip with zero tensors
            height, width = int(crop_hw[b, t, 0]), int(crop_hw[b, t, 1])
            if mode == "paper":
                heat = _paper_era(keypoints[b, t], height, width, parts, vis_thresh32)
            else:
                heat = _later(keypoints[b, t], height, width, parts, vis_thresh32,
                              off_by_one=(mode == "constant"))
            out[b] += _loader_and_pool(heat, out_hw, patch)
    return out / frames
