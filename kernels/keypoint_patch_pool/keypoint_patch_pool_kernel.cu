// KeypointPatchPool: COCO keypoints -> KeyRe-ID's per-part patch weights, without materialising
// any heatmap (kernels/keypoint_patch_pool/README.md has the chain, the algorithm and the official
// code it follows).
//
// One block per (clip, part) takes the clip's frames in rounds and works on all frames of a round
// at once:
//   1. One warp per frame reads the part's joints: truncated centres, drawn or not (confidence,
//      window meets the crop).
//   2. The part's maximum over the crop (it scales the min-max epsilon). max mode: the value at
//      each window's point nearest its centre. paper mode: the average of the windows covering
//      a pixel can peak between joints; any pixel above the best joint-nearest value L lies
//      within radius rho of some centre, g(rho) = L, so only those boxes are scanned.
//   3. Patches whose source footprint meets a drawn window go to a work list (the others are
//      exactly 0, which also settles the map's minimum), with the paper boxes; warps take items
//      as they finish, the costly ones first. Window values factor into 1-D row and column
//      factors, and the bilinear resize is separable, so a patch only one window reaches is
//      (row profile) x (column profile): its sum, minimum and maximum come from 2 * patch values.
//      A patch several windows reach is evaluated per output pixel from its four source taps:
//      one output column per lane with the windows' column factors in registers and the row
//      factors shuffled in (patch <= 32, <= kLaneJoints windows), else each pixel on its own.
//   4. min-max, (x - 0.5) / 0.5 and the patch means are affine, so each patch's value follows
//      from its sum and the frame's map minimum and maximum (order-free atomic min / max).
// Each patch sum is written by one warp in a fixed lane order and frames are added in order, so
// results do not depend on scheduling: deterministic with no second pass and no global scratch.
// Window values are exp2(s d^2) with s = -8 log2(e) / M^2 (M = 2r + 1, std M / 4); the kernels'
// sum-1 / max-1 scale cancels in the division by the part's maximum.
#include <algorithm>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdint>

#include "keypoint_patch_pool_kernel.h"
#include "reid_common.cuh"

namespace reid {
namespace {

constexpr int kHalfWarp = kWarpSize / 2;
constexpr int kWarps = kKppBlockThreads / kWarpSize;
constexpr float kMinMaxEps = 1e-6f;  // heatmap_loader.py: Min_Max_Scaling(eps=1e-6)
constexpr float kLog2e = 1.4426950408889634f;
constexpr int kNoJoint = INT_MAX;
// Most windows a lane-column patch evaluation keeps in registers (KeyRe-ID parts have <= 5).
constexpr int kLaneJoints = 8;
// Bits of a single-window work item that name the window's slot (REID_KPP_MAX_PART_JOINTS).
constexpr int kSlotBits = 6;

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

// Drawn joints (bits of `drawn`) whose window meets the box of rows [y0, y1] x columns [x0, x1].
__device__ __forceinline__ uint64_t windows_meeting(const KppJoint* joints, uint64_t drawn,
                                                    const KppFrame& frame, int y0, int y1, int x0,
                                                    int x1) {
    uint64_t meeting = 0;
    for (uint64_t mask = drawn; mask; mask &= mask - 1) {
        const int slot = __ffsll(static_cast<long long>(mask)) - 1;
        const KppJoint joint = joints[slot];
        if (joint.y + frame.radius >= y0 && joint.y - frame.radius <= y1 &&
            joint.x + frame.radius >= x0 && joint.x - frame.radius <= x1) {
            meeting |= uint64_t{1} << slot;
        }
    }
    return meeting;
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
    return windows_meeting(joints, drawn, frame, y_low, y_high, x_low, x_high);
}

__device__ __forceinline__ float warp_max(float v) {
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
        v = fmaxf(v, __shfl_xor_sync(kFullWarpMask, v, offset));
    }
    return v;
}

// Frame t of `clip`: validity, crop size, radius, state.
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

// Joint `joint` of frame t: its truncated centre and whether its window is drawn on `frame`.
// The loads do not depend on `frame`, so they overlap with the frame's own.
template <typename T>
__device__ __forceinline__ bool read_joint(const reid_keypoint_patch_pool_desc& desc,
                                           const T* keypoints, int64_t clip, int64_t t, int joint,
                                           const KppFrame& frame, KppJoint* centre) {
    const T* kp = keypoints + clip * desc.keypoints_strides[0] + t * desc.keypoints_strides[1] +
                  joint * desc.keypoints_strides[2];
    const float x = truncf(to_float(kp[0]));  // Python int(): toward zero
    const float y = truncf(to_float(kp[desc.keypoints_strides[3]]));
    const float confidence = to_float(kp[2 * desc.keypoints_strides[3]]);
    const float r = static_cast<float>(frame.radius);
    // Comparisons are false for NaN: a NaN coordinate or confidence is not drawn.
    const bool drawn = frame.state == kFrameDrawn && confidence > desc.vis_thresh &&
                       x + r >= 0.f && x - r <= static_cast<float>(frame.width - 1) &&
                       y + r >= 0.f && y - r <= static_cast<float>(frame.height - 1);
    *centre = KppJoint{drawn ? static_cast<int>(x) : 0, drawn ? static_cast<int>(y) : 0};
    return drawn;
}

// One axis of a window: exp2(s d^2) for |d| <= r, 0 outside (a window value is the product of
// its row and column factors). d * d is exact in float for |d| <= kKppMaxSide / 11.
__device__ __forceinline__ float window_factor(int d, const KppFrame& frame) {
    const float distance = static_cast<float>(d);
    return abs(d) <= frame.radius ? exp2f(frame.exp2_scale * (distance * distance)) : 0.f;
}

// The part's heat at the four source taps (row low/high x column low/high) of one output pixel,
// accumulated window by window from the windows' 1-D factors. A factor is > 0 exactly inside
// the window's rows (columns): exp2(s r^2) >= exp2(-2 log2 e) > 0.
struct TapHeat {
    float value[4] = {0.f, 0.f, 0.f, 0.f};
    float count[4] = {0.f, 0.f, 0.f, 0.f};  // paper: covering windows per tap

