// TensorRT IPluginV3 plugin "KeypointPatchPool" version "1": the ONNX node
// reid::KeypointPatchPool, computed by reid_keypoint_patch_pool_* of reid_kernels.h. Written to
// the TensorRT 10 / 11 plugin API; see kernels/moe_combine/README.md (TensorRT) for the parser
// mapping and what was compiled but never run. The plugin class is private to
// keypoint_patch_pool_plugin.cpp: TensorRT, the plugin library and the tests reach it through its
// creator.
#pragma once

#include <NvInferRuntime.h>

namespace reid {
namespace plugin {

// The creator of KeypointPatchPool plugins (fields parts, out_hw, patch, vis_thresh, mode), one
// per process.
nvinfer1::IPluginCreatorV3One& keypoint_patch_pool_creator();

}  // namespace plugin
}  // namespace reid
