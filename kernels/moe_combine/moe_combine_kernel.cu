// MoECombine: out[..., c, j] = sum_m experts[..., c, m] * w[..., m, j], with
// w = softmax over m of gate[..., m, j] (or the gate itself). Purely memory-bound: every experts
// element is read once, every output element written once, and each token's gate column is read
// and softmaxed once.
//
// Work decomposition: each block handles one tile of `tokens_per_block` tokens. Its threads first
// stage the tile's per-token offsets and gate weights in shared memory (one thread per (token, j)
// column: load E logits, subtract their max, exp, normalise), then process the tile's items:
//  * vectorised path (rows dense, C a multiple of CH = 16 / sizeof(T), 16-byte aligned tokens,
//    E <= 8, J <= 4): a chunk is CH consecutive channels of a token. Its experts are CH * E
//    contiguous values, exactly E 16-byte vectors; its output CH * J values, exactly J vectors.
//    A warp takes a group of up to 32 consecutive chunks of one token: it copies the group's
//    vectors lane-consecutively (every warp-wide copy is one contiguous 512-byte span) with
//    cp.async into a shared-memory buffer, each lane takes its own chunk from there, combines it
//    in registers, and the results leave the same way round. E and J are template parameters: the
//    (channel, expert) position of every lane of a chunk is a compile-time constant. The warp's
//    first copy is issued before the staging barrier so its latency overlaps the softmax.
//  * generic path (any strides, any C, any E <= 16 and J <= 8): an item is one channel row, read
//    and written with its strides.
// Larger E or J than the vectorised limits take the generic path: their fully unrolled chunks need
// well over 100 registers per thread (and multiply compile time), see README.md.
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
constexpr int kWarpSize = 32;

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
    int32_t tokens_per_block;
    int32_t items_per_token;  // chunks of CH channels (vectorised path) or channels (generic)
};

struct TokenOffsets {
    int64_t experts, gate, out;
};

// Element offsets of token `token`'s blocks (innermost axis first). Merged layouts have one to
// three axes, so the loop stays rolled; `layout` is read in place from the __grid_constant__
// parameter bank. 32-bit division keeps it inline.
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

// Shared memory of one block: per tile token its experts / out offsets and its weights
// [token][m][j] in float; then, on the vectorised path, one staging buffer per warp.
struct TileShared {
    int64_t* experts_off;
    int64_t* out_off;
    float* weights;
    Vec* staging;
};

