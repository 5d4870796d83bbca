// KeypointPatchPool: COCO keypoints -> KeyRe-ID's per-part patch weights, without materialising
// any heatmap (kernels/keypoint_patch_pool/README.md has the chain and the official code it
// follows).
//
// One block per (clip, part) loops over the clip's frames and keeps the running sum over frames
// of each patch value in shared memory: the mean over T needs no atomics and no second pass, so
// results are deterministic. Per drawn frame:
//   1. The part's joints: truncated centres, drawn or not (confidence, window meets the crop).
//   2. The part's maximum over the crop (it scales the min-max epsilon). max mode: the value at
//      each window's point nearest its centre. paper mode: the average of the windows covering
//      a pixel can peak between joints; any pixel above the best joint-nearest value L lies
//      within radius rho of some centre, g(rho) = L, so only those boxes are scanned.
//   3. The bilinear resize is evaluated per output pixel from its four source taps, whose heat
//      values are closed-form sums over the part's joints. Only patches whose source footprint
//      meets a window are evaluated (each by one warp, in a fixed lane order); the others are
//      exactly 0, which also settles the map's minimum.
//   4. min-max, (x - 0.5) / 0.5 and the patch means are affine, so each patch's value follows
//      from its sum of resized values and the map's min and max.
// Window values are exp2(s d^2) with s = -8 log2(e) / M^2 (M = 2r + 1, std M / 4); the kernels'
// sum-1 / max-1 scale cancels in the division by the part's maximum.
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdint>

#include "keypoint_patch_pool_kernel.h"
#include "reid_common.cuh"

