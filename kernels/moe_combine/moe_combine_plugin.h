// TensorRT IPluginV3 plugin "MoECombine" version "1": the ONNX node reid::MoECombine, computed by
// the same launcher as every other form (reid_moe_combine_* of reid_kernels.h). Written to the
// TensorRT 10 / 11 plugin API; see kernels/moe_combine/README.md (TensorRT) for what was
// compiled and what was never run.
#pragma once

#include <NvInferRuntime.h>

#include <cstdint>

#include "reid_plugin_common.h"

namespace reid {
namespace plugin {

constexpr char kMoeCombineName[] = "MoECombine";
constexpr char kMoeCombineVersion[] = "1";
constexpr char kMoeCombineSoftmaxField[] = "softmax";

// Tensor positions: inputs, then outputs (TensorRT's numbering in supportsFormatCombination).
constexpr int32_t kMoeExpertsInput = 0;
constexpr int32_t kMoeGateInput = 1;
constexpr int32_t kMoeNumInputs = 2;
constexpr int32_t kMoeOutOutput = 0;
constexpr int32_t kMoeNumOutputs = 1;

class MoECombinePlugin final : public nvinfer1::IPluginV3,
                               public nvinfer1::IPluginV3OneCore,
                               public nvinfer1::IPluginV3OneBuild,
                               public nvinfer1::IPluginV3OneRuntime {
public:
    explicit MoECombinePlugin(int32_t apply_softmax);
    MoECombinePlugin(const MoECombinePlugin& other);
    MoECombinePlugin& operator=(const MoECombinePlugin&) = delete;
    ~MoECombinePlugin() override = default;

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

    int32_t apply_softmax_;  // 1: softmax over E inside; 0: the gate holds the weights
    FieldList serialized_;
};

class MoECombinePluginCreator final : public nvinfer1::IPluginCreatorV3One {
public:
    MoECombinePluginCreator();
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
