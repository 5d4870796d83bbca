"""KeypointPatchPool: COCO-17 keypoints -> KeyRe-ID's per-part patch weights.

    weights[B, P, K] = KeypointPatchPool(keypoints[B, T, J, 3], crop_hw[B, T, 2], frame_valid[B, T])

What the official KeyRe-ID data pipeline feeds its model (MODELS.md 2.5; the exact chain and
its correspondence to the official code are in kernels/keypoint_patch_pool/README.md): per part,
Gaussian windows (radius ``int(w / 11)``, scipy gaussian of length ``2r + 1`` and std
``(2r + 1) / 4``, outer product) stamped at the truncated joint positions at crop resolution,
clipped at the borders; combined per part (``mode``); divided by the part's maximum; bilinear
resize to ``out_hw`` (align_corners=False); per-part min-max scaling with eps 1e-6;
``(x - 0.5) / 0.5``; mean over each ``patch x patch`` block (row-major); mean over the T frames,
where invalid (padding) frames count as 0.

Four forms that agree:

* :func:`keypoint_patch_pool`: the torch reference, which is the spec (vectorised, any device,
  float64-capable);
* ``torch.ops.reid.keypoint_patch_pool`` (or :func:`keypoint_patch_pool_op`): CPU runs the
  reference, CUDA runs our kernel on the current stream (``torch.compile`` and CUDA graph
  capture safe);
* ONNX node ``reid::KeypointPatchPool`` whose model-local function body is written in standard
  ONNX ops (:func:`build_function`);
* the TensorRT plugin ``KeypointPatchPool`` version ``1`` (kernels/keypoint_patch_pool/).
"""
from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from reid_export.ops import _onnx

__all__ = [
    "KEYREID_PARTS", "MODES", "MAX_CROP_SIDE", "encode_parts", "decode_parts",
    "keypoint_patch_pool", "keypoint_patch_pool_op", "build_function", "ONNX_OP_NAME",
]

# KeyRe-ID's six joint groups in the model's part order (COCO-17 joint indices): head, torso
# (shoulders and hips), left arm (elbow, wrist), right arm, left leg (knee, ankle), right leg.
KEYREID_PARTS = ((0, 1, 2, 3, 4), (5, 6, 11, 12), (7, 9), (8, 10), (13, 15), (14, 16))
MODES = ("paper", "max", "constant")
# Crop sides beyond this are refused: 32768 keeps every index product of the kernel in int32.
MAX_CROP_SIDE = 32768
# Limits of the C ABI (kernels/reid_kernels.h): parts, joints over all parts.
MAX_PARTS = 16
MAX_PART_JOINTS = 64
# The official min-max scaling's epsilon (heatmap_loader.py: Min_Max_Scaling).
MIN_MAX_EPS = 1e-6
# Frames x parts x crop pixels materialised at once by the reference (bounds its memory).
_REFERENCE_CHUNK_ELEMENTS = 1 << 25

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ------------------------------------------------------------------------------------------------
# Attributes
# ------------------------------------------------------------------------------------------------
def encode_parts(parts: Sequence[Sequence[int]]) -> list[int]:
    """``((0, 1), (5,))`` -> ``[0, 1, -1, 5]``: the parts as one int list with -1 separators
    (how ONNX, TensorRT and the C ABI carry them). Validates like :func:`decode_parts`."""
    parts = _check_parts(parts)
    flat: list[int] = []
    for index, part in enumerate(parts):
        if index:
            flat.append(-1)
        flat.extend(part)
    return flat


def decode_parts(flat: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """``[0, 1, -1, 5]`` -> ``((0, 1), (5,))``, the inverse of :func:`encode_parts`."""
    try:
        return _decode_parts_cached(tuple(flat))
    except TypeError:  # unhashable entries: decode (and fail) uncached
        return _decode_parts(flat)


@functools.lru_cache(maxsize=64)
def _decode_parts_cached(flat: tuple) -> tuple[tuple[int, ...], ...]:
    # Every op call decodes the same few attribute lists; validation runs once per list.
    return _decode_parts(flat)


def _decode_parts(flat) -> tuple[tuple[int, ...], ...]:
    parts: list[list[int]] = [[]]
    for value in flat:
        value = _as_int(value, "parts entry")
        if value == -1:
            parts.append([])
        else:
            parts[-1].append(value)
    return _check_parts(parts)


def _as_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"KeypointPatchPool: {what} must be an int, got {value!r}")
    return int(value)


def _check_parts(parts) -> tuple[tuple[int, ...], ...]:
    if isinstance(parts, (str, bytes)) or not isinstance(parts, Sequence):
        raise TypeError(f"KeypointPatchPool: parts must be a sequence of joint-index sequences, "
                        f"e.g. {KEYREID_PARTS}, got {parts!r}")
    checked = []
    for index, part in enumerate(parts):
        if isinstance(part, (str, bytes)) or not isinstance(part, Sequence):
            raise TypeError(f"KeypointPatchPool: part {index} must be a sequence of joint "
                            f"indices, got {part!r}")
        if len(part) == 0:
            raise ValueError(f"KeypointPatchPool: part {index} has no joints (an empty group or "
                             "a doubled/trailing -1 separator); give every part >= 1 joint")
        joints = tuple(_as_int(j, f"joint index of part {index}") for j in part)
        if min(joints) < 0:
            raise ValueError(f"KeypointPatchPool: part {index} has a negative joint index "
                             f"{min(joints)}; joint indices count from 0 (-1 only separates "
                             "parts in the flat encoding)")
        checked.append(joints)
    if not 1 <= len(checked) <= MAX_PARTS:
        raise ValueError(f"KeypointPatchPool: {len(checked)} parts; 1..{MAX_PARTS} are supported")
    total = sum(len(p) for p in checked)
    if total > MAX_PART_JOINTS:
        raise ValueError(f"KeypointPatchPool: the parts list {total} joints in all; at most "
                         f"{MAX_PART_JOINTS} are supported")
    return tuple(checked)


