"""The KeypointPatchPool CUDA kernel's own source, executed on the CPU, against the reference.

tests/ops/kpp_cpu_emulation/ runs the kernel's device code with one std::thread per CUDA thread,
std::barrier for __syncthreads and the warp shuffles / ballots and std::atomic_ref for the shared
atomics, block after block, so CI checks the kernel's arithmetic and its block orchestration
(barriers, shared state, work lists, rounds of frames) without a GPU. The emulation counts the
calls of each patch-evaluation path and of the paper box scan, and the tests assert that their
inputs take the path they are meant to. It cannot see what only hardware shows (memory model,
timing): the `gpu` tests in test_keypoint_patch_pool_gpu.py run the real thing.
"""
import ctypes
import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kpp_cases as cases  # noqa: E402
from host_toolchain import build_emulation, requires_host_toolchain  # noqa: E402

from reid_export.ops.keypoint_patch_pool import (  # noqa: E402
    KEYREID_PARTS, MODES, decode_parts, encode_parts, keypoint_patch_pool)

ROOT = Path(__file__).resolve().parents[2]
KERNEL_SOURCE = ROOT / "kernels" / "keypoint_patch_pool" / "keypoint_patch_pool_kernel.cu"
EMULATION = Path(__file__).resolve().parent / "kpp_cpu_emulation"

pytestmark = requires_host_toolchain

_DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_MODE_CODE = {"paper": 0, "max": 1, "constant": 2}
# Kernel functions whose calls (one per warp) the emulation counts: the three ways a listed patch
# is evaluated and the paper mode's box scan.
COUNTED = ("separable_patch", "lane_column_patch", "per_pixel_patch", "scan_box")


class _Desc(ctypes.Structure):
    """reid_keypoint_patch_pool_desc of kernels/reid_kernels.h."""
    _fields_ = [
        ("batch", ctypes.c_int64), ("frames", ctypes.c_int64), ("num_joints", ctypes.c_int64),
        ("num_parts", ctypes.c_int32), ("part_offsets", ctypes.c_int32 * 17),
        ("part_joints", ctypes.c_int32 * 64), ("out_h", ctypes.c_int32),
        ("out_w", ctypes.c_int32), ("patch", ctypes.c_int32), ("vis_thresh", ctypes.c_float),
        ("mode", ctypes.c_int32), ("keypoints_strides", ctypes.c_int64 * 4),
        ("crop_hw_strides", ctypes.c_int64 * 3), ("frame_valid_strides", ctypes.c_int64 * 2),
        ("out_strides", ctypes.c_int64 * 3)]


def _device_code() -> str:
    """The kernel file up to check_desc (device code and the launch plan), its dynamic shared
    memory and block-shared state redirected to the emulation (one block runs at a time), and a
    call counter at the top of each COUNTED function."""
    source = KERNEL_SOURCE.read_text()
    for old, new in (("extern __shared__ float kpp_shared[];",
                      "float* kpp_shared = emulated_dynamic_shared;"),
                     ("namespace {", "namespace emulated {")):
        assert source.count(old) == 1, f"the emulation expects one {old!r} in {KERNEL_SOURCE}"
        source = source.replace(old, new)
    source, count = re.subn(r"__shared__ (\w+) sh;", r"static \1 sh;", source)
    assert count == 1, "the emulation expects one block-shared state"
    for index, name in enumerate(COUNTED):
        source, count = re.subn(
            rf"(__device__ \w+ {name}\([^)]*\) {{\n)",
            rf"\1    if (threadIdx.x % 32 == 0) ++emulated_path_calls[{index}];\n", source)
        assert count == 1, f"the emulation expects one definition of {name} in {KERNEL_SOURCE}"
    device_part = source[:source.index("int check_desc(")]
    return (f"inline std::atomic<long> emulated_path_calls[{len(COUNTED)}];\n" + device_part
            + "}  // namespace emulated\n}  // namespace reid\n")


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    return build_emulation(
        tmp_path_factory.mktemp("kpp_emulation"), _device_code(), EMULATION / "harness.cpp",
        [EMULATION, ROOT / "kernels" / "keypoint_patch_pool"], _Desc, flags=("-O2",),
        timeout=600)


