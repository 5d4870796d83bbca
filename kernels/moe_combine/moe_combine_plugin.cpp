// MoECombine TensorRT plugin: its field, output type and shape, formats, shape checks and the
// reid_moe_combine_desc its launch fills; PluginBase (reid_plugin_base.h) does the IPluginV3
// plumbing. No device code here.
#include "moe_combine/moe_combine_plugin.h"

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "reid_kernels.h"
#include "reid_plugin_base.h"

namespace reid {
namespace plugin {
namespace {

using nvinfer1::DataType;
using nvinfer1::Dims;

constexpr char kSoftmaxField[] = "softmax";

// Tensor positions: inputs, then outputs (TensorRT's numbering in supportsFormatCombination).
constexpr int32_t kExpertsInput = 0;
constexpr int32_t kGateInput = 1;
constexpr int32_t kOutOutput = 0;

const reid_moe_combine_fn kLaunchers[] = {reid_moe_combine_f32, reid_moe_combine_f16,
                                          reid_moe_combine_bf16};

class MoECombinePlugin final : public PluginBase<MoECombinePlugin> {
public:
    static constexpr char kName[] = "MoECombine";
    static constexpr char kVersion[] = "1";
    static constexpr const char* kInputNames[] = {"experts", "gate_logits"};
    static constexpr const char* kOutputNames[] = {"out"};
    static constexpr FieldSpec kFields[] = {{kSoftmaxField, nvinfer1::PluginFieldType::kINT32, 1}};

    // apply_softmax 1: softmax over E inside the op; 0: the gate holds the weights.
    explicit MoECombinePlugin(int32_t apply_softmax) : apply_softmax_(apply_softmax) {}

    static std::unique_ptr<MoECombinePlugin> from_fields(const FieldReader& fields) {
        const int64_t softmax = fields.int_scalar(kSoftmaxField).value_or(1);
        if (softmax != 0 && softmax != 1) {
            fields.fail("field 'softmax' must be 1 (softmax over E inside the op) or 0 (the gate "
                        "holds the weights), got " + std::to_string(softmax));
        }
        return std::make_unique<MoECombinePlugin>(static_cast<int32_t>(softmax));
    }

    void add_fields(FieldList& fields) const {
        fields.add(kSoftmaxField, &apply_softmax_, nvinfer1::PluginFieldType::kINT32, 1);
    }

    void output_types(DataType* outputs, const DataType* inputs) const {
        if (!is_kernel_float(inputs[kExpertsInput]) ||
            inputs[kGateInput] != inputs[kExpertsInput]) {
            throw std::invalid_argument("experts and gate_logits must both be float32, float16 or "
                                        "bfloat16, the same type");
        }
        outputs[kOutOutput] = inputs[kExpertsInput];
    }

    // out [..., C, J]: the leading axes broadcast (numpy rules, aligned from the right; an axis is
    // the other one's where it is 1), then the experts' C and the gate's J.
    void output_shapes(const nvinfer1::DimsExprs* inputs, nvinfer1::DimsExprs* outputs,
                       nvinfer1::IExprBuilder& builder) const {
        const nvinfer1::DimsExprs& experts = inputs[kExpertsInput];
        const nvinfer1::DimsExprs& gate = inputs[kGateInput];
        if (experts.nbDims < 2 || gate.nbDims < 2) {
            throw std::invalid_argument("experts must be [..., C, E] and gate_logits [..., E, J]");
        }
        const int32_t experts_lead = experts.nbDims - 2;
        const int32_t gate_lead = gate.nbDims - 2;
        const int32_t lead = experts_lead > gate_lead ? experts_lead : gate_lead;
        nvinfer1::DimsExprs& out = outputs[kOutOutput];
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
                const auto* e_is_one =
                    builder.operation(nvinfer1::DimensionOperation::kEQUAL, e, *one);
                const auto* delta = builder.operation(nvinfer1::DimensionOperation::kSUB, g, e);
                const auto* scaled =
                    builder.operation(nvinfer1::DimensionOperation::kPROD, *delta, *e_is_one);
                out.d[axis] = builder.operation(nvinfer1::DimensionOperation::kSUM, e, *scaled);
            }
        }
        out.d[lead] = experts.d[experts.nbDims - 2];
        out.d[lead + 1] = gate.d[gate.nbDims - 1];
    }

    bool supports_type(int32_t pos,
                       const nvinfer1::DynamicPluginTensorDesc* in_out) const noexcept {
        const DataType type = in_out[pos].desc.type;
        if (pos == kExpertsInput) return is_kernel_float(type);
        return type == in_out[kExpertsInput].desc.type;
    }

    // experts [..., C, E] and gate [..., E, J]: ranks, equal E, the kernel's E and J limits, and
    // leading axes that broadcast (equal or 1, aligned from the right). Dimensions of -1 (not
    // yet known at build time) pass.
    void check_input_shapes(const Dims* inputs) const {
        const Dims& experts = inputs[kExpertsInput];
        const Dims& gate = inputs[kGateInput];
        const std::string shapes = inputs_text(inputs);
        if (experts.nbDims < 2 || gate.nbDims < 2) {
            throw std::invalid_argument("experts must be [..., C, E] and gate_logits [..., E, J]" +
                                        shapes);
        }
        const int64_t experts_e = experts.d[experts.nbDims - 1];
        const int64_t gate_e = gate.d[gate.nbDims - 2];
        const int64_t num_outputs = gate.d[gate.nbDims - 1];
        if (experts_e >= 0 && gate_e >= 0 && experts_e != gate_e) {
            throw std::invalid_argument("experts and gate_logits disagree on E" + shapes);
        }
        for (const int64_t e : {experts_e, gate_e}) {
            if (e == 0 || e > REID_MOE_MAX_EXPERTS) {
                throw std::invalid_argument(
                    "E must be 1.." + std::to_string(REID_MOE_MAX_EXPERTS) + shapes);
            }
        }
        if (num_outputs > REID_MOE_MAX_OUTPUTS) {
            throw std::invalid_argument(
                "J must be at most " + std::to_string(REID_MOE_MAX_OUTPUTS) + shapes);
        }
        for (int32_t k = 3; k <= experts.nbDims && k <= gate.nbDims; ++k) {
            const int64_t e = experts.d[experts.nbDims - k];
            const int64_t g = gate.d[gate.nbDims - k];
            if (e >= 0 && g >= 0 && e != g && e != 1 && g != 1) {
                throw std::invalid_argument(
                    "leading axes do not broadcast (each pair must be equal or 1)" + shapes);
            }
        }
    }

    int launch(const nvinfer1::PluginTensorDesc* input_desc,
               const nvinfer1::PluginTensorDesc* output_desc, const void* const* inputs,
               void* const* outputs, cudaStream_t stream) const {
        const Dims& experts = input_desc[kExpertsInput].dims;
        const Dims& gate = input_desc[kGateInput].dims;
        const Dims& out = output_desc[kOutOutput].dims;
        const reid_moe_combine_fn launcher =
            float_launcher(kLaunchers, input_desc[kExpertsInput].type);
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
        return launcher(&desc, inputs[kExpertsInput], inputs[kGateInput], outputs[kOutOutput],
                        stream);
    }

private:
    int32_t apply_softmax_;
};

}  // namespace

nvinfer1::IPluginCreatorV3One& moe_combine_creator() { return creator_of<MoECombinePlugin>(); }

}  // namespace plugin
}  // namespace reid
