// MoECombine: out[..., c, j] = sum_m experts[..., c, m] * w[..., m, j], with
// w = softmax over m of gate[..., m, j] (or the gate itself). Purely memory-bound: every experts
// element is read once, every output element written once, and each token's gate column is read
// and softmaxed once per work unit.
//
// Two paths; README.md has the full description.
//  * Vectorised (rows dense, C a multiple of CH = 16 / sizeof(T), 16-byte aligned tokens, E <= 8,
//    J <= 4). Persistent grid; a warp keeps a ring of kStages groups of 32 chunks (CH channels x
//    E experts) in shared memory, kStages - 1 of them in flight with cp.async, each lane combines
//    one chunk, and the results leave through the ring slot as lane-consecutive 16-byte streaming
//    stores. Gate softmax per group by shuffles within the warp, no block barrier.
//  * Generic (any strides, any C, any E <= 16 and J <= 8): one block per tile of tokens whose gate
//    weights are staged in shared memory behind a block barrier; a thread per channel row, read
//    and written with its strides, its experts loaded in blocks of 8 before their first use.
#include "moe_combine_kernel.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>

#include <cuda_pipeline_primitives.h>

#include "reid_common.cuh"

namespace reid {
namespace {

constexpr int kVectorBytes = 16;
// Shared memory the hardware reserves per resident block (sm_80 and later).
constexpr size_t kReservedSharedPerBlock = 1024;

// =================================================================================================
// Common pieces
// =================================================================================================

// A 16-byte vector of T held as four 32-bit words (so 16-bit types pack two per register).
// Lanes<T> reads lane k as float and writes lane pairs (2i, 2i + 1) from floats, rounding to
// nearest even; lane counts are even for every T, so a pair never straddles two vectors.
struct alignas(kVectorBytes) Vec {
    uint32_t word[4];
};

template <typename T>
struct Lanes;

template <>
struct Lanes<float> {
    static constexpr int kCount = 4;
    __device__ static float get(const Vec& v, int k) { return __uint_as_float(v.word[k]); }
    __device__ static void set_pair(Vec& v, int pair, float lo, float hi) {
        v.word[2 * pair] = __float_as_uint(lo);
        v.word[2 * pair + 1] = __float_as_uint(hi);
    }
};

template <>
struct Lanes<__half> {
    static constexpr int kCount = 8;
    __device__ static float get(const Vec& v, int k) {
        const uint32_t w = v.word[k / 2];
        return __half2float(__ushort_as_half(static_cast<unsigned short>(k % 2 ? w >> 16 : w)));
    }
    __device__ static void set_pair(Vec& v, int pair, float lo, float hi) {
        const __half2 h = __floats2half2_rn(lo, hi);
        memcpy(&v.word[pair], &h, sizeof(h));
    }
};

template <>
struct Lanes<__nv_bfloat16> {
    static constexpr int kCount = 8;
    __device__ static float get(const Vec& v, int k) {
        const uint32_t w = v.word[k / 2];
        return __uint_as_float(k % 2 ? (w & 0xffff0000u) : (w << 16));
    }
    __device__ static void set_pair(Vec& v, int pair, float lo, float hi) {
        const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
        memcpy(&v.word[pair], &h, sizeof(h));
    }
};

// Every out byte is written once: evict-first (.cs) stores keep it from displacing anything in
// L1 / L2 (the experts travel by cp.async, which bypasses L1).
__device__ __forceinline__ void store_streaming(void* dst, const Vec& v) {
    __stcs(static_cast<uint4*>(dst), make_uint4(v.word[0], v.word[1], v.word[2], v.word[3]));
}

// Leading (token) axes after dropping size-1 axes and merging contiguous ones, innermost first.
struct TokenLayout {
    int32_t num_dims;
    uint32_t shape[REID_MAX_LEAD_DIMS];  // token counts fit 32 bits (checked by the launcher)
    int64_t experts_stride[REID_MAX_LEAD_DIMS];
    int64_t gate_stride[REID_MAX_LEAD_DIMS];
    int64_t out_stride[REID_MAX_LEAD_DIMS];
};

struct MoeParams {
    TokenLayout tokens;
    int64_t num_tokens;
    int64_t experts_stride_c, experts_stride_e;
    int64_t gate_stride_e, gate_stride_j;
    int64_t out_stride_c, out_stride_j;
    int32_t num_experts, num_outputs;
    int32_t apply_softmax;
    int32_t tokens_per_block;  // generic path
    // Items of a token: channels (generic path) or chunks of CH channels (vectorised path).
    int32_t items_per_token;
    int32_t units_per_token;  // vectorised path: groups of up to 32 chunks per token
};

struct TokenOffsets {
    int64_t experts, gate, out;
};

// Element offsets of token `token`'s blocks (innermost axis first). Merged layouts have one to
// three axes, so the loop stays rolled; `layout` is read in place from the __grid_constant__
// parameter bank. A single axis (any dense call) needs no division.
__device__ __forceinline__ TokenOffsets token_offsets(const TokenLayout& layout, uint32_t token) {
    TokenOffsets off{0, 0, 0};
#pragma unroll 1
    for (int d = 0; d < layout.num_dims; ++d) {
        uint32_t coord = token;
        if (d + 1 < layout.num_dims) {
            const uint32_t outer = token / layout.shape[d];
            coord = token - outer * layout.shape[d];
            token = outer;
        }
        off.experts += static_cast<int64_t>(coord) * layout.experts_stride[d];
        off.gate += static_cast<int64_t>(coord) * layout.gate_stride[d];
        off.out += static_cast<int64_t>(coord) * layout.out_stride[d];
    }
    return off;
}

__device__ __forceinline__ float4* dynamic_shared() {
    extern __shared__ float4 shared_f4[];  // float4: 16-byte aligned
    return shared_f4;
}

// =================================================================================================
// Vectorised path: persistent grid, a ring of kStages cp.async groups per warp
// =================================================================================================

// A warp's share of the work units of the persistent grid: unit u = token * units_per_token + unit
// for u = warp, warp + warps, ... (warps: all warps of the grid), stepped without a division.
struct UnitWalk {
    int64_t token;
    int32_t unit;
    int64_t token_step;
    int32_t unit_step;

