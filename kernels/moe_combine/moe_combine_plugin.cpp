// MoECombine TensorRT plugin: shapes, formats, fields and the enqueue that fills
// reid_moe_combine_desc for the launcher. No device code here.
#include "moe_combine/moe_combine_plugin.h"

#include <string>
#include <vector>

#include "reid_kernels.h"

namespace reid {
namespace plugin {
namespace {

using nvinfer1::DataType;
using nvinfer1::Dims;

const reid_moe_combine_fn kLaunchers[] = {reid_moe_combine_f32, reid_moe_combine_f16,
                                          reid_moe_combine_bf16};

// Checks experts [..., C, E] and gate [..., E, J]: ranks, equal E, the kernel's E and J limits,
// and leading axes that broadcast (equal or 1, aligned from the right). Dimensions of -1 (not yet
// known at build time) pass. Throws std::invalid_argument naming the problem.
void check_shapes(const Dims& experts, const Dims& gate) {
    const std::string shapes =
        " (experts " + dims_string(experts) + ", gate_logits " + dims_string(gate) + ")";
    if (experts.nbDims < 2 || gate.nbDims < 2) {
        throw std::invalid_argument(std::string(kMoeCombineName) +
                                    ": experts must be [..., C, E] and gate_logits [..., E, J]"
                                    + shapes);
    }
    const int64_t experts_e = experts.d[experts.nbDims - 1];
    const int64_t gate_e = gate.d[gate.nbDims - 2];
    const int64_t num_outputs = gate.d[gate.nbDims - 1];
    if (experts_e >= 0 && gate_e >= 0 && experts_e != gate_e) {
        throw std::invalid_argument(std::string(kMoeCombineName) +
                                    ": experts and gate_logits disagree on E" + shapes);
    }
    for (const int64_t e : {experts_e, gate_e}) {
        if (e == 0 || e > REID_MOE_MAX_EXPERTS) {
            throw std::invalid_argument(std::string(kMoeCombineName) + ": E must be 1.." +
                                        std::to_string(REID_MOE_MAX_EXPERTS) + shapes);
        }
    }
    if (num_outputs > REID_MOE_MAX_OUTPUTS) {
        throw std::invalid_argument(std::string(kMoeCombineName) + ": J must be at most " +
                                    std::to_string(REID_MOE_MAX_OUTPUTS) + shapes);
    }
    for (int32_t k = 3; k <= experts.nbDims && k <= gate.nbDims; ++k) {
        const int64_t e = experts.d[experts.nbDims - k];
        const int64_t g = gate.d[gate.nbDims - k];
        if (e >= 0 && g >= 0 && e != g && e != 1 && g != 1) {
            throw std::invalid_argument(std::string(kMoeCombineName) +
                                        ": leading axes do not broadcast (each pair must be "
                                        "equal or 1)" + shapes);
        }
    }
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// Plugin
// ------------------------------------------------------------------------------------------------
MoECombinePlugin::MoECombinePlugin(int32_t apply_softmax) : apply_softmax_(apply_softmax) {
    describe_fields();
}

MoECombinePlugin::MoECombinePlugin(const MoECombinePlugin& other)
    : nvinfer1::IPluginV3(other),
      nvinfer1::IPluginV3OneCore(other),
      nvinfer1::IPluginV3OneBuild(other),
      nvinfer1::IPluginV3OneRuntime(other),
      apply_softmax_(other.apply_softmax_) {
    describe_fields();
}

void MoECombinePlugin::describe_fields() {
    serialized_.add(kMoeCombineSoftmaxField, &apply_softmax_, nvinfer1::PluginFieldType::kINT32,
                    1);
}

nvinfer1::IPluginCapability* MoECombinePlugin::getCapabilityInterface(
    nvinfer1::PluginCapabilityType type) noexcept {
    switch (type) {
        case nvinfer1::PluginCapabilityType::kCORE:
            return static_cast<nvinfer1::IPluginV3OneCore*>(this);
        case nvinfer1::PluginCapabilityType::kBUILD:
            return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
        case nvinfer1::PluginCapabilityType::kRUNTIME:
            return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

nvinfer1::IPluginV3* MoECombinePlugin::clone() noexcept {
    return guarded_value<nvinfer1::IPluginV3*>("MoECombine clone", nullptr,
                                               [&] { return new MoECombinePlugin(*this); });
}

const char* MoECombinePlugin::getPluginName() const noexcept { return kMoeCombineName; }
const char* MoECombinePlugin::getPluginVersion() const noexcept { return kMoeCombineVersion; }
const char* MoECombinePlugin::getPluginNamespace() const noexcept { return kPluginNamespace; }

int32_t MoECombinePlugin::getNbOutputs() const noexcept { return kMoeNumOutputs; }

int32_t MoECombinePlugin::getOutputDataTypes(DataType* output_types, int32_t num_outputs,
                                             const DataType* input_types,
                                             int32_t num_inputs) const noexcept {
    return guarded("MoECombine getOutputDataTypes", [&] {
        if (num_inputs != kMoeNumInputs || num_outputs != kMoeNumOutputs) {
            throw std::invalid_argument("takes 2 inputs (experts, gate_logits) and gives 1 output");
        }
        if (!is_kernel_float(input_types[kMoeExpertsInput]) ||
            input_types[kMoeGateInput] != input_types[kMoeExpertsInput]) {
            throw std::invalid_argument("experts and gate_logits must both be float32, float16 "
                                        "or bfloat16, the same type");
        }
        output_types[kMoeOutOutput] = input_types[kMoeExpertsInput];
        return kStatusSuccess;
    });
}

// out [..., C, J]: the leading axes broadcast (numpy rules, aligned from the right; an axis is
// the other one's where it is 1), then the experts' C and the gate's J.
int32_t MoECombinePlugin::getOutputShapes(const nvinfer1::DimsExprs* inputs, int32_t num_inputs,
                                          const nvinfer1::DimsExprs* /*shape_inputs*/,
                                          int32_t /*num_shape_inputs*/,
                                          nvinfer1::DimsExprs* outputs, int32_t num_outputs,
                                          nvinfer1::IExprBuilder& builder) noexcept {
    return guarded("MoECombine getOutputShapes", [&] {
        if (num_inputs != kMoeNumInputs || num_outputs != kMoeNumOutputs) {
            throw std::invalid_argument("takes 2 inputs (experts, gate_logits) and gives 1 output");
        }
        const nvinfer1::DimsExprs& experts = inputs[kMoeExpertsInput];
        const nvinfer1::DimsExprs& gate = inputs[kMoeGateInput];
        if (experts.nbDims < 2 || gate.nbDims < 2) {
            throw std::invalid_argument("experts must be [..., C, E] and gate_logits [..., E, J]");
        }
        const int32_t experts_lead = experts.nbDims - 2;
        const int32_t gate_lead = gate.nbDims - 2;
        const int32_t lead = experts_lead > gate_lead ? experts_lead : gate_lead;
        nvinfer1::DimsExprs& out = outputs[kMoeOutOutput];
        out.nbDims = lead + 2;
        const nvinfer1::IDimensionExpr* one = builder.constant(1);
        for (int32_t axis = 0; axis < lead; ++axis) {
            const int32_t e_axis = axis - (lead - experts_lead);
            const int32_t g_axis = axis - (lead - gate_lead);
            if (e_axis < 0) {
                out.d[axis] = gate.d[g_axis];
            } else if (g_axis < 0) {
                out.d[axis] = experts.d[e_axis];
            } else {
                // broadcast(e, g) = e + (g - e) * (e == 1), exact for 0-sized axes too
                const nvinfer1::IDimensionExpr& e = *experts.d[e_axis];
                const nvinfer1::IDimensionExpr& g = *gate.d[g_axis];
                const auto* e_is_one = builder.operation(nvinfer1::DimensionOperation::kEQUAL, e, *one);
                const auto* delta = builder.operation(nvinfer1::DimensionOperation::kSUB, g, e);
                const auto* scaled =
                    builder.operation(nvinfer1::DimensionOperation::kPROD, *delta, *e_is_one);
                out.d[axis] = builder.operation(nvinfer1::DimensionOperation::kSUM, e, *scaled);
            }
        }
        out.d[lead] = experts.d[experts.nbDims - 2];
        out.d[lead + 1] = gate.d[gate.nbDims - 1];
        return kStatusSuccess;
    });
}

bool MoECombinePlugin::supportsFormatCombination(int32_t pos,
                                                 const nvinfer1::DynamicPluginTensorDesc* in_out,
                                                 int32_t num_inputs, int32_t num_outputs) noexcept {
    if (in_out == nullptr || pos < 0 || pos >= num_inputs + num_outputs) return false;
    const nvinfer1::PluginTensorDesc& desc = in_out[pos].desc;
    if (desc.format != nvinfer1::TensorFormat::kLINEAR) return false;
    if (pos == kMoeExpertsInput) return is_kernel_float(desc.type);
    return desc.type == in_out[kMoeExpertsInput].desc.type;
}

int32_t MoECombinePlugin::configurePlugin(const nvinfer1::DynamicPluginTensorDesc* in,
                                          int32_t num_inputs,
                                          const nvinfer1::DynamicPluginTensorDesc* /*out*/,
                                          int32_t num_outputs) noexcept {
    return guarded("MoECombine configurePlugin", [&] {
        if (num_inputs != kMoeNumInputs || num_outputs != kMoeNumOutputs) {
            throw std::invalid_argument("takes 2 inputs (experts, gate_logits) and gives 1 output");
        }
        check_shapes(in[kMoeExpertsInput].desc.dims, in[kMoeGateInput].desc.dims);
        return kStatusSuccess;
    });
}

size_t MoECombinePlugin::getWorkspaceSize(const nvinfer1::DynamicPluginTensorDesc* /*inputs*/,
                                          int32_t /*num_inputs*/,
                                          const nvinfer1::DynamicPluginTensorDesc* /*outputs*/,
                                          int32_t /*num_outputs*/) const noexcept {
    return 0;  // the kernel stages its gate weights in shared memory
}

int32_t MoECombinePlugin::onShapeChange(const nvinfer1::PluginTensorDesc* in, int32_t num_inputs,
                                        const nvinfer1::PluginTensorDesc* /*out*/,
                                        int32_t num_outputs) noexcept {
    return guarded("MoECombine onShapeChange", [&] {
        if (num_inputs != kMoeNumInputs || num_outputs != kMoeNumOutputs) {
            throw std::invalid_argument("takes 2 inputs (experts, gate_logits) and gives 1 output");
        }
        check_shapes(in[kMoeExpertsInput].dims, in[kMoeGateInput].dims);
        return kStatusSuccess;
    });
}

int32_t MoECombinePlugin::enqueue(const nvinfer1::PluginTensorDesc* input_desc,
                                  const nvinfer1::PluginTensorDesc* output_desc,
                                  const void* const* inputs, void* const* outputs,
                                  void* /*workspace*/, cudaStream_t stream) noexcept {
    return guarded("MoECombine enqueue", [&] {
        const Dims& experts = input_desc[kMoeExpertsInput].dims;
        const Dims& gate = input_desc[kMoeGateInput].dims;
        const Dims& out = output_desc[kMoeOutOutput].dims;
        const int index = kernel_float_index(input_desc[kMoeExpertsInput].type);
        if (index < 0) throw std::invalid_argument("unsupported tensor type");
        const std::vector<int64_t> experts_strides = linear_strides(experts);
        const std::vector<int64_t> gate_strides = linear_strides(gate);
        const std::vector<int64_t> out_strides = linear_strides(out);

        reid_moe_combine_desc desc{};
        const int32_t lead = out.nbDims - 2;
        desc.num_lead_dims = lead;
        desc.apply_softmax = apply_softmax_;
        for (int32_t axis = 0; axis < lead; ++axis) {
            const int32_t e_axis = axis - (lead - (experts.nbDims - 2));
            const int32_t g_axis = axis - (lead - (gate.nbDims - 2));
            desc.lead_shape[axis] = out.d[axis];
            desc.out_lead_strides[axis] = out_strides[axis];
            // a missing or size-1 input axis broadcasts: stride 0
            desc.experts_lead_strides[axis] =
                e_axis >= 0 && experts.d[e_axis] != 1 ? experts_strides[e_axis] : 0;
            desc.gate_lead_strides[axis] =
                g_axis >= 0 && gate.d[g_axis] != 1 ? gate_strides[g_axis] : 0;
        }
        desc.channels = experts.d[experts.nbDims - 2];
        desc.num_experts = experts.d[experts.nbDims - 1];
        desc.num_outputs = gate.d[gate.nbDims - 1];
        desc.experts_stride_c = experts_strides[experts.nbDims - 2];
        desc.experts_stride_e = experts_strides[experts.nbDims - 1];
        desc.gate_stride_e = gate_strides[gate.nbDims - 2];
        desc.gate_stride_j = gate_strides[gate.nbDims - 1];
        desc.out_stride_c = out_strides[lead];
        desc.out_stride_j = out_strides[lead + 1];

        const int code = kLaunchers[index](&desc, inputs[kMoeExpertsInput], inputs[kMoeGateInput],
                                           outputs[kMoeOutOutput], stream);
        if (code != 0) {
            log_error(std::string("MoECombine enqueue: ") + reid_kernels_error_string(code) +
                      " (experts " + dims_string(experts) + ", gate_logits " +
                      dims_string(gate) + ")");
        }
        return code;
    });
}

nvinfer1::IPluginV3* MoECombinePlugin::attachToContext(
    nvinfer1::IPluginResourceContext* /*context*/) noexcept {
    return clone();  // no per-context resources
}

const nvinfer1::PluginFieldCollection* MoECombinePlugin::getFieldsToSerialize() noexcept {
    return serialized_.collection();
}

// ------------------------------------------------------------------------------------------------
// Creator
// ------------------------------------------------------------------------------------------------
MoECombinePluginCreator::MoECombinePluginCreator() {
    field_names_.add(kMoeCombineSoftmaxField, nullptr, nvinfer1::PluginFieldType::kINT32, 1);
}

const char* MoECombinePluginCreator::getPluginName() const noexcept { return kMoeCombineName; }
const char* MoECombinePluginCreator::getPluginVersion() const noexcept {
    return kMoeCombineVersion;
}
const char* MoECombinePluginCreator::getPluginNamespace() const noexcept {
    return kPluginNamespace;
}

const nvinfer1::PluginFieldCollection* MoECombinePluginCreator::getFieldNames() noexcept {
    return field_names_.collection();
}

nvinfer1::IPluginV3* MoECombinePluginCreator::createPlugin(
    const char* /*name*/, const nvinfer1::PluginFieldCollection* fc,
    nvinfer1::TensorRTPhase /*phase*/) noexcept {
    return guarded_value<nvinfer1::IPluginV3*>("MoECombine createPlugin", nullptr, [&] {
        const FieldReader fields(kMoeCombineName, fc, {kMoeCombineSoftmaxField});
        const int64_t softmax = fields.int_scalar(kMoeCombineSoftmaxField).value_or(1);
        if (softmax != 0 && softmax != 1) {
            fields.fail("field 'softmax' must be 1 (softmax over E inside the op) or 0 (the "
                        "gate holds the weights), got " + std::to_string(softmax));
        }
        return static_cast<nvinfer1::IPluginV3*>(
            new MoECombinePlugin(static_cast<int32_t>(softmax)));
    });
}

}  // namespace plugin
}  // namespace reid
