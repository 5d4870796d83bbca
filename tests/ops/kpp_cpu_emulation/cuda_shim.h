// The CUDA features keypoint_patch_pool_kernel.cu uses, emulated on the CPU so the kernel source
// itself can be checked without a GPU: one block at a time, one std::thread per CUDA thread,
// std::barrier for __syncthreads and the warp-synchronous shuffle / ballot exchanges,
// std::atomic_ref for the shared-memory atomics.
// Used only by tests/ops/test_keypoint_patch_pool_emulated.py.
#pragma once

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>

#define __launch_bounds__(...)

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

struct EmulatedDim {
    unsigned x = 0, y = 0, z = 0;
};

inline thread_local EmulatedDim threadIdx;
inline EmulatedDim blockIdx;
inline EmulatedDim blockDim;

constexpr int kEmulatedWarps = 8;
inline std::barrier<>* emulated_block_barrier = nullptr;
inline std::barrier<>* emulated_warp_barrier[kEmulatedWarps];
inline uint32_t emulated_lane_words[kEmulatedWarps][32];
inline unsigned emulated_lane_bits[kEmulatedWarps][32];
inline float* emulated_dynamic_shared = nullptr;

inline void __syncthreads() { emulated_block_barrier->arrive_and_wait(); }

// Every lane publishes its 4-byte value between two warp barriers, then reads lane `source`'s.
template <typename V>
V emulated_lane_exchange(V value, int source) {
    static_assert(sizeof(V) == sizeof(uint32_t), "the shim exchanges 4-byte values");
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    emulated_warp_barrier[warp]->arrive_and_wait();
    std::memcpy(&emulated_lane_words[warp][lane], &value, sizeof value);
    emulated_warp_barrier[warp]->arrive_and_wait();
    V result;
    std::memcpy(&result, &emulated_lane_words[warp][source % 32], sizeof result);
    return result;
}

template <typename V>
V __shfl_xor_sync(unsigned, V value, int lane_mask) {
    return emulated_lane_exchange(value, static_cast<int>(threadIdx.x % 32) ^ lane_mask);
}

template <typename V>
V __shfl_sync(unsigned, V value, int source_lane) {
    return emulated_lane_exchange(value, source_lane);
}

inline unsigned __ballot_sync(unsigned, bool predicate) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    emulated_warp_barrier[warp]->arrive_and_wait();
    emulated_lane_bits[warp][lane] = predicate ? 1u : 0u;
    emulated_warp_barrier[warp]->arrive_and_wait();
    unsigned bits = 0;
    for (int i = 0; i < 32; ++i) bits |= emulated_lane_bits[warp][i] << i;
    return bits;
}

inline int atomicAdd(int* address, int value) {
    return std::atomic_ref<int>(*address).fetch_add(value);
}

inline unsigned atomicMax(unsigned* address, unsigned value) {
    std::atomic_ref<unsigned> target(*address);
    unsigned old = target.load();
    while (old < value && !target.compare_exchange_weak(old, value)) {
    }
    return old;
}

inline unsigned atomicMin(unsigned* address, unsigned value) {
    std::atomic_ref<unsigned> target(*address);
    unsigned old = target.load();
    while (old > value && !target.compare_exchange_weak(old, value)) {
    }
    return old;
}

inline unsigned atomicOr(unsigned* address, unsigned value) {
    return std::atomic_ref<unsigned>(*address).fetch_or(value);
}

inline int __ffsll(long long value) { return __builtin_ffsll(value); }
inline int __popcll(unsigned long long value) { return __builtin_popcountll(value); }

inline unsigned __float_as_uint(float value) {
    unsigned bits;
    std::memcpy(&bits, &value, sizeof bits);
    return bits;
}

inline float __fdividef(float numerator, float denominator) { return numerator / denominator; }

inline float __uint_as_float(unsigned bits) {
    float value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
}

inline float __int_as_float(int bits) {
    float value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
}

using std::abs;
using std::max;
using std::min;
