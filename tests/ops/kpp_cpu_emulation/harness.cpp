// Runs the emulated KeypointPatchPool kernels over a whole grid (block by block) for ctypes.
// kernel_source.cpp is generated from kernels/keypoint_patch_pool/keypoint_patch_pool_kernel.cu
// by the test (device code and the launch plan, dynamic shared memory redirected to the shim).
#include <cmath>
#include <memory>
#include <thread>
#include <vector>

#include "cuda_shim.h"
#include "kernel_source.cpp"

namespace {

template <typename T>
void run_grid(const reid_keypoint_patch_pool_desc& desc, reid::KppVariant variant,
              const void* keypoints, const int32_t* crop_hw, const uint8_t* frame_valid,
              void* out) {
    const int num_patches = (desc.out_h / desc.patch) * (desc.out_w / desc.patch);
    const bool baseline = variant == reid::KppVariant::kBaseline;
    const auto plan = reid::emulated::pooled_plan(desc);
    const size_t shared_floats = baseline ? 3 * static_cast<size_t>(num_patches)
                                          : plan.shared_bytes / sizeof(float);
    std::vector<float> dynamic_shared(shared_floats);
    emulated_dynamic_shared = dynamic_shared.data();
    blockDim.x = reid::kKppBlockThreads;
    for (int64_t block = 0; block < desc.batch * desc.num_parts; ++block) {
        blockIdx.x = static_cast<unsigned>(block);
        std::fill(dynamic_shared.begin(), dynamic_shared.end(), std::nanf(""));  // garbage
        std::barrier<> block_barrier(reid::kKppBlockThreads);
        emulated_block_barrier = &block_barrier;
        std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
        for (int w = 0; w < kEmulatedWarps; ++w) {
            warp_barriers.push_back(std::make_unique<std::barrier<>>(32));
            emulated_warp_barrier[w] = warp_barriers.back().get();
        }
        std::vector<std::thread> threads;
        for (int t = 0; t < reid::kKppBlockThreads; ++t) {
            threads.emplace_back([&, t] {
                threadIdx.x = static_cast<unsigned>(t);
                const T* typed_keypoints = static_cast<const T*>(keypoints);
                T* typed_out = static_cast<T*>(out);
                if (baseline) {
                    reid::emulated::keypoint_patch_pool_baseline_kernel<T>(
                        desc, typed_keypoints, crop_hw, frame_valid, typed_out);
                } else {
                    reid::emulated::keypoint_patch_pool_kernel<T>(
                        desc, typed_keypoints, crop_hw, frame_valid, typed_out, plan.group_frames,
                        variant == reid::KppVariant::kPooledLanes);
                }
            });
        }
        for (auto& thread : threads) thread.join();
    }
}

}  // namespace

extern "C" size_t emulated_desc_size() { return sizeof(reid_keypoint_patch_pool_desc); }

// Frames per round the pooled kernels take for `desc`.
extern "C" int emulated_group_frames(const reid_keypoint_patch_pool_desc* desc) {
    return reid::emulated::pooled_plan(*desc).group_frames;
}

// dtype: 0 float32, 1 float16, 2 bfloat16; variant: reid::KppVariant's value (0 pooled_lanes,
// 1 pooled, 2 baseline).
extern "C" void emulated_keypoint_patch_pool(const reid_keypoint_patch_pool_desc* desc, int dtype,
                                             int variant, const void* keypoints,
                                             const int32_t* crop_hw, const uint8_t* frame_valid,
                                             void* out) {
    const auto kind = static_cast<reid::KppVariant>(variant);
    if (dtype == 0) run_grid<float>(*desc, kind, keypoints, crop_hw, frame_valid, out);
    if (dtype == 1) run_grid<__half>(*desc, kind, keypoints, crop_hw, frame_valid, out);
    if (dtype == 2) run_grid<__nv_bfloat16>(*desc, kind, keypoints, crop_hw, frame_valid, out);
}
