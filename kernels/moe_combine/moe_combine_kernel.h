// MoECombine kernel: host launcher template behind the C ABI launchers reid_moe_combine_f32/_f16/
// _bf16 of reid_kernels.h. See kernels/moe_combine/README.md for the algorithm and limits.
#pragma once

#include <cuda_runtime.h>

#include "reid_kernels.h"

namespace reid {

// Threads per block of the generic path.
constexpr int kMoeBlockThreads = 256;
// Most tokens one generic-path block stages gate weights for (bounds the dynamic shared memory).
constexpr int kMoeMaxTokensPerBlock = 64;
// Largest E and J the vectorised path (a register-resident chunk per lane, gate weights on lane
// j * 8 + m) is compiled for; larger ones take the generic path.
constexpr int kMoeMaxVectorisedExperts = 8;
constexpr int kMoeMaxVectorisedOutputs = 4;

// Enqueues out = experts @ softmax_E(gate) for storage type T (float, __half, __nv_bfloat16) on
// `stream`. Validates `desc` (returns REID_ERROR_* codes), launches nothing for empty shapes,
// never allocates or synchronises. Returns 0 or a cudaError_t value.
template <typename T>
int launch_moe_combine(const reid_moe_combine_desc* desc, const void* experts,
                       const void* gate_logits, void* out, cudaStream_t stream);

}  // namespace reid