    __device__ bool done(const MoeParams& p) const { return token >= p.num_tokens; }
    __device__ void advance(const MoeParams& p) {
        token += token_step;
        unit += unit_step;
        if (unit >= p.units_per_token) {
            unit -= p.units_per_token;
            ++token;
        }
    }
};

__device__ __forceinline__ UnitWalk start_walk(const MoeParams& p) {
    const int64_t warps_per_block = blockDim.x / kWarpSize;
    const int64_t warps = static_cast<int64_t>(gridDim.x) * warps_per_block;
    const int64_t first = static_cast<int64_t>(blockIdx.x) * warps_per_block + threadIdx.x / kWarpSize;
    const int64_t units = p.units_per_token;
    return {first / units, static_cast<int32_t>(first % units), warps / units,
            static_cast<int32_t>(warps % units)};
}

// Warp-level mixture weights: lane j * 8 + m holds weight (m, j) of the group's token (E <= 8 and
// J <= 4 fit the 32 lanes); the softmax over m runs within each group of 8 lanes with xor
// shuffles and the other lanes fetch weights with __shfl_sync. Loading the logit and turning it
// into a weight are separate so the load is issued with the group's copy, kStages - 1 groups ahead.
constexpr int kGateLanesPerColumn = 8;

template <typename T, int kE, int kJ>
__device__ __forceinline__ float load_lane_logit(const MoeParams& p, const T* gate_token,
                                                 int lane) {
    const int m = lane % kGateLanesPerColumn;
    const int j = lane / kGateLanesPerColumn;
    if (m >= kE || j >= kJ) return -INFINITY;
    return to_float(gate_token[m * p.gate_stride_e + j * p.gate_stride_j]);
}

// All lanes of the warp call this together (apply_softmax is uniform).
template <int kE, int kJ>
__device__ __forceinline__ float lane_weight(float logit, int lane, bool apply_softmax) {
    if (!apply_softmax) return logit;
    const bool valid = lane % kGateLanesPerColumn < kE && lane / kGateLanesPerColumn < kJ;
    float peak = logit;
#pragma unroll
    for (int mask = 1; mask < kE; mask *= 2) {
        peak = fmaxf(peak, __shfl_xor_sync(kFullWarpMask, peak, mask));
    }
    const float e = valid ? expf(logit - peak) : 0.0f;
    float sum = e;
#pragma unroll
    for (int mask = 1; mask < kE; mask *= 2) sum += __shfl_xor_sync(kFullWarpMask, sum, mask);
    return valid ? e * (1.0f / sum) : 0.0f;
}

// Weight (expert, j) from the lane holding it; all lanes call this together.
__device__ __forceinline__ float fetch_weight(float lane_w, int expert, int j) {
    return __shfl_sync(kFullWarpMask, lane_w, j * kGateLanesPerColumn + expert);
}

// One chunk: CH channels x E experts (E input vectors) -> CH channels x J outputs (J output
// vectors). Lane f of the flattened input is channel f / E, expert f % E; of the output, channel
// f / J, output f % J. Experts are the outer loop so only one expert's J weights are live next to
// the chunk and the CH x J accumulators.
template <typename T, int kE, int kJ>
__device__ __forceinline__ void combine_chunk(const Vec (&chunk)[kE],
                                              const float (&weights)[kE][kJ], Vec (&result)[kJ]) {
    constexpr int kCh = Lanes<T>::kCount;
    float acc[kCh][kJ];
#pragma unroll
    for (int c = 0; c < kCh; ++c) {
#pragma unroll
        for (int j = 0; j < kJ; ++j) acc[c][j] = 0.0f;
    }
#pragma unroll
    for (int m = 0; m < kE; ++m) {
        float w[kJ];
#pragma unroll
        for (int j = 0; j < kJ; ++j) w[j] = weights[m][j];
#pragma unroll
        for (int c = 0; c < kCh; ++c) {
            const int lane = c * kE + m;
            const float x = Lanes<T>::get(chunk[lane / kCh], lane % kCh);
#pragma unroll
            for (int j = 0; j < kJ; ++j) acc[c][j] = fmaf(x, w[j], acc[c][j]);
        }
    }
#pragma unroll
    for (int lane = 0; lane < kCh * kJ; lane += 2) {
        Lanes<T>::set_pair(result[lane / kCh], (lane % kCh) / 2, acc[lane / kJ][lane % kJ],
                           acc[(lane + 1) / kJ][(lane + 1) % kJ]);
    }
}

// Position of vector s in a warp's staging buffer, whose vectors are written lane-consecutively
// (s = v * 32 + lane) and read per lane (s = lane * n + v), or the other way round, with n = E for
// the experts and n = J for the results. 16-byte accesses go in quarter-warps of 8 lanes, which
// are conflict-free when their slots differ mod 8: true for odd n as is, and for n = 2, 4, 8 with
// one padding slot after every 8 (n = 6: two-way).
template <int kStride>
__device__ __forceinline__ int staging_slot(int s) {
    return kStride % 2 != 0 ? s : s + (s >> 3);
}

// Staging slots of one group: 32 chunks of max(E, J) vectors, with padding.
__host__ __device__ constexpr int staging_slots(int num_experts, int num_outputs) {
    return 36 * (num_experts > num_outputs ? num_experts : num_outputs);
}

// A warp's group (its work unit): up to 32 consecutive chunks of one token.
template <typename T>
struct ChunkGroup {
    int chunks;  // chunks in the group, 1..32
    const T* experts;
    T* out;
};

template <typename T, int kE, int kJ>
__device__ __forceinline__ ChunkGroup<T> make_group(const MoeParams& p, const T* experts, T* out,
                                                    const TokenOffsets& off, int first_chunk) {
    constexpr int64_t kCh = Lanes<T>::kCount;
    return {min(kWarpSize, p.items_per_token - first_chunk),
            experts + off.experts + first_chunk * (kCh * kE),
            out + off.out + first_chunk * (kCh * kJ)};
}

// Starts the lane-consecutive copy of a group's E * chunks experts vectors (vector v * 32 + lane
// per lane) into a staging buffer, asynchronously (cp.async, L2 only): no registers hold them,
// and the warp works on older groups while they travel. The caller commits.
template <typename T, int kE>
__device__ __forceinline__ void copy_group_async(const ChunkGroup<T>& group, int lane,
                                                 Vec* staging) {
#pragma unroll
    for (int v = 0; v < kE; ++v) {
        const int s = v * kWarpSize + lane;
        if (s < group.chunks * kE) {
            __pipeline_memcpy_async(&staging[staging_slot<kE>(s)],
                                    group.experts + s * Lanes<T>::kCount, sizeof(Vec));
        }
    }
}

// The rest of a group once its copy has landed (the caller waited): each lane takes its chunk
// from the staging buffer, combines it, and the results go out lane-consecutively through the
// same buffer. All lanes of the warp call this together.
template <typename T, int kE, int kJ>
__device__ __forceinline__ void finish_group(const ChunkGroup<T>& group, int lane,
                                             const float (&weights)[kE][kJ], Vec* staging) {
    constexpr int kCh = Lanes<T>::kCount;
    __syncwarp();
    Vec chunk[kE];
    if (lane < group.chunks) {
#pragma unroll
        for (int v = 0; v < kE; ++v) chunk[v] = staging[staging_slot<kE>(lane * kE + v)];
    }
    __syncwarp();  // the results reuse the buffer
    if (lane < group.chunks) {
        Vec result[kJ];
        combine_chunk<T, kE, kJ>(chunk, weights, result);
#pragma unroll
        for (int v = 0; v < kJ; ++v) staging[staging_slot<kJ>(lane * kJ + v)] = result[v];
    }
    __syncwarp();
#pragma unroll
    for (int v = 0; v < kJ; ++v) {
        const int s = v * kWarpSize + lane;
        if (s < group.chunks * kJ) {
            store_streaming(group.out + s * kCh, staging[staging_slot<kJ>(s)]);
        }
    }
    __syncwarp();  // a later group refills the buffer
}

constexpr int kVectorisedBlockThreads = 64;
constexpr int kVectorisedMinBlocks = 8;  // register cap 128 (never reached); shared memory decides
constexpr int kStages = 4;

__host__ __device__ constexpr size_t vectorised_shared_bytes(int num_experts, int num_outputs) {
    return static_cast<size_t>(kVectorisedBlockThreads / kWarpSize) * kStages *
           staging_slots(num_experts, num_outputs) * kVectorBytes;
}

// Group k + kStages - 1 is copied while group k is combined; the copies hold no registers, so
// kStages - 1 groups (E * 512 bytes each) stay in flight per warp. E and J are template
// parameters, so the (channel, expert) position of every lane of a chunk is a compile-time
// constant.
template <typename T, int kE, int kJ>
__global__ void __launch_bounds__(kVectorisedBlockThreads, kVectorisedMinBlocks)
    vectorised_kernel(const __grid_constant__ MoeParams p, const T* __restrict__ experts,
                      const T* __restrict__ gate, T* __restrict__ out) {
    constexpr int kSlots = staging_slots(kE, kJ);
    const int lane = threadIdx.x % kWarpSize;
    Vec* ring = reinterpret_cast<Vec*>(dynamic_shared()) +
                (threadIdx.x / kWarpSize) * (kStages * kSlots);
    UnitWalk issue = start_walk(p);
    UnitWalk finish = issue;
    // Gate logits of the groups in flight, oldest first (this lane's (m, j) element).
    float logits[kStages];
    const auto issue_group = [&](int stage) -> float {
        float logit = 0.0f;
        if (!issue.done(p)) {
            const TokenOffsets off = token_offsets(p.tokens, static_cast<uint32_t>(issue.token));
            const ChunkGroup<T> group =
                make_group<T, kE, kJ>(p, experts, out, off, issue.unit * kWarpSize);
            copy_group_async<T, kE>(group, lane, ring + stage * kSlots);
            logit = load_lane_logit<T, kE, kJ>(p, gate + off.gate, lane);
            issue.advance(p);
        }
        __pipeline_commit();  // empty groups too: wait_prior counts every commit
        return logit;
    };
#pragma unroll
    for (int s = 0; s + 1 < kStages; ++s) logits[s] = issue_group(s);
    for (int stage = 0; !finish.done(p); stage = (stage + 1) % kStages) {
        logits[kStages - 1] = issue_group((stage + kStages - 1) % kStages);
        __pipeline_wait_prior(kStages - 1);
        const float w = lane_weight<kE, kJ>(logits[0], lane, p.apply_softmax);
        float weights[kE][kJ];
#pragma unroll
        for (int m = 0; m < kE; ++m) {
#pragma unroll
            for (int j = 0; j < kJ; ++j) weights[m][j] = fetch_weight(w, m, j);
        }
        const TokenOffsets off = token_offsets(p.tokens, static_cast<uint32_t>(finish.token));
        const ChunkGroup<T> group =
            make_group<T, kE, kJ>(p, experts, out, off, finish.unit * kWarpSize);
        finish_group<T, kE, kJ>(group, lane, weights, ring + stage * kSlots);
#pragma unroll
        for (int s = 0; s + 1 < kStages; ++s) logits[s] = logits[s + 1];
        finish.advance(p);
    }
}

// =================================================================================================
// Generic path: one block per tile of tokens_per_block tokens, whose offsets and weights are staged
// in shared memory behind a block barrier; a thread per channel row.
// =================================================================================================

// Per tile token its experts / out offsets and its weights [token][m][j] in float.
struct TileShared {
    int64_t* experts_off;
    int64_t* out_off;
    float* weights;
};

__device__ __forceinline__ TileShared tile_shared(const MoeParams& p) {
    int64_t* offsets = reinterpret_cast<int64_t*>(dynamic_shared());
    return {offsets, offsets + p.tokens_per_block,
            reinterpret_cast<float*>(offsets + 2 * p.tokens_per_block)};
}

// Stages the tile's token offsets and mixture weights: one thread per (token, j) column reads its
// E gate values once (into shared memory, tracking their max), then exponentiates and normalises
// them there. Rolled loops over shared memory keep this cold code's registers low, so it does not
// limit the occupancy of the streaming part.
template <typename T>
__device__ __forceinline__ void stage_tile(const MoeParams& p, const T* __restrict__ gate,
                                           int64_t first_token, int tile_tokens, TileShared tile) {
    const int num_experts = p.num_experts;
    const int num_outputs = p.num_outputs;
    for (int k = threadIdx.x; k < tile_tokens * num_outputs; k += blockDim.x) {
        const int tok = k / num_outputs;
        const int j = k - tok * num_outputs;
        const TokenOffsets off = token_offsets(p.tokens, static_cast<uint32_t>(first_token + tok));
        if (j == 0) {
            tile.experts_off[tok] = off.experts;
            tile.out_off[tok] = off.out;
        }
        const T* column = gate + off.gate + j * p.gate_stride_j;
        float* w = tile.weights + (tok * num_experts) * num_outputs + j;
        float peak = -INFINITY;
#pragma unroll 1
        for (int m = 0; m < num_experts; ++m) {
            const float logit = to_float(column[m * p.gate_stride_e]);
            w[m * num_outputs] = logit;
            peak = fmaxf(peak, logit);
        }
        if (!p.apply_softmax) continue;
        float sum = 0.0f;
#pragma unroll 1
        for (int m = 0; m < num_experts; ++m) {
            const float e = expf(w[m * num_outputs] - peak);
            w[m * num_outputs] = e;
            sum += e;
        }
        const float inv_sum = 1.0f / sum;
#pragma unroll 1
        for (int m = 0; m < num_experts; ++m) w[m * num_outputs] *= inv_sum;
    }
}

struct Tile {
    int64_t first_token;
    int tokens;
};

__device__ __forceinline__ Tile block_tile(const MoeParams& p) {
    const int64_t first_token = static_cast<int64_t>(blockIdx.x) * p.tokens_per_block;
    const int64_t tokens_left = p.num_tokens - first_token;
    return {first_token,
            static_cast<int>(tokens_left < p.tokens_per_block ? tokens_left : p.tokens_per_block)};
}

// Experts of a row loaded together before their first use: one memory latency per block of
// kGenericExpertBlock experts instead of one per expert.
constexpr int kGenericExpertBlock = 8;

// One channel row with any strides.
template <typename T>
__device__ __forceinline__ void combine_row(const MoeParams& p, const T* __restrict__ row,
                                            const float* __restrict__ weights, T* dst) {
    const int num_experts = p.num_experts;
    const int num_outputs = p.num_outputs;
    float acc[REID_MOE_MAX_OUTPUTS];
#pragma unroll
    for (int j = 0; j < REID_MOE_MAX_OUTPUTS; ++j) acc[j] = 0.0f;
#pragma unroll 1
    for (int m0 = 0; m0 < num_experts; m0 += kGenericExpertBlock) {
        float x[kGenericExpertBlock];
#pragma unroll
        for (int k = 0; k < kGenericExpertBlock; ++k) {
            x[k] = m0 + k < num_experts ? to_float(row[(m0 + k) * p.experts_stride_e]) : 0.0f;
        }
#pragma unroll
        for (int k = 0; k < kGenericExpertBlock; ++k) {
            if (m0 + k >= num_experts) break;
            const float* w = weights + (m0 + k) * num_outputs;
#pragma unroll
            for (int j = 0; j < REID_MOE_MAX_OUTPUTS; ++j) {
                if (j < num_outputs) acc[j] = fmaf(x[k], w[j], acc[j]);
            }
        }
    }
#pragma unroll
    for (int j = 0; j < REID_MOE_MAX_OUTPUTS; ++j) {
        if (j < num_outputs) dst[j * p.out_stride_j] = from_float<T>(acc[j]);
    }
}

template <typename T>
__global__ void __launch_bounds__(kMoeBlockThreads, 3)
    generic_kernel(const __grid_constant__ MoeParams p, const T* __restrict__ experts,
                   const T* __restrict__ gate, T* __restrict__ out) {
    const TileShared tile = tile_shared(p);
    const Tile t = block_tile(p);
    stage_tile(p, gate, t.first_token, t.tokens, tile);
    __syncthreads();
    const int items = t.tokens * p.items_per_token;
    const int weights_per_token = p.num_experts * p.num_outputs;
    for (int item = threadIdx.x; item < items; item += blockDim.x) {
        const int tok = item / p.items_per_token;
        const int64_t channel = item - tok * p.items_per_token;
        combine_row(p, experts + tile.experts_off[tok] + channel * p.experts_stride_c,
                    tile.weights + tok * weights_per_token,
                    out + tile.out_off[tok] + channel * p.out_stride_c);
    }
}

// =================================================================================================
// Host side
// =================================================================================================

template <typename T>
using MoeKernel = void (*)(MoeParams, const T*, const T*, T*);

// The vectorised kernels of every (E, J) within the vectorised limits, at
// (E - 1) * kMoeMaxVectorisedOutputs + J - 1.
template <typename T, int... kIndex>
std::array<MoeKernel<T>, sizeof...(kIndex)> vectorised_kernel_table(
    std::integer_sequence<int, kIndex...>) {
    return {{&vectorised_kernel<T, kIndex / kMoeMaxVectorisedOutputs + 1,
                                kIndex % kMoeMaxVectorisedOutputs + 1>...}};
}

template <typename T>
MoeKernel<T> vectorised_kernel_for(int num_experts, int num_outputs) {
    static const auto table = vectorised_kernel_table<T>(
        std::make_integer_sequence<int, kMoeMaxVectorisedExperts * kMoeMaxVectorisedOutputs>{});
    return table[(num_experts - 1) * kMoeMaxVectorisedOutputs + num_outputs - 1];
}

// Drops size-1 leading axes and merges neighbours that are contiguous in all three tensors, so
// the common dense case becomes a single axis (no division per token).
TokenLayout merge_token_axes(const reid_moe_combine_desc& desc) {
    TokenLayout layout{};
    int n = 0;
    for (int i = desc.num_lead_dims - 1; i >= 0; --i) {
        const int64_t size = desc.lead_shape[i];
        if (size == 1) continue;
        const int64_t inner = n > 0 ? layout.shape[n - 1] : 0;
        if (n > 0 && desc.experts_lead_strides[i] == layout.experts_stride[n - 1] * inner &&
            desc.gate_lead_strides[i] == layout.gate_stride[n - 1] * inner &&
            desc.out_lead_strides[i] == layout.out_stride[n - 1] * inner) {
            layout.shape[n - 1] *= static_cast<uint32_t>(size);
            continue;
        }
        layout.shape[n] = static_cast<uint32_t>(size);
        layout.experts_stride[n] = desc.experts_lead_strides[i];
        layout.gate_stride[n] = desc.gate_lead_strides[i];
        layout.out_stride[n] = desc.out_lead_strides[i];
        ++n;
    }
    layout.num_dims = n;
    return layout;
}

bool aligned_to_vector(const void* ptr) {
    return reinterpret_cast<uintptr_t>(ptr) % kVectorBytes == 0;
}

template <typename T>
bool can_vectorise(const reid_moe_combine_desc& desc, const TokenLayout& layout,
                   const void* experts, const void* out) {
    constexpr int64_t kCh = Lanes<T>::kCount;
    if (desc.num_experts > kMoeMaxVectorisedExperts ||
        desc.num_outputs > kMoeMaxVectorisedOutputs) {
        return false;
    }
    const bool dense_rows = desc.channels % kCh == 0 && desc.experts_stride_c == desc.num_experts &&
                            (desc.num_experts == 1 || desc.experts_stride_e == 1) &&
                            desc.out_stride_c == desc.num_outputs &&
                            (desc.num_outputs == 1 || desc.out_stride_j == 1);
    if (!dense_rows || !aligned_to_vector(experts) || !aligned_to_vector(out)) return false;
    constexpr int64_t kBytes = sizeof(T);
    for (int d = 0; d < layout.num_dims; ++d) {
        if ((layout.experts_stride[d] * kBytes) % kVectorBytes != 0 ||
            (layout.out_stride[d] * kBytes) % kVectorBytes != 0) {
            return false;
        }
    }
    return true;
}

// Grid of the persistent kernel: as many blocks as fit the device at once (at most
// max_blocks_per_sm per SM, the residency its launch bounds guarantee), or fewer when there are
// fewer work units than warps.
cudaError_t persistent_grid(int64_t units, int threads, size_t shared_bytes,
                            int max_blocks_per_sm, unsigned* grid) {
    int device = 0, sms = 0, shared_per_sm = 0, threads_per_sm = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err == cudaSuccess) {
        err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    }
    if (err == cudaSuccess) {
        err = cudaDeviceGetAttribute(&shared_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor,
                                     device);
    }
    if (err == cudaSuccess) {
        err = cudaDeviceGetAttribute(&threads_per_sm, cudaDevAttrMaxThreadsPerMultiProcessor,
                                     device);
    }
    if (err != cudaSuccess) return err;
    const int64_t blocks_per_sm = std::max<int64_t>(
        1, std::min<int64_t>({max_blocks_per_sm, threads_per_sm / threads,
                              static_cast<int64_t>(shared_per_sm) /
                                  static_cast<int64_t>(shared_bytes + kReservedSharedPerBlock)}));
    const int64_t warps_per_block = threads / kWarpSize;
    const int64_t needed = (units + warps_per_block - 1) / warps_per_block;
    *grid = static_cast<unsigned>(std::min<int64_t>(needed, sms * blocks_per_sm));
    return cudaSuccess;
}

struct LaunchShape {
    unsigned grid;
    int threads;
    size_t shared_bytes;
};

// Vectorised path: C / CH chunks per token in groups (work units) of 32, on the persistent grid.
template <typename T>
int vectorised_launch(const reid_moe_combine_desc& desc, MoeParams& p, LaunchShape& shape) {
    const int64_t chunks_per_token = desc.channels / Lanes<T>::kCount;
    if (chunks_per_token > std::numeric_limits<int32_t>::max()) {
        return REID_ERROR_UNSUPPORTED_SHAPE;
    }
    p.items_per_token = static_cast<int32_t>(chunks_per_token);
    p.units_per_token = static_cast<int32_t>((chunks_per_token + kWarpSize - 1) / kWarpSize);
    shape.threads = kVectorisedBlockThreads;
    shape.shared_bytes = vectorised_shared_bytes(p.num_experts, p.num_outputs);
    return static_cast<int>(persistent_grid(p.num_tokens * p.units_per_token, shape.threads,
                                            shape.shared_bytes, kVectorisedMinBlocks,
                                            &shape.grid));
}

// Generic path: tiles of tokens_per_block tokens, about one channel row per thread.
int generic_launch(const reid_moe_combine_desc& desc, MoeParams& p, LaunchShape& shape) {
    const int64_t channels = desc.channels;
    const int64_t tokens_per_block = std::max<int64_t>(
        1, std::min<int64_t>({kMoeBlockThreads / channels, kMoeMaxTokensPerBlock, p.num_tokens}));
    if (channels * tokens_per_block > std::numeric_limits<int32_t>::max()) {
        return REID_ERROR_UNSUPPORTED_SHAPE;
    }
    p.items_per_token = static_cast<int32_t>(channels);
    p.tokens_per_block = static_cast<int32_t>(tokens_per_block);
    const int64_t num_tiles = (p.num_tokens + tokens_per_block - 1) / tokens_per_block;
    if (num_tiles > std::numeric_limits<int32_t>::max()) return REID_ERROR_UNSUPPORTED_SHAPE;
    shape.grid = static_cast<unsigned>(num_tiles);
    shape.threads = kMoeBlockThreads;
    shape.shared_bytes =
        static_cast<size_t>(tokens_per_block) *
        (2 * sizeof(int64_t) + static_cast<size_t>(p.num_experts * p.num_outputs) * sizeof(float));
    return 0;
}

}  // namespace