namespace reid {
namespace {

constexpr int kWarpSize = 32;
constexpr int kWarps = kKppBlockThreads / kWarpSize;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr float kMinMaxEps = 1e-6f;  // heatmap_loader.py: Min_Max_Scaling(eps=1e-6)
constexpr float kLog2e = 1.4426950408889634f;
constexpr int kNoJoint = INT_MAX;

enum KppFrameState : int {
    kFrameSkipped = 0,   // padding frame: contributes 0
    kFramePoisoned = 1,  // valid frame with a crop side outside [1, kKppMaxSide]: NaN
    kFrameConstant = 2,  // constant mode: -1
    kFrameDrawn = 3,
};

struct KppFrame {
    int state;
    int height, width, radius;
    float exp2_scale;  // window value at squared distance d2: exp2f(exp2_scale * d2)
};

struct KppJoint {
    int x, y;  // truncated centre (meaningful for drawn joints only)
};

// One bilinear tap pair of torch's F.interpolate(align_corners=False) along one axis.
struct BilinearTap {
    int low, high;
    float frac;  // weight of `high`
};

// torch's source coordinate max((dst + 0.5) * in / out - 0.5, 0), evaluated exactly as the
// rational max((2 dst + 1) in - out, 0) / (2 out): sides <= kKppMaxSide keep it in int32.
__device__ __forceinline__ BilinearTap bilinear_tap(int dst, int in_size, int out_size) {
    const int numerator = max((2 * dst + 1) * in_size - out_size, 0);
    const int denominator = 2 * out_size;
    BilinearTap tap;
    tap.low = numerator / denominator;
    tap.frac = static_cast<float>(numerator - tap.low * denominator) /
               static_cast<float>(denominator);
    tap.high = tap.low + (tap.low < in_size - 1 ? 1 : 0);
    return tap;
}

// The part's heatmap at source pixel (y, x) inside the crop, up to the kernels' common scale,
// over the joints in `mask`: paper = mean of the covering windows, max = largest window value.
__device__ __forceinline__ float heat_at(int y, int x, const KppJoint* joints, uint64_t mask,
                                         const KppFrame& frame, bool paper) {
    float sum = 0.f;
    int count = 0;
    int nearest = kNoJoint;
    while (mask) {
        const int slot = __ffsll(static_cast<long long>(mask)) - 1;
        mask &= mask - 1;
        const int dx = x - joints[slot].x;
        const int dy = y - joints[slot].y;
        if (abs(dx) <= frame.radius && abs(dy) <= frame.radius) {
            const int d2 = dx * dx + dy * dy;
            if (paper) {
                sum += exp2f(frame.exp2_scale * static_cast<float>(d2));
                ++count;
            } else {
                nearest = min(nearest, d2);
            }
        }
    }
    if (paper) return count ? sum / static_cast<float>(count) : 0.f;
    return nearest == kNoJoint ? 0.f : exp2f(frame.exp2_scale * static_cast<float>(nearest));
}

// The resized (unnormalised) map at output pixel (oy, ox).
__device__ __forceinline__ float resized_at(int oy, int ox, int out_h, int out_w,
                                            const KppJoint* joints, uint64_t mask,
                                            const KppFrame& frame, bool paper) {
    const BilinearTap ty = bilinear_tap(oy, frame.height, out_h);
    const BilinearTap tx = bilinear_tap(ox, frame.width, out_w);
    const float top = (1.f - tx.frac) * heat_at(ty.low, tx.low, joints, mask, frame, paper) +
                      tx.frac * heat_at(ty.low, tx.high, joints, mask, frame, paper);
    const float bottom = (1.f - tx.frac) * heat_at(ty.high, tx.low, joints, mask, frame, paper) +
                         tx.frac * heat_at(ty.high, tx.high, joints, mask, frame, paper);
    return (1.f - ty.frac) * top + ty.frac * bottom;
}

// Drawn joints whose window meets the source rows and columns patch `k` samples (a superset of
// the joints that reach its pixels: the taps of its rows lie between the first row's low tap
// and the last row's high tap).
__device__ __forceinline__ uint64_t patch_joints(int k, const reid_keypoint_patch_pool_desc& desc,
                                                 const KppJoint* joints, uint64_t drawn,
                                                 const KppFrame& frame) {
    const int grid_w = desc.out_w / desc.patch;
    const int row = (k / grid_w) * desc.patch;
    const int col = (k % grid_w) * desc.patch;
    const int y_low = bilinear_tap(row, frame.height, desc.out_h).low;
    const int y_high = bilinear_tap(row + desc.patch - 1, frame.height, desc.out_h).high;
    const int x_low = bilinear_tap(col, frame.width, desc.out_w).low;
    const int x_high = bilinear_tap(col + desc.patch - 1, frame.width, desc.out_w).high;
    uint64_t relevant = 0;
    for (uint64_t mask = drawn; mask; mask &= mask - 1) {
        const int slot = __ffsll(static_cast<long long>(mask)) - 1;
        const KppJoint joint = joints[slot];
        if (joint.y + frame.radius >= y_low && joint.y - frame.radius <= y_high &&
            joint.x + frame.radius >= x_low && joint.x - frame.radius <= x_high) {
            relevant |= uint64_t{1} << slot;
        }
    }
    return relevant;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
        v += __shfl_xor_sync(kFullMask, v, offset);
    }
    return v;
}

template <bool kMax>
__device__ __forceinline__ float extreme(float a, float b) {
    return kMax ? fmaxf(a, b) : fminf(a, b);
}

// Block-wide max (or min); every thread gets the result. Contains two barriers.
template <bool kMax>
__device__ __forceinline__ float block_extreme(float v, float* scratch) {
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
        v = extreme<kMax>(v, __shfl_xor_sync(kFullMask, v, offset));
    }
    if (threadIdx.x % kWarpSize == 0) scratch[threadIdx.x / kWarpSize] = v;
    __syncthreads();
    float result = scratch[0];
    for (int w = 1; w < kWarps; ++w) result = extreme<kMax>(result, scratch[w]);
    __syncthreads();
    return result;
}

// Block-shared state of one (clip, part) block besides the K-long arrays.
struct KppShared {
    KppJoint joints[REID_KPP_MAX_PART_JOINTS];
    KppFrame frame;
    unsigned drawn_bits[2];
    int num_active;
    float scratch[kWarps];
};