    __device__ __forceinline__ void add(float row_low, float row_high, float col_low,
                                        float col_high, bool paper) {
        const float products[4] = {row_low * col_low, row_low * col_high, row_high * col_low,
                                   row_high * col_high};
#pragma unroll
        for (int tap = 0; tap < 4; ++tap) {
            if (paper) {
                value[tap] += products[tap];
                count[tap] += products[tap] > 0.f ? 1.f : 0.f;
            } else {
                value[tap] = fmaxf(value[tap], products[tap]);
            }
        }
    }

    // The resized (unnormalised) map at the pixel: bilinear in the four taps. Paper divides
    // only where windows overlap (count <= 64: __fdividef's 2 ulp, no range issue).
    __device__ __forceinline__ float resized(float row_frac, float col_frac, bool paper) const {
        float heat[4];
#pragma unroll
        for (int tap = 0; tap < 4; ++tap) {
            heat[tap] = paper && count[tap] > 1.f ? __fdividef(value[tap], count[tap])
                                                  : value[tap];
        }
        const float top = (1.f - col_frac) * heat[0] + col_frac * heat[1];
        const float bottom = (1.f - col_frac) * heat[2] + col_frac * heat[3];
        return (1.f - row_frac) * top + row_frac * bottom;
    }
};

// Sum, minimum and maximum of the resized map over one patch (values are >= 0).
struct PatchStats {
    float sum, low, high;

    __device__ __forceinline__ static PatchStats empty() { return {0.f, FLT_MAX, 0.f}; }

    __device__ __forceinline__ void add(float v) {
        sum += v;
        low = fminf(low, v);
        high = fmaxf(high, v);
    }

