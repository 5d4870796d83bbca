// TensorRT IPluginV3 plugin "KeypointPatchPool" version "1": the ONNX node
// reid::KeypointPatchPool, computed by reid_keypoint_patch_pool_* of reid_kernels.h. Written to
// the TensorRT 10 / 11 plugin API; see kernels/moe_combine/README.md (TensorRT) for the parser
// mapping and what was compiled but never run.
#pragma once

#include <NvInferRuntime.h>

#include <cstdint>
#include <string>
#include <vector>

#include "reid_kernels.h"
#include "reid_plugin_common.h"

namespace reid {
namespace plugin {

constexpr char kKppName[] = "KeypointPatchPool";
constexpr char kKppVersion[] = "1";
constexpr char kKppPartsField[] = "parts";
constexpr char kKppOutHwField[] = "out_hw";
constexpr char kKppPatchField[] = "patch";
constexpr char kKppVisThreshField[] = "vis_thresh";
constexpr char kKppModeField[] = "mode";

// Tensor positions: inputs, then outputs (TensorRT's numbering in supportsFormatCombination).
constexpr int32_t kKppKeypointsInput = 0;
constexpr int32_t kKppCropHwInput = 1;
constexpr int32_t kKppFrameValidInput = 2;
constexpr int32_t kKppNumInputs = 3;
constexpr int32_t kKppWeightsOutput = 0;
constexpr int32_t kKppNumOutputs = 1;

// The op's attributes, validated (KeypointPatchPoolPluginCreator::createPlugin builds them).
struct KppAttributes {
    std::vector<int32_t> parts;  // joint groups, flat with -1 separators (the ONNX encoding)
    int32_t out_h = 256;
    int32_t out_w = 128;
    int32_t patch = 16;
    float vis_thresh = 0.1f;
    std::string mode = "paper";

    // Throws std::invalid_argument naming the bad attribute and the fix.
    static KppAttributes from_fields(const nvinfer1::PluginFieldCollection* fc);
    int32_t num_parts() const noexcept;
    int32_t num_patches() const noexcept { return (out_h / patch) * (out_w / patch); }
    int32_t max_joint() const noexcept;  // largest joint index the parts use
    // Fills the attribute part of the C ABI description (parts as CSR, mode enum).
    void describe(reid_keypoint_patch_pool_desc& desc) const;
};

class KeypointPatchPoolPlugin final : public nvinfer1::IPluginV3,
                                      public nvinfer1::IPluginV3OneCore,
                                      public nvinfer1::IPluginV3OneBuild,
                                      public nvinfer1::IPluginV3OneRuntime {
public:
    explicit KeypointPatchPoolPlugin(KppAttributes attributes);
    KeypointPatchPoolPlugin(const KeypointPatchPoolPlugin& other);
    KeypointPatchPoolPlugin& operator=(const KeypointPatchPoolPlugin&) = delete;
    ~KeypointPatchPoolPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(
        nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    const char* getPluginName() const noexcept override;
    const char* getPluginVersion() const noexcept override;
    const char* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* output_types, int32_t num_outputs,
                               const nvinfer1::DataType* input_types,
                               int32_t num_inputs) const noexcept override;
    int32_t getOutputShapes(const nvinfer1::DimsExprs* inputs, int32_t num_inputs,
                            const nvinfer1::DimsExprs* shape_inputs, int32_t num_shape_inputs,
                            nvinfer1::DimsExprs* outputs, int32_t num_outputs,
                            nvinfer1::IExprBuilder& builder) noexcept override;
    bool supportsFormatCombination(int32_t pos, const nvinfer1::DynamicPluginTensorDesc* in_out,
                                   int32_t num_inputs, int32_t num_outputs) noexcept override;
    int32_t configurePlugin(const nvinfer1::DynamicPluginTensorDesc* in, int32_t num_inputs,
                            const nvinfer1::DynamicPluginTensorDesc* out,
                            int32_t num_outputs) noexcept override;
    size_t getWorkspaceSize(const nvinfer1::DynamicPluginTensorDesc* inputs, int32_t num_inputs,
                            const nvinfer1::DynamicPluginTensorDesc* outputs,
                            int32_t num_outputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(const nvinfer1::PluginTensorDesc* in, int32_t num_inputs,
                          const nvinfer1::PluginTensorDesc* out,
                          int32_t num_outputs) noexcept override;
    int32_t enqueue(const nvinfer1::PluginTensorDesc* input_desc,
                    const nvinfer1::PluginTensorDesc* output_desc, const void* const* inputs,
                    void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    const nvinfer1::PluginFieldCollection* getFieldsToSerialize() noexcept override;

private:
    void describe_fields();
    void check_shapes(const nvinfer1::Dims& keypoints, const nvinfer1::Dims& crop_hw,
                      const nvinfer1::Dims& frame_valid) const;

    KppAttributes attributes_;
    int32_t out_hw_[2];
    FieldList serialized_;
};

class KeypointPatchPoolPluginCreator final : public nvinfer1::IPluginCreatorV3One {
public:
    KeypointPatchPoolPluginCreator();
    const char* getPluginName() const noexcept override;
    const char* getPluginVersion() const noexcept override;
    const char* getPluginNamespace() const noexcept override;
    const nvinfer1::PluginFieldCollection* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(const char* name, const nvinfer1::PluginFieldCollection* fc,
                                      nvinfer1::TensorRTPhase phase) noexcept override;

private:
    FieldList field_names_;
};

}  // namespace plugin
}  // namespace reid
