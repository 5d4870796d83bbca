// MoECombine kernel: host launcher template behind the C ABI launchers reid_moe_combine_f32/_f16/
// _bf16 of reid_kernels.h. See kernels/moe_combine/README.md for the algorithm and limits.
#pragma once

#include <cuda_runtime.h>

#include "reid_kernels.h"

namespace reid {

// Threads per block of the tiled kernels (generic path, tiled variant).
constexpr int kMoeBlockThreads = 256;
// Most tokens one tiled block stages gate weights for (bounds the dynamic shared memory).
constexpr int kMoeMaxTokensPerBlock = 64;
// Largest E and J the vectorised (register-resident chunk) path is compiled for; larger ones take
// the generic path.
constexpr int kMoeMaxVectorisedExperts = 8;
constexpr int kMoeMaxVectorisedOutputs = 4;

// Enqueues out = experts @ softmax_E(gate) for storage type T (float, __half, __nv_bfloat16) on
// `stream`. Validates `desc` (returns REID_ERROR_* codes), launches nothing for empty shapes,
// never allocates or synchronises. Returns 0 or a cudaError_t value.
template <typename T>
int launch_moe_combine(const reid_moe_combine_desc* desc, const void* experts,
                       const void* gate_logits, void* out, cudaStream_t stream);

}  // namespace reid

// Internal knob, not part of the C ABI (reid_kernels.h): the vectorised path exists in several
// designs ("variants", moe_combine_kernel.cu) while they are measured against each other on the
// GPU. One process-wide selection applies to every later launch; a variant that does not take a
// shape leaves it to the "staged" variant. benchmarks/bench_moe_combine.py times every variant,
// the GPU and emulated tests check every variant; reid_sdk._native wraps these three calls.
// When one variant remains, these go.
extern "C" {
// Name of variant `variant` (0, 1, ...), or NULL past the last one.
REID_API const char* reid_moe_combine_internal_variant_name(int variant);
// The selected variant (0 until changed: the default).
REID_API int reid_moe_combine_internal_get_variant(void);
// Selects `variant`; returns 0, or REID_ERROR_INVALID_ARGUMENT for an unknown index.
REID_API int reid_moe_combine_internal_set_variant(int variant);
}