def _parts_from_any(parts) -> tuple[tuple[int, ...], ...]:
    """Accept the nested form or the flat -1-separated form."""
    if isinstance(parts, Sequence) and not isinstance(parts, (str, bytes)) and parts and all(
            isinstance(p, (int, np.integer)) and not isinstance(p, bool) for p in parts):
        return decode_parts(parts)
    return _check_parts(parts)


def _check_attributes(out_hw, patch, vis_thresh, mode) -> tuple[int, int, int, float, str]:
    if isinstance(out_hw, (str, bytes)) or not isinstance(out_hw, Sequence) or len(out_hw) != 2:
        raise ValueError(f"KeypointPatchPool: out_hw must be (height, width), got {out_hw!r}")
    out_h, out_w = (_as_int(v, "out_hw entry") for v in out_hw)
    patch = _as_int(patch, "patch")
    if patch < 1:
        raise ValueError(f"KeypointPatchPool: patch must be >= 1, got {patch}")
    if not (1 <= out_h <= MAX_CROP_SIDE and 1 <= out_w <= MAX_CROP_SIDE):
        raise ValueError(f"KeypointPatchPool: out_hw {(out_h, out_w)} must lie in "
                         f"[1, {MAX_CROP_SIDE}] on both axes")
    if out_h % patch or out_w % patch:
        raise ValueError(f"KeypointPatchPool: out_hw {(out_h, out_w)} is not divisible by "
                         f"patch={patch}; choose out_hw as multiples of the patch size "
                         "(KeyRe-ID: (256, 128) with patch 16)")
    if isinstance(vis_thresh, bool) or not isinstance(vis_thresh, (int, float, np.floating)) \
            or not math.isfinite(float(vis_thresh)):
        raise ValueError(f"KeypointPatchPool: vis_thresh must be a finite number, got "
                         f"{vis_thresh!r}")
    if mode not in MODES:
        raise ValueError(f"KeypointPatchPool: unknown mode {mode!r}; choose one of {MODES} "
                         "(paper: the paper-era generator, max: the later generator as "
                         "intended, constant: what the later generator produced)")
    return out_h, out_w, patch, float(vis_thresh), mode


def _float32_threshold(vis_thresh: float) -> float:
    """vis_thresh as the ONNX / C ABI carry it: rounded to float32. A joint is skipped when its
    confidence is <= this value (NaN confidences are skipped too)."""
    return float(np.float32(vis_thresh))


def _check_inputs(keypoints: torch.Tensor, crop_hw: torch.Tensor, frame_valid: torch.Tensor,
                  parts) -> tuple[int, int, int]:
    if not isinstance(keypoints, torch.Tensor) or keypoints.dim() != 4 or keypoints.shape[-1] != 3:
        shape = list(keypoints.shape) if isinstance(keypoints, torch.Tensor) else type(keypoints)
        raise ValueError(f"KeypointPatchPool: keypoints must be a [B, T, J, 3] tensor of "
                         f"(x, y, confidence), got {shape}")
    batch, frames, joints, _ = keypoints.shape
    if keypoints.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"KeypointPatchPool: keypoints dtype {keypoints.dtype} is not "
                         f"supported; use one of {[str(d) for d in _FLOAT_DTYPES]}")
    if keypoints.requires_grad:
        raise ValueError("KeypointPatchPool: keypoints require grad, but the op has no "
                         "gradient (keypoints are detector output, not learned); pass "
                         "keypoints.detach()")
    if not isinstance(crop_hw, torch.Tensor) or tuple(crop_hw.shape) != (batch, frames, 2):
        shape = list(crop_hw.shape) if isinstance(crop_hw, torch.Tensor) else type(crop_hw)
        raise ValueError(f"KeypointPatchPool: crop_hw must be [B, T, 2] = "
                         f"{[batch, frames, 2]} (height, width per frame), got {shape}")
    if crop_hw.dtype != torch.int32:
        raise ValueError(f"KeypointPatchPool: crop_hw must be int32, got {crop_hw.dtype}; "
                         "pass crop_hw.to(torch.int32)")
    if not isinstance(frame_valid, torch.Tensor) or tuple(frame_valid.shape) != (batch, frames):
        shape = list(frame_valid.shape) if isinstance(frame_valid, torch.Tensor) \
            else type(frame_valid)
        raise ValueError(f"KeypointPatchPool: frame_valid must be [B, T] = {[batch, frames]}, "
                         f"got {shape}")
    if frame_valid.dtype != torch.bool:
        raise ValueError(f"KeypointPatchPool: frame_valid must be bool, got {frame_valid.dtype};"
                         " pass frame_valid.to(torch.bool)")
    if crop_hw.device != keypoints.device or frame_valid.device != keypoints.device:
        raise ValueError(f"KeypointPatchPool: inputs on different devices (keypoints "
                         f"{keypoints.device}, crop_hw {crop_hw.device}, frame_valid "
                         f"{frame_valid.device}); move them to one device")
    if frames < 1:
        raise ValueError("KeypointPatchPool: T = 0 frames; a clip needs at least one frame")
    needed = 1 + max(max(p) for p in parts)
    if joints < needed:
        raise ValueError(f"KeypointPatchPool: keypoints have J={joints} joints but the parts "
                         f"use joint index {needed - 1}; pass all joints (COCO-17: J=17) or "
                         "parts that fit")
    return batch, frames, joints


