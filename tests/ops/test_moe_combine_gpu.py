"""MoECombine CUDA kernel against the reference (run on the GPU machine: pytest -m gpu).

The float64 reference on the CPU, fed the very values the kernel reads (inputs already in the
kernel's dtype), is the truth. fp32: 1e-5 relative to the output scale. fp16/bf16: no worse than
twice the error torch makes computing the same thing in that dtype on the GPU (softmax, then a
matmul). Outputs are poisoned with NaN before every launch so unwritten elements show.
"""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from reid_export.ops import moe_combine

pytestmark = pytest.mark.gpu
CUDA = "cuda"
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _native():
    from reid_sdk import _native
    return _native


def _inputs(lead, channels, num_experts, num_outputs, gate_lead=None, dtype=torch.float32,
            seed=0, scale=3.0):
    generator = torch.Generator(device=CUDA).manual_seed(seed)
    gate_lead = lead if gate_lead is None else gate_lead
    experts = torch.randn(lead + (channels, num_experts), generator=generator, device=CUDA)
    gate = scale * torch.randn(gate_lead + (num_experts, num_outputs), generator=generator,
                               device=CUDA)
    return experts.to(dtype), gate.to(dtype)


def _run_kernel(experts, gate, softmax=True, out=None):
    """Our kernel through the Cython wrapper into a NaN-poisoned out (on the current stream)."""
    if out is None:
        out = torch.full(experts.shape[:-1] + (gate.shape[-1],), float("nan"),
                         dtype=experts.dtype, device=CUDA)
    _native().moe_combine(experts, gate, out, softmax=softmax,
                          stream=torch.cuda.current_stream().cuda_stream)
    return out


def _truth(experts, gate, softmax=True):
    return moe_combine(experts.detach().cpu().double(), gate.detach().cpu().double(), softmax)


def _error(got, truth):
    return float((got.detach().to(truth.device).double() - truth).abs().max())


def _bound(experts, gate, truth, softmax=True):
    """fp32: 1e-5 of the output scale; fp16/bf16: twice torch's own error in that dtype."""
    scale = max(1.0, float(truth.abs().max()))
    if experts.dtype == torch.float32:
        return 1e-5 * scale
    weights = torch.softmax(gate, dim=-2) if softmax else gate
    torch_error = _error(torch.matmul(experts, weights), truth)
    # floor at one ulp of the output scale, for the rare draw where torch happens to be exact
    return max(2 * torch_error, float(torch.finfo(experts.dtype).eps) * scale)


def _check(experts, gate, softmax=True, out=None):
    got = _run_kernel(experts, gate, softmax, out)
    truth = _truth(experts, gate, softmax)
    assert not torch.isnan(got).any(), "unwritten (NaN-poisoned) output elements"
    assert _error(got, truth) <= _bound(experts, gate, truth, softmax)
    return got


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("softmax", (True, False))
def test_hamobe_shape(dtype, softmax):
    # leading 4 x 257 tokens (a slice of HAMoBE's 256 x 257), C=512, E=8, J=3, per-token gate
    experts, gate = _inputs((4, 257), 512, 8, 3, dtype=dtype)
    _check(experts, gate, softmax)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("channels", (1, 7, 8, 13, 64, 4096, 4097))
@pytest.mark.parametrize("num_experts, num_outputs", [(1, 1), (3, 8), (16, 1), (16, 8), (8, 3),
                                                      (4, 4)])