    // Butterfly over lanes in a fixed order: offsets first_offset, first_offset / 2, ..., 1
    // (kHalfWarp / 2 keeps each half-warp apart).
    __device__ __forceinline__ PatchStats reduced(int first_offset) const {
        PatchStats s = *this;
        for (int offset = first_offset; offset > 0; offset /= 2) {
            s.sum += __shfl_xor_sync(kFullWarpMask, s.sum, offset);
            s.low = fminf(s.low, __shfl_xor_sync(kFullWarpMask, s.low, offset));
            s.high = fmaxf(s.high, __shfl_xor_sync(kFullWarpMask, s.high, offset));
        }
        return s;
    }
};

// Block-shared state of one round (up to kKppMaxGroupFrames frames) besides the K-long arrays.
static_assert(kKppMaxGroupFrames <= 32, "empty_frames holds one bit per frame of a round");
struct KppRoundShared {
    KppFrame frames[kKppMaxGroupFrames];
    uint64_t drawn[kKppMaxGroupFrames];
    // Non-negative floats kept as their bits (same order as the floats), combined with atomic
    // min / max: the result does not depend on the order.
    unsigned nearest_max[kKppMaxGroupFrames];  // best heat at the drawn joints' nearest points
    unsigned scanned_max[kKppMaxGroupFrames];  // paper: best heat inside the scanned boxes
    unsigned map_low[kKppMaxGroupFrames];      // the resized map's minimum over listed patches
    unsigned map_high[kKppMaxGroupFrames];     // the resized map's maximum
    unsigned empty_frames;  // bit g: frame g has a patch no window reaches (map minimum 0)
    KppJoint joints[kKppMaxRoundSlots];        // [frame in round][slot]
    int boxes[kKppMaxRoundSlots];              // paper: frame * num_slots + slot to scan
    int num_boxes, num_multi, num_single, next_item;
};

// Step 1, one warp per frame: the frame and its part's joints. Lane 0 resets the frame's
// accumulators.
template <typename T>
__device__ void read_round_frame(const reid_keypoint_patch_pool_desc& desc, const T* keypoints,
                                 const int32_t* crop_hw, const uint8_t* frame_valid, int64_t clip,
                                 int64_t t, int first_slot, int num_slots, int g,
                                 KppRoundShared& sh) {
    const int lane = threadIdx.x % kWarpSize;
    const KppFrame frame = read_frame(desc, crop_hw, frame_valid, clip, t);
    uint64_t drawn = 0;
    for (int base = 0; base < num_slots; base += kWarpSize) {
        const int slot = base + lane;
        bool is_drawn = false;
        if (slot < num_slots) {
            KppJoint centre;
            is_drawn = read_joint(desc, keypoints, clip, t, desc.part_joints[first_slot + slot],
                                  frame, &centre);
            sh.joints[g * num_slots + slot] = centre;
        }
        drawn |= static_cast<uint64_t>(__ballot_sync(kFullWarpMask, is_drawn)) << base;
    }
    if (lane == 0) {
        sh.frames[g] = frame;
        sh.drawn[g] = drawn;
        sh.nearest_max[g] = 0u;
        sh.scanned_max[g] = 0u;
        sh.map_low[g] = __float_as_uint(FLT_MAX);
        sh.map_high[g] = 0u;
    }
}

// Step 2: each drawn joint's nearest-point heat; the paper boxes; the patch work list.
// Multi-window patches fill `items` from the front, single-window ones from the back (with the
// window's slot in the low kSlotBits); patches no window reaches get their sum 0 here and mark
// their frame in empty_frames (one atomic per warp: most patches are empty).
__device__ void list_work(const reid_keypoint_patch_pool_desc& desc, int num_slots, int frames,
                          bool paper, KppRoundShared& sh, float* patch_sums, int* items,
                          int capacity) {
    for (int e = threadIdx.x; e < frames * num_slots; e += blockDim.x) {
        const int g = e / num_slots;
        const uint64_t drawn = sh.drawn[g];
        if (((drawn >> (e % num_slots)) & 1) == 0) continue;
        const KppFrame frame = sh.frames[g];
        const KppJoint joint = sh.joints[e];
        const float nearest = heat_at(min(max(joint.y, 0), frame.height - 1),
                                      min(max(joint.x, 0), frame.width - 1),
                                      sh.joints + g * num_slots, drawn, frame, paper);
        atomicMax(&sh.nearest_max[g], __float_as_uint(nearest));
        if (paper) sh.boxes[atomicAdd(&sh.num_boxes, 1)] = e;
    }
    const int num_patches = (desc.out_h / desc.patch) * (desc.out_w / desc.patch);
    unsigned empty_frames = 0;
    for (int e = threadIdx.x; e < frames * num_patches; e += blockDim.x) {
        const int g = e / num_patches;
        const uint64_t drawn = sh.drawn[g];
        if (drawn == 0) continue;  // nothing drawn: the frame's value is a constant
        const uint64_t relevant = patch_joints(e % num_patches, desc, sh.joints + g * num_slots,
                                               drawn, sh.frames[g]);
        if (relevant == 0) {
            patch_sums[e] = 0.f;
            empty_frames |= 1u << g;
        } else if ((relevant & (relevant - 1)) == 0) {
            const int slot = __ffsll(static_cast<long long>(relevant)) - 1;
            items[capacity - 1 - atomicAdd(&sh.num_single, 1)] = (e << kSlotBits) | slot;
        } else {
            items[atomicAdd(&sh.num_multi, 1)] = e;
        }
    }
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
        empty_frames |= __shfl_xor_sync(kFullWarpMask, empty_frames, offset);
    }
    if (threadIdx.x % kWarpSize == 0 && empty_frames != 0) atomicOr(&sh.empty_frames, empty_frames);
}

