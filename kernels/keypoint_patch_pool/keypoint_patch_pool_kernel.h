// KeypointPatchPool kernel: host launcher template behind the C ABI launchers
// reid_keypoint_patch_pool_f32/_f16/_bf16 of reid_kernels.h. See kernels/keypoint_patch_pool/
// README.md for the chain, the algorithm and the limits.
#pragma once

#include <cuda_runtime.h>

#include "reid_kernels.h"

namespace reid {

// Threads per block: one block per (clip, part) takes the clip's frames in rounds.
constexpr int kKppBlockThreads = 256;
// Frames per round (all processed at once); the launcher lowers it to fit kKppMaxRoundSlots and
// the shared-memory budget below.
constexpr int kKppMaxGroupFrames = 16;
// Joint slots held per round: frames per round * joints of the largest part.
constexpr int kKppMaxRoundSlots = 256;
// Dynamic shared memory of one block: (1 + 2 * frames per round) K-long arrays. Kept under the
// 48 KB that needs no opt-in, and small enough for three blocks per SM.
constexpr int kKppSharedBudgetBytes = 40 * 1024;
// Largest crop side (height or width) of a valid frame and largest out_h / out_w: keeps every
// bilinear source-index product (2o + 1) * in in int32. A valid frame outside [1, 32768] gives
// NaN weights (the reference raises).
constexpr int kKppMaxSide = REID_KPP_MAX_SIDE;
// Most patches K = (out_h / patch) * (out_w / patch): K-long arrays live in shared memory (at
// least two frames per round fit kKppSharedBudgetBytes).
constexpr int kKppMaxPatches = REID_KPP_MAX_PATCHES;

// Enqueues weights[B, P, K] = KeypointPatchPool(keypoints, crop_hw, frame_valid) for storage type
// T (float, __half, __nv_bfloat16) on `stream`. Validates `desc` (returns REID_ERROR_* codes),
// launches nothing for B = 0, never allocates or synchronises. Returns 0 or a cudaError_t value.
template <typename T>
int launch_keypoint_patch_pool(const reid_keypoint_patch_pool_desc* desc, const void* keypoints,
                               const int32_t* crop_hw, const uint8_t* frame_valid, void* out,
                               cudaStream_t stream);

}  // namespace reid
