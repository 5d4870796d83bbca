/*
 * reid_kernels.h: the C ABI of libreid_kernels.so.
 *
 * One host launcher per op and dtype. Every launcher only enqueues work on the given CUDA stream
 * (no allocation, no synchronisation), so it is safe inside CUDA graph capture, and returns a
 * cudaError_t value as int (0 = success). Pointers are device pointers; strides are in elements.
 * Nothing here depends on TensorRT or torch: the Cython bindings, the torch custom ops and the
 * TensorRT plugins all call these same functions.
 *
 * ABI rules: structs are only ever extended at the end and REID_KERNELS_ABI_VERSION is bumped
 * when a layout changes; callers check reid_kernels_abi_version() before calling anything else.
 */
#ifndef REID_KERNELS_H
#define REID_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define REID_API __declspec(dllexport)
#else
#define REID_API __attribute__((visibility("default")))
#endif

#define REID_KERNELS_ABI_VERSION 1

/* Most leading (batch-like) axes a MoECombine call may have; callers merge more into these. */
#define REID_MAX_LEAD_DIMS 8
/* Largest expert and output counts MoECombine supports (the gate block is kept in registers). */
#define REID_MOE_MAX_EXPERTS 16
#define REID_MOE_MAX_OUTPUTS 8

/* KeypointPatchPool limits: joints per frame, parts, joints over all parts. */
#define REID_KPP_MAX_JOINTS 32
#define REID_KPP_MAX_PARTS 16
#define REID_KPP_MAX_PART_JOINTS 64
/* Largest crop side of a valid frame and largest out_h / out_w (keeps the bilinear source-index
   products in int32), and most patches K = (out_h / patch) * (out_w / patch) (K-long arrays live
   in shared memory). */
#define REID_KPP_MAX_SIDE 32768
#define REID_KPP_MAX_PATCHES 2048

/* Error codes of our own, outside the cudaError_t range, for arguments a launcher refuses. */
#define REID_ERROR_INVALID_ARGUMENT 10001
#define REID_ERROR_UNSUPPORTED_SHAPE 10002

/* ---------------------------------------------------------------------------------------------
 * MoECombine: out[..., c, j] = sum_m experts[..., c, m] * w[..., m, j],
 * w = softmax over m of gate_logits[..., m, j] (apply_softmax = 1) or gate_logits itself (0).
 * experts [..., C, E], gate_logits [..., E, J] (leading axes may broadcast: stride 0),
 * out [..., C, J]. Accumulation in fp32 for every dtype.
 * ------------------------------------------------------------------------------------------- */
typedef struct reid_moe_combine_desc {
    int32_t num_lead_dims;                          /* 0..REID_MAX_LEAD_DIMS */
    int32_t apply_softmax;                          /* 1: softmax over E inside; 0: weights given */
    int64_t lead_shape[REID_MAX_LEAD_DIMS];         /* leading shape of out */
    int64_t experts_lead_strides[REID_MAX_LEAD_DIMS];
    int64_t gate_lead_strides[REID_MAX_LEAD_DIMS];  /* 0 on axes where the gate broadcasts */
    int64_t out_lead_strides[REID_MAX_LEAD_DIMS];
    int64_t channels;                               /* C */
    int64_t num_experts;                            /* E, 1..REID_MOE_MAX_EXPERTS */
    int64_t num_outputs;                            /* J, 1..REID_MOE_MAX_OUTPUTS */
    int64_t experts_stride_c, experts_stride_e;
    int64_t gate_stride_e, gate_stride_j;
    int64_t out_stride_c, out_stride_j;
} reid_moe_combine_desc;

typedef int (*reid_moe_combine_fn)(const reid_moe_combine_desc* desc, const void* experts,
                                   const void* gate_logits, void* out, void* stream);

REID_API int reid_moe_combine_f32(const reid_moe_combine_desc* desc, const void* experts,
                                  const void* gate_logits, void* out, void* stream);
REID_API int reid_moe_combine_f16(const reid_moe_combine_desc* desc, const void* experts,
                                  const void* gate_logits, void* out, void* stream);