// Paper: the largest heat inside the box around drawn joint `e` (frame * num_slots + slot) that
// can hold pixels above the frame's best nearest-point value. Whole warp.
__device__ void scan_box(int e, int num_slots, KppRoundShared& sh) {
    const int g = e / num_slots;
    const KppFrame frame = sh.frames[g];
    const KppJoint* joints = sh.joints + g * num_slots;
    const KppJoint centre = sh.joints[e];
    // Pixels above best_nearest lie within rho of a centre: exp2(s rho^2) = best_nearest.
    const float best_nearest = __uint_as_float(sh.nearest_max[g]);
    const float rho2 = fmaxf(log2f(best_nearest) / frame.exp2_scale, 0.f);
    const int half = min(frame.radius, static_cast<int>(ceilf(sqrtf(rho2))) + 1);
    const int y0 = max(centre.y - half, 0);
    const int y1 = min(centre.y + half, frame.height - 1);
    const int x0 = max(centre.x - half, 0);
    const int x1 = min(centre.x + half, frame.width - 1);
    if (y1 < y0 || x1 < x0) return;
    // Only windows that meet the box reach its pixels.
    const uint64_t covering = windows_meeting(joints, sh.drawn[g], frame, y0, y1, x0, x1);
    const int box_w = x1 - x0 + 1;
    const int box_area = box_w * (y1 - y0 + 1);
    float best = 0.f;
    for (int i = threadIdx.x % kWarpSize; i < box_area; i += kWarpSize) {
        best = fmaxf(best, heat_at(y0 + i / box_w, x0 + i % box_w, joints, covering, frame, true));
    }
    best = warp_max(best);
    if (threadIdx.x % kWarpSize == 0) atomicMax(&sh.scanned_max[g], __float_as_uint(best));
}

// A patch one window reaches: the resized map is (row profile) x (column profile) there, both
// >= 0, so the patch's sum, minimum and maximum are products of the profiles' own. Lanes 0-15
// take the rows, 16-31 the columns. Whole warp; lane 0 holds the result.
__device__ PatchStats separable_patch(int row0, int col0, KppJoint joint, const KppFrame& frame,
                                      const reid_keypoint_patch_pool_desc& desc) {
    const int lane = threadIdx.x % kWarpSize;
    const bool column = lane >= kHalfWarp;
    const int in_size = column ? frame.width : frame.height;
    const int out_size = column ? desc.out_w : desc.out_h;
    const int origin = column ? col0 : row0;
    const int centre = column ? joint.x : joint.y;
    PatchStats profile = PatchStats::empty();
    for (int i = lane % kHalfWarp; i < desc.patch; i += kHalfWarp) {
        const BilinearTap tap = bilinear_tap(origin + i, in_size, out_size);
        profile.add((1.f - tap.frac) * window_factor(tap.low - centre, frame) +
                    tap.frac * window_factor(tap.high - centre, frame));
    }
    const PatchStats rows = profile.reduced(kHalfWarp / 2);
    PatchStats columns;
    columns.sum = __shfl_sync(kFullWarpMask, rows.sum, kHalfWarp);
    columns.low = __shfl_sync(kFullWarpMask, rows.low, kHalfWarp);
    columns.high = __shfl_sync(kFullWarpMask, rows.high, kHalfWarp);
    return {rows.sum * columns.sum, rows.low * columns.low, rows.high * columns.high};
}

