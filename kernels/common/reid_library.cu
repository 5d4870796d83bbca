// Library-level facts of libreid_kernels.so (version, error strings, devices, compiled archs).
#include <cuda_runtime.h>

#include "reid_kernels.h"

#ifndef REID_CUDA_ARCHS_STRING
#define REID_CUDA_ARCHS_STRING "unknown"
#endif

extern "C" {

REID_API int reid_kernels_abi_version(void) { return REID_KERNELS_ABI_VERSION; }

REID_API const char* reid_kernels_error_string(int code) {
    switch (code) {
        case 0: return "no error";
        case REID_ERROR_INVALID_ARGUMENT: return "invalid argument (null pointer, negative size or bad attribute)";
        case REID_ERROR_UNSUPPORTED_SHAPE: return "shape outside the limits of reid_kernels.h";
        default: return cudaGetErrorString(static_cast<cudaError_t>(code));
    }
}

REID_API int reid_kernels_device_count(int* count) {
    if (count == nullptr) return REID_ERROR_INVALID_ARGUMENT;
    *count = 0;
    const cudaError_t err = cudaGetDeviceCount(count);
    if (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver) {
        cudaGetLastError();  // clear the sticky-free error so later calls start clean
        *count = 0;
        return 0;
    }
    return static_cast<int>(err);
}

REID_API const char* reid_kernels_cuda_archs(void) { return REID_CUDA_ARCHS_STRING; }

}  // extern "C"