def _output_shape(batch: int, parts, out_h: int, out_w: int, patch: int) -> tuple[int, int, int]:
    return batch, len(parts), (out_h // patch) * (out_w // patch)


# ------------------------------------------------------------------------------------------------
# Reference (the spec)
# ------------------------------------------------------------------------------------------------
def keypoint_patch_pool(keypoints: torch.Tensor, crop_hw: torch.Tensor,
                        frame_valid: torch.Tensor, *, parts=KEYREID_PARTS,
                        out_hw: Sequence[int] = (256, 128), patch: int = 16,
                        vis_thresh: float = 0.1, mode: str = "paper") -> torch.Tensor:
    """Reference KeypointPatchPool (the spec); materialises each part's heatmap at crop
    resolution.

    Args:
        keypoints: ``[B, T, J, 3]`` (x, y, confidence) in pixels of each frame's original crop
            (x right, y down), float16/bfloat16/float32/float64. Must not require grad.
        crop_hw: ``[B, T, 2]`` int32 (height, width) of each frame's crop; on valid frames each
            side lies in ``[1, 32768]``.
        frame_valid: ``[B, T]`` bool; False marks a padding frame, which contributes 0 to every
            patch and still counts in the mean over T (the official loader's zero padding).
        parts: joint groups, nested (``KEYREID_PARTS``) or flat with -1 separators.
        out_hw: ``(out_h, out_w)`` of the resized heatmaps, multiples of ``patch``.
        patch: side of the square pooling blocks.
        vis_thresh: joints with confidence ``<= float32(vis_thresh)`` are skipped.
        mode: ``"paper"`` (sum-1 kernels averaged over the windows covering each pixel),
            ``"max"`` (max-1 kernels, element-wise maximum) or ``"constant"`` (-1 for every
            part of every valid frame).

    Returns:
        ``[B, P, K]`` with ``K = (out_h / patch) * (out_w / patch)`` patches in row-major order,
        in keypoints' dtype. Geometry (truncation, windows, resize indices) is exact; values
        are computed in keypoints' dtype.

    Raises:
        ValueError: bad shapes, dtypes, attributes, or a valid frame whose crop size lies
        outside ``[1, 32768]``.
    """
    parts = _parts_from_any(parts)
    out_h, out_w, patch, vis_thresh, mode = _check_attributes(out_hw, patch, vis_thresh, mode)
    batch, frames, joints = _check_inputs(keypoints, crop_hw, frame_valid, parts)
    out_shape = _output_shape(batch, parts, out_h, out_w, patch)
    dtype, device = keypoints.dtype, keypoints.device
    valid = frame_valid.reshape(-1)
    sizes = crop_hw.reshape(-1, 2).to(torch.int64)
    bad = valid & ((sizes < 1) | (sizes > MAX_CROP_SIDE)).any(dim=1)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"KeypointPatchPool: valid frame (b, t) = {divmod(first, frames)} has crop size "
            f"{sizes[first].tolist()} (height, width); each side must lie in "
            f"[1, {MAX_CROP_SIDE}]. Fix crop_hw or mark the frame invalid in frame_valid")
    per_frame = torch.zeros(batch * frames, out_shape[1], out_shape[2], dtype=dtype,
                            device=device)
    if mode == "constant":
        per_frame[valid] = -1
    else:
        frame_ids = valid.nonzero()[:, 0]
        flat_keypoints = keypoints.reshape(batch * frames, joints, 3)
        for chunk in _frame_chunks(frame_ids, sizes, len(parts)):
            per_frame[chunk] = _pool_frames(flat_keypoints[chunk], sizes[chunk], parts,
                                            out_h, out_w, patch, vis_thresh, mode)
    return per_frame.reshape(batch, frames, *out_shape[1:]).mean(dim=1)


def _frame_chunks(frame_ids: torch.Tensor, sizes: torch.Tensor, num_parts: int):
    """Group the valid frames, in size order, into chunks padded to their largest crop: a chunk
    closes when its padded heatmaps would exceed the memory budget or twice its frames' area."""
    if frame_ids.numel() == 0:
        return
    frame_sizes = sizes[frame_ids].tolist()
    order = sorted(range(len(frame_sizes)), key=lambda i: tuple(frame_sizes[i]))
    ids = frame_ids.tolist()
    chunk: list[int] = []
    pad_h = pad_w = area = 0
    for index in order:
        height, width = frame_sizes[index]
        grown = (len(chunk) + 1) * max(pad_h, height) * max(pad_w, width)
        if chunk and (grown * num_parts > _REFERENCE_CHUNK_ELEMENTS
                      or grown > 2 * (area + height * width)):
            yield frame_ids.new_tensor(chunk)
            chunk, pad_h, pad_w, area = [], 0, 0, 0
        chunk.append(ids[index])
        pad_h, pad_w, area = max(pad_h, height), max(pad_w, width), area + height * width
    yield frame_ids.new_tensor(chunk)


def _part_slots(parts, device):
    """``[P, S]`` joint index per (part, slot) and the mask of used slots (S = largest part)."""
    width = max(len(p) for p in parts)
    joint = torch.zeros(len(parts), width, dtype=torch.int64)
    used = torch.zeros(len(parts), width, dtype=torch.bool)
    for index, part in enumerate(parts):
        joint[index, :len(part)] = torch.tensor(part)
        used[index, :len(part)] = True
    return joint.to(device), used.to(device)


def _resize_taps(in_size: torch.Tensor, out_size: int, dtype: torch.dtype):
    """Bilinear (align_corners=False) taps of ``out_size`` outputs over inputs of length
    ``in_size`` [n]: lower index, upper index, upper weight, each ``[n, out_size]``.

    torch's source coordinate ``max((o + 0.5) * in / out - 0.5, 0)`` is evaluated exactly as
    the rational ``max((2o + 1) * in - out, 0) / (2 * out)``: integer part by integer division,
    fraction in float64. (float32 evaluation, as torch's own kernel does, shifts the taps of a
    2000-pixel crop by ~1e-4 pixel.)
    """
    dst = torch.arange(out_size, device=in_size.device, dtype=torch.int64)
    numerator = ((2 * dst + 1)[None, :] * in_size[:, None] - out_size).clamp(min=0)
    denominator = 2 * out_size
    lower = numerator // denominator
    upper_weight = ((numerator - lower * denominator).to(torch.float64) / denominator).to(dtype)
    upper = lower + (lower < in_size[:, None] - 1).to(torch.int64)
    return lower, upper, upper_weight


