"""MoECombine on the GPU at HAMoBE's shape: achieved bandwidth of our kernel as a fraction of the
device's measured copy bandwidth, and the speedup over the official HAMoBE formulation and over a
plain torch.einsum.

    python benchmarks/bench_moe_combine.py                 # leading 256 x 257, C=512, E=8, J=3
    python benchmarks/bench_moe_combine.py --reps 50 --dtypes float16

Shape: HAMoBE's first-level mixture with B=32 clips of T=8 frames (256 x 257 tokens), experts
[32, 8, 257, 512, 8], gate logits [32, 8, 257, 8, 3] -> [32, 8, 257, 512, 3]. The op is purely
memory-bound; its bytes are experts + gate read once and out written once. Copy bandwidth: a
large device-to-device copy, read + write bytes. Ours runs through torch.ops.reid.moe_combine
(allocation and launch included).

Timing: each sample enqueues one untimed call, records the start event, then `--batch` calls
back to back and the end event; per-call time = interval / batch, median over `--reps` samples.
The untimed call keeps the GPU busy while the host enqueues the timed ones, so host overhead (the
op's Python dispatch and checks, about tens of microseconds) stays out of the device time as long
as it is shorter than one call; consecutive calls rotate through `--sets` input sets, each far
larger than L2, so no call reads what the previous one left in cache.

Target: our kernel (its vectorised path, which HAMoBE's dense layout takes) >= 0.85 of the copy
bandwidth in fp16, bf16 and fp32.

Baselines (both include the softmax, as the op does):
  * official HAMoBE: models/vid_resnet.py FirstMoE.forward of GeoGebra2/hamobe softmaxes the
    gate over E, expands it along the 512 channels and contracts with
    einsum('ijklnm,ijklmo->ijklno') on experts.unsqueeze(-2); reproduced here in our own code.
  * torch.einsum('...cm,...mj->...cj', experts, softmax(gate, dim=-2)).
Extra row: our generic (strided) path on E-major experts, for reference.
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch

HAMOBE_LEAD = (32, 8, 257)  # B clips x T frames x 257 tokens = 256 x 257 token rows
HAMOBE_CHANNELS, HAMOBE_EXPERTS, HAMOBE_OUTPUTS = 512, 8, 3
COPY_BYTES = 1 << 30
TARGET_FRACTION = 0.85
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
KERNEL_ROW = "reid kernel"
GENERIC_ROW = "reid generic path (E-major experts)"


def official_hamobe_combine(experts: torch.Tensor, gate_logits: torch.Tensor) -> torch.Tensor:
    """HAMoBE FirstMoE's combine: experts [B,T,L,C,E], gate [B,T,L,E,J] -> [B,T,L,C,J]."""
    weights = torch.softmax(gate_logits, dim=3)
    weights = weights.unsqueeze(3).expand(-1, -1, -1, experts.shape[3], -1, -1)
    return torch.einsum("ijklnm,ijklmo->ijklno", experts.unsqueeze(-2), weights).squeeze(-2)


def plain_einsum_combine(experts: torch.Tensor, gate_logits: torch.Tensor) -> torch.Tensor:
    return torch.einsum("...cm,...mj->...cj", experts, torch.softmax(gate_logits, dim=-2))


def reid_kernel_combine(experts: torch.Tensor, gate_logits: torch.Tensor) -> torch.Tensor:
    return torch.ops.reid.moe_combine(experts, gate_logits, True)


def _median_ms(fn, input_sets, reps: int, warmup: int, batch: int) -> float:
    """Median device milliseconds per call of `fn` over back-to-back batches (module docstring)."""
    for i in range(warmup):
        fn(*input_sets[i % len(input_sets)])
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        fn(*input_sets[0])  # keeps the GPU busy while the timed calls are enqueued
        start.record()
        for k in range(1, batch + 1):
            fn(*input_sets[k % len(input_sets)])
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / batch)
    return statistics.median(times)


def copy_bandwidth_gbps(reps: int = 10, nbytes: int = COPY_BYTES) -> float:
    """Device-to-device copy bandwidth in GB/s, counting the bytes read and written."""
    buffers = [(torch.empty(nbytes, dtype=torch.uint8, device="cuda"),
                torch.empty(nbytes, dtype=torch.uint8, device="cuda")) for _ in range(2)]
    ms = _median_ms(lambda dst, src: dst.copy_(src), buffers, reps, warmup=3, batch=4)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def _input_sets(dtype, count, lead, channels, num_experts, num_outputs):
    generator = torch.Generator(device="cuda").manual_seed(0)
    return [(torch.randn(lead + (channels, num_experts), generator=generator, device="cuda",
                         dtype=dtype),
             3 * torch.randn(lead + (num_experts, num_outputs), generator=generator,
                             device="cuda", dtype=dtype))
            for _ in range(count)]


def _max_difference(ours, baseline) -> float:
    return float((ours.float() - baseline.float()).abs().max())


def _timed_row(name, fn, input_sets, reps, *, warmup, batch, nbytes, copy_gbps, reference,
               dtype) -> dict:
    ms = _median_ms(fn, input_sets, reps, warmup, batch)
    gbps = nbytes / (ms * 1e-3) / 1e9
    return {"dtype": dtype, "name": name, "median_ms": ms, "bytes": nbytes, "gbps": gbps,
            "fraction_of_copy": gbps / copy_gbps,
            "max_abs_diff": _max_difference(fn(*input_sets[0]), reference)}