__device__ __forceinline__ TileShared tile_shared(const MoeParams& p) {
    extern __shared__ float4 shared_f4[];  // float4: 16-byte aligned
    int64_t* offsets = reinterpret_cast<int64_t*>(shared_f4);
    float* weights = reinterpret_cast<float*>(offsets + 2 * p.tokens_per_block);
    const int weight_vectors =
        (p.tokens_per_block * p.num_experts * p.num_outputs * 4 + kVectorBytes - 1) / kVectorBytes;
    Vec* staging = reinterpret_cast<Vec*>(shared_f4 + p.tokens_per_block) + weight_vectors;
    return {offsets, offsets + p.tokens_per_block, weights, staging};
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

__device__ __forceinline__ void store_vector(void* dst, const Vec& v) {
    *static_cast<uint4*>(dst) = make_uint4(v.word[0], v.word[1], v.word[2], v.word[3]);
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

// One chunk: CH channels x E experts (E input vectors) -> CH channels x J outputs (J output
// vectors). Lane f of the flattened input is channel f / E, expert f % E; of the output, channel
// f / J, output f % J. Experts are the outer loop so only one expert's J weights are live next to
// the chunk and the CH x J accumulators.
template <typename T, int kE, int kJ>
__device__ __forceinline__ void combine_chunk(const Vec (&chunk)[kE],
                                              const float* __restrict__ weights,
                                              Vec (&result)[kJ]) {
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
        for (int j = 0; j < kJ; ++j) w[j] = weights[m * kJ + j];
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

// Staging slots per warp: a group's 32 chunks of max(E, J) vectors, with padding.
__host__ __device__ constexpr int staging_slots(int num_experts, int num_outputs) {
    return 36 * (num_experts > num_outputs ? num_experts : num_outputs);
}

// A warp's group: up to 32 consecutive chunks of one token.
template <typename T>
struct ChunkGroup {
    int tok;      // token within the tile
    int chunks;   // chunks in the group, 1..32
    const T* experts;
    T* out;
};

template <typename T, int kE, int kJ>
__device__ __forceinline__ ChunkGroup<T> locate_group(const MoeParams& p, const T* experts,
                                                      T* out, int64_t first_token, int group) {
    constexpr int64_t kCh = Lanes<T>::kCount;
    const int groups_per_token = (p.items_per_token + kWarpSize - 1) / kWarpSize;
    const int tok = group / groups_per_token;
    const int first_chunk = (group - tok * groups_per_token) * kWarpSize;
    const int chunks = min(kWarpSize, p.items_per_token - first_chunk);
    const TokenOffsets off = token_offsets(p.tokens, static_cast<uint32_t>(first_token + tok));
    return {tok, chunks, experts + off.experts + first_chunk * (kCh * kE),
            out + off.out + first_chunk * (kCh * kJ)};
}

// Starts the lane-consecutive copy of a group's E * chunks experts vectors (vector v * 32 + lane
// per lane) into the warp's staging buffer, asynchronously (cp.async, L2 only): no registers
// hold them, and the caller may work while they travel.
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
    __pipeline_commit();
}

// The rest of a group after copy_group_async: each lane takes its chunk from the staging buffer,
// combines it, and the results go out lane-consecutively through the same buffer. All lanes of
// the warp call this together.
template <typename T, int kE, int kJ>
__device__ __forceinline__ void finish_group(const ChunkGroup<T>& group, int lane,
                                             const float* weights, Vec* staging) {
    constexpr int kCh = Lanes<T>::kCount;
    __pipeline_wait_prior(0);
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
        if (s < group.chunks * kJ) store_vector(group.out + s * kCh, staging[staging_slot<kJ>(s)]);
    }
    __syncwarp();  // the next group refills the buffer
}

// One channel row with any strides (generic path).
template <typename T>
__device__ __forceinline__ void combine_row(const MoeParams& p, const T* __restrict__ row,
                                            const float* __restrict__ weights, T* dst) {
    const int num_experts = p.num_experts;
    const int num_outputs = p.num_outputs;
    float acc[REID_MOE_MAX_OUTPUTS];
#pragma unroll
    for (int j = 0; j < REID_MOE_MAX_OUTPUTS; ++j) acc[j] = 0.0f;
    for (int m = 0; m < num_experts; ++m) {
        const float x = to_float(row[m * p.experts_stride_e]);
#pragma unroll
        for (int j = 0; j < REID_MOE_MAX_OUTPUTS; ++j) {
            if (j < num_outputs) acc[j] = fmaf(x, weights[m * num_outputs + j], acc[j]);
        }
    }
#pragma unroll
    for (int j = 0; j < REID_MOE_MAX_OUTPUTS; ++j) {
        if (j < num_outputs) dst[j * p.out_stride_j] = from_float<T>(acc[j]);
    }
}

// Blocks per SM to ask ptxas for, i.e. its register cap (3: 80, 2: 128 registers). Chosen from
// `nvcc -Xptxas -v` on sm_87/89/90: every vectorised chunk fits 80 registers without spilling
// except those whose E input vectors and CH x J accumulators need 96 or more.
template <typename T, int kE, int kJ>
constexpr int moe_min_blocks() {
    return 4 * kE + 2 * Lanes<T>::kCount * kJ >= 96 ? 2 : 3;
}

// One block per tile of tokens. kVectorised: warps take groups of up to 32 chunks (of CH
// channels) and kE / kJ are E and J. Generic (kE = kJ = 0): an item is one channel row and E, J
// come from the params.
template <typename T, bool kVectorised, int kE, int kJ>
__global__ void __launch_bounds__(kMoeBlockThreads, kVectorised ? moe_min_blocks<T, kE, kJ>() : 3)
    moe_combine_kernel(const __grid_constant__ MoeParams p, const T* __restrict__ experts,
                       const T* __restrict__ gate, T* __restrict__ out) {
    const TileShared tile = tile_shared(p);
    const int64_t first_token = static_cast<int64_t>(blockIdx.x) * p.tokens_per_block;
    const int64_t tokens_left = p.num_tokens - first_token;
    const int tile_tokens =
        static_cast<int>(tokens_left < p.tokens_per_block ? tokens_left : p.tokens_per_block);
    if constexpr (kVectorised) {
        const int warp = threadIdx.x / kWarpSize;
        const int lane = threadIdx.x % kWarpSize;
        const int groups = tile_tokens * ((p.items_per_token + kWarpSize - 1) / kWarpSize);
        Vec* staging = tile.staging + warp * staging_slots(kE, kJ);
        ChunkGroup<T> group{0, 0, nullptr, nullptr};
        if (warp < groups) {  // the first copy travels while the gate is staged
            group = locate_group<T, kE, kJ>(p, experts, out, first_token, warp);
            copy_group_async<T, kE>(group, lane, staging);
        }
        stage_tile(p, gate, first_token, tile_tokens, tile);
        __syncthreads();
        const int warps = blockDim.x / kWarpSize;
        for (int g = warp; g < groups; g += warps) {
            if (g != warp) {
                group = locate_group<T, kE, kJ>(p, experts, out, first_token, g);
                copy_group_async<T, kE>(group, lane, staging);
            }
            finish_group<T, kE, kJ>(group, lane, tile.weights + group.tok * (kE * kJ), staging);
        }
    } else {
        stage_tile(p, gate, first_token, tile_tokens, tile);
        __syncthreads();
        const int items = tile_tokens * p.items_per_token;
        const int weights_per_token = p.num_experts * p.num_outputs;
        for (int item = threadIdx.x; item < items; item += blockDim.x) {
            const int tok = item / p.items_per_token;
            const int64_t channel = item - tok * p.items_per_token;
            combine_row(p, experts + tile.experts_off[tok] + channel * p.experts_stride_c,
                        tile.weights + tok * weights_per_token,
                        out + tile.out_off[tok] + channel * p.out_stride_c);
        }
    }
}

template <typename T>
using MoeKernel = void (*)(MoeParams, const T*, const T*, T*);

// Vectorised kernels for every (E, J) within the vectorised limits, indexed
// (E - 1) * kMoeMaxVectorisedOutputs + J - 1.
template <typename T, int... kIndex>
std::array<MoeKernel<T>, sizeof...(kIndex)> vectorised_kernels(
    std::integer_sequence<int, kIndex...>) {
    return {{&moe_combine_kernel<T, true, kIndex / kMoeMaxVectorisedOutputs + 1,
                                 kIndex % kMoeMaxVectorisedOutputs + 1>...}};
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

    const bool vectorised = can_vectorise<T>(*desc, p.tokens, experts, out);
    // Work units per token: warp groups of 32 chunks (vectorised) or channel rows (generic); a
    // tile holds enough tokens for about one unit per warp or per thread.
    const int64_t items_per_token = vectorised ? desc->channels / Lanes<T>::kCount : desc->channels;
    const int64_t units_per_token =
        vectorised ? (items_per_token + kWarpSize - 1) / kWarpSize : items_per_token;
    const int64_t units_per_block = vectorised ? kMoeBlockThreads / kWarpSize : kMoeBlockThreads;
    const int64_t tokens_per_block = std::max<int64_t>(
        1, std::min<int64_t>({units_per_block / units_per_token, kMoeMaxTokensPerBlock, num_tokens}));
    if (items_per_token * tokens_per_block > std::numeric_limits<int32_t>::max()) {
        return REID_ERROR_UNSUPPORTED_SHAPE;
    }
    p.items_per_token = static_cast<int32_t>(items_per_token);
    p.tokens_per_block = static_cast<int32_t>(tokens_per_block);

    const int64_t num_tiles = (num_tokens + tokens_per_block - 1) / tokens_per_block;
    if (num_tiles > std::numeric_limits<int32_t>::max()) return REID_ERROR_UNSUPPORTED_SHAPE;
    const unsigned grid = static_cast<unsigned>(num_tiles);
    const size_t weight_bytes = static_cast<size_t>(tokens_per_block) *
                                static_cast<size_t>(desc->num_experts * desc->num_outputs) *
                                sizeof(float);
    size_t shared_bytes = static_cast<size_t>(tokens_per_block) * 2 * sizeof(int64_t) +
                          (weight_bytes + kVectorBytes - 1) / kVectorBytes * kVectorBytes;
    if (vectorised) {
        shared_bytes += static_cast<size_t>(kMoeBlockThreads / kWarpSize) *
                        staging_slots(static_cast<int>(desc->num_experts),
                                      static_cast<int>(desc->num_outputs)) * sizeof(Vec);
    }

    MoeKernel<T> kernel = &moe_combine_kernel<T, false, 0, 0>;
    if (vectorised) {
        static const auto table = vectorised_kernels<T>(
            std::make_integer_sequence<int, kMoeMaxVectorisedExperts * kMoeMaxVectorisedOutputs>{});
        kernel = table[(desc->num_experts - 1) * kMoeMaxVectorisedOutputs + desc->num_outputs - 1];
    }
    kernel<<<grid, kMoeBlockThreads, shared_bytes, stream>>>(p, static_cast<const T*>(experts),
                                                             static_cast<const T*>(gate_logits),
                                                             static_cast<T*>(out));
    REID_RETURN_IF_LAUNCH_FAILED();
    return 0;
}

template int launch_moe_combine<float>(const reid_moe_combine_desc*, const void*, const void*,
                                       void*, cudaStream_t);
template int launch_moe_combine<__half>(const reid_moe_combine_desc*, const void*, const void*,
                                        void*, cudaStream_t);
template int launch_moe_combine<__nv_bfloat16>(const reid_moe_combine_desc*, const void*,
                                               const void*, void*, cudaStream_t);

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