def _pool_frames(keypoints: torch.Tensor, sizes: torch.Tensor, parts, out_h: int, out_w: int,
                 patch: int, vis_thresh: float, mode: str) -> torch.Tensor:
    """[n, J, 3] keypoints of valid frames, [n, 2] crop sizes -> [n, P, K] pooled weights."""
    dtype, device = keypoints.dtype, keypoints.device
    num, num_parts = keypoints.shape[0], len(parts)
    slot_joint, slot_used = _part_slots(parts, device)
    slots = keypoints[:, slot_joint].to(torch.float64)  # [n, P, S, 3]
    height, width = sizes[:, 0], sizes[:, 1]
    radius = width // 11  # int(w / 11) of the official generator
    # Window centres: Python int() truncates toward zero. Geometry in float64 is exact here.
    centre_x, centre_y = torch.trunc(slots[..., 0]), torch.trunc(slots[..., 1])
    r = radius.to(torch.float64)[:, None, None]
    intersects = ((centre_x + r >= 0) & (centre_x - r <= (width - 1)[:, None, None])
                  & (centre_y + r >= 0) & (centre_y - r <= (height - 1)[:, None, None]))
    drawn = slot_used & (slots[..., 2] > _float32_threshold(vis_thresh)) & intersects
    centre_x = torch.where(drawn, centre_x, 0).to(torch.int64)
    centre_y = torch.where(drawn, centre_y, 0).to(torch.int64)
    # exp(-d^2 / (2 std^2)) with std = M / 4, M = 2r + 1. The kernels' sum-1 / max-1 scale is
    # left out: the division by the part's maximum below removes any common scale.
    exponent_scale = (-8.0 / (2 * radius + 1).to(torch.float64) ** 2)[:, None, None, None]

    def axis_window(centre, length, extent):
        pos = torch.arange(extent, device=device, dtype=torch.int64)
        offset = pos - centre[..., None]  # [n, P, S, extent]
        inside = (drawn[..., None] & (offset.abs() <= radius[:, None, None, None])
                  & (pos < length[:, None, None, None]))
        value = (offset.to(torch.float64) ** 2 * exponent_scale).to(dtype).exp()
        return torch.where(inside, value, torch.zeros((), dtype=dtype, device=device)), inside

    pad_h, pad_w = int(height.max()), int(width.max())
    window_y, inside_y = axis_window(centre_y, height, pad_h)
    window_x, inside_x = axis_window(centre_x, width, pad_w)
    heat = torch.zeros(num, num_parts, pad_h, pad_w, dtype=dtype, device=device)
    count = torch.zeros(num, num_parts, pad_h, pad_w, dtype=torch.int32, device=device)
    for slot in range(slot_joint.shape[1]):
        kernel = window_y[:, :, slot, :, None] * window_x[:, :, slot, None, :]
        if mode == "paper":  # official paper-era generator: sum, then divide by window count
            heat += kernel
            count += inside_y[:, :, slot, :, None] & inside_x[:, :, slot, None, :]
        else:  # "max": element-wise maximum of max-1 kernels
            heat = torch.maximum(heat, kernel)
    if mode == "paper":
        heat = torch.where(count > 0, heat / count.clamp(min=1).to(dtype), heat)
    # Loader: divide each part by its maximum over the crop (an all-zero part stays zero).
    part_max = heat.amax(dim=(2, 3), keepdim=True)
    heat = torch.where(part_max > 0, heat / torch.where(part_max > 0, part_max, 1), heat)
    # Loader: F.interpolate(bilinear, align_corners=False), rows then columns (separable).
    low, high, frac = _resize_taps(height, out_h, dtype)
    rows_low = heat.gather(2, low[:, None, :, None].expand(num, num_parts, out_h, pad_w))
    rows_high = heat.gather(2, high[:, None, :, None].expand(num, num_parts, out_h, pad_w))
    frac = frac[:, None, :, None]
    rows = rows_low * (1 - frac) + rows_high * frac
    low, high, frac = _resize_taps(width, out_w, dtype)
    cols_low = rows.gather(3, low[:, None, None, :].expand(num, num_parts, out_h, out_w))
    cols_high = rows.gather(3, high[:, None, None, :].expand(num, num_parts, out_h, out_w))
    frac = frac[:, None, None, :]
    resized = cols_low * (1 - frac) + cols_high * frac
    # Loader: per-part min-max scaling, then Normalize(mean 0.5, std 0.5).
    low_value = resized.amin(dim=(2, 3), keepdim=True)
    high_value = resized.amax(dim=(2, 3), keepdim=True)
    scaled = (resized - low_value) / (high_value - low_value + MIN_MAX_EPS)
    normalised = (scaled - 0.5) / 0.5
    # Model: mean over each patch x patch block, row-major (F.unfold(k=patch, s=patch).mean).
    blocks = normalised.reshape(num, num_parts, out_h // patch, patch, out_w // patch, patch)
    return blocks.mean(dim=(3, 5)).reshape(num, num_parts, -1)


# ------------------------------------------------------------------------------------------------
# torch custom op: torch.ops.reid.keypoint_patch_pool
# ------------------------------------------------------------------------------------------------
@torch.library.custom_op("reid::keypoint_patch_pool", mutates_args=())
def _keypoint_patch_pool_op(keypoints: torch.Tensor, crop_hw: torch.Tensor,
                            frame_valid: torch.Tensor, parts: list[int], out_hw: list[int],
                            patch: int, vis_thresh: float, mode: str) -> torch.Tensor:
    return keypoint_patch_pool(keypoints, crop_hw, frame_valid, parts=decode_parts(parts),
                               out_hw=out_hw, patch=patch, vis_thresh=vis_thresh, mode=mode)


_warned_no_kernel = False


@_keypoint_patch_pool_op.register_kernel("cuda")
def _keypoint_patch_pool_cuda(keypoints, crop_hw, frame_valid, parts, out_hw, patch,
                              vis_thresh, mode):
    decoded = decode_parts(parts)
    out_h, out_w, patch, vis_thresh, mode = _check_attributes(out_hw, patch, vis_thresh, mode)
    batch, _, _ = _check_inputs(keypoints, crop_hw, frame_valid, decoded)
    try:
        from reid_sdk import _native  # lazy: the CPU path needs no CUDA library
    except ImportError as err:
        global _warned_no_kernel
        if not _warned_no_kernel:
            warnings.warn(f"reid.keypoint_patch_pool runs the torch reference on CUDA (slower, "
                          f"syncs, not CUDA-graph capturable) because the kernels are "
                          f"unavailable: {err}", RuntimeWarning, stacklevel=2)
            _warned_no_kernel = True
        return keypoint_patch_pool(keypoints, crop_hw, frame_valid, parts=decoded,
                                   out_hw=(out_h, out_w), patch=patch, vis_thresh=vis_thresh,
                                   mode=mode)
    out = torch.empty(_output_shape(batch, decoded, out_h, out_w, patch), dtype=keypoints.dtype,
                      device=keypoints.device)
    with torch.cuda.device(keypoints.device):
        stream = torch.cuda.current_stream(keypoints.device).cuda_stream
        _native.keypoint_patch_pool(keypoints, crop_hw, frame_valid, out, parts=decoded,
                                    out_hw=(out_h, out_w), patch=patch, vis_thresh=vis_thresh,
                                    mode=mode, stream=stream)
    return out


@_keypoint_patch_pool_op.register_fake
def _keypoint_patch_pool_fake(keypoints, crop_hw, frame_valid, parts, out_hw, patch, vis_thresh,
                              mode):
    decoded = decode_parts(parts)
    out_h, out_w, patch, _, _ = _check_attributes(out_hw, patch, vis_thresh, mode)
    batch, _, _ = _check_inputs(keypoints, crop_hw, frame_valid, decoded)
    return keypoints.new_empty(_output_shape(batch, decoded, out_h, out_w, patch))


def keypoint_patch_pool_op(keypoints: torch.Tensor, crop_hw: torch.Tensor,
                           frame_valid: torch.Tensor, *, parts=KEYREID_PARTS,
                           out_hw: Sequence[int] = (256, 128), patch: int = 16,
                           vis_thresh: float = 0.1, mode: str = "paper") -> torch.Tensor:
    """``torch.ops.reid.keypoint_patch_pool`` with :func:`keypoint_patch_pool`'s signature:
    what models call (it exports to ONNX as ``reid::KeypointPatchPool`` and runs our kernel on
    CUDA). Shapes and semantics as :func:`keypoint_patch_pool`; on CUDA a valid frame with a
    crop side outside ``[1, 32768]`` gives NaN weights instead of an error (the kernel cannot
    raise without a device sync)."""
    return torch.ops.reid.keypoint_patch_pool(
        keypoints, crop_hw, frame_valid, encode_parts(_parts_from_any(parts)),
        [int(v) for v in out_hw], int(patch), float(vis_thresh), str(mode))


# ------------------------------------------------------------------------------------------------
# ONNX: reid::KeypointPatchPool v1
# ------------------------------------------------------------------------------------------------
ONNX_OP_NAME = "KeypointPatchPool"
_MIN_ONNX_OPSET = 17

_DOC = (
    "weights[B, P, K] from keypoints [B, T, J, 3] (x, y, confidence in crop pixels), crop_hw "
    "[B, T, 2] int32 (height, width) and frame_valid [B, T] bool: KeyRe-ID's per-part Gaussian "
    "heatmaps at crop resolution (radius int(w/11), std (2r+1)/4, windows at the truncated joint "
    "positions, clipped; joints with confidence <= vis_thresh skipped), combined per part (mode "
    "paper: averaged over the covering windows; max: element-wise maximum; constant: -1), "
    "divided by the part's maximum, bilinear resize to out_hw (align_corners=False), per-part "
    "min-max scaling (eps 1e-6), (x - 0.5) / 0.5, patch x patch block means (row-major), mean over "
    "T with invalid frames counted as 0. parts: joint indices, parts separated by -1. A valid "
    "frame whose crop side lies outside [1, 32768] gives NaN. Computed in float32.")


def _attr(name, value):
    return helper.make_attribute(name, value)


_DEFAULT_ATTRIBUTES = {
    "parts": _attr("parts", encode_parts(KEYREID_PARTS)),
    "out_hw": _attr("out_hw", [256, 128]),
    "patch": _attr("patch", 16),
    "vis_thresh": _attr("vis_thresh", 0.1),
    "mode": _attr("mode", "paper"),
}

_SCHEMA = onnx.defs.OpSchema(
    ONNX_OP_NAME, _onnx.REID_DOMAIN, _onnx.REID_OPSET_VERSION, doc=_DOC,
    inputs=[
        onnx.defs.OpSchema.FormalParameter("keypoints", "T", "[B, T, J, 3] (x, y, confidence)"),
        onnx.defs.OpSchema.FormalParameter("crop_hw", "tensor(int32)",
                                           "[B, T, 2] crop (height, width) per frame"),
        onnx.defs.OpSchema.FormalParameter("frame_valid", "tensor(bool)",
                                           "[B, T] false for padding frames"),
    ],
    outputs=[onnx.defs.OpSchema.FormalParameter("weights", "T", "[B, P, K] patch weights")],
    type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"],
                       "float32, float16 or bfloat16 (arithmetic is float32)")],
    attributes=[
        onnx.defs.OpSchema.Attribute("parts", _DEFAULT_ATTRIBUTES["parts"],
                                     "joint indices of each part, parts separated by -1"),
        onnx.defs.OpSchema.Attribute("out_hw", _DEFAULT_ATTRIBUTES["out_hw"],
                                     "(height, width) of the resized heatmaps"),
        onnx.defs.OpSchema.Attribute("patch", _DEFAULT_ATTRIBUTES["patch"],
                                     "side of the pooling blocks; divides out_hw"),
        onnx.defs.OpSchema.Attribute("vis_thresh", _DEFAULT_ATTRIBUTES["vis_thresh"],
                                     "joints with confidence <= vis_thresh are skipped"),
        onnx.defs.OpSchema.Attribute("mode", _DEFAULT_ATTRIBUTES["mode"],
                                     "paper, max or constant"),
    ],
)