// Any patch, per output pixel: lanes take pixels in row-major order. Whole warp.
__device__ PatchStats per_pixel_patch(int row0, int col0, uint64_t relevant,
                                      const KppJoint* joints, const KppFrame& frame,
                                      const reid_keypoint_patch_pool_desc& desc, bool paper) {
    PatchStats stats = PatchStats::empty();
    const int area = desc.patch * desc.patch;
    for (int i = threadIdx.x % kWarpSize; i < area; i += kWarpSize) {
        const BilinearTap ty = bilinear_tap(row0 + i / desc.patch, frame.height, desc.out_h);
        const BilinearTap tx = bilinear_tap(col0 + i % desc.patch, frame.width, desc.out_w);
        TapHeat heat;
        for (uint64_t mask = relevant; mask; mask &= mask - 1) {
            const KppJoint joint = joints[__ffsll(static_cast<long long>(mask)) - 1];
            heat.add(window_factor(ty.low - joint.y, frame),
                     window_factor(ty.high - joint.y, frame),
                     window_factor(tx.low - joint.x, frame),
                     window_factor(tx.high - joint.x, frame), paper);
        }
        stats.add(heat.resized(ty.frac, tx.frac, paper));
    }
    return stats.reduced(kWarpSize / 2);
}

// A patch of side <= 32 reached by <= kLaneJoints windows: lane l owns output column l % patch
// (rows l / patch, + 32 / patch, ...) and keeps its columns' window factors in registers; lane
// r also computes row r's factors, which the others read by shuffle. Whole warp.
__device__ PatchStats lane_column_patch(int row0, int col0, uint64_t relevant,
                                        const KppJoint* joints, const KppFrame& frame,
                                        const reid_keypoint_patch_pool_desc& desc, bool paper) {
    const int lane = threadIdx.x % kWarpSize;
    const int patch = desc.patch;
    const int rows_per_pass = kWarpSize / patch;
    const int phase = lane / patch;
    const BilinearTap tx = bilinear_tap(col0 + lane % patch, frame.width, desc.out_w);
    const BilinearTap ty = bilinear_tap(row0 + min(lane, patch - 1), frame.height, desc.out_h);
    const int num_windows = __popcll(relevant);
    float col_low[kLaneJoints], col_high[kLaneJoints], row_low[kLaneJoints], row_high[kLaneJoints];
    uint64_t mask = relevant;
#pragma unroll
    for (int q = 0; q < kLaneJoints; ++q) {
        col_low[q] = col_high[q] = row_low[q] = row_high[q] = 0.f;
        if (q < num_windows) {  // warp-uniform
            const KppJoint joint = joints[__ffsll(static_cast<long long>(mask)) - 1];
            mask &= mask - 1;
            col_low[q] = window_factor(tx.low - joint.x, frame);
            col_high[q] = window_factor(tx.high - joint.x, frame);
            row_low[q] = window_factor(ty.low - joint.y, frame);
            row_high[q] = window_factor(ty.high - joint.y, frame);
        }
    }
    PatchStats stats = PatchStats::empty();
    const int passes = (patch + rows_per_pass - 1) / rows_per_pass;
    for (int pass = 0; pass < passes; ++pass) {
        // Every lane shuffles (lanes without a pixel read row 0 and drop it).
        const int row = pass * rows_per_pass + phase;
        const bool has_pixel = phase < rows_per_pass && row < patch;
        const int source = has_pixel ? row : 0;
        const float row_frac = __shfl_sync(kFullWarpMask, ty.frac, source);
        TapHeat heat;
#pragma unroll
        for (int q = 0; q < kLaneJoints; ++q) {
            if (q < num_windows) {
                heat.add(__shfl_sync(kFullWarpMask, row_low[q], source),
                         __shfl_sync(kFullWarpMask, row_high[q], source), col_low[q], col_high[q],
                         paper);
            }
        }
        if (has_pixel) stats.add(heat.resized(row_frac, tx.frac, paper));
    }
    return stats.reduced(kWarpSize / 2);
}

