// Shared device/host helpers for reid kernels: error propagation, dtype conversion, limits.
// Kernel files include this; plugin files must not (they hold no device code).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "reid_kernels.h"

namespace reid {

constexpr int kWarpSize = 32;
constexpr unsigned kFullWarpMask = 0xffffffffu;  // every lane of a warp, for *_sync intrinsics

// Returns early from a host launcher with the CUDA error of the last launch, if any.
#define REID_RETURN_IF_LAUNCH_FAILED()                 \
    do {                                               \
        const cudaError_t reid_err_ = cudaGetLastError(); \
        if (reid_err_ != cudaSuccess) return static_cast<int>(reid_err_); \
    } while (0)

// Load any supported storage type as fp32; store fp32 back to storage (round to nearest even).
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

}  // namespace reid