template <typename T>
int launch_moe_combine(const reid_moe_combine_desc* desc, const void* experts,
                       const void* gate_logits, void* out, cudaStream_t stream) {
    if (desc == nullptr || desc->num_lead_dims < 0 || desc->num_lead_dims > REID_MAX_LEAD_DIMS ||
        (desc->apply_softmax != 0 && desc->apply_softmax != 1) || desc->channels < 0 ||
        desc->num_outputs < 0) {
        return REID_ERROR_INVALID_ARGUMENT;
    }
    if (desc->num_experts < 1 || desc->num_experts > REID_MOE_MAX_EXPERTS ||
        desc->num_outputs > REID_MOE_MAX_OUTPUTS) {
        return REID_ERROR_UNSUPPORTED_SHAPE;
    }
    int64_t num_tokens = 1;
    for (int i = 0; i < desc->num_lead_dims; ++i) {
        if (desc->lead_shape[i] < 0) return REID_ERROR_INVALID_ARGUMENT;
        num_tokens *= desc->lead_shape[i];
    }
    if (num_tokens == 0 || desc->channels == 0 || desc->num_outputs == 0) return 0;
    if (num_tokens > std::numeric_limits<uint32_t>::max()) return REID_ERROR_UNSUPPORTED_SHAPE;
    if (experts == nullptr || gate_logits == nullptr || out == nullptr) {
        return REID_ERROR_INVALID_ARGUMENT;
    }

    MoeParams p{};
    p.tokens = merge_token_axes(*desc);
    p.num_tokens = num_tokens;
    p.experts_stride_c = desc->experts_stride_c;
    p.experts_stride_e = desc->experts_stride_e;
    p.gate_stride_e = desc->gate_stride_e;
    p.gate_stride_j = desc->gate_stride_j;
    p.out_stride_c = desc->out_stride_c;
    p.out_stride_j = desc->out_stride_j;
    p.num_experts = static_cast<int32_t>(desc->num_experts);
    p.num_outputs = static_cast<int32_t>(desc->num_outputs);
    p.apply_softmax = desc->apply_softmax;

    MoeKernel<T> kernel = &generic_kernel<T>;
    LaunchShape shape{};
    int status = 0;
    if (can_vectorise<T>(*desc, p.tokens, experts, out)) {
        kernel = vectorised_kernel_for<T>(p.num_experts, p.num_outputs);
        status = vectorised_launch<T>(*desc, p, shape);
    } else {
        status = generic_launch(*desc, p, shape);
    }
    if (status != 0) return status;
    kernel<<<shape.grid, shape.threads, shape.shared_bytes, stream>>>(
        p, static_cast<const T*>(experts), static_cast<const T*>(gate_logits),
        static_cast<T*>(out));
    REID_RETURN_IF_LAUNCH_FAILED();
    return 0;
}

}  // namespace reid

extern "C" {

REID_API int reid_moe_combine_f32(const reid_moe_combine_desc* desc, const void* experts,
                                  const void* gate_logits, void* out, void* stream) {
    return reid::launch_moe_combine<float>(desc, experts, gate_logits, out,
                                           static_cast<cudaStream_t>(stream));
}

REID_API int reid_moe_combine_f16(const reid_moe_combine_desc* desc, const void* experts,
                                  const void* gate_logits, void* out, void* stream) {
    return reid::launch_moe_combine<__half>(desc, experts, gate_logits, out,
                                            static_cast<cudaStream_t>(stream));
}

REID_API int reid_moe_combine_bf16(const reid_moe_combine_desc* desc, const void* experts,
                                   const void* gate_logits, void* out, void* stream) {
    return reid::launch_moe_combine<__nv_bfloat16>(desc, experts, gate_logits, out,
                                                   static_cast<cudaStream_t>(stream));
}

}  // extern "C"
