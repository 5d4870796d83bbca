"""Input generators for the KeypointPatchPool tests (CPU and GPU share them).

Random clips mix the cases the contract names: joints inside, on and beyond the crop border
(windows partly or wholly outside), exact integer and half-integer coordinates, confidences at
and around the threshold, clustered joints whose windows overlap (where ``paper`` and ``max``
differ), all-invisible and invalid (padding) frames with garbage crop sizes, crops narrower than
11 px (radius 0), 1 x 1 crops and tall narrow crops (large downscaling).
"""
from __future__ import annotations

import numpy as np
import torch

THRESHOLD32 = float(np.float32(0.1))


def random_crop_sizes(rng, shape, kind="mixed"):
    """int32 [..., 2] (height, width)."""
    heights = rng.integers(1, 260, shape)
    widths = rng.integers(1, 140, shape)
    if kind == "mixed":
        pick = rng.random(shape)
        tiny = pick < 0.15  # 1..11 px: radius 0, including 1 x 1
        heights = np.where(tiny, rng.integers(1, 12, shape), heights)
        widths = np.where(tiny, rng.integers(1, 12, shape), widths)
        tall = (pick >= 0.15) & (pick < 0.25)  # heavy downscaling, narrow windows
        heights = np.where(tall, rng.integers(600, 2100, shape), heights)
        widths = np.where(tall, rng.integers(8, 40, shape), widths)
        ones = rng.random(shape) < 0.03
        heights, widths = np.where(ones, 1, heights), np.where(ones, 1, widths)
    return np.stack([heights, widths], axis=-1).astype(np.int32)


def random_keypoints(rng, crop_hw, joints=17):
    """float64 [..., J, 3] keypoints for crops ``crop_hw`` [..., 2]."""
    shape = crop_hw.shape[:-1]
    height = crop_hw[..., 0, None].astype(np.float64)
    width = crop_hw[..., 1, None].astype(np.float64)
    radius = np.floor(width / 11)
    full = shape + (joints,)
    # Clustered around a per-frame centre (overlapping windows) or spread over the crop.
    centre_x = rng.uniform(0.2, 0.8, shape + (1,))
    centre_y = rng.uniform(0.2, 0.8, shape + (1,))
    spread = rng.choice([0.02, 0.08, 0.4], size=shape + (1,))
    x = (centre_x + rng.normal(0, 1, full) * spread) * width
    y = (centre_y + rng.normal(0, 1, full) * spread) * height
    # Borders: exact edges, half pixels, just outside by up to the radius, far outside.
    border_x = rng.choice(5, size=full)
    x = np.where(border_x == 1, rng.choice([0.0, -0.5, -0.999, 0.999], size=full), x)
    x = np.where(border_x == 2, width - rng.choice([0.0, 0.5, 1.0, 1.001], size=full), x)
    x = np.where(border_x == 3, -rng.uniform(0, 1, full) * (radius + 1.5), x)
    x = np.where(border_x == 4, width + rng.uniform(0, 1, full) * (radius + 1.5), x)
    y = np.where(rng.random(full) < 0.1, rng.choice([0.0, -0.5, -1.0], size=full), y)
    y = np.where(rng.random(full) < 0.1, height + rng.uniform(-1.0, 2.0, full) * (radius + 1), y)
    x = np.where(rng.random(full) < 0.05, -3 * width - 50, x)  # window far outside
    x = np.where(rng.random(full) < 0.1, np.round(x), x)  # exact integers
    confidence = rng.uniform(0, 1, full)
    confidence = np.where(rng.random(full) < 0.15, THRESHOLD32, confidence)  # exactly at it
    confidence = np.where(rng.random(full) < 0.1, 0.0, confidence)
    return np.stack([x, y, confidence], axis=-1)


def random_clip_batch(rng, batch, frames, joints=17, kind="mixed", invalid_fraction=0.2):
    """(keypoints float64 [B, T, J, 3], crop_hw int32 [B, T, 2], frame_valid bool [B, T])
    with all-invisible frames and invalid frames carrying garbage crop sizes."""
    crop_hw = random_crop_sizes(rng, (batch, frames), kind)
    keypoints = random_keypoints(rng, crop_hw, joints)
    invisible = rng.random((batch, frames)) < 0.1
    keypoints[invisible, :, 2] = rng.uniform(0, THRESHOLD32, (int(invisible.sum()), joints))
    frame_valid = rng.random((batch, frames)) >= invalid_fraction
    if batch and frames:
        frame_valid[0, 0] = True
    garbage = rng.choice([0, -7, 1 << 20, 5], size=((~frame_valid).sum(), 2))
    crop_hw[~frame_valid] = garbage
    return keypoints, crop_hw, frame_valid


