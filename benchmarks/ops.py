"""GPU benchmarks of the two custom ops (run on a CUDA machine; figures go in the op READMEs).

    python benchmarks/ops.py

MoECombine at HAMoBE's shape (leading 256 x 257 tokens, C=512, E=8, J=3; fp16, bf16 and fp32):
achieved bandwidth as a fraction of the GPU's measured copy bandwidth, speedup over the official
formulation and over torch.einsum (benchmarks/bench_moe_combine.py). KeypointPatchPool at B=64,
T=4: speedup over the reference that materialises heatmaps
(benchmarks/bench_keypoint_patch_pool.py).
"""
import sys

import bench_keypoint_patch_pool
import bench_moe_combine


def main(argv=None) -> int:
    codes = [bench_moe_combine.main([]), bench_keypoint_patch_pool.main([])]
    return max(codes)


if __name__ == "__main__":
    sys.exit(main())
