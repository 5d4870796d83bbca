// Host stand-in for <cuda_pipeline_primitives.h> in the MoECombine CPU emulation (found first on
// the include path): the asynchronous copy completes at once, so commit and wait have nothing to
// do. Visibility to the other lanes still goes through the emulated __syncwarp.
#pragma once

#include <cstddef>
#include <cstring>

inline void __pipeline_memcpy_async(void* dst_shared, const void* src_global, size_t size_and_align,
                                    size_t zfill = 0) {
    std::memcpy(dst_shared, src_global, size_and_align - zfill);
    std::memset(static_cast<char*>(dst_shared) + (size_and_align - zfill), 0, zfill);
}

inline void __pipeline_commit() {}

inline void __pipeline_wait_prior(size_t) {}
