"""The MoECombine CUDA source, launcher included, executed on the CPU against the reference.

tests/ops/moe_cpu_emulation/ compiles kernels/moe_combine/moe_combine_kernel.cu with g++, one
std::thread per CUDA thread and std::barrier for __syncthreads / __syncwarp / shuffles, deferred
cp.async copies, and a small emulated device (2 SMs unless a test says otherwise), and calls the
library's own reid_moe_combine_* entry points on host memory. So CI checks the launcher's
argument checks, axis merging, path choice and persistent grid, and the lane arithmetic of every
(dtype, E, J) instantiation of the vectorised kernel, without a GPU. It cannot see what
only hardware shows (memory model, timing, alignment faults): the `gpu` tests in
test_moe_combine_gpu.py run the real thing.
"""
import ctypes
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from host_toolchain import build_emulation, requires_host_toolchain  # noqa: E402
from reid_export.ops import moe_combine  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
KERNEL_SOURCE = ROOT / "kernels" / "moe_combine" / "moe_combine_kernel.cu"

pytestmark = requires_host_toolchain

INVALID_ARGUMENT, UNSUPPORTED_SHAPE = 10001, 10002
LAUNCHERS = {torch.float32: "reid_moe_combine_f32", torch.float16: "reid_moe_combine_f16",
             torch.bfloat16: "reid_moe_combine_bf16"}
MAX_LEAD = 8
# The emulated device of the harness unless a test sets another: SMs, shared memory and threads
# per SM (H100 / H200 limits).
DEFAULT_DEVICE = (2, 233472, 2048)


class _Desc(ctypes.Structure):
    """reid_moe_combine_desc of kernels/reid_kernels.h."""
    _fields_ = [
        ("num_lead_dims", ctypes.c_int32), ("apply_softmax", ctypes.c_int32),
        ("lead_shape", ctypes.c_int64 * MAX_LEAD),
        ("experts_lead_strides", ctypes.c_int64 * MAX_LEAD),
        ("gate_lead_strides", ctypes.c_int64 * MAX_LEAD),
        ("out_lead_strides", ctypes.c_int64 * MAX_LEAD),
        ("channels", ctypes.c_int64), ("num_experts", ctypes.c_int64),
        ("num_outputs", ctypes.c_int64),
        ("experts_stride_c", ctypes.c_int64), ("experts_stride_e", ctypes.c_int64),
        ("gate_stride_e", ctypes.c_int64), ("gate_stride_j", ctypes.c_int64),
        ("out_stride_c", ctypes.c_int64), ("out_stride_j", ctypes.c_int64)]


def _source_for_emulation() -> str:
    source = KERNEL_SOURCE.read_text()
    for old, new in (
            ("extern __shared__ float4 shared_f4[];", "float4* shared_f4 = emulated_moe_shared;"),
            ("kernel<<<shape.grid, shape.threads, shape.shared_bytes, stream>>>(",
             "emulated_launch(kernel, shape.grid, shape.threads, shape.shared_bytes, stream, ")):
        assert source.count(old) == 1, f"the emulation expects one {old!r} in {KERNEL_SOURCE}"
        source = source.replace(old, new)
    return source


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    # -Bsymbolic: the harness's cudaGetLastError must win over a libcudart torch may have loaded
    loaded = build_emulation(
        tmp_path_factory.mktemp("moe_emulation"), _source_for_emulation(),
        HERE / "moe_cpu_emulation" / "harness.cpp",
        [HERE / "moe_cpu_emulation", HERE / "kpp_cpu_emulation", ROOT / "kernels" / "moe_combine"],
        _Desc, flags=("-O1", "-w", "-Wl,-Bsymbolic"))
    loaded.emulated_last_launch_grid.restype = ctypes.c_uint
    loaded.emulated_unretired_copies.restype = ctypes.c_size_t
    for name in LAUNCHERS.values():
        getattr(loaded, name).restype = ctypes.c_int
    return loaded


@pytest.fixture
def emulated_device(lib):
    """Sets the emulated device's (SMs, shared memory per SM, threads per SM) for the test."""
    yield lib.emulated_set_device
    lib.emulated_set_device(*DEFAULT_DEVICE)


def _ran_instantiation(lib, dtype):
    """(E, J) of the vectorised kernel instantiation that ran last, or None (not vectorised)."""
    num_experts, num_outputs = ctypes.c_int(), ctypes.c_int()
    found = lib.emulated_last_vectorised_instantiation(
        list(LAUNCHERS).index(dtype), ctypes.byref(num_experts), ctypes.byref(num_outputs))
    return (num_experts.value, num_outputs.value) if found else None


