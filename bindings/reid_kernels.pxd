# Extern declarations of kernels/reid_kernels.h (the C ABI of libreid_kernels.so). Declarations
# only: the functions are reached through dlopen/dlsym in _native.pyx, so this module builds and
# imports on machines where the CUDA library was not built.
from libc.stdint cimport int32_t, int64_t, uint8_t

cdef extern from "reid_kernels.h" nogil:
    int REID_KERNELS_ABI_VERSION
    int REID_MAX_LEAD_DIMS
    int REID_MOE_MAX_EXPERTS
    int REID_MOE_MAX_OUTPUTS
    int REID_KPP_MAX_JOINTS
    int REID_KPP_MAX_PARTS
    int REID_KPP_MAX_PART_JOINTS
    int REID_KPP_MAX_SIDE
    int REID_KPP_MAX_PATCHES
    int REID_ERROR_INVALID_ARGUMENT
    int REID_ERROR_UNSUPPORTED_SHAPE

    ctypedef struct reid_moe_combine_desc:
        int32_t num_lead_dims
        int32_t apply_softmax
        int64_t lead_shape[8]
        int64_t experts_lead_strides[8]
        int64_t gate_lead_strides[8]
        int64_t out_lead_strides[8]
        int64_t channels
        int64_t num_experts
        int64_t num_outputs
        int64_t experts_stride_c
        int64_t experts_stride_e
        int64_t gate_stride_e
        int64_t gate_stride_j
        int64_t out_stride_c
        int64_t out_stride_j

    ctypedef int (*reid_moe_combine_fn)(const reid_moe_combine_desc* desc, const void* experts,
                                        const void* gate_logits, void* out, void* stream)

    int REID_KPP_MODE_PAPER
    int REID_KPP_MODE_MAX
    int REID_KPP_MODE_CONSTANT

    ctypedef struct reid_keypoint_patch_pool_desc:
        int64_t batch
        int64_t frames
        int64_t num_joints
        int32_t num_parts
        int32_t part_offsets[17]
        int32_t part_joints[64]
        int32_t out_h
        int32_t out_w
        int32_t patch
        float vis_thresh
        int32_t mode
        int64_t keypoints_strides[4]
        int64_t crop_hw_strides[3]
        int64_t frame_valid_strides[2]
        int64_t out_strides[3]

    ctypedef int (*reid_keypoint_patch_pool_fn)(const reid_keypoint_patch_pool_desc* desc,
                                                const void* keypoints, const int32_t* crop_hw,
                                                const uint8_t* frame_valid, void* out,
                                                void* stream)

    ctypedef int (*reid_abi_version_fn)()
    ctypedef const char* (*reid_error_string_fn)(int code)
    ctypedef int (*reid_device_count_fn)(int* count)
    ctypedef const char* (*reid_cuda_archs_fn)()
