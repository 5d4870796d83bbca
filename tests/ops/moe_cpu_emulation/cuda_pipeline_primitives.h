// Host stand-in for <cuda_pipeline_primitives.h> in the MoECombine CPU emulation (found first on
// the include path). Copies are deferred as on the GPU: each emulated thread queues its copies,
// __pipeline_commit closes a group, and a copy lands only when __pipeline_wait_prior(n) retires
// its group (all but the newest n). A kernel that reads a buffer before waiting for it therefore
// reads stale data here too. Visibility to the other lanes still goes through the emulated
// __syncwarp.
#pragma once

#include <cstddef>
#include <cstring>
#include <deque>
#include <vector>

struct EmulatedAsyncCopy {
    void* dst;
    const void* src;
    size_t bytes, zfill;
};

inline thread_local std::vector<EmulatedAsyncCopy> emulated_open_copies;
inline thread_local std::deque<std::vector<EmulatedAsyncCopy>> emulated_committed_copies;

inline void __pipeline_memcpy_async(void* dst_shared, const void* src_global, size_t size_and_align,
                                    size_t zfill = 0) {
    emulated_open_copies.push_back({dst_shared, src_global, size_and_align - zfill, zfill});
}

inline void __pipeline_commit() {
    emulated_committed_copies.push_back(std::move(emulated_open_copies));
    emulated_open_copies.clear();
}

inline void __pipeline_wait_prior(size_t newest_pending) {
    while (emulated_committed_copies.size() > newest_pending) {
        for (const EmulatedAsyncCopy& copy : emulated_committed_copies.front()) {
            std::memcpy(copy.dst, copy.src, copy.bytes);
            std::memset(static_cast<char*>(copy.dst) + copy.bytes, 0, copy.zfill);
        }
        emulated_committed_copies.pop_front();
    }
}

// Copies this thread issued that no wait retired (dropped): a kernel must leave none behind.
inline size_t emulated_take_unretired_copies() {
    size_t count = emulated_open_copies.size();
    for (const auto& group : emulated_committed_copies) count += group.size();
    emulated_open_copies.clear();
    emulated_committed_copies.clear();
    return count;
}