def test_shapes(dtype, channels, num_experts, num_outputs):
    lead = (3, 5) if channels < 4096 else (2,)
    experts, gate = _inputs(lead, channels, num_experts, num_outputs, dtype=dtype,
                            seed=channels * 100 + num_experts * 10 + num_outputs)
    _check(experts, gate)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_broadcast_and_strided_gate(dtype):
    experts, _ = _inputs((4, 3, 2), 64, 8, 3, dtype=dtype)
    for gate_lead in ((4, 1, 2), (1, 3, 1), (2,), ()):
        _, gate = _inputs(gate_lead, 64, 8, 3, dtype=dtype, seed=len(gate_lead))
        _check(experts, gate)
    _, gate = _inputs((4, 1, 1), 64, 8, 3, dtype=dtype, seed=7)
    _check(experts, gate.expand(4, 3, 2, 8, 3))  # stride-0 axes given explicitly
    _, wide = _inputs((4, 3, 2), 64, 8, 5, dtype=dtype, seed=8)
    _check(experts, wide[..., 1:4])  # gate_stride_j 1, gate_stride_e 5


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_strided_experts_and_output(dtype):
    experts, gate = _inputs((6, 4), 128, 8, 3, dtype=dtype)
    cases = {
        "E-major rows": experts.transpose(-1, -2).contiguous().transpose(-1, -2),
        "every other channel": torch.cat([experts, experts], dim=-2)[..., ::2, :],
        "leading axes swapped": experts.transpose(0, 1).contiguous().transpose(0, 1),
        "misaligned start": torch.cat([experts.flatten(), experts.flatten()[:1]])[1:]
        .view(experts.shape),
    }
    for name, strided in cases.items():
        got = _check(strided, gate)
        assert got.shape == (6, 4, 128, 3), name
    big = torch.full((6, 4, 128, 7), float("nan"), dtype=dtype, device=CUDA)
    _check(experts, gate, out=big[..., 1::2])
    assert torch.isnan(big[..., 0::2]).all(), "the kernel wrote outside a strided out"


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_large_logits_stay_finite(dtype):
    experts, gate = _inputs((8, 3), 64, 8, 3, dtype=dtype, scale=1e4)
    for channels in (64, 13):
        got = _check(experts[..., :channels, :], gate)
        assert torch.isfinite(got).all()


@pytest.mark.parametrize("lead, channels, num_outputs", [((0, 257), 512, 3), ((4,), 0, 3),
                                                         ((4,), 512, 0)])
def test_empty_shapes(lead, channels, num_outputs):
    experts, gate = _inputs(lead, channels, 8, num_outputs)
    out = torch.ops.reid.moe_combine(experts, gate)
    assert out.shape == lead + (channels, num_outputs) and out.is_cuda
    _run_kernel(experts, gate)  # launches nothing, raises nothing
    torch.cuda.synchronize()


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_torch_op_uses_the_kernel_on_the_current_stream(dtype):
    experts, gate = _inputs((3, 257), 512, 8, 3, (3, 1), dtype=dtype)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        torch.cuda.current_stream().wait_stream(torch.cuda.default_stream())
        got = torch.ops.reid.moe_combine(experts, gate, True)
    stream.synchronize()
    truth = _truth(experts, gate)
    assert got.dtype == dtype and _error(got, truth) <= _bound(experts, gate, truth)


def test_cuda_graph_capture_and_replay():
    experts, gate = _inputs((4, 257), 512, 8, 3, dtype=torch.float16)
    static_experts, static_gate = experts.clone(), gate.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture, as torch recommends
        torch.ops.reid.moe_combine(static_experts, static_gate)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = torch.ops.reid.moe_combine(static_experts, static_gate)
    for seed in (1, 2):
        new_experts, new_gate = _inputs((4, 257), 512, 8, 3, dtype=torch.float16, seed=seed)
        static_experts.copy_(new_experts)
        static_gate.copy_(new_gate)
        static_out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        truth = _truth(new_experts, new_gate)
        assert _error(static_out, truth) <= _bound(new_experts, new_gate, truth)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_full_hamobe_batch(dtype):
    """HAMoBE's whole benchmark batch (256 x 257 tokens): many work units per warp of the
    persistent grid, against float64 computed on the GPU."""
    experts, gate = _inputs((32, 8, 257), 512, 8, 3, dtype=dtype, seed=11)
    got = _run_kernel(experts, gate)
    truth = moe_combine(experts.double(), gate.double())
    assert not torch.isnan(got).any(), "unwritten (NaN-poisoned) output elements"
    assert _error(got, truth) <= _bound(experts, gate, truth)


def test_torch_compile():
    experts, gate = _inputs((2, 257), 512, 8, 3)

    def mixture(x, g):
        return torch.ops.reid.moe_combine(x * 0.5, g, True).relu().sum(-1)

    compiled = torch.compile(mixture, fullgraph=True)
    torch.testing.assert_close(compiled(experts, gate), mixture(experts, gate))