// Thread 0: frame t of `clip` (validity, crop size, radius, state).
__device__ KppFrame read_frame(const reid_keypoint_patch_pool_desc& desc, const int32_t* crop_hw,
                               const uint8_t* frame_valid, int64_t clip, int64_t t) {
    const bool valid =
        frame_valid[clip * desc.frame_valid_strides[0] + t * desc.frame_valid_strides[1]] != 0;
    const int32_t* size = crop_hw + clip * desc.crop_hw_strides[0] + t * desc.crop_hw_strides[1];
    KppFrame frame;
    frame.height = size[0];
    frame.width = size[desc.crop_hw_strides[2]];
    const bool sane = frame.height >= 1 && frame.height <= kKppMaxSide && frame.width >= 1 &&
                      frame.width <= kKppMaxSide;
    frame.state = !valid                                 ? kFrameSkipped
                  : !sane                                ? kFramePoisoned
                  : desc.mode == REID_KPP_MODE_CONSTANT ? kFrameConstant
                                                         : kFrameDrawn;
    frame.radius = sane ? frame.width / 11 : 0;  // int(w / 11)
    const float window = static_cast<float>(2 * frame.radius + 1);
    frame.exp2_scale = -8.f * kLog2e / (window * window);  // std = window / 4
    return frame;
}

// Step 1: one thread per slot of the part loads its joint; returns the mask of drawn slots.
// Contains one barrier.
template <typename T>
__device__ uint64_t load_joints(const reid_keypoint_patch_pool_desc& desc, const T* keypoints,
                                int64_t clip, int64_t t, int first_slot, int num_slots,
                                const KppFrame& frame, KppShared& sh) {
    bool drawn = false;
    if (threadIdx.x < num_slots) {
        const int joint = desc.part_joints[first_slot + threadIdx.x];
        const T* kp = keypoints + clip * desc.keypoints_strides[0] +
                      t * desc.keypoints_strides[1] + joint * desc.keypoints_strides[2];
        const float x = truncf(to_float(kp[0]));  // Python int(): toward zero
        const float y = truncf(to_float(kp[desc.keypoints_strides[3]]));
        const float confidence = to_float(kp[2 * desc.keypoints_strides[3]]);
        const float r = static_cast<float>(frame.radius);
        // Comparisons are false for NaN: a NaN coordinate or confidence is not drawn.
        drawn = confidence > desc.vis_thresh && x + r >= 0.f &&
                x - r <= static_cast<float>(frame.width - 1) && y + r >= 0.f &&
                y - r <= static_cast<float>(frame.height - 1);
        sh.joints[threadIdx.x] =
            KppJoint{drawn ? static_cast<int>(x) : 0, drawn ? static_cast<int>(y) : 0};
    }
    const int warp = threadIdx.x / kWarpSize;
    if (warp < 2) {  // slots 0..63
        const unsigned bits = __ballot_sync(kFullMask, drawn);
        if (threadIdx.x % kWarpSize == 0) sh.drawn_bits[warp] = bits;
    }
    __syncthreads();
    return (static_cast<uint64_t>(sh.drawn_bits[1]) << 32) | sh.drawn_bits[0];
}

