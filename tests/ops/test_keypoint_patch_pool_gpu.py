"""KeypointPatchPool CUDA kernel against the reference (run on the GPU machine: pytest -m gpu).

The float64 reference on the CPU, fed the very values the kernel reads (inputs rounded to the
kernel's dtype first), is the truth. fp32: 1e-5. fp16/bf16: no worse than twice the error the
torch reference makes when it computes in that dtype on the GPU.
"""
import importlib
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import kpp_cases as cases  # noqa: E402

from reid_export.ops.keypoint_patch_pool import (  # noqa: E402
    KEYREID_PARTS, MODES, encode_parts, keypoint_patch_pool, keypoint_patch_pool_op)

pytestmark = pytest.mark.gpu
CUDA = "cuda"
HALF_DTYPES = (torch.float16, torch.bfloat16)
KERNEL_DTYPES = (torch.float32,) + HALF_DTYPES


def _native():
    from reid_sdk import _native
    return _native


def _truth(keypoints, crop_hw, frame_valid, **attributes):
    """float64 CPU reference of the values a kernel in keypoints' dtype reads."""
    return keypoint_patch_pool(keypoints.detach().cpu().double(), crop_hw.cpu(),
                               frame_valid.cpu(), **attributes)


def _kernel(keypoints, crop_hw, frame_valid, **attributes):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the reference fallback warns
        return keypoint_patch_pool_op(keypoints, crop_hw, frame_valid, **attributes)


def _cuda_batch(rng, batch, frames, dtype=torch.float32, **kwargs):
    keypoints, crop_hw, valid = cases.random_clip_batch(rng, batch, frames, **kwargs)
    return cases.as_tensors(keypoints, crop_hw, valid, dtype, CUDA)


def _max_error(got, truth):
    return float((got.detach().cpu().double() - truth).abs().max())


@pytest.mark.parametrize("mode", MODES)
def test_fp32_matches_reference(mode, rng):
    for _ in range(3):
        inputs = _cuda_batch(rng, 6, 4)
        got = _kernel(*inputs, mode=mode)
        assert got.dtype == torch.float32 and got.shape == (6, 6, 128) and got.is_cuda
        assert _max_error(got, _truth(*inputs, mode=mode)) <= 1e-5


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_half_types_no_worse_than_twice_torch_in_that_dtype(dtype, mode, rng):
    inputs = _cuda_batch(rng, 8, 4, dtype)
    truth = _truth(*inputs, mode=mode)
    got = _kernel(*inputs, mode=mode)
    assert got.dtype == dtype
    torch_error = _max_error(keypoint_patch_pool(*inputs, mode=mode), truth)
    ours = _max_error(got, truth)
    print(f"{dtype} {mode}: kernel {ours:.3g}, torch reference in {dtype} {torch_error:.3g}")
    assert ours <= 2 * torch_error or ours == 0.0


@pytest.mark.parametrize("mode", ("paper", "max"))
def test_part_maximum_is_exact(mode):
    """The eps-sensitive clip: a part maximum taken at the joint centres instead of between
    them (paper) or at the clipped edge (max) shifts these weights by ~1e-4."""
    keypoints, crop_hw, valid, attributes = cases.eps_sensitive_clip(mode)
    inputs = cases.as_tensors(keypoints, crop_hw, valid, torch.float32, CUDA)
    assert _max_error(_kernel(*inputs, **attributes), _truth(*inputs, **attributes)) <= 1e-5