// Steps 2b and 3: warps take work items until the list is empty: paper boxes, multi-window
// patches, single-window patches (costliest first). Lane 0 stores each patch's sum and folds
// its minimum and maximum into the frame's.
__device__ void run_work(const reid_keypoint_patch_pool_desc& desc, int num_slots, bool paper,
                         KppRoundShared& sh, float* patch_sums, const int* items, int capacity) {
    const int lane = threadIdx.x % kWarpSize;
    const int num_boxes = sh.num_boxes;
    const int num_multi = sh.num_multi;
    const int num_items = num_boxes + num_multi + sh.num_single;
    const int num_patches = (desc.out_h / desc.patch) * (desc.out_w / desc.patch);
    const int grid_w = desc.out_w / desc.patch;
    for (;;) {
        int item = 0;
        if (lane == 0) item = atomicAdd(&sh.next_item, 1);
        item = __shfl_sync(kFullWarpMask, item, 0);
        if (item >= num_items) break;
        if (item < num_boxes) {
            scan_box(sh.boxes[item], num_slots, sh);
            continue;
        }
        item -= num_boxes;
        const int code = item < num_multi ? items[item] : items[capacity - 1 - (item - num_multi)];
        const int e = item < num_multi ? code : code >> kSlotBits;
        const int g = e / num_patches;
        const int k = e % num_patches;
        const KppFrame frame = sh.frames[g];
        const KppJoint* joints = sh.joints + g * num_slots;
        const int row0 = (k / grid_w) * desc.patch;
        const int col0 = (k % grid_w) * desc.patch;
        PatchStats stats;
        if (item >= num_multi) {
            stats = separable_patch(row0, col0, joints[code & ((1 << kSlotBits) - 1)], frame, desc);
        } else {
            const uint64_t relevant = patch_joints(k, desc, joints, sh.drawn[g], frame);
            if (desc.patch <= kWarpSize && __popcll(relevant) <= kLaneJoints) {
                stats = lane_column_patch(row0, col0, relevant, joints, frame, desc, paper);
            } else {
                stats = per_pixel_patch(row0, col0, relevant, joints, frame, desc, paper);
            }
        }
        if (lane == 0) {
            patch_sums[e] = stats.sum;
            atomicMin(&sh.map_low[g], __float_as_uint(stats.low));
            atomicMax(&sh.map_high[g], __float_as_uint(stats.high));
        }
    }
}

// Step 4: adds the round's frames, in order, to each patch's running total. Returns whether a
// frame of the round is poisoned.
__device__ bool add_round(const reid_keypoint_patch_pool_desc& desc, int frames,
                          const KppRoundShared& sh, const float* patch_sums, float* frame_total) {
    const int num_patches = (desc.out_h / desc.patch) * (desc.out_w / desc.patch);
    const float inv_area = 1.f / static_cast<float>(desc.patch * desc.patch);
    bool poisoned = false;
    for (int g = 0; g < frames; ++g) poisoned |= sh.frames[g].state == kFramePoisoned;
    for (int k = threadIdx.x; k < num_patches; k += blockDim.x) {
        float total = frame_total[k];
        for (int g = 0; g < frames; ++g) {
            const int state = sh.frames[g].state;
            if (state == kFrameSkipped || state == kFramePoisoned) continue;
            if (state == kFrameConstant || sh.drawn[g] == 0) {  // the official all-zero map
                total += -1.f;
                continue;
            }
            const float low = (sh.empty_frames >> g) & 1 ? 0.f : __uint_as_float(sh.map_low[g]);
            const float high = __uint_as_float(sh.map_high[g]);
            const float part_max = fmaxf(__uint_as_float(sh.nearest_max[g]),
                                         __uint_as_float(sh.scanned_max[g]));
            // min-max, (x - 0.5) / 0.5 and the patch mean are affine: one scale.
            const float scale = 2.f / (high - low + kMinMaxEps * part_max);
            total += (patch_sums[g * num_patches + k] * inv_area - low) * scale - 1.f;
        }
        frame_total[k] = total;
    }
    return poisoned;
}