// Step 2: the part's maximum over the crop. Contains barriers.
__device__ float part_maximum(uint64_t drawn, int num_slots, const KppFrame& frame, bool paper,
                              KppShared& sh) {
    float nearest_value = 0.f;
    if (threadIdx.x < num_slots && ((drawn >> threadIdx.x) & 1)) {
        const KppJoint joint = sh.joints[threadIdx.x];
        nearest_value = heat_at(min(max(joint.y, 0), frame.height - 1),
                                min(max(joint.x, 0), frame.width - 1), sh.joints, drawn, frame,
                                paper);
    }
    const float best_nearest = block_extreme<true>(nearest_value, sh.scratch);
    if (!paper) return best_nearest;
    // Pixels above best_nearest lie within rho of a centre: exp2(s rho^2) = best_nearest.
    const float rho2 = fmaxf(log2f(best_nearest) / frame.exp2_scale, 0.f);
    const int half = min(frame.radius, static_cast<int>(ceilf(sqrtf(rho2))) + 1);
    float scanned = 0.f;
    for (uint64_t mask = drawn; mask; mask &= mask - 1) {
        const KppJoint joint = sh.joints[__ffsll(static_cast<long long>(mask)) - 1];
        const int y0 = max(joint.y - half, 0);
        const int y1 = min(joint.y + half, frame.height - 1);
        const int x0 = max(joint.x - half, 0);
        const int x1 = min(joint.x + half, frame.width - 1);
        if (y1 < y0 || x1 < x0) continue;
        const int box_w = x1 - x0 + 1;
        const int box_area = box_w * (y1 - y0 + 1);
        for (int i = threadIdx.x; i < box_area; i += blockDim.x) {
            const float heat = heat_at(y0 + i / box_w, x0 + i % box_w, sh.joints, drawn, frame,
                                       paper);
            scanned = fmaxf(scanned, heat);
        }
    }
    return fmaxf(best_nearest, block_extreme<true>(scanned, sh.scratch));
}

// Steps 3 and 4: adds this frame's patch values to frame_total. Contains barriers.
__device__ void add_patch_values(const reid_keypoint_patch_pool_desc& desc, uint64_t drawn,
                                 float part_max, const KppFrame& frame, bool paper,
                                 float* patch_sum, float* frame_total, int* active,
                                 KppShared& sh) {
    const int num_patches = (desc.out_h / desc.patch) * (desc.out_w / desc.patch);
    for (int k = threadIdx.x; k < num_patches; k += blockDim.x) {
        if (patch_joints(k, desc, sh.joints, drawn, frame)) {
            active[atomicAdd(&sh.num_active, 1)] = k;  // list order does not affect results
        } else {
            patch_sum[k] = 0.f;
        }
    }
    __syncthreads();
    const int grid_w = desc.out_w / desc.patch;
    const int patch_area = desc.patch * desc.patch;
    const int lane = threadIdx.x % kWarpSize;
    float low = FLT_MAX, high = 0.f;
    for (int a = threadIdx.x / kWarpSize; a < sh.num_active; a += kWarps) {
        const int k = active[a];
        const uint64_t relevant = patch_joints(k, desc, sh.joints, drawn, frame);
        const int row = (k / grid_w) * desc.patch;
        const int col = (k % grid_w) * desc.patch;
        float sum = 0.f;
        for (int i = lane; i < patch_area; i += kWarpSize) {
            const float v = resized_at(row + i / desc.patch, col + i % desc.patch, desc.out_h,
                                       desc.out_w, sh.joints, relevant, frame, paper);
            sum += v;
            low = fminf(low, v);
            high = fmaxf(high, v);
        }
        sum = warp_sum(sum);
        if (lane == 0) patch_sum[k] = sum;
    }
    low = block_extreme<false>(low, sh.scratch);
    high = block_extreme<true>(high, sh.scratch);
    if (sh.num_active < num_patches) low = fminf(low, 0.f);  // untouched patches are all 0
    // min-max, (x - 0.5) / 0.5 and the patch mean are affine: fold them into one scale.
    const float scale = 2.f / (high - low + kMinMaxEps * part_max);
    const float inv_area = 1.f / static_cast<float>(patch_area);
    for (int k = threadIdx.x; k < num_patches; k += blockDim.x) {
        frame_total[k] += (patch_sum[k] * inv_area - low) * scale - 1.f;
    }
}

__device__ __forceinline__ void add_constant(float* frame_total, int num_patches, float value) {
    for (int k = threadIdx.x; k < num_patches; k += blockDim.x) frame_total[k] += value;
}