def _infer_output_type(ctx) -> None:
    """weights: keypoints' element type, shape [B, P, K] from the input and the attributes."""
    def attribute(name):
        proto = ctx.get_attribute(name)
        return helper.get_attribute_value(proto if proto is not None
                                          else _DEFAULT_ATTRIBUTES[name])

    keypoints_type = ctx.get_input_type(0)
    if keypoints_type is None or not keypoints_type.HasField("tensor_type"):
        return
    out_h, out_w = attribute("out_hw")
    patch = attribute("patch")
    batch = None
    if keypoints_type.tensor_type.HasField("shape") and keypoints_type.tensor_type.shape.dim:
        batch = keypoints_type.tensor_type.shape.dim[0]
    output = helper.make_tensor_type_proto(keypoints_type.tensor_type.elem_type, None)
    dims = output.tensor_type.shape.dim
    batch_dim = dims.add()
    if batch is not None:
        batch_dim.CopyFrom(batch)
    dims.add().dim_value = list(attribute("parts")).count(-1) + 1
    dims.add().dim_value = (out_h // patch) * (out_w // patch)
    ctx.set_output_type(0, output)


_SCHEMA.set_type_and_shape_inference_function(_infer_output_type)


def _translate(keypoints, crop_hw, frame_valid, parts, out_hw, patch, vis_thresh, mode):
    import onnxscript

    reid = onnxscript.values.Opset(_onnx.REID_DOMAIN, _onnx.REID_OPSET_VERSION)
    decoded = decode_parts(parts)  # validate before anything reaches the graph
    out_h, out_w, patch, vis_thresh, mode = _check_attributes(out_hw, patch, vis_thresh, mode)
    return reid.KeypointPatchPool(keypoints, crop_hw, frame_valid, parts=encode_parts(decoded),
                                  out_hw=[out_h, out_w], patch=patch, vis_thresh=vis_thresh,
                                  mode=mode)


class _GraphWriter:
    """Appends nodes with generated output names (``<prefix><n>``)."""

    def __init__(self, prefix: str, opset: int):
        self.nodes: list[onnx.NodeProto] = []
        self.prefix = prefix
        self.opset = opset

    def __call__(self, op_type: str, *inputs: str, out: str | None = None, **attrs) -> str:
        out = out or f"{self.prefix}{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def const(self, value, dtype=None) -> str:
        array = np.asarray(value, dtype=dtype)
        return self("Constant", value=onnx.numpy_helper.from_array(array))

    def attr_const(self, attr_type: str, name: str) -> str:
        """A Constant whose value is the function attribute ``name``."""
        out = f"{self.prefix}{len(self.nodes)}"
        node = helper.make_node("Constant", [], [out])
        proto_type = {"value_ints": onnx.AttributeProto.INTS,
                      "value_int": onnx.AttributeProto.INT,
                      "value_float": onnx.AttributeProto.FLOAT,
                      "value_string": onnx.AttributeProto.STRING}[attr_type]
        node.attribute.append(onnx.AttributeProto(name=attr_type, ref_attr_name=name,
                                                  type=proto_type))
        self.nodes.append(node)
        return out

    def reduce(self, op_type: str, data: str, axes: Sequence[int], keepdims: int) -> str:
        # ReduceMax / ReduceMin / ReduceMean take axes as an input from opset 18 on
        # (ReduceSum from 13): before that, as an attribute.
        if op_type == "ReduceSum" or self.opset >= 18:
            return self(op_type, data, self.const(list(axes), np.int64), keepdims=keepdims)
        return self(op_type, data, axes=list(axes), keepdims=keepdims)


def _frame_body(opset: int) -> onnx.GraphProto:
    """Loop body: frame ``i`` -> its ``[P, K]`` contribution. Reads the function-scope values
    ``kp_frames`` [N, J, 3] float, ``hw_frames`` [N, 2] int64, ``valid_frames`` [N] bool,
    ``slot_joint`` / ``slot_used`` [P, S], ``threshold``, ``out_hw_values`` [2],
    ``patch_shape`` [5], ``pooled_shape`` [2], ``is_paper``, ``is_constant``, ``mode_known``."""
    g = _GraphWriter("f", opset)
    i64 = np.int64
    zero_i, one_i = g.const(0, i64), g.const(1, i64)
    zero_f, one_f = g.const(0.0, np.float32), g.const(1.0, np.float32)
    keypoints = g("Gather", "kp_frames", "iteration", axis=0)  # [J, 3]
    sizes = g("Gather", "hw_frames", "iteration", axis=0)  # [2]
    valid = g("Gather", "valid_frames", "iteration", axis=0)
    height, width = g("Gather", sizes, zero_i, axis=0), g("Gather", sizes, one_i, axis=0)
    max_side = g.const(MAX_CROP_SIDE, i64)
    size_bad = g("Or", g("Less", g("ReduceMin", sizes, keepdims=0), one_i),
                 g("Greater", g("ReduceMax", sizes, keepdims=0), max_side))
    bad = g("And", valid, size_bad)
    # Heatmaps are only built for valid frames with sane sizes in a drawing mode; every other
    # frame runs the same nodes on a 1 x 1 crop and is overwritten below.
    draws = g("And", g("And", valid, g("Not", size_bad)), g("Not", "is_constant"))
    height = g("Where", draws, height, one_i)
    width = g("Where", draws, width, one_i)
    radius = g("Div", width, g.const(11, i64))  # int(w / 11), w >= 1
    radius_f = g("Cast", radius, to=TensorProto.FLOAT)
    window = g("Cast", g("Add", g("Mul", radius, g.const(2, i64)), one_i), to=TensorProto.FLOAT)
    # exp(-d^2 / (2 std^2)), std = M / 4; the kernels' scale cancels in the part-max division.
    exponent_scale = g("Div", g.const(-8.0, np.float32), g("Mul", window, window))

    def joint_field(index):  # [P, S] values of field `index` (x, y, confidence)
        field = g("Gather", keypoints, g.const(index, i64), axis=1)
        return g("Gather", field, "slot_joint", axis=0)

    def truncate(value):  # Python int(): toward zero (NaN stays NaN and is never drawn)
        return g("Mul", g("Sign", value), g("Floor", g("Abs", value)))

    centre_x, centre_y = truncate(joint_field(0)), truncate(joint_field(1))
    height_f = g("Cast", height, to=TensorProto.FLOAT)
    width_f = g("Cast", width, to=TensorProto.FLOAT)
    last_y, last_x = g("Sub", height_f, one_f), g("Sub", width_f, one_f)
    checks = [
        "slot_used",
        g("Greater", joint_field(2), "threshold"),
        g("GreaterOrEqual", g("Add", centre_x, radius_f), zero_f),
        g("LessOrEqual", g("Sub", centre_x, radius_f), last_x),
        g("GreaterOrEqual", g("Add", centre_y, radius_f), zero_f),
        g("LessOrEqual", g("Sub", centre_y, radius_f), last_y),
    ]
    drawn = checks[0]
    for check in checks[1:]:
        drawn = g("And", drawn, check)

    def axis_window(centre, length):  # [P, S, length] window values and coverage
        positions = g("Cast", g("Range", zero_i, length, one_i), to=TensorProto.FLOAT)
        offset = g("Sub", positions, g("Unsqueeze", centre, g.const([2], i64)))
        inside = g("And", g("Unsqueeze", drawn, g.const([2], i64)),
                   g("LessOrEqual", g("Abs", offset), radius_f))
        value = g("Exp", g("Mul", g("Mul", offset, offset), exponent_scale))
        return g("Where", inside, value, zero_f), g("Cast", inside, to=TensorProto.FLOAT)

    window_y, inside_y = axis_window(centre_y, height)
    window_x, inside_x = axis_window(centre_x, width)
    axis3, axis2 = g.const([3], i64), g.const([2], i64)
    kernels = g("Mul", g("Unsqueeze", window_y, axis3), g("Unsqueeze", window_x, axis2))
    coverage = g("Mul", g("Unsqueeze", inside_y, axis3), g("Unsqueeze", inside_x, axis2))
    # paper: sum over the part's windows / number of windows covering the pixel (0 stays 0);
    # max: element-wise maximum.
    paper = g("Div", g.reduce("ReduceSum", kernels, [1], 0),
              g("Max", g.reduce("ReduceSum", coverage, [1], 0), one_f))
    heat = g("Where", "is_paper", paper, g.reduce("ReduceMax", kernels, [1], 0))  # [P, h, w]
    part_max = g.reduce("ReduceMax", heat, [1, 2], 1)
    heat = g("Div", heat, g("Where", g("Greater", part_max, zero_f), part_max, one_f))

    def taps(in_size, out_index):
        """Bilinear taps as _resize_taps: exact integer source positions."""
        out_size = g("Gather", "out_hw_values", g.const(out_index, i64), axis=0)
        dst = g("Range", zero_i, out_size, one_i)
        numerator = g("Max", g("Sub", g("Mul", g("Add", g("Mul", dst, g.const(2, i64)), one_i),
                                        in_size), out_size), zero_i)
        denominator = g("Mul", out_size, g.const(2, i64))
        low = g("Div", numerator, denominator)
        frac = g("Div", g("Cast", g("Sub", numerator, g("Mul", low, denominator)),
                          to=TensorProto.FLOAT), g("Cast", denominator, to=TensorProto.FLOAT))
        high = g("Add", low, g("Cast", g("Less", low, g("Sub", in_size, one_i)),
                               to=TensorProto.INT64))
        return low, high, frac

    low, high, frac = taps(height, 0)
    frac = g("Unsqueeze", frac, g.const([1], i64))
    rows = g("Add", g("Mul", g("Gather", heat, low, axis=1), g("Sub", one_f, frac)),
             g("Mul", g("Gather", heat, high, axis=1), frac))
    low, high, frac = taps(width, 1)
    resized = g("Add", g("Mul", g("Gather", rows, low, axis=2), g("Sub", one_f, frac)),
                g("Mul", g("Gather", rows, high, axis=2), frac))
    low_value = g.reduce("ReduceMin", resized, [1, 2], 1)
    high_value = g.reduce("ReduceMax", resized, [1, 2], 1)
    scaled = g("Div", g("Sub", resized, low_value),
               g("Add", g("Sub", high_value, low_value), g.const(MIN_MAX_EPS, np.float32)))
    half = g.const(0.5, np.float32)
    normalised = g("Div", g("Sub", scaled, half), half)
    blocks = g("Reshape", normalised, "patch_shape")  # [P, Kh, patch, Kw, patch]
    pooled = g("Reshape", g.reduce("ReduceMean", blocks, [2, 4], 0), "pooled_shape")
    pooled = g("Where", "is_constant", g.const(-1.0, np.float32), pooled)
    pooled = g("Where", valid, pooled, zero_f)
    nan = g.const(np.nan, np.float32)
    pooled = g("Where", g("And", bad, "mode_known"), nan, pooled)
    g("Where", "mode_known", pooled, nan, out="frame_weights")
    g("Identity", "condition", out="condition_out")
    return helper.make_graph(
        g.nodes, "keypoint_patch_pool_frame",
        [helper.make_tensor_value_info("iteration", TensorProto.INT64, []),
         helper.make_tensor_value_info("condition", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("condition_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("frame_weights", TensorProto.FLOAT, ["P", "K"])])


def build_function(ai_onnx_opset: int) -> onnx.FunctionProto:
    """The model-local function ``reid::KeypointPatchPool`` in standard ONNX ops (opset >= 17).

    A Loop over the B*T frames builds each frame's parts at crop resolution as ``[P, S, h, w]``
    window stacks (S = largest part; joints gathered through a slot table decoded from the
    ``parts`` attribute), combines them per ``mode``, and runs the loader's chain with exact
    integer bilinear taps (Gather + weights, as the reference; Resize's float32 source
    coordinates drift by ~1e-4 pixel on large crops). The mode string is matched without string
    comparison ops (Equal on strings needs opset 19 and fails in the ReferenceEvaluator): Unique
    over ``[mode, "paper", "max", "constant"]`` maps each candidate to the mode's index 0 only
    when they are equal. An unknown mode gives NaN. Computed in float32.
    """
    if ai_onnx_opset < _MIN_ONNX_OPSET:
        raise ValueError(f"reid::KeypointPatchPool's function body needs ai.onnx opset >= "
                         f"{_MIN_ONNX_OPSET}; the model imports opset {ai_onnx_opset}")
    g = _GraphWriter("k", ai_onnx_opset)
    i64 = np.int64
    zero_i, one_i = g.const(0, i64), g.const(1, i64)
    # Attributes.
    flat_parts = g.attr_const("value_ints", "parts")
    out_hw_values = g("Identity", g.attr_const("value_ints", "out_hw"), out="out_hw_values")
    patch = g.attr_const("value_int", "patch")
    g("Identity", g.attr_const("value_float", "vis_thresh"), out="threshold")
    mode = g("Reshape", g.attr_const("value_string", "mode"), g.const([1], i64))
    candidates = g("Constant", value=helper.make_tensor("modes", TensorProto.STRING, [3],
                                                          [m.encode() for m in MODES]))
    unique_node = helper.make_node("Unique", [g("Concat", mode, candidates, axis=0)],
                                   ["k_unique", "k_first", "k_inverse", "k_counts"], sorted=0)
    g.nodes.append(unique_node)
    matches = g("Equal", g("Slice", "k_inverse", g.const([1], i64), g.const([4], i64)), zero_i)
    g("Gather", matches, g.const(MODES.index("paper"), i64), axis=0, out="is_paper")
    g("Gather", matches, g.const(MODES.index("constant"), i64), axis=0, out="is_constant")
    g("Cast", g.reduce("ReduceMax", g("Cast", matches, to=TensorProto.INT64), [0], 0),
      to=TensorProto.BOOL, out="mode_known")
    # Slot table [P, S] from the -1-separated parts list.
    separator = g("Equal", flat_parts, g.const(-1, i64))
    part_of = g("CumSum", g("Cast", separator, to=TensorProto.INT64), zero_i)
    position = g("Range", zero_i, g("Size", flat_parts), one_i)
    starts = g("Concat", g.const([0], i64),
               g("Add", g("Reshape", g("NonZero", separator), g.const([-1], i64)), one_i),
               axis=0)
    slot = g("Sub", position, g("Gather", starts, part_of, axis=0))
    is_joint = g("Not", separator)
    part_of, slot = g("Compress", part_of, is_joint, axis=0), g("Compress", slot, is_joint, axis=0)
    joints = g("Compress", flat_parts, is_joint, axis=0)
    num_parts = g("Add", g.reduce("ReduceSum", g("Cast", separator, to=TensorProto.INT64),
                                  [0], 1), one_i)  # [1]
    num_slots = g("Add", g.reduce("ReduceMax", slot, [0], 1), one_i)  # [1]
    table_shape = g("Concat", num_parts, num_slots, axis=0)
    indices = g("Concat", g("Unsqueeze", part_of, g.const([1], i64)),
                g("Unsqueeze", slot, g.const([1], i64)), axis=1)
    table = g("ScatterND", g("ConstantOfShape", table_shape,
                             value=helper.make_tensor("minus_one", TensorProto.INT64, [1], [-1])),
              indices, joints)
    g("GreaterOrEqual", table, zero_i, out="slot_used")
    g("Max", table, zero_i, out="slot_joint")
    # Output geometry: [P, out_h / patch, patch, out_w / patch, patch] and [P, K].
    grid = g("Div", out_hw_values, patch)
    patch_1d = g("Reshape", patch, g.const([1], i64))
    g("Concat", num_parts, g("Slice", grid, g.const([0], i64), g.const([1], i64)), patch_1d,
      g("Slice", grid, g.const([1], i64), g.const([2], i64)), patch_1d, axis=0,
      out="patch_shape")
    num_patches = g("Mul", g("Slice", grid, g.const([0], i64), g.const([1], i64)),
                    g("Slice", grid, g.const([1], i64), g.const([2], i64)))
    g("Concat", num_parts, num_patches, axis=0, out="pooled_shape")
    # Frames.
    shape = g("Shape", "keypoints")
    g("Reshape", g("Cast", "keypoints", to=TensorProto.FLOAT),
      g("Concat", g.const([-1], i64), g("Slice", shape, g.const([2], i64), g.const([4], i64)),
        axis=0), out="kp_frames")
    g("Cast", g("Reshape", "crop_hw", g.const([-1, 2], i64)), to=TensorProto.INT64,
      out="hw_frames")
    g("Reshape", "frame_valid", g.const([-1], i64), out="valid_frames")
    num_frames = g("Size", "valid_frames")
    # An explicit `true` condition: the ReferenceEvaluator runs no iteration without one.
    g("Loop", num_frames, g.const(True), body=_frame_body(ai_onnx_opset), out="frame_stack")
    per_clip = g("Reshape", "frame_stack",
                 g("Concat", g("Slice", shape, g.const([0], i64), g.const([2], i64)), num_parts,
                   num_patches, axis=0))
    g("CastLike", g.reduce("ReduceMean", per_clip, [1], 0), "keypoints", out="weights")
    return helper.make_function(
        _onnx.REID_DOMAIN, ONNX_OP_NAME, ["keypoints", "crop_hw", "frame_valid"], ["weights"],
        g.nodes, opset_imports=[helper.make_opsetid("", ai_onnx_opset)],
        attribute_protos=list(_DEFAULT_ATTRIBUTES.values()), doc_string=_DOC)


ONNX_OP = _onnx.register_onnx_op(_onnx.OnnxOp(
    name=ONNX_OP_NAME,
    torch_op=torch.ops.reid.keypoint_patch_pool.default,
    translate=_translate,
    schema=_SCHEMA,
    build_function=build_function,
))
