// Runs the emulated KeypointPatchPool kernel over a whole grid (block by block) for ctypes.
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
void run_grid(const reid_keypoint_patch_pool_desc& desc, const void* keypoints,
              const int32_t* crop_hw, const uint8_t* frame_valid, void* out) {
    const auto plan = reid::emulated::round_plan(desc);
    std::vector<float> dynamic_shared(plan.shared_bytes / sizeof(float));
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
                reid::emulated::keypoint_patch_pool_kernel<T>(
                    desc, static_cast<const T*>(keypoints), crop_hw, frame_valid,
                    static_cast<T*>(out), plan.group_frames);
            });
        }
        for (auto& thread : threads) thread.join();
    }
}

}  // namespace

extern "C" size_t emulated_desc_size() { return sizeof(reid_keypoint_patch_pool_desc); }

// Frames per round the kernel takes for `desc`.
extern "C" int emulated_group_frames(const reid_keypoint_patch_pool_desc* desc) {
    return reid::emulated::round_plan(*desc).group_frames;
}

// Calls (one per warp) of the kernel function the test counts as `path` (emulated_path_calls,
// declared in kernel_source.cpp) during the last emulated_keypoint_patch_pool.
extern "C" long emulated_path_count(int path) { return emulated_path_calls[path].load(); }

// dtype: 0 float32, 1 float16, 2 bfloat16.
extern "C" void emulated_keypoint_patch_pool(const reid_keypoint_patch_pool_desc* desc, int dtype,
                                             const void* keypoints, const int32_t* crop_hw,
                                             const uint8_t* frame_valid, void* out) {
    for (auto& calls : emulated_path_calls) calls = 0;
    if (dtype == 0) run_grid<float>(*desc, keypoints, crop_hw, frame_valid, out);
    if (dtype == 1) run_grid<__half>(*desc, keypoints, crop_hw, frame_valid, out);
    if (dtype == 2) run_grid<__nv_bfloat16>(*desc, keypoints, crop_hw, frame_valid, out);
}