def test_backward_on_gpu_matches_cpu():
    experts, gate = _inputs((2, 5), 64, 8, 3, (2, 1))
    grads = []
    for device in (CUDA, "cpu"):
        # detached copies: leaves of their own, whatever the inputs were
        x = experts.detach().to(device).requires_grad_(True)
        g = gate.detach().to(device).requires_grad_(True)
        (torch.ops.reid.moe_combine(x, g) ** 2).sum().backward()
        grads.append((x.grad.cpu(), g.grad.cpu()))
    for cuda_grad, cpu_grad in zip(*grads, strict=True):
        torch.testing.assert_close(cuda_grad, cpu_grad, rtol=1e-4, atol=1e-4)


def test_cython_wrapper_with_cupy_arrays():
    import cupy as cp  # part of the GPU machine's setup (.ci/gpu lists it): missing, this fails
    native = _native()
    rng = cp.random.default_rng(4)
    for dtype in (cp.float32, cp.float16):
        experts = rng.standard_normal((3, 257, 64, 8), dtype=cp.float32).astype(dtype)
        gate = (3 * rng.standard_normal((3, 1, 8, 3), dtype=cp.float32)).astype(dtype)
        for x in (experts, experts[::-1, :, ::-1]):  # negative strides: the generic path
            out = cp.full((3, 257, 64, 3), cp.nan, dtype=dtype)
            cp.cuda.Device().synchronize()  # inputs were written on the null stream
            stream = cp.cuda.Stream(non_blocking=True)
            native.moe_combine(x, gate, out, stream=stream.ptr)
            stream.synchronize()
            x_host = torch.from_numpy(cp.asnumpy(x).copy())
            truth = _truth(x_host, torch.from_numpy(cp.asnumpy(gate)))
            got = torch.from_numpy(cp.asnumpy(out))
            assert not torch.isnan(got).any()
            bound = 1e-5 * max(1.0, float(truth.abs().max())) if dtype == cp.float32 else \
                _bound(x_host.cuda(), torch.from_numpy(cp.asnumpy(gate)).cuda(), truth)
            assert _error(got, truth) <= bound


_SANITIZER_SCRIPT = textwrap.dedent("""
    import torch
    from reid_sdk import _native
    torch.manual_seed(0)
    stream = torch.cuda.current_stream().cuda_stream
    # (5000,) tokens of C=8: several work units per warp of the persistent grid, yet small
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for lead, c, e, j in (((3, 9), 64, 8, 3), ((2, 5), 13, 16, 8), ((1,), 4096, 4, 4),
                              ((40, 3), 200, 6, 2), ((5000,), 8, 8, 3)):
            x = torch.randn(lead + (c, e), device="cuda").to(dtype)
            g = torch.randn(lead[:1] + (1,) * (len(lead) - 1) + (e, j), device="cuda").to(dtype)
            out = torch.empty(lead + (c, j), device="cuda", dtype=dtype)
            _native.moe_combine(x, g, out, stream=stream)
            _native.moe_combine(x.transpose(-1, -2).contiguous().transpose(-1, -2), g, out,
                                softmax=False, stream=stream)
    torch.cuda.synchronize()
    print("sanitizer run done")
""")
# What each tool prints when it found nothing.
_SANITIZER_CLEAN = {"memcheck": "ERROR SUMMARY: 0 errors",
                    "racecheck": "RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)",
                    "synccheck": "ERROR SUMMARY: 0 errors",
                    "initcheck": "ERROR SUMMARY: 0 errors"}


@pytest.mark.parametrize("tool", tuple(_SANITIZER_CLEAN))
def test_compute_sanitizer(tool, tmp_path):
    sanitizer = shutil.which("compute-sanitizer") or next(
        (p for p in ("/usr/local/cuda/bin/compute-sanitizer",) if os.path.isfile(p)), None)
    if sanitizer is None:
        pytest.skip("compute-sanitizer is not installed on this machine (CUDA toolkit bin/)")
    script = tmp_path / "moe_sanitize.py"
    script.write_text(_SANITIZER_SCRIPT)
    result = subprocess.run([sanitizer, "--tool", tool, "--error-exitcode", "3", sys.executable,
                             str(script)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0 and "sanitizer run done" in result.stdout, (
        result.stdout[-4000:] + result.stderr[-4000:])
    assert _SANITIZER_CLEAN[tool] in result.stdout + result.stderr, (
        result.stdout[-4000:] + result.stderr[-4000:])
