"""KeypointPatchPool on the GPU: our kernel versus the torch reference, which materialises every
part's heatmap at crop resolution and pools it (reid_export.ops.keypoint_patch_pool).

    python benchmarks/bench_keypoint_patch_pool.py                 # B=64, T=4, paper+max, fp32+fp16
    python benchmarks/bench_keypoint_patch_pool.py --batch 1 --reps 50

Inputs: crops of random height 64..512 and width about height / 2 (detector-like), COCO-17
poses from a standing-person template with jitter, confidences uniform in [0, 1] (about 10 %
of the joints fall below vis_thresh). Times are medians of CUDA-event intervals after warm-up;
the kernel runs through ``torch.ops.reid.keypoint_patch_pool`` (its launch overhead included),
the reference as called by users (it synchronises a few times to size its padded heatmaps).
Target: speedup >= 50x at B=64, T=4.
"""
from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np
import torch

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


def _median_ms(fn, reps: int, warmup: int) -> float:
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
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def run(batch: int = 64, frames: int = 4, modes=("paper", "max"),
        dtypes=(torch.float32, torch.float16), reps: int = 20, warmup: int = 3,
        seed: int = 0) -> list[dict]:
    """One row per (mode, dtype): kernel and reference median ms, speedup, max |difference|."""
    if not torch.cuda.is_available():
        raise RuntimeError("bench_keypoint_patch_pool needs a CUDA GPU (torch.cuda.is_available()"
                           " is False); run it on the GPU machine")
    from reid_export.ops.keypoint_patch_pool import keypoint_patch_pool, keypoint_patch_pool_op
    from reid_sdk import _native  # noqa: F401  (fail here, clearly, if the kernels are missing)

    rows = []
    for dtype in dtypes:
        inputs = make_inputs(batch, frames, seed, dtype=dtype)
        for mode in modes:
            kernel_ms = _median_ms(
                lambda inputs=inputs, mode=mode: keypoint_patch_pool_op(*inputs, mode=mode),
                reps, warmup)
            reference_ms = _median_ms(
                lambda inputs=inputs, mode=mode: keypoint_patch_pool(*inputs, mode=mode),
                max(3, reps // 4), 1)
            ours = keypoint_patch_pool_op(*inputs, mode=mode).double()
            truth = keypoint_patch_pool(inputs[0].double(), *inputs[1:], mode=mode)
            rows.append(dict(
                op="KeypointPatchPool", mode=mode, dtype=str(dtype).replace("torch.", ""),
                batch=batch, frames=frames, kernel_ms=kernel_ms, reference_ms=reference_ms,
                speedup=reference_ms / kernel_ms,
                max_abs_error_vs_float64=float((ours - truth).abs().max()),
                device=torch.cuda.get_device_name()))
    return rows


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
          "crops 64..512 px high (target: speedup >= 50x)")
    print(f"{'mode':<8}{'dtype':<10}{'kernel ms':>11}{'reference ms':>14}{'speedup':>10}"
          f"{'max err':>11}")
    for row in rows:
        print(f"{row['mode']:<8}{row['dtype']:<10}{row['kernel_ms']:>11.4f}"
              f"{row['reference_ms']:>14.3f}{row['speedup']:>9.1f}x"
              f"{row['max_abs_error_vs_float64']:>11.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