template <typename T>
__global__ void __launch_bounds__(kKppBlockThreads)
keypoint_patch_pool_kernel(const reid_keypoint_patch_pool_desc desc,
                           const T* __restrict__ keypoints, const int32_t* __restrict__ crop_hw,
                           const uint8_t* __restrict__ frame_valid, T* __restrict__ out) {
    extern __shared__ float shared[];
    const int num_patches = (desc.out_h / desc.patch) * (desc.out_w / desc.patch);
    float* patch_sum = shared;                  // [K] this frame's sums of resized values
    float* frame_total = shared + num_patches;  // [K] sum over frames of the patch values
    int* active = reinterpret_cast<int*>(shared + 2 * num_patches);  // [K] patches to evaluate
    __shared__ KppShared sh;

    const int part = static_cast<int>(blockIdx.x % desc.num_parts);
    const int64_t clip = blockIdx.x / desc.num_parts;
    const int first_slot = desc.part_offsets[part];
    const int num_slots = desc.part_offsets[part + 1] - first_slot;
    const bool paper = desc.mode == REID_KPP_MODE_PAPER;

    for (int k = threadIdx.x; k < num_patches; k += blockDim.x) frame_total[k] = 0.f;
    bool poisoned = false;
    for (int64_t t = 0; t < desc.frames; ++t) {
        if (threadIdx.x == 0) {
            sh.frame = read_frame(desc, crop_hw, frame_valid, clip, t);
            sh.num_active = 0;
        }
        __syncthreads();
        const KppFrame frame = sh.frame;  // block-uniform: every branch below is uniform
        if (frame.state == kFramePoisoned) {
            poisoned = true;
        } else if (frame.state == kFrameConstant) {
            add_constant(frame_total, num_patches, -1.f);
        } else if (frame.state == kFrameDrawn) {
            const uint64_t drawn =
                load_joints(desc, keypoints, clip, t, first_slot, num_slots, frame, sh);
            if (drawn == 0) {  // the official all-zero map: -1 everywhere
                add_constant(frame_total, num_patches, -1.f);
            } else {
                const float part_max = part_maximum(drawn, num_slots, frame, paper, sh);
                add_patch_values(desc, drawn, part_max, frame, paper, patch_sum, frame_total,
                                 active, sh);
            }
        }
        __syncthreads();  // sh is rewritten for the next frame
    }

    const float inv_frames = 1.f / static_cast<float>(desc.frames);
    T* out_row = out + clip * desc.out_strides[0] + part * desc.out_strides[1];
    for (int k = threadIdx.x; k < num_patches; k += blockDim.x) {
        const float value = poisoned ? __int_as_float(0x7fc00000) : frame_total[k] * inv_frames;
        out_row[k * desc.out_strides[2]] = from_float<T>(value);
    }
}

int check_desc(const reid_keypoint_patch_pool_desc& d) {
    if (d.batch < 0 || d.frames < 1 || d.num_joints < 1) return REID_ERROR_INVALID_ARGUMENT;
    if (d.num_joints > REID_KPP_MAX_JOINTS) return REID_ERROR_UNSUPPORTED_SHAPE;
    if (d.num_parts < 1 || d.num_parts > REID_KPP_MAX_PARTS) return REID_ERROR_UNSUPPORTED_SHAPE;
    if (d.part_offsets[0] != 0 || d.part_offsets[d.num_parts] > REID_KPP_MAX_PART_JOINTS) {
        return REID_ERROR_INVALID_ARGUMENT;
    }
    for (int p = 0; p < d.num_parts; ++p) {
        if (d.part_offsets[p + 1] <= d.part_offsets[p]) return REID_ERROR_INVALID_ARGUMENT;
    }
    for (int s = 0; s < d.part_offsets[d.num_parts]; ++s) {
        if (d.part_joints[s] < 0 || d.part_joints[s] >= d.num_joints) {
            return REID_ERROR_INVALID_ARGUMENT;
        }
    }
    if (d.patch < 1 || d.out_h < 1 || d.out_w < 1 || d.out_h % d.patch || d.out_w % d.patch) {
        return REID_ERROR_INVALID_ARGUMENT;
    }
    if (d.out_h > kKppMaxSide || d.out_w > kKppMaxSide) return REID_ERROR_UNSUPPORTED_SHAPE;
    if (static_cast<int64_t>(d.out_h / d.patch) * (d.out_w / d.patch) > kKppMaxPatches) {
        return REID_ERROR_UNSUPPORTED_SHAPE;
    }
    if (d.mode != REID_KPP_MODE_PAPER && d.mode != REID_KPP_MODE_MAX &&
        d.mode != REID_KPP_MODE_CONSTANT) {
        return REID_ERROR_INVALID_ARGUMENT;
    }
    if (!std::isfinite(d.vis_thresh)) return REID_ERROR_INVALID_ARGUMENT;
    if (d.batch * d.num_parts > INT_MAX) return REID_ERROR_UNSUPPORTED_SHAPE;
    return 0;
}

}  // namespace