// Three blocks per SM (<= 85 registers): B = 64 clips x 6 parts then run in one wave on 132 SMs.
template <typename T>
__global__ void __launch_bounds__(kKppBlockThreads, 3)
keypoint_patch_pool_kernel(const reid_keypoint_patch_pool_desc desc,
                           const T* __restrict__ keypoints, const int32_t* __restrict__ crop_hw,
                           const uint8_t* __restrict__ frame_valid, T* __restrict__ out,
                           int group_frames) {
    const int num_patches = (desc.out_h / desc.patch) * (desc.out_w / desc.patch);
    const int capacity = group_frames * num_patches;
    extern __shared__ float kpp_shared[];                        // sized by round_plan
    float* frame_total = kpp_shared;                             // [K] sum over frames
    float* patch_sums = frame_total + num_patches;               // [round frame][K]
    int* items = reinterpret_cast<int*>(patch_sums + capacity);  // [capacity] work list
    __shared__ KppRoundShared sh;

    // Part-major: the ~3 blocks resident on one SM then belong to different parts (a head block
    // costs ~3x a leg block); clip-major would stack one part per SM when 6 divides the SM count.
    const int part = static_cast<int>(blockIdx.x / desc.batch);
    const int64_t clip = blockIdx.x % desc.batch;
    const int first_slot = desc.part_offsets[part];
    const int num_slots = desc.part_offsets[part + 1] - first_slot;
    const bool paper = desc.mode == REID_KPP_MODE_PAPER;
    const int warp = threadIdx.x / kWarpSize;

    for (int k = threadIdx.x; k < num_patches; k += blockDim.x) frame_total[k] = 0.f;
    bool poisoned = false;
    for (int64_t first = 0; first < desc.frames; first += group_frames) {
        const int frames = static_cast<int>(
            desc.frames - first < group_frames ? desc.frames - first : group_frames);
        for (int g = warp; g < frames; g += kWarps) {
            read_round_frame(desc, keypoints, crop_hw, frame_valid, clip, first + g, first_slot,
                             num_slots, g, sh);
        }
        if (threadIdx.x == 0) {
            sh.num_boxes = sh.num_multi = sh.num_single = sh.next_item = 0;
            sh.empty_frames = 0u;
        }
        __syncthreads();
        list_work(desc, num_slots, frames, paper, sh, patch_sums, items, capacity);
        __syncthreads();
        run_work(desc, num_slots, paper, sh, patch_sums, items, capacity);
        __syncthreads();
        poisoned |= add_round(desc, frames, sh, patch_sums, frame_total);
        __syncthreads();  // the next round rewrites the shared state
    }

    const float inv_frames = 1.f / static_cast<float>(desc.frames);
    T* out_row = out + clip * desc.out_strides[0] + part * desc.out_strides[1];
    for (int k = threadIdx.x; k < num_patches; k += blockDim.x) {
        const float value = poisoned ? __int_as_float(0x7fc00000) : frame_total[k] * inv_frames;
        out_row[k * desc.out_strides[2]] = from_float<T>(value);
    }
}

// -------------------------------------------------------------------------------------------
// Host side
// -------------------------------------------------------------------------------------------

// Frames per round and dynamic shared memory of the kernel for `d` (a checked desc).
struct KppRoundPlan {
    int group_frames;
    size_t shared_bytes;
};

KppRoundPlan round_plan(const reid_keypoint_patch_pool_desc& d) {
    const int num_patches = (d.out_h / d.patch) * (d.out_w / d.patch);
    int largest_part = 1;
    for (int p = 0; p < d.num_parts; ++p) {
        largest_part = std::max(largest_part, d.part_offsets[p + 1] - d.part_offsets[p]);
    }
    const int64_t by_shared = (kKppSharedBudgetBytes / (4 * num_patches) - 1) / 2;  // >= 2
    const int64_t frames = std::min<int64_t>(
        {d.frames, kKppMaxGroupFrames, kKppMaxRoundSlots / largest_part, by_shared});
    KppRoundPlan plan;
    plan.group_frames = static_cast<int>(std::max<int64_t>(frames, 1));
    plan.shared_bytes = (1 + 2 * static_cast<size_t>(plan.group_frames)) * num_patches * 4;
    return plan;
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
    const unsigned blocks = static_cast<unsigned>(desc->batch * desc->num_parts);
    const KppRoundPlan plan = round_plan(*desc);
    keypoint_patch_pool_kernel<T><<<blocks, kKppBlockThreads, plan.shared_bytes, stream>>>(
        *desc, static_cast<const T*>(keypoints), crop_hw, frame_valid, static_cast<T*>(out),
        plan.group_frames);
    REID_RETURN_IF_LAUNCH_FAILED();
    return 0;
}

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