REID_API int reid_moe_combine_bf16(const reid_moe_combine_desc* desc, const void* experts,
                                   const void* gate_logits, void* out, void* stream);

/* ---------------------------------------------------------------------------------------------
 * KeypointPatchPool: keypoints [B, T, J, 3] (x, y, confidence in crop pixels), crop_hw [B, T, 2]
 * int32 (height, width), frame_valid [B, T] uint8 (0 = padding frame) -> weights [B, P, K],
 * K = (out_h / patch) * (out_w / patch), row-major patches. See
 * kernels/keypoint_patch_pool/README.md for the exact chain. The dtype of a launcher is the dtype
 * of keypoints and weights; all arithmetic is fp32.
 * ------------------------------------------------------------------------------------------- */
typedef enum reid_kpp_mode {
    REID_KPP_MODE_PAPER = 0,    /* sum-1 kernels, summed per part, divided by the window count */
    REID_KPP_MODE_MAX = 1,      /* max-1 kernels, element-wise maximum per part */
    REID_KPP_MODE_CONSTANT = 2  /* what the released generator produced: -1 for valid frames */
} reid_kpp_mode;

typedef struct reid_keypoint_patch_pool_desc {
    int64_t batch, frames, num_joints;              /* B, T, J */
    int32_t num_parts;                              /* P, 1..REID_KPP_MAX_PARTS */
    int32_t part_offsets[REID_KPP_MAX_PARTS + 1];   /* CSR: joints of part p are */
    int32_t part_joints[REID_KPP_MAX_PART_JOINTS];  /* part_joints[part_offsets[p] .. p+1) */
    int32_t out_h, out_w, patch;                    /* out_h, out_w multiples of patch */
    float vis_thresh;                               /* joints with confidence <= this are skipped */
    int32_t mode;                                   /* reid_kpp_mode */
    int64_t keypoints_strides[4];                   /* element strides of [B, T, J, 3] */
    int64_t crop_hw_strides[3];                     /* element strides of [B, T, 2] */
    int64_t frame_valid_strides[2];                 /* element strides of [B, T] */
    int64_t out_strides[3];                         /* element strides of [B, P, K] */
} reid_keypoint_patch_pool_desc;

typedef int (*reid_keypoint_patch_pool_fn)(const reid_keypoint_patch_pool_desc* desc,
                                           const void* keypoints, const int32_t* crop_hw,
                                           const uint8_t* frame_valid, void* out, void* stream);

REID_API int reid_keypoint_patch_pool_f32(const reid_keypoint_patch_pool_desc* desc,
                                          const void* keypoints, const int32_t* crop_hw,
                                          const uint8_t* frame_valid, void* out, void* stream);
REID_API int reid_keypoint_patch_pool_f16(const reid_keypoint_patch_pool_desc* desc,
                                          const void* keypoints, const int32_t* crop_hw,
                                          const uint8_t* frame_valid, void* out, void* stream);
REID_API int reid_keypoint_patch_pool_bf16(const reid_keypoint_patch_pool_desc* desc,
                                           const void* keypoints, const int32_t* crop_hw,
                                           const uint8_t* frame_valid, void* out, void* stream);

/* ---------------------------------------------------------------------------------------------
 * Library facts.
 * ------------------------------------------------------------------------------------------- */
REID_API int reid_kernels_abi_version(void);
/* Message for a code returned by any launcher (ours or cudaError_t); never NULL. */
REID_API const char* reid_kernels_error_string(int code);
/* Number of visible CUDA devices; returns a cudaError_t (no device is not an error: count 0). */
REID_API int reid_kernels_device_count(int* count);
/* Semicolon-separated list of the SM architectures compiled in, e.g. "87;89;90". */
REID_API const char* reid_kernels_cuda_archs(void);

/* Pointer types of the library functions, for callers that resolve them with dlsym. */
typedef int (*reid_abi_version_fn)(void);
typedef const char* (*reid_error_string_fn)(int code);
typedef int (*reid_device_count_fn)(int* count);
typedef const char* (*reid_cuda_archs_fn)(void);

#ifdef __cplusplus
}
#endif

#endif /* REID_KERNELS_H */