@pytest.mark.parametrize("out_hw, patch, parts, joints", [
    ((12, 20), 4, ((3, 3, 5), (5, 0), (19,), (2, 7, 11, 13, 16)), 20),
    ((7, 3), 1, ((0,), (1, 2, 3, 4, 5, 6, 7, 8)), 17),
    ((64, 32), 32, KEYREID_PARTS, 17),
    ((48, 16), 1, tuple((j,) for j in range(16)), 32),  # 16 parts, K = 768
    ((8, 8), 8, (tuple(range(32)) * 2,), 32),  # 64 slots: > 8 windows, per-pixel patches
    ((128, 64), 64, ((0, 1, 2, 3, 4), (5, 6)), 17),  # patch > 32: per-pixel patches
    ((256, 128), 4, ((0, 1, 2, 3, 4), (9, 10)), 17),  # K = 2048: frames in rounds of 2
])
@pytest.mark.parametrize("mode", ("paper", "max"))
def test_odd_geometry_and_parts(out_hw, patch, parts, joints, mode, rng):
    """Frame (0, 0) clusters every joint, so each geometry has patches all of a part's windows
    reach (lane-column path, or per pixel beyond 8 windows or patch 32)."""
    clips = cases.random_clip_batch(rng, 3, 3, joints=joints)
    inputs = cases.as_tensors(*cases.cluster_first_frame(*clips, rng), torch.float32, CUDA)
    attributes = dict(out_hw=out_hw, patch=patch, parts=parts, mode=mode, vis_thresh=0.25)
    got = _kernel(*inputs, **attributes)
    assert _max_error(got, _truth(*inputs, **attributes)) <= 1e-5


@pytest.mark.parametrize("mode", ("paper", "max"))
def test_crops_from_one_pixel_to_a_thousand(mode, rng):
    sizes = [(1, 1), (1, 7), (9, 1), (2, 3), (11, 11), (33, 12), (256, 128), (1000, 500),
             (1000, 90), (40, 1000), (999, 999), (700, 21)]
    crop_hw = np.array(sizes, np.int32).reshape(3, 4, 2)
    keypoints = cases.random_keypoints(rng, crop_hw)
    inputs = cases.as_tensors(keypoints, crop_hw, np.ones((3, 4), bool), torch.float32, CUDA)
    assert _max_error(_kernel(*inputs, mode=mode), _truth(*inputs, mode=mode)) <= 1e-5


@pytest.mark.parametrize("mode", ("paper", "max"))
def test_detector_like_clips_and_map_minimum_above_zero(mode, rng):
    """The benchmark's inputs (clustered head joints: multi-window patches, paper boxes worth
    scanning), and crops that windows cover completely (map minimum > 0)."""
    bench = importlib.import_module("bench_keypoint_patch_pool")
    inputs = bench.make_inputs(16, 4, seed=int(rng.integers(1 << 30)))
    assert _max_error(_kernel(*inputs, mode=mode), _truth(*inputs, mode=mode)) <= 1e-5
    keypoints, crop_hw, valid, attributes = cases.fully_covered_clip(rng)
    inputs = cases.as_tensors(keypoints, crop_hw, valid, torch.float32, CUDA)
    got = _kernel(*inputs, mode=mode, **attributes)
    assert _max_error(got, _truth(*inputs, mode=mode, **attributes)) <= 1e-5


def test_long_clips_take_several_rounds(rng):
    """T = 40 frames: the kernel takes 16 frames per round here."""
    inputs = _cuda_batch(rng, 3, 40)
    for mode in ("paper", "max"):
        assert _max_error(_kernel(*inputs, mode=mode), _truth(*inputs, mode=mode)) <= 1e-5


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_strided_inputs_and_output(dtype, rng):
    """Inputs as permuted / sliced views and a strided out, through the Cython wrapper."""
    keypoints, crop_hw, valid = _cuda_batch(rng, 5, 4, dtype)
    kp_strided = keypoints.permute(2, 3, 0, 1).contiguous().permute(2, 3, 0, 1)
    hw_padded = torch.zeros(5, 4, 3, dtype=torch.int32, device=CUDA)
    hw_padded[..., 1:] = crop_hw
    valid_strided = valid.t().contiguous().t()
    big_out = torch.full((6, 5, 256), float("nan"), dtype=dtype, device=CUDA)
    out = big_out.permute(1, 0, 2)[:, :, ::2]
    _native().keypoint_patch_pool(kp_strided, hw_padded[..., 1:], valid_strided, out,
                                  stream=torch.cuda.current_stream().cuda_stream)
    torch.testing.assert_close(out, _kernel(keypoints, crop_hw, valid), rtol=0, atol=0)
    assert torch.isnan(big_out[..., 1::2]).all()  # untouched


