// Runs kernels/moe_combine/moe_combine_kernel.cu on the CPU: its host launcher (argument checks,
// axis merging, path choice, grid) and its kernels, one block after another with one std::thread
// per CUDA thread. The test generates kernel_source.cpp from the .cu, redirecting only the launch
// syntax and the dynamic shared memory declaration to emulated_launch / emulated_moe_shared, and
// calls the library's own reid_moe_combine_* entry points through ctypes on host memory.
// The CUDA basics (threadIdx, blockIdx, blockDim, __syncthreads, warp barriers, shuffles, bit
// casts) come from the KeypointPatchPool emulation's shim; this file and
// cuda_pipeline_primitives.h beside it add what MoECombine uses beyond them, including a small
// emulated device (SM count and limits) for the persistent kernel's grid.
#define __grid_constant__  // before the CUDA headers: kernel parameters are plain values here

#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "cuda_pipeline_primitives.h"  // the stand-in beside this file
#include "cuda_shim.h"

inline EmulatedDim gridDim;
inline float4* emulated_moe_shared = nullptr;

inline void __syncwarp(unsigned = 0xffffffffu) {
    emulated_warp_barrier[threadIdx.x / 32]->arrive_and_wait();
}

// Cache hints mean nothing here: a plain 16-byte store.
inline void __stcs(uint4* ptr, uint4 value) { *ptr = value; }

// An emulated launch finishes before it returns, so there is never a pending launch error.
extern "C" cudaError_t cudaGetLastError(void) { return cudaSuccess; }

// The emulated device: few SMs, so the persistent kernel gives each warp several work units.
inline int emulated_multiprocessors = 2;
inline int emulated_shared_per_multiprocessor = 233472;  // H100 / H200
inline int emulated_threads_per_multiprocessor = 2048;

extern "C" cudaError_t cudaGetDevice(int* device) {
    *device = 0;
    return cudaSuccess;
}

extern "C" cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
    switch (attr) {
        case cudaDevAttrMultiProcessorCount: *value = emulated_multiprocessors; break;
        case cudaDevAttrMaxSharedMemoryPerMultiprocessor:
            *value = emulated_shared_per_multiprocessor;
            break;
        case cudaDevAttrMaxThreadsPerMultiProcessor:
            *value = emulated_threads_per_multiprocessor;
            break;
        default: return cudaErrorInvalidValue;
    }
    return cudaSuccess;
}

// cp.async copies some thread issued but never waited for (a kernel bug), since the last reset.
inline std::atomic<size_t> emulated_unretired = 0;

// The kernel and grid of the last launch (null / 0: nothing was launched since the reset).
inline const void* emulated_last_kernel = nullptr;
inline unsigned emulated_last_grid = 0;

// Runs `kernel` over `grid` blocks of `threads` threads. Shared memory starts as NaN garbage for
// every block, as stale data from another block would on a GPU.
template <typename... Params, typename... Args>
void emulated_launch(void (*kernel)(Params...), unsigned grid, int threads, size_t shared_bytes,
                     cudaStream_t, Args... args) {
    std::vector<float4> shared(shared_bytes / sizeof(float4) + 1);
    emulated_moe_shared = shared.data();
    gridDim.x = grid;
    blockDim.x = static_cast<unsigned>(threads);
    emulated_last_kernel = reinterpret_cast<const void*>(kernel);
    emulated_last_grid = grid;
    std::barrier<> block_barrier(threads);
    emulated_block_barrier = &block_barrier;
    std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
    for (int w = 0; w < threads / 32; ++w) {
        warp_barriers.push_back(std::make_unique<std::barrier<>>(32));
        emulated_warp_barrier[w] = warp_barriers.back().get();
    }
    const float garbage = std::numeric_limits<float>::quiet_NaN();
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
        workers.emplace_back([&, t] {
            threadIdx.x = static_cast<unsigned>(t);
            for (unsigned block = 0; block < grid; ++block) {
                if (t == 0) {
                    blockIdx.x = block;
                    std::fill(shared.begin(), shared.end(),
                              float4{garbage, garbage, garbage, garbage});
                }
                block_barrier.arrive_and_wait();
                kernel(args...);
                emulated_unretired += emulated_take_unretired_copies();
                block_barrier.arrive_and_wait();
            }
        });
    }
    for (auto& worker : workers) worker.join();
}

#include "kernel_source.cpp"

extern "C" size_t emulated_desc_size() { return sizeof(reid_moe_combine_desc); }

extern "C" void emulated_reset() {
    emulated_last_kernel = nullptr;
    emulated_last_grid = 0;
    emulated_unretired = 0;
}

extern "C" void emulated_set_device(int multiprocessors, int shared_per_multiprocessor,
                                    int threads_per_multiprocessor) {
    emulated_multiprocessors = multiprocessors;
    emulated_shared_per_multiprocessor = shared_per_multiprocessor;
    emulated_threads_per_multiprocessor = threads_per_multiprocessor;
}

extern "C" size_t emulated_unretired_copies() { return emulated_unretired; }

extern "C" unsigned emulated_last_launch_grid() { return emulated_last_grid; }

// -1: nothing launched; 0: the generic kernel; 1: a vectorised kernel.
extern "C" int emulated_last_launch_vectorised() {
    if (emulated_last_kernel == nullptr) return -1;
    const void* generic[] = {reinterpret_cast<const void*>(&reid::generic_kernel<float>),
                             reinterpret_cast<const void*>(&reid::generic_kernel<__half>),
                             reinterpret_cast<const void*>(&reid::generic_kernel<__nv_bfloat16>)};
    for (const void* kernel : generic) {
        if (kernel == emulated_last_kernel) return 0;
    }
    return 1;
}

// Whether the last launch ran reid::vectorised_kernel<T, kE, kJ>; if so, stores its E and J.
template <typename T, int kE, int kJ>
bool last_kernel_is(int* num_experts, int* num_outputs) {
    const void* kernel = reinterpret_cast<const void*>(&reid::vectorised_kernel<T, kE, kJ>);
    if (kernel != emulated_last_kernel) return false;
    *num_experts = kE;
    *num_outputs = kJ;
    return true;
}

template <typename T, int... kIndex>
bool find_last_vectorised(std::integer_sequence<int, kIndex...>, int* num_experts,
                          int* num_outputs) {
    return (last_kernel_is<T, kIndex / reid::kMoeMaxVectorisedOutputs + 1,
                           kIndex % reid::kMoeMaxVectorisedOutputs + 1>(num_experts, num_outputs) ||
            ...);
}

// The (E, J) instantiation of the vectorised kernel for dtype 0 float32 / 1 float16 / 2 bfloat16
// that ran last, found by comparing the launched kernel with every instantiation (not through the
// launcher's own table). Returns 1 and fills num_experts / num_outputs, or 0 when it was none.
extern "C" int emulated_last_vectorised_instantiation(int dtype, int* num_experts,
                                                      int* num_outputs) {
    constexpr auto kPairs = std::make_integer_sequence<
        int, reid::kMoeMaxVectorisedExperts * reid::kMoeMaxVectorisedOutputs>{};
    switch (dtype) {
        case 0: return find_last_vectorised<float>(kPairs, num_experts, num_outputs);
        case 1: return find_last_vectorised<__half>(kPairs, num_experts, num_outputs);
        case 2: return find_last_vectorised<__nv_bfloat16>(kPairs, num_experts, num_outputs);
        default: return 0;
    }
}