def _desc(keypoints, parts, out_hw, patch, vis_thresh, mode):
    groups = decode_parts(encode_parts(parts))
    desc = _Desc()
    desc.batch, desc.frames, desc.num_joints = keypoints.shape[:3]
    desc.num_parts = len(groups)
    slot = 0
    for index, group in enumerate(groups):
        desc.part_offsets[index] = slot
        for joint in group:
            desc.part_joints[slot] = joint
            slot += 1
    desc.part_offsets[len(groups)] = slot
    desc.out_h, desc.out_w, desc.patch = out_hw[0], out_hw[1], patch
    desc.vis_thresh, desc.mode = vis_thresh, _MODE_CODE[mode]
    return desc


def _run(lib, keypoints, crop_hw, frame_valid, *, parts=KEYREID_PARTS, out_hw=(256, 128),
         patch=16, vis_thresh=0.1, mode="paper", out=None):
    desc = _desc(keypoints, parts, out_hw, patch, vis_thresh, mode)
    patches = (out_hw[0] // patch) * (out_hw[1] // patch)
    if out is None:
        out = torch.full((keypoints.shape[0], desc.num_parts, patches), float("nan"),
                         dtype=keypoints.dtype)
    valid = frame_valid.to(torch.uint8)
    for field, tensor in (("keypoints_strides", keypoints), ("crop_hw_strides", crop_hw),
                          ("frame_valid_strides", valid), ("out_strides", out)):
        for axis, stride in enumerate(tensor.stride()):
            getattr(desc, field)[axis] = stride
    lib.emulated_keypoint_patch_pool(
        ctypes.byref(desc), _DTYPE_CODE[keypoints.dtype],
        ctypes.c_void_p(keypoints.data_ptr()), ctypes.c_void_p(crop_hw.data_ptr()),
        ctypes.c_void_p(valid.data_ptr()), ctypes.c_void_p(out.data_ptr()))
    return out


def _path_calls(lib):
    """Calls of each COUNTED function during the last _run (warps, summed over blocks)."""
    lib.emulated_path_count.restype = ctypes.c_long
    return {name: lib.emulated_path_count(index) for index, name in enumerate(COUNTED)}


def _error(got, keypoints, crop_hw, frame_valid, **attributes):
    truth = keypoint_patch_pool(keypoints.double(), crop_hw, frame_valid, **attributes)
    return float((got.double() - truth).abs().max())


@pytest.mark.parametrize("mode", MODES)
def test_emulated_kernel_fp32_matches_reference(emulated, mode, rng):
    inputs = cases.as_tensors(*cases.random_clip_batch(rng, 2, 3), torch.float32)
    got = _run(emulated, *inputs, mode=mode)
    assert _error(got, *inputs, mode=mode) <= 1e-5


@pytest.mark.parametrize("mode", ("paper", "max"))
def test_emulated_kernel_on_detector_like_clips(emulated, mode):
    """The benchmark's inputs (upright poses, crops 64..512 px): clustered head joints give
    multi-window patches (all on the lane-column path: KeyRe-ID parts have <= 5 windows) and
    paper boxes worth scanning."""
    spec = importlib.util.spec_from_file_location(
        "bench_keypoint_patch_pool", ROOT / "benchmarks" / "bench_keypoint_patch_pool.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    inputs = bench.make_inputs(2, 4, seed=1, device="cpu")
    got = _run(emulated, *inputs, mode=mode)
    calls = _path_calls(emulated)
    assert _error(got, *inputs, mode=mode) <= 1e-5
    assert calls["separable_patch"] > 0 and calls["lane_column_patch"] > 0
    assert calls["per_pixel_patch"] == 0
    assert (calls["scan_box"] > 0) == (mode == "paper")


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_emulated_kernel_half_types(emulated, dtype, rng):
    inputs = cases.as_tensors(*cases.random_clip_batch(rng, 2, 3), dtype)
    truth = keypoint_patch_pool(inputs[0].double(), *inputs[1:])
    torch_error = float((keypoint_patch_pool(*inputs).double() - truth).abs().max())
    ours = float((_run(emulated, *inputs).double() - truth).abs().max())
    assert ours <= 2 * torch_error


@pytest.mark.parametrize("mode", ("paper", "max"))
def test_emulated_kernel_part_maximum(emulated, mode):
    keypoints, crop_hw, valid, attributes = cases.eps_sensitive_clip(mode)
    inputs = cases.as_tensors(keypoints, crop_hw, valid, torch.float32)
    got = _run(emulated, *inputs, **attributes)
    assert _error(got, *inputs, **attributes) <= 1e-5


@pytest.mark.parametrize("mode", ("paper", "max"))
def test_emulated_kernel_map_minimum_above_zero(emulated, mode, rng):
    keypoints, crop_hw, valid, attributes = cases.fully_covered_clip(rng)
    inputs = cases.as_tensors(keypoints, crop_hw, valid, torch.float32)
    got = _run(emulated, *inputs, mode=mode, **attributes)
    assert _error(got, *inputs, mode=mode, **attributes) <= 1e-5


@pytest.mark.parametrize("out_hw, patch, parts, joints, multi_window_path", [
    ((12, 20), 4, ((3, 3, 5), (5, 0), (19,), (2, 7, 11, 13, 16)), 20, "lane_column_patch"),
    ((8, 8), 8, (tuple(range(32)) * 2,), 32, "per_pixel_patch"),  # > 8 windows per patch
    ((128, 64), 64, ((0, 1, 2, 3, 4), (5, 6)), 17, "per_pixel_patch"),  # patch > 32
    ((36, 24), 12, ((0, 1, 2, 3, 4), (5, 6, 11, 12)), 17, "lane_column_patch"),  # idle lanes
])
def test_emulated_kernel_odd_geometry(emulated, out_hw, patch, parts, joints, multi_window_path,
                                      rng):
    clips = cases.random_clip_batch(rng, 2, 2, joints=joints, kind="small")
    inputs = cases.as_tensors(*cases.cluster_first_frame(*clips, rng), torch.float32)
    attributes = {"out_hw": out_hw, "patch": patch, "parts": parts, "vis_thresh": 0.25}
    for mode in ("paper", "max"):
        got = _run(emulated, *inputs, mode=mode, **attributes)
        assert _path_calls(emulated)[multi_window_path] > 0
        assert _error(got, *inputs, mode=mode, **attributes) <= 1e-5


@pytest.mark.parametrize("out_hw, patch, parts, joints, frames", [
    ((256, 128), 4, ((0, 1, 2, 3, 4), (9, 10)), 17, 3),  # K = 2048: 2 frames per round
    ((16, 8), 4, (tuple(range(30)) * 2, (1, 2)), 32, 6),  # 60 slots: 4 frames per round
    ((64, 32), 16, KEYREID_PARTS, 17, 18),  # 16 frames per round: 2 per warp when reading
])
def test_emulated_kernel_takes_frames_in_rounds(emulated, out_hw, patch, parts, joints,
                                                       frames, rng):
    keypoints, crop_hw, valid = cases.as_tensors(
        *cases.random_clip_batch(rng, 1, frames, joints=joints, invalid_fraction=0.3),
        torch.float32)
    attributes = {"out_hw": out_hw, "patch": patch, "parts": parts}
    desc = _desc(keypoints, parts, out_hw, patch, 0.1, "paper")
    assert emulated.emulated_group_frames(ctypes.byref(desc)) < frames
    for mode in ("paper", "max"):
        got = _run(emulated, keypoints, crop_hw, valid, mode=mode, **attributes)
        assert _error(got, keypoints, crop_hw, valid, mode=mode, **attributes) <= 1e-5


def test_emulated_kernel_strides_writes_and_poison(emulated, rng):
    keypoints, crop_hw, valid = cases.as_tensors(
        *cases.random_clip_batch(rng, 3, 2, invalid_fraction=0), torch.float32)
    big_out = torch.full((6, 3, 256), float("nan"))
    out = big_out.permute(1, 0, 2)[:, :, ::2]
    hw_padded = torch.zeros(3, 2, 3, dtype=torch.int32)
    hw_padded[..., 1:] = crop_hw
    crop_hw[1, 1] = torch.tensor([0, 50])
    hw_padded[1, 1, 1:] = crop_hw[1, 1]
    _run(emulated, keypoints.permute(2, 3, 0, 1).contiguous().permute(2, 3, 0, 1),
         hw_padded[..., 1:], valid.t().contiguous().t(), out=out)
    assert torch.isnan(out[1]).all() and torch.isnan(big_out[..., 1::2]).all()
    keep = [0, 2]
    assert _error(out[keep], keypoints[keep], crop_hw[keep], valid[keep]) <= 1e-5