def test_empty_batch_launches_nothing_and_odd_shapes(rng):
    empty = _cuda_batch(rng, 0, 4)
    assert _kernel(*empty).shape == (0, 6, 128)
    for batch, frames in ((1, 1), (7, 5), (1, 13)):
        inputs = _cuda_batch(rng, batch, frames)
        assert _max_error(_kernel(*inputs), _truth(*inputs)) <= 1e-5


def test_every_output_is_written_and_bad_crops_poison_their_clip(rng):
    keypoints, crop_hw, valid = _cuda_batch(rng, 4, 3, invalid_fraction=0)
    out = torch.full((4, 6, 128), float("nan"), device=CUDA)
    _native().keypoint_patch_pool(keypoints, crop_hw, valid, out,
                                  stream=torch.cuda.current_stream().cuda_stream)
    assert torch.isfinite(out).all()
    crop_hw[2, 1] = torch.tensor([0, 64])
    crop_hw[3, 0] = torch.tensor([40000, 64])
    poisoned = _kernel(keypoints, crop_hw, valid)
    assert torch.isnan(poisoned[2:]).all() and torch.isfinite(poisoned[:2]).all()
    valid[2, 1] = valid[3, 0] = False  # padding frames may carry anything
    assert torch.isfinite(_kernel(keypoints, crop_hw, valid)).all()


def test_deterministic(rng):
    inputs = _cuda_batch(rng, 16, 4)
    first = _kernel(*inputs)
    for _ in range(3):
        assert torch.equal(_kernel(*inputs), first)


def test_cuda_graph_capture_and_replay(rng):
    static = _cuda_batch(rng, 8, 4)
    _kernel(*static)  # warm up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = torch.ops.reid.keypoint_patch_pool(
            *static, encode_parts(KEYREID_PARTS), [256, 128], 16, 0.1, "paper")
    for _ in range(2):
        fresh = _cuda_batch(rng, 8, 4, invalid_fraction=0)
        for target, source in zip(static, fresh, strict=True):
            target.copy_(source)
        graph.replay()
        torch.cuda.synchronize()
        assert _max_error(captured, _truth(*fresh)) <= 1e-5


def test_torch_compile_with_inductor(rng):
    inputs = _cuda_batch(rng, 4, 4)

    def head(keypoints, crop_hw, valid):
        return keypoint_patch_pool_op(keypoints, crop_hw, valid, mode="max").mean(dim=-1) * 3

    compiled = torch.compile(head, fullgraph=True)
    # Inductor may order the mean's additions differently from eager.
    torch.testing.assert_close(compiled(*inputs), head(*inputs), rtol=1e-6, atol=1e-6)


def test_cython_path_with_cupy(rng):
    import cupy  # part of the GPU machine's setup
    keypoints, crop_hw, valid = cases.random_clip_batch(rng, 3, 4)
    for dtype, tolerance in ((cupy.float32, 1e-5), (cupy.float16, 2e-3)):
        rounded = keypoints.astype(np.float32).astype(dtype)
        truth = _truth(*cases.as_tensors(rounded.astype(np.float64), crop_hw, valid))
        out = cupy.empty((3, 6, 128), dtype=dtype)
        stream = cupy.cuda.Stream(non_blocking=True)
        _native().keypoint_patch_pool(cupy.asarray(rounded), cupy.asarray(crop_hw),
                                      cupy.asarray(valid), out, stream=stream.ptr)
        stream.synchronize()
        assert np.abs(cupy.asnumpy(out).astype(np.float64) - truth.numpy()).max() <= tolerance


def test_requires_grad_is_refused_on_cuda(rng):
    keypoints, crop_hw, valid = _cuda_batch(rng, 2, 4)
    with pytest.raises(ValueError, match="require grad"):
        keypoint_patch_pool_op(keypoints.requires_grad_(), crop_hw, valid)
