"""KeypointPatchPool on the GPU: our kernel versus the torch reference, which materialises every
part's heatmap at crop resolution and pools it (reid_export.ops.keypoint_patch_pool).

    python benchmarks/bench_keypoint_patch_pool.py                 # B=64, T=4, paper+max, fp32+fp16
    python benchmarks/bench_keypoint_patch_pool.py --batch 1 --reps 50

Inputs: crops of random height 64..512 and width about height / 2 (detector-like), COCO-17
poses from a standing-person template with jitter, confidences uniform in [0, 1] (about 10 %
of the joints fall below vis_thresh). The kernel is timed two ways:

* ``op ms``: ``torch.ops.reid.keypoint_patch_pool`` as users call it, one call between CUDA
  events, so the Python dispatch and validation before the launch are included;
* ``device ms``: the same call captured 20 times in a CUDA graph and replayed, per call: the
  kernel's own time (launch gaps of a graph included, host overhead excluded).

Times are medians after warm-up. The reference runs as called by users (it synchronises a few
times to size its padded heatmaps). Target: op speedup >= 50x at B=64, T=4.
"""
from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np
import torch

_GRAPH_CALLS = 20

# COCO-17 joints of an upright person, as fractions of the crop (x of width, y of height).
_POSE_TEMPLATE = np.array([
    (0.50, 0.10), (0.53, 0.08), (0.47, 0.08), (0.56, 0.09), (0.44, 0.09),
    (0.65, 0.22), (0.35, 0.22), (0.72, 0.38), (0.28, 0.38), (0.75, 0.52), (0.25, 0.52),
    (0.60, 0.55), (0.40, 0.55), (0.62, 0.75), (0.38, 0.75), (0.63, 0.95), (0.37, 0.95)])


def make_inputs(batch: int, frames: int, seed: int = 0, device: str = "cuda",
                dtype: torch.dtype = torch.float32):
    """Detector-like clips: keypoints [B, T, 17, 3], crop_hw [B, T, 2] int32, frame_valid."""
    rng = np.random.default_rng(seed)
    height = rng.integers(64, 513, (batch, frames))
    width = np.clip(np.round(height * rng.uniform(0.4, 0.6, (batch, frames))), 16, None)
    pose = _POSE_TEMPLATE[None, None] + rng.normal(0, 0.03, (batch, frames, 17, 2))
    keypoints = np.concatenate([pose[..., :1] * width[..., None, None],
                                pose[..., 1:] * height[..., None, None],
                                rng.uniform(0, 1, (batch, frames, 17, 1))], axis=-1)
    crop_hw = np.stack([height, width], axis=-1).astype(np.int32)
    return (torch.tensor(keypoints, dtype=dtype, device=device),
            torch.tensor(crop_hw, device=device),
            torch.ones(batch, frames, dtype=torch.bool, device=device))


def _median_ms(fn, reps: int, warmup: int, per_call: int = 1) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / per_call)
    return statistics.median(times)


def _device_ms(call, reps: int) -> float:
    """Per-call time of `call` captured _GRAPH_CALLS times in one CUDA graph."""
    call()  # warm up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(_GRAPH_CALLS):
            call()
    return _median_ms(graph.replay, reps, warmup=3, per_call=_GRAPH_CALLS)


def run(batch: int = 64, frames: int = 4, modes=("paper", "max"),
        dtypes=(torch.float32, torch.float16), reps: int = 20, warmup: int = 3,
        seed: int = 0) -> list[dict]:
    """One row per (mode, dtype): op and device median ms, the reference's median ms, speedups,
    max |difference| from the float64 reference."""
    if not torch.cuda.is_available():
        raise RuntimeError("bench_keypoint_patch_pool needs a CUDA GPU (torch.cuda.is_available()"
                           " is False); run it on the GPU machine")
    from reid_export.ops.keypoint_patch_pool import keypoint_patch_pool, keypoint_patch_pool_op
    from reid_sdk import _native  # noqa: F401  (fail here, clearly, if the kernels are missing)

    rows = []
    for dtype in dtypes:
        inputs = make_inputs(batch, frames, seed, dtype=dtype)
        for mode in modes:
            reference_ms = _median_ms(
                lambda inputs=inputs, mode=mode: keypoint_patch_pool(*inputs, mode=mode),
                max(3, reps // 4), 1)
            truth = keypoint_patch_pool(inputs[0].double(), *inputs[1:], mode=mode)

            def call(inputs=inputs, mode=mode):
                return keypoint_patch_pool_op(*inputs, mode=mode)

            op_ms = _median_ms(call, reps, warmup)
            device_ms = _device_ms(call, reps)
            error = float((call().double() - truth).abs().max())
            rows.append(dict(
                op="KeypointPatchPool", mode=mode, dtype=str(dtype).replace("torch.", ""),
                batch=batch, frames=frames, op_ms=op_ms, device_ms=device_ms,
                reference_ms=reference_ms, speedup=reference_ms / op_ms,
                device_speedup=reference_ms / device_ms, max_abs_error_vs_float64=error,
                device=torch.cuda.get_device_name()))
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows as a text table."""
    header = (f"{'mode':<7}{'dtype':<9}{'op ms':>9}{'device ms':>11}{'ref ms':>9}"
              f"{'op speedup':>12}{'device speedup':>16}{'max err':>10}")
    lines = [header]
    for r in rows:
        lines.append(f"{r['mode']:<7}{r['dtype']:<9}{r['op_ms']:>9.4f}{r['device_ms']:>11.4f}"
                     f"{r['reference_ms']:>9.3f}{r['speedup']:>11.1f}x"
                     f"{r['device_speedup']:>15.1f}x{r['max_abs_error_vs_float64']:>10.2e}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args(argv)
    try:
        rows = run(args.batch, args.frames, reps=args.reps)
    except (RuntimeError, ImportError) as err:
        print(f"bench_keypoint_patch_pool: {err}", file=sys.stderr)
        return 2
    print(f"KeypointPatchPool on {rows[0]['device']}, B={args.batch}, T={args.frames}, "
          "crops 64..512 px high (target: op speedup >= 50x)")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
