# KeypointPatchPool wrapper (included by _native.pyx): validates on the host, then launches
# reid_keypoint_patch_pool_{f32,f16,bf16} without the GIL. kernels/keypoint_patch_pool/README.md
# has the semantics; reid_export.ops.keypoint_patch_pool is the reference.
import math

from libc.string cimport memset

# KeyRe-ID's six joint groups (head, torso, left/right arm, left/right leg), COCO-17 indices.
KEYREID_PARTS = ((0, 1, 2, 3, 4), (5, 6, 11, 12), (7, 9), (8, 10), (13, 15), (14, 16))
_KPP_MODES = {"paper": REID_KPP_MODE_PAPER, "max": REID_KPP_MODE_MAX,
              "constant": REID_KPP_MODE_CONSTANT}


def _kpp_parts(parts):
    """Nested joint groups, or the flat form with -1 separators, as a tuple of tuples."""
    if isinstance(parts, (str, bytes)) or not hasattr(parts, "__len__"):
        raise ValueError(f"KeypointPatchPool: parts must be joint-index groups like "
                         f"{KEYREID_PARTS} (or flat with -1 separators), got {parts!r}")
    if len(parts) and all(isinstance(p, int) for p in parts):
        groups, current = [], []
        for joint in parts:
            if joint == -1:
                groups.append(current)
                current = []
            else:
                current.append(joint)
        groups.append(current)
        parts = groups
    checked = []
    for index, group in enumerate(parts):
        if len(group) == 0:
            raise ValueError(f"KeypointPatchPool: part {index} has no joints; give every part "
                             ">= 1 joint")
        if any(not isinstance(j, int) or isinstance(j, bool) or j < 0 for j in group):
            raise ValueError(f"KeypointPatchPool: part {index} = {tuple(group)} must hold "
                             "joint indices >= 0")
        checked.append(tuple(group))
    if not 1 <= len(checked) <= REID_KPP_MAX_PARTS:
        raise ValueError(f"KeypointPatchPool: {len(checked)} parts; 1..{REID_KPP_MAX_PARTS} "
                         "are supported")
    if sum(len(g) for g in checked) > REID_KPP_MAX_PART_JOINTS:
        raise ValueError(f"KeypointPatchPool: the parts list more than "
                         f"{REID_KPP_MAX_PART_JOINTS} joints in all")
    return tuple(checked)