def cluster_first_frame(keypoints, crop_hw, frame_valid, rng):
    """Makes frame (0, 0) a valid 200 x 120 crop with every joint drawn within 3 px of its
    centre (windows of radius 10, all overlapping), so any parts / out_hw / patch have a patch
    that all of a part's windows reach. Modifies the arrays in place; returns them."""
    joints = keypoints.shape[2]
    crop_hw[0, 0] = (200, 120)
    frame_valid[0, 0] = True
    keypoints[0, 0, :, 0] = 60 + rng.uniform(-3, 3, joints)
    keypoints[0, 0, :, 1] = 100 + rng.uniform(-3, 3, joints)
    keypoints[0, 0, :, 2] = rng.uniform(0.5, 1.0, joints)
    return keypoints, crop_hw, frame_valid


def eps_sensitive_clip(mode: str):
    """One frame where the resized map barely touches the windows (a single output row reads
    the window's top row with weight 1/512), so the min-max eps term carries the crop-resolution
    part maximum into the output at the 1e-2 level. Part 0 holds two joints 2 px apart (their
    average peaks between the centres, above either centre: ``paper``'s maximum is not at a
    joint); part 1 a joint whose centre lies left of the crop (its maximum is the clipped
    window's edge). Returns (keypoints, crop_hw, frame_valid, attributes)."""
    height, width, out_h = 7001, 128, 256
    radius = width // 11
    dst = np.arange(out_h)
    numerator = np.maximum((2 * dst + 1) * height - out_h, 0)
    frac = numerator % (2 * out_h)
    best = int(np.argmin(np.where(frac > 0, frac, 1 << 30)))
    lower = numerator[best] // (2 * out_h)
    centre_y = lower + 1 + radius  # the window's top row is the upper tap of row `best`
    keypoints = np.zeros((1, 1, 17, 3))
    keypoints[0, 0, 0] = (54.3, centre_y + 0.7, 0.9)
    keypoints[0, 0, 1] = (56.9, centre_y + 0.2, 0.8)
    keypoints[0, 0, 5] = (-4.5, centre_y, 0.9)
    # patch 1: the hit pixel is its own patch, so the eps term is not averaged away.
    attributes = dict(parts=((0, 1), (5,), (9,)), out_hw=(out_h, 8), patch=1, mode=mode)
    return (keypoints, np.array([[[height, width]]], np.int32), np.ones((1, 1), bool),
            attributes)


def fully_covered_clip(rng, frames=3):
    """Crops of 5 x 22 pixels (radius 2) whose every pixel the seven windows of part 0 cover,
    overlapping, so the resized map's minimum is > 0 and lies at the crop's left corners, in a
    patch only the leftmost window reaches (the kernel takes such a patch's minimum from
    separable profiles). Returns (keypoints, crop_hw, frame_valid, attributes)."""
    keypoints = np.zeros((1, frames, 17, 3))
    keypoints[..., 2] = rng.uniform(0.5, 1.0, (1, frames, 17))
    keypoints[0, :, :7, 0] = 2 + 3 * np.arange(7) + rng.uniform(0, 0.99, (frames, 7))
    keypoints[0, :, :7, 1] = 2 + rng.uniform(0, 0.99, (frames, 7))
    keypoints[0, :, 7:, 0] = rng.uniform(0, 22, (frames, 10))
    keypoints[0, :, 7:, 1] = rng.uniform(0, 5, (frames, 10))
    crop_hw = np.tile(np.array([5, 22], np.int32), (1, frames, 1))
    attributes = dict(parts=(tuple(range(7)), (7, 8)), out_hw=(64, 128), patch=8)
    return keypoints, crop_hw, np.ones((1, frames), bool), attributes


def as_tensors(keypoints, crop_hw, frame_valid, dtype=torch.float64, device="cpu"):
    return (torch.tensor(keypoints, dtype=dtype, device=device),
            torch.tensor(crop_hw, dtype=torch.int32, device=device),
            torch.tensor(frame_valid, dtype=torch.bool, device=device))