def _expected_grid(num_tokens, channels, dtype, num_experts, num_outputs, device=DEFAULT_DEVICE):
    """Persistent grid of the vectorised kernel, from the launch rule README.md states: blocks of
    2 warps, each warp a ring of 4 groups of 36 * max(E, J) 16-byte slots; per SM at most 8 blocks
    and what shared memory (plus 1 KB reserved per block) and threads allow; no more blocks than
    the groups of 32 chunks need."""
    multiprocessors, shared_per_sm, threads_per_sm = device
    shared_per_block = 2 * 4 * 36 * max(num_experts, num_outputs) * 16
    blocks_per_sm = max(1, min(8, threads_per_sm // 64, shared_per_sm // (shared_per_block + 1024)))
    chunks = channels * dtype.itemsize // 16
    groups = num_tokens * -(-chunks // 32)
    return min(-(-groups // 2), multiprocessors * blocks_per_sm)


def _describe(experts, gate, out, softmax):
    """The desc the Cython wrapper would build: broadcast gate axes get stride 0."""
    lead = tuple(experts.shape[:-2])
    gate_full = gate.expand(lead + tuple(gate.shape[-2:]))
    desc = _Desc()
    desc.num_lead_dims = len(lead)
    desc.apply_softmax = int(softmax)
    for axis, size in enumerate(lead):
        desc.lead_shape[axis] = size
        desc.experts_lead_strides[axis] = experts.stride(axis)
        desc.gate_lead_strides[axis] = gate_full.stride(axis)
        desc.out_lead_strides[axis] = out.stride(axis)
    desc.channels, desc.num_experts = experts.shape[-2:]
    desc.num_outputs = gate.shape[-1]
    desc.experts_stride_c, desc.experts_stride_e = experts.stride()[-2:]
    desc.gate_stride_e, desc.gate_stride_j = gate.stride()[-2:]
    desc.out_stride_c, desc.out_stride_j = out.stride()[-2:]
    return desc


def _launch(lib, desc, experts, gate, out):
    lib.emulated_reset()
    return getattr(lib, LAUNCHERS[experts.dtype])(
        ctypes.byref(desc), ctypes.c_void_p(experts.data_ptr()), ctypes.c_void_p(gate.data_ptr()),
        ctypes.c_void_p(out.data_ptr()), None)


def run(lib, experts, gate, softmax=True, out=None):
    """Emulated kernel into a NaN-poisoned out; returns (out, path: 1 vectorised / 0 generic)."""
    if out is None:
        out = torch.full(tuple(experts.shape[:-1]) + (gate.shape[-1],), float("nan"),
                         dtype=experts.dtype)
    code = _launch(lib, _describe(experts, gate, out, softmax), experts, gate, out)
    assert code == 0, f"launcher returned {code}"
    assert lib.emulated_unretired_copies() == 0, "a cp.async copy was never waited for"
    return out, lib.emulated_last_launch_vectorised()


def error_and_bound(got, experts, gate, softmax=True):
    """Max error of ``got`` against the float64 reference, and its bound: fp32 1e-5 of the output
    scale; 16-bit twice the error of torch computing the same thing in that dtype."""
    truth = moe_combine(experts.double(), gate.double(), softmax)
    error = float((got.double() - truth).abs().max())
    if experts.dtype == torch.float32:
        return error, 1e-5 * max(1.0, float(truth.abs().max()))
    weights = torch.softmax(gate, dim=-2) if softmax else gate
    torch_error = float((torch.matmul(experts, weights).double() - truth).abs().max())
    return error, max(2 * torch_error,
                      float(torch.finfo(experts.dtype).eps) * float(truth.abs().max()))


def inputs(lead, channels, num_experts, num_outputs, gate_lead=None, dtype=torch.float32,
           seed=0, scale=3.0):
    generator = torch.Generator().manual_seed(seed)
    gate_lead = lead if gate_lead is None else gate_lead
    experts = torch.randn(lead + (channels, num_experts), generator=generator)
    gate = scale * torch.randn(gate_lead + (num_experts, num_outputs), generator=generator)
    return experts.to(dtype), gate.to(dtype)


def max_error(got, experts, gate, softmax=True):
    truth = moe_combine(experts.double(), gate.double(), softmax)
    return float((got.double() - truth).abs().max())


@pytest.mark.parametrize("softmax", (True, False))
def test_hamobe_layout_takes_the_vectorised_path(lib, softmax):
    experts, gate = inputs((2, 3), 64, 8, 3, (2, 1))  # per-sample routing over 3 frames
    got, path = run(lib, experts, gate, softmax)
    assert path == 1 and _ran_instantiation(lib, torch.float32) == (8, 3)
    assert max_error(got, experts, gate, softmax) <= 1e-5


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16),
                         ids=("float32", "float16", "bfloat16"))
def test_every_vectorised_instantiation(lib, dtype):
    """Each (E, J) kernel has its own compile-time lane map: check all of them."""
    for num_experts in range(1, 9):
        for num_outputs in range(1, 5):
            experts, gate = inputs((3,), 16, num_experts, num_outputs, dtype=dtype,
                                   seed=num_experts * 10 + num_outputs)
            got, path = run(lib, experts, gate)
            assert path == 1, (num_experts, num_outputs)
            assert _ran_instantiation(lib, dtype) == (num_experts, num_outputs)
            error, bound = error_and_bound(got, experts, gate)
            assert error <= bound, (num_experts, num_outputs, error)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=("float32", "bfloat16"))
@pytest.mark.parametrize("softmax", (True, False))
def test_persistent_grid_with_many_and_partial_units_per_warp(lib, emulated_device, dtype,
                                                              softmax):
    """One emulated SM: each warp walks many groups, tokens end in partial groups of chunks."""
    device = (1, 233472, 2048)
    emulated_device(*device)
    # per token: fp32 C=200 -> 50 chunks (a group of 32 and one of 18), bf16 C=200 -> 25 chunks
    for lead, channels, num_experts, num_outputs in (((19,), 200, 8, 3), ((7, 3), 200, 4, 4),
                                                     ((41,), 16, 2, 1), ((5,), 200, 6, 2)):
        experts, gate = inputs(lead, channels, num_experts, num_outputs, dtype=dtype,
                               seed=channels + num_experts)
        got, path = run(lib, experts, gate, softmax)
        assert path == 1 and _ran_instantiation(lib, dtype) == (num_experts, num_outputs)
        assert lib.emulated_last_launch_grid() == _expected_grid(
            math.prod(lead), channels, dtype, num_experts, num_outputs, device)
        error, bound = error_and_bound(got, experts, gate, softmax)
        assert error <= bound


def test_persistent_grid_follows_the_device_limits(lib, emulated_device):
    experts, gate = inputs((60,), 64, 8, 3, dtype=torch.float16)  # 60 groups: 30 blocks of 2
    # 3 SMs; a block holds 2 warps x 4 groups x 288 slots x 16 B = 36 KB (+ 1 KB reserved):
    # 6 blocks per SM fit 228 KB of shared memory, 1 fits 20 KB, 2 fit 128 threads
    for device, grid in (((3, 233472, 2048), 18), ((3, 20 * 1024, 2048), 3),
                         ((3, 233472, 128), 6)):
        emulated_device(*device)
        got, _ = run(lib, experts, gate)
        error, bound = error_and_bound(got, experts, gate)
        assert error <= bound
        assert lib.emulated_last_launch_grid() == grid == _expected_grid(
            60, 64, torch.float16, 8, 3, device)


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("channels, num_experts, num_outputs", [(64, 8, 3), (7, 16, 8)])
def test_half_types_no_worse_than_twice_torch(lib, dtype, channels, num_experts, num_outputs):
    experts, gate = inputs((2, 5), channels, num_experts, num_outputs, (2, 1), dtype=dtype)
    got, _ = run(lib, experts, gate)
    truth = moe_combine(experts.double(), gate.double())
    # torch doing the same computation in that precision (weights and products in dtype)
    torch_same = torch.matmul(experts, torch.softmax(gate, dim=-2))
    torch_error = float((torch_same.double() - truth).abs().max())
    assert float((got.double() - truth).abs().max()) <= 2 * torch_error


@pytest.mark.parametrize("channels, num_experts, num_outputs", [
    (7, 3, 2), (13, 16, 8), (1, 1, 1), (600, 5, 8), (24, 9, 3), (24, 8, 5)])
def test_generic_path_for_other_shapes(lib, channels, num_experts, num_outputs):
    experts, gate = inputs((2, 3), channels, num_experts, num_outputs, (1, 3), seed=channels)
    got, path = run(lib, experts, gate)
    assert path == 0
    assert max_error(got, experts, gate) <= 1e-5


def test_strided_inputs_and_output(lib):
    base_experts, gate = inputs((4, 2), 16, 6, 3)
    experts = base_experts.transpose(0, 1).contiguous().transpose(0, 1)  # lead axes swapped
    transposed = experts.transpose(-1, -2).contiguous().transpose(-1, -2)  # E-major rows
    gate_strided = gate.transpose(-1, -2).contiguous().transpose(-1, -2)
    big_out = torch.full((4, 2, 16, 7), float("nan"))
    out = big_out[..., 1::2]  # strided out: untouched columns must stay NaN
    for x, g in ((experts, gate), (transposed, gate_strided)):
        big_out.fill_(float("nan"))
        got, _ = run(lib, x, g, out=out)
        assert max_error(got, base_experts, gate) <= 1e-5
        assert torch.isnan(big_out[..., 0::2]).all()


def test_misaligned_pointer_falls_back_to_generic(lib):
    storage = torch.randn(1 + 2 * 16 * 8)
    experts = storage[1:].view(2, 16, 8)  # 4 bytes past a 16-byte boundary
    gate = torch.randn(2, 8, 3)
    got, path = run(lib, experts, gate)
    assert path == 0
    assert max_error(got, experts, gate) <= 1e-5


@pytest.mark.parametrize("lead, gate_lead", [
    ((2, 3, 5), (2, 1, 5)),              # gate broadcast in the middle: three token axes
    ((2, 3, 4), (1, 3, 4)),              # inner axes merge into one, the outer stays
    ((3, 1, 4, 2), (1, 1, 4, 1)),        # size-1 axes dropped
    ((2,) * 8, (2, 1) * 4),              # the ABI's eight leading axes
])
def test_token_axes_with_broadcast_gate(lib, lead, gate_lead):
    for channels in (8, 5):  # vectorised and generic
        experts, gate = inputs(lead, channels, 4, 2, gate_lead)
        got, path = run(lib, experts, gate)
        assert path == (1 if channels == 8 else 0)
        assert max_error(got, experts, gate) <= 1e-5


def test_many_tiles_and_many_items_per_thread(lib):
    # fp16 C=320: 40 chunks per token, a full warp group of 32 and a partial one of 8
    for lead, channels, dtype in (((37,), 64, torch.float16), ((2,), 4096, torch.float32),
                                  ((3,), 4097, torch.float32), ((5,), 320, torch.float16)):
        experts, gate = inputs(lead, channels, 8, 3, dtype=dtype)
        got, _ = run(lib, experts, gate)
        error, bound = error_and_bound(got, experts, gate)
        assert error <= bound


def test_large_logits_stay_finite(lib):
    experts, gate = inputs((4,), 16, 8, 3, scale=1e4)
    for channels_slice in (slice(None), slice(0, 7)):
        x = experts[:, channels_slice]
        got, _ = run(lib, x, gate)
        assert torch.isfinite(got).all()
        assert max_error(got, x, gate) <= 1e-4


@pytest.mark.parametrize("lead, channels, num_outputs", [((0, 3), 8, 3), ((2,), 0, 3),
                                                         ((2,), 8, 0)])
def test_empty_shapes_launch_nothing(lib, lead, channels, num_outputs):
    experts, gate = inputs(lead, channels, 4, num_outputs)
    _, path = run(lib, experts, gate)
    assert path == -1


@pytest.mark.parametrize("field, value, code", [
    ("num_experts", 0, UNSUPPORTED_SHAPE), ("num_experts", 17, UNSUPPORTED_SHAPE),
    ("num_outputs", 9, UNSUPPORTED_SHAPE), ("num_outputs", -1, INVALID_ARGUMENT),
    ("num_lead_dims", 9, INVALID_ARGUMENT), ("num_lead_dims", -1, INVALID_ARGUMENT),
    ("apply_softmax", 2, INVALID_ARGUMENT), ("channels", -4, INVALID_ARGUMENT),
])
def test_launcher_rejects_bad_descriptions(lib, field, value, code):
    experts, gate = inputs((2,), 8, 4, 3)
    out = torch.full((2, 8, 3), float("nan"))
    desc = _describe(experts, gate, out, True)
    setattr(desc, field, value)
    assert _launch(lib, desc, experts, gate, out) == code
    assert lib.emulated_last_launch_vectorised() == -1 and torch.isnan(out).all()


def test_launcher_rejects_null_pointers_and_negative_shapes(lib):
    experts, gate = inputs((2,), 8, 4, 3)
    out = torch.empty(2, 8, 3)
    desc = _describe(experts, gate, out, True)
    lib.emulated_reset()
    assert lib.reid_moe_combine_f32(ctypes.byref(desc), None, ctypes.c_void_p(gate.data_ptr()),
                                    ctypes.c_void_p(out.data_ptr()), None) == INVALID_ARGUMENT
    assert lib.reid_moe_combine_f32(None, None, None, None, None) == INVALID_ARGUMENT
    desc.lead_shape[0] = -2
    assert _launch(lib, desc, experts, gate, out) == INVALID_ARGUMENT

