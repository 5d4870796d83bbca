// TensorRT IPluginV3 plugin "MoECombine" version "1": the ONNX node reid::MoECombine, computed by
// the same launcher as every other form (reid_moe_combine_* of reid_kernels.h). Written to the
// TensorRT 10 / 11 plugin API; see kernels/moe_combine/README.md (TensorRT) for what was
// compiled and what was never run. The plugin class is private to moe_combine_plugin.cpp:
// TensorRT, the plugin library and the tests reach it through its creator.
#pragma once

#include <NvInferRuntime.h>

namespace reid {
namespace plugin {

// The creator of MoECombine plugins (field "softmax"), one per process.
nvinfer1::IPluginCreatorV3One& moe_combine_creator();

}  // namespace plugin
}  // namespace reid