def run(dtypes=("float16", "bfloat16", "float32"), reps: int = 30, warmup: int = 5,
        batch: int = 10, sets: int = 3, lead=HAMOBE_LEAD, channels: int = HAMOBE_CHANNELS,
        num_experts: int = HAMOBE_EXPERTS, num_outputs: int = HAMOBE_OUTPUTS) -> list[dict]:
    """The copy-bandwidth row, then per dtype our kernel, our generic path, the official
    HAMoBE formulation and torch.einsum.

    Each row: dtype, name, median_ms, bytes (experts + gate + out), gbps, fraction_of_copy,
    max_abs_diff (against torch.einsum); the kernel row also speedup_vs_official and
    speedup_vs_einsum.
    """
    if not torch.cuda.is_available():
        raise RuntimeError("bench_moe_combine needs a CUDA GPU (torch.cuda.is_available() is "
                           "False); run it on the GPU machine")
    import reid_export.ops.moe_combine  # noqa: F401  (registers torch.ops.reid.moe_combine)
    from reid_sdk import _native  # noqa: F401  (fail here, clearly, if the kernels are missing)

    copy_gbps = copy_bandwidth_gbps()
    rows = [{"dtype": "uint8", "name": "device copy (read + write)", "median_ms":
             2 * COPY_BYTES / (copy_gbps * 1e9) * 1e3, "bytes": 2 * COPY_BYTES, "gbps": copy_gbps,
             "fraction_of_copy": 1.0}]
    tokens = 1
    for size in lead:
        tokens *= size
    for dtype_name in dtypes:
        dtype = DTYPES[dtype_name]
        itemsize = torch.finfo(dtype).bits // 8
        nbytes = tokens * itemsize * (channels * num_experts + num_experts * num_outputs
                                      + channels * num_outputs)
        input_sets = _input_sets(dtype, sets, lead, channels, num_experts, num_outputs)
        reference = plain_einsum_combine(*input_sets[0])
        timing = {"warmup": warmup, "batch": batch, "nbytes": nbytes, "copy_gbps": copy_gbps,
                  "reference": reference, "dtype": dtype_name}
        ours = _timed_row(KERNEL_ROW, reid_kernel_combine, input_sets, reps, **timing)
        generic_sets = [(x.transpose(-1, -2).contiguous().transpose(-1, -2), g)
                        for x, g in input_sets[:2]]
        others = {row["name"]: row for row in (
            _timed_row(GENERIC_ROW, reid_kernel_combine, generic_sets, max(5, reps // 3),
                       **timing),
            _timed_row("official HAMoBE einsum", official_hamobe_combine, input_sets,
                       max(5, reps // 5), **timing),
            _timed_row("torch.einsum", plain_einsum_combine, input_sets, max(5, reps // 5),
                       **timing))}
        ours["speedup_vs_official"] = (others["official HAMoBE einsum"]["median_ms"]
                                       / ours["median_ms"])
        ours["speedup_vs_einsum"] = others["torch.einsum"]["median_ms"] / ours["median_ms"]
        rows += [ours, *others.values()]
        del input_sets, generic_sets, reference, timing
        torch.cuda.empty_cache()
    return rows


def format_table(rows: list[dict]) -> str:
    header = (f"{'dtype':<9}{'implementation':<38}{'ms':>9}{'GB/s':>9}{'of copy':>9}"
              f"{'x official':>12}{'x einsum':>10}{'max|diff|':>11}")
    lines = [header, "-" * len(header)]
    for row in rows:
        speedups = "".join(f"{row[key]:>{width}.1f}" if key in row else " " * width
                           for key, width in (("speedup_vs_official", 12),
                                              ("speedup_vs_einsum", 10)))
        diff = f"{row['max_abs_diff']:>11.2e}" if "max_abs_diff" in row else ""
        lines.append(f"{row['dtype']:<9}{row['name']:<38}{row['median_ms']:>9.3f}"
                     f"{row['gbps']:>9.0f}{row['fraction_of_copy']:>9.3f}{speedups}{diff}")
    return "\n".join(lines)


def summary(rows: list[dict]) -> list[str]:
    """Per dtype: our kernel's standing against the target."""
    lines = []
    for row in rows:
        if row["name"] == KERNEL_ROW:
            verdict = "meets" if row["fraction_of_copy"] >= TARGET_FRACTION else "BELOW"
            lines.append(f"{row['dtype']}: reid kernel at {row['fraction_of_copy']:.3f} of copy "
                         f"({verdict} the {TARGET_FRACTION} target)")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=30, help="timed batches per row")
    parser.add_argument("--batch", type=int, default=10, help="back-to-back calls per batch")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--sets", type=int, default=3, help="input sets rotated between calls")
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES),
                        default=["float16", "bfloat16", "float32"])
    args = parser.parse_args(argv)
    try:
        rows = run(dtypes=args.dtypes, reps=args.reps, warmup=args.warmup, batch=args.batch,
                   sets=args.sets)
    except RuntimeError as exc:
        print(f"bench_moe_combine: {exc}", file=sys.stderr)
        return 1
    shape = (f"experts {list(HAMOBE_LEAD) + [HAMOBE_CHANNELS, HAMOBE_EXPERTS]}, gate "
             f"{list(HAMOBE_LEAD) + [HAMOBE_EXPERTS, HAMOBE_OUTPUTS]}")
    print(f"MoECombine on {torch.cuda.get_device_name()} ({shape}); target: >= "
          f"{TARGET_FRACTION} of copy bandwidth")
    print(format_table(rows))
    for line in summary(rows):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