template <typename T>
int launch_keypoint_patch_pool(const reid_keypoint_patch_pool_desc* desc, const void* keypoints,
                               const int32_t* crop_hw, const uint8_t* frame_valid, void* out,
                               cudaStream_t stream) {
    if (desc == nullptr) return REID_ERROR_INVALID_ARGUMENT;
    const int code = check_desc(*desc);
    if (code != 0) return code;
    if (desc->batch == 0) return 0;
    if (keypoints == nullptr || crop_hw == nullptr || frame_valid == nullptr || out == nullptr) {
        return REID_ERROR_INVALID_ARGUMENT;
    }
    const int num_patches = (desc->out_h / desc->patch) * (desc->out_w / desc->patch);
    const size_t shared_bytes = 3 * static_cast<size_t>(num_patches) * sizeof(float);
    const unsigned blocks = static_cast<unsigned>(desc->batch * desc->num_parts);
    keypoint_patch_pool_kernel<T><<<blocks, kKppBlockThreads, shared_bytes, stream>>>(
        *desc, static_cast<const T*>(keypoints), crop_hw, frame_valid, static_cast<T*>(out));
    REID_RETURN_IF_LAUNCH_FAILED();
    return 0;
}

template int launch_keypoint_patch_pool<float>(const reid_keypoint_patch_pool_desc*, const void*,
                                               const int32_t*, const uint8_t*, void*,
                                               cudaStream_t);
template int launch_keypoint_patch_pool<__half>(const reid_keypoint_patch_pool_desc*, const void*,
                                                const int32_t*, const uint8_t*, void*,
                                                cudaStream_t);
template int launch_keypoint_patch_pool<__nv_bfloat16>(const reid_keypoint_patch_pool_desc*,
                                                       const void*, const int32_t*, const uint8_t*,
                                                       void*, cudaStream_t);

}  // namespace reid

extern "C" {

REID_API int reid_keypoint_patch_pool_f32(const reid_keypoint_patch_pool_desc* desc,
                                          const void* keypoints, const int32_t* crop_hw,
                                          const uint8_t* frame_valid, void* out, void* stream) {
    return reid::launch_keypoint_patch_pool<float>(desc, keypoints, crop_hw, frame_valid, out,
                                                   static_cast<cudaStream_t>(stream));
}

REID_API int reid_keypoint_patch_pool_f16(const reid_keypoint_patch_pool_desc* desc,
                                          const void* keypoints, const int32_t* crop_hw,
                                          const uint8_t* frame_valid, void* out, void* stream) {
    return reid::launch_keypoint_patch_pool<__half>(desc, keypoints, crop_hw, frame_valid, out,
                                                    static_cast<cudaStream_t>(stream));
}

REID_API int reid_keypoint_patch_pool_bf16(const reid_keypoint_patch_pool_desc* desc,
                                           const void* keypoints, const int32_t* crop_hw,
                                           const uint8_t* frame_valid, void* out, void* stream) {
    return reid::launch_keypoint_patch_pool<__nv_bfloat16>(desc, keypoints, crop_hw, frame_valid,
                                                           out, static_cast<cudaStream_t>(stream));
}

}  // extern "C"