def keypoint_patch_pool(keypoints, crop_hw, frame_valid, out, *, parts=KEYREID_PARTS,
                        out_hw=(256, 128), int patch=16, vis_thresh=0.1, mode="paper",
                        stream=0):
    """weights[B, P, K] = KeypointPatchPool(keypoints, crop_hw, frame_valid) into ``out``.

    keypoints ``[B, T, J, 3]`` float32/float16/bfloat16 (x, y, confidence in crop pixels,
    J <= 32), crop_hw ``[B, T, 2]`` int32 (height, width), frame_valid ``[B, T]`` bool or
    uint8 (0 = padding frame), out ``[B, P, K]`` of keypoints' dtype with
    ``K = (out_h / patch) * (out_w / patch) <= 2048``. Any strides (out must not overlap).
    ``parts``: joint groups (nested or flat with -1 separators); ``mode``: "paper", "max" or
    "constant". A valid frame whose crop side lies outside [1, 32768] makes its clip's weights
    NaN (the kernel does not read device data on the host). Enqueued on ``stream``; returns
    without synchronising.
    """
    kp = as_device_array(keypoints, "keypoints")
    hw = as_device_array(crop_hw, "crop_hw")
    valid = as_device_array(frame_valid, "frame_valid")
    dst = as_device_array(out, "out")
    if kp.ndim != 4 or kp.shape[3] != 3:
        raise ValueError(f"KeypointPatchPool: keypoints must be [B, T, J, 3] (x, y, "
                         f"confidence), got {list(kp.shape)}")
    if kp.dtype not in _FLOAT_INDEX:
        raise ValueError(f"KeypointPatchPool: keypoints dtype {kp.dtype} is not supported; use "
                         "float32, float16 or bfloat16")
    batch, frames, num_joints = kp.shape[0], kp.shape[1], kp.shape[2]
    if frames < 1:
        raise ValueError("KeypointPatchPool: T = 0 frames; a clip needs at least one frame")
    if num_joints > REID_KPP_MAX_JOINTS:
        raise ValueError(f"KeypointPatchPool: keypoints have J={num_joints} joints; the kernel "
                         f"takes at most {REID_KPP_MAX_JOINTS} joints (slice the ones the parts "
                         "use)")
    if hw.shape != (batch, frames, 2):
        raise ValueError(f"KeypointPatchPool: crop_hw must be [B, T, 2] = "
                         f"{[batch, frames, 2]}, got {list(hw.shape)}")
    if hw.dtype != "int32":
        raise ValueError(f"KeypointPatchPool: crop_hw must be int32, got {hw.dtype}")
    if valid.shape != (batch, frames):
        raise ValueError(f"KeypointPatchPool: frame_valid must be [B, T] = {[batch, frames]}, "
                         f"got {list(valid.shape)}")
    if valid.dtype not in ("bool", "uint8"):
        raise ValueError(f"KeypointPatchPool: frame_valid must be bool or uint8, got "
                         f"{valid.dtype}")
    groups = _kpp_parts(parts)
    used = max(max(g) for g in groups)
    if used >= num_joints:
        raise ValueError(f"KeypointPatchPool: keypoints have J={num_joints} joints but the "
                         f"parts use joint index {used}")
    if len(out_hw) != 2:
        raise ValueError(f"KeypointPatchPool: out_hw must be (height, width), got {out_hw!r}")
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    if patch < 1 or not (1 <= out_h <= REID_KPP_MAX_SIDE and 1 <= out_w <= REID_KPP_MAX_SIDE):
        raise ValueError(f"KeypointPatchPool: need patch >= 1 and out_hw in [1, {REID_KPP_MAX_SIDE}]"
                         f", got out_hw={(out_h, out_w)}, patch={patch}")
    if out_h % patch or out_w % patch:
        raise ValueError(f"KeypointPatchPool: out_hw {(out_h, out_w)} is not divisible by "
                         f"patch={patch}")
    num_patches = (out_h // patch) * (out_w // patch)
    if num_patches > REID_KPP_MAX_PATCHES:
        raise ValueError(f"KeypointPatchPool: {num_patches} patches; the kernel takes at most "
                         f"{REID_KPP_MAX_PATCHES} patches (use a larger patch or smaller out_hw)")
    if mode not in _KPP_MODES:
        raise ValueError(f"KeypointPatchPool: unknown mode {mode!r}; choose paper, max or "
                         "constant")
    if not math.isfinite(vis_thresh):
        raise ValueError(f"KeypointPatchPool: vis_thresh must be finite, got {vis_thresh!r}")
    if dst.shape != (batch, len(groups), num_patches):
        raise ValueError(f"KeypointPatchPool: out must be {[batch, len(groups), num_patches]} "
                         f"(B, P, K), got {list(dst.shape)}")
    if dst.dtype != kp.dtype:
        raise ValueError(f"KeypointPatchPool: out dtype {dst.dtype} differs from keypoints dtype "
                         f"{kp.dtype}")
    if _overlapping(dst):
        raise ValueError(f"KeypointPatchPool: out has overlapping elements (strides "
                         f"{dst.strides} for shape {dst.shape}); pass a contiguous out")

    cdef reid_keypoint_patch_pool_desc desc
    memset(&desc, 0, sizeof(desc))
    desc.batch, desc.frames, desc.num_joints = batch, frames, num_joints
    desc.num_parts = len(groups)
    cdef int slot = 0
    for index, group in enumerate(groups):
        desc.part_offsets[index] = slot
        for joint in group:
            desc.part_joints[slot] = joint
            slot += 1
    desc.part_offsets[len(groups)] = slot
    desc.out_h, desc.out_w, desc.patch = out_h, out_w, patch
    desc.vis_thresh = vis_thresh
    desc.mode = _KPP_MODES[mode]
    for axis in range(4):
        desc.keypoints_strides[axis] = kp.strides[axis]
    for axis in range(3):
        desc.crop_hw_strides[axis] = hw.strides[axis]
        desc.out_strides[axis] = dst.strides[axis]
    for axis in range(2):
        desc.frame_valid_strides[axis] = valid.strides[axis]

    cdef reid_keypoint_patch_pool_fn launcher = _kpp_fns[_FLOAT_INDEX[kp.dtype]]
    cdef const void* kp_ptr = <const void*><uintptr_t>kp.ptr
    cdef const int32_t* hw_ptr = <const int32_t*><uintptr_t>hw.ptr
    cdef const uint8_t* valid_ptr = <const uint8_t*><uintptr_t>valid.ptr
    cdef void* out_ptr = <void*><uintptr_t>dst.ptr
    cdef void* stream_ptr = <void*><uintptr_t>int(stream)
    cdef int code
    with nogil:
        code = launcher(&desc, kp_ptr, hw_ptr, valid_ptr, out_ptr, stream_ptr)
    _check(code, "reid_keypoint_patch_pool")
