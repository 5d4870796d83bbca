// The IPluginV3 plumbing every reid TensorRT plugin shares (TensorRT 10 / 11): PluginBase<Op>
// implements IPluginV3 with its IPluginV3OneCore / Build / Runtime capabilities, and
// PluginCreator<Op> the IPluginCreatorV3One, once for all ops. The op's plugin class (private to
// its <op>_plugin.cpp, deriving from PluginBase<itself>) keeps only what is its own:
//
//   static constexpr char kName[], kVersion[];       plugin name and version
//   static constexpr const char* kInputNames[];      by tensor index; their counts are the
//   static constexpr const char* kOutputNames[];     op's numbers of inputs and outputs
//   static constexpr FieldSpec kFields[];            its PluginFields (getFieldNames)
//   static std::unique_ptr<Op> from_fields(const FieldReader&);   createPlugin: validated fields
//   void add_fields(FieldList&) const;               getFieldsToSerialize: pointers to its members
//   void output_types(DataType* outputs, const DataType* inputs) const;
//   void output_shapes(const DimsExprs* inputs, DimsExprs* outputs, IExprBuilder&) const;
//   bool supports_type(int32_t pos, const DynamicPluginTensorDesc* in_out) const noexcept;
//   void check_input_shapes(const Dims* inputs) const;    configurePlugin and onShapeChange
//   int launch(const PluginTensorDesc* input_desc, const PluginTensorDesc* output_desc,
//              const void* const* inputs, void* const* outputs, cudaStream_t) const;
//
// The hooks throw std::invalid_argument naming the problem; PluginBase turns that into a logged
// error and a failure status (every TensorRT-facing method is noexcept). It checks the counts of
// inputs and outputs before a hook sees the arrays, accepts kLINEAR only, and copies by the op's
// copy constructor (clone, attachToContext: no per-context resources). launch fills the op's
// reid_*_desc and returns its launcher's code, which enqueue logs with the input shapes when
// non-zero. No op uses a workspace (the kernels stage in shared memory): getWorkspaceSize keeps
// TensorRT's default of 0. Host code only.
#pragma once

#include <NvInferRuntime.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <memory>
#include <stdexcept>
#include <string>

#include "reid_kernels.h"
#include "reid_plugin_common.h"

namespace reid {
namespace plugin {

// One PluginField an op takes: name, type and length as its creator lists them (0: variable).
struct FieldSpec {
    const char* name;
    nvinfer1::PluginFieldType type;
    int32_t length;
};

template <typename Op>
class PluginBase : public nvinfer1::IPluginV3,
                   public nvinfer1::IPluginV3OneCore,
                   public nvinfer1::IPluginV3OneBuild,
                   public nvinfer1::IPluginV3OneRuntime {
public:
    PluginBase& operator=(const PluginBase&) = delete;
    ~PluginBase() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(
        nvinfer1::PluginCapabilityType type) noexcept override {
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

    nvinfer1::IPluginV3* clone() noexcept override {
        return guarded_value<nvinfer1::IPluginV3*>(Op::kName, "clone", nullptr,
                                                   [&] { return new Op(op()); });
    }

    // IPluginV3OneCore
    const char* getPluginName() const noexcept override { return Op::kName; }
    const char* getPluginVersion() const noexcept override { return Op::kVersion; }
    const char* getPluginNamespace() const noexcept override { return kPluginNamespace; }

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override { return num_outputs(); }

    int32_t getOutputDataTypes(nvinfer1::DataType* output_types, int32_t num_outputs_given,
                               const nvinfer1::DataType* input_types,
                               int32_t num_inputs_given) const noexcept override {
        return guarded(Op::kName, "getOutputDataTypes", [&] {
            require_tensor_counts(num_inputs_given, num_outputs_given);
            op().output_types(output_types, input_types);
            return kStatusSuccess;
        });
    }

    int32_t getOutputShapes(const nvinfer1::DimsExprs* inputs, int32_t num_inputs_given,
                            const nvinfer1::DimsExprs* /*shape_inputs*/,
                            int32_t /*num_shape_inputs*/, nvinfer1::DimsExprs* outputs,
                            int32_t num_outputs_given,
                            nvinfer1::IExprBuilder& builder) noexcept override {
        return guarded(Op::kName, "getOutputShapes", [&] {
            require_tensor_counts(num_inputs_given, num_outputs_given);
            op().output_shapes(inputs, outputs, builder);
            return kStatusSuccess;
        });
    }

    bool supportsFormatCombination(int32_t pos, const nvinfer1::DynamicPluginTensorDesc* in_out,
                                   int32_t num_inputs_given,
                                   int32_t num_outputs_given) noexcept override {
        if (in_out == nullptr || pos < 0 || pos >= num_inputs_given + num_outputs_given) {
            return false;
        }
        if (in_out[pos].desc.format != nvinfer1::TensorFormat::kLINEAR) return false;
        return op().supports_type(pos, in_out);
    }

    int32_t configurePlugin(const nvinfer1::DynamicPluginTensorDesc* in, int32_t num_inputs_given,
                            const nvinfer1::DynamicPluginTensorDesc* /*out*/,
                            int32_t num_outputs_given) noexcept override {
        return checked_shapes("configurePlugin", in, num_inputs_given, num_outputs_given);
    }

    // IPluginV3OneRuntime
    int32_t onShapeChange(const nvinfer1::PluginTensorDesc* in, int32_t num_inputs_given,
                          const nvinfer1::PluginTensorDesc* /*out*/,
                          int32_t num_outputs_given) noexcept override {
        return checked_shapes("onShapeChange", in, num_inputs_given, num_outputs_given);
    }

    int32_t enqueue(const nvinfer1::PluginTensorDesc* input_desc,
                    const nvinfer1::PluginTensorDesc* output_desc, const void* const* inputs,
                    void* const* outputs, void* /*workspace*/,
                    cudaStream_t stream) noexcept override {
        return guarded(Op::kName, "enqueue", [&] {
            const int code = op().launch(input_desc, output_desc, inputs, outputs, stream);
            if (code != 0) {
                log_error(std::string(Op::kName) + " enqueue: " + reid_kernels_error_string(code) +
                          inputs_text(input_dims(input_desc).data()));
            }
            return code;
        });
    }

    nvinfer1::IPluginV3* attachToContext(
        nvinfer1::IPluginResourceContext* /*context*/) noexcept override {
        return clone();  // no per-context resources
    }

    // Rebuilt on every call, pointing at this object's members (a clone's point at the clone's).
    const nvinfer1::PluginFieldCollection* getFieldsToSerialize() noexcept override {
        return guarded_value<const nvinfer1::PluginFieldCollection*>(
            Op::kName, "getFieldsToSerialize", nullptr, [&] {
                serialized_.clear();
                op().add_fields(serialized_);
                return serialized_.collection();
            });
    }

protected:
    PluginBase() = default;
    // A copy shares no serialised fields with its original (getFieldsToSerialize refills them).
    PluginBase(const PluginBase& other)
        : nvinfer1::IPluginV3(other),
          nvinfer1::IPluginV3OneCore(other),
          nvinfer1::IPluginV3OneBuild(other),
          nvinfer1::IPluginV3OneRuntime(other) {}

    // " (experts [2, 16, 8], gate_logits [2, 8, 3])": the input shapes for error messages.
    static std::string inputs_text(const nvinfer1::Dims* inputs) {
        std::string text = " (";
        for (int32_t i = 0; i < num_inputs(); ++i) {
            text += std::string(i ? ", " : "") + Op::kInputNames[i] + " " + dims_string(inputs[i]);
        }
        return text + ")";
    }

private:
    static constexpr int32_t num_inputs() {
        return static_cast<int32_t>(std::size(Op::kInputNames));
    }
    static constexpr int32_t num_outputs() {
        return static_cast<int32_t>(std::size(Op::kOutputNames));
    }

    const Op& op() const noexcept { return static_cast<const Op&>(*this); }

    static void require_tensor_counts(int32_t num_inputs_given, int32_t num_outputs_given) {
        if (num_inputs_given == num_inputs() && num_outputs_given == num_outputs()) return;
        const auto listed = [](const char* const* names, int32_t count, const char* noun) {
            std::string text = std::to_string(count) + " " + noun + (count == 1 ? "" : "s") + " (";
            for (int32_t i = 0; i < count; ++i) text += std::string(i ? ", " : "") + names[i];
            return text + ")";
        };
        throw std::invalid_argument(
            "takes " + listed(Op::kInputNames, num_inputs(), "input") + " and gives " +
            listed(Op::kOutputNames, num_outputs(), "output") + ", got " +
            std::to_string(num_inputs_given) + " and " + std::to_string(num_outputs_given));
    }

    static const nvinfer1::Dims& dims_of(const nvinfer1::PluginTensorDesc& desc) noexcept {
        return desc.dims;
    }
    static const nvinfer1::Dims& dims_of(const nvinfer1::DynamicPluginTensorDesc& desc) noexcept {
        return desc.desc.dims;
    }

    // configurePlugin and onShapeChange: the same checks on build-time (-1 where not yet known)
    // and run-time dims.
    template <typename Desc>
    int32_t checked_shapes(const char* method, const Desc* in, int32_t num_inputs_given,
                           int32_t num_outputs_given) const noexcept {
        return guarded(Op::kName, method, [&] {
            require_tensor_counts(num_inputs_given, num_outputs_given);
            op().check_input_shapes(input_dims(in).data());
            return kStatusSuccess;
        });
    }

    // The inputs' dims out of TensorRT's tensor descriptions, by input index.
    template <typename Desc>
    static auto input_dims(const Desc* descs) noexcept {
        std::array<nvinfer1::Dims, std::size(Op::kInputNames)> dims{};
        for (size_t i = 0; i < dims.size(); ++i) dims[i] = dims_of(descs[i]);
        return dims;
    }

    FieldList serialized_;
};

template <typename Op>
class PluginCreator final : public nvinfer1::IPluginCreatorV3One {
public:
    PluginCreator() {
        for (const FieldSpec& field : Op::kFields) {
            field_names_.add(field.name, nullptr, field.type, field.length);
        }
    }

    const char* getPluginName() const noexcept override { return Op::kName; }
    const char* getPluginVersion() const noexcept override { return Op::kVersion; }
    const char* getPluginNamespace() const noexcept override { return kPluginNamespace; }
    const nvinfer1::PluginFieldCollection* getFieldNames() noexcept override {
        return field_names_.collection();
    }

    // The same for both phases: a deserialised plugin gets back the fields it serialised.
    nvinfer1::IPluginV3* createPlugin(const char* /*name*/,
                                      const nvinfer1::PluginFieldCollection* fc,
                                      nvinfer1::TensorRTPhase /*phase*/) noexcept override {
        return guarded_value<nvinfer1::IPluginV3*>(Op::kName, "createPlugin", nullptr, [&] {
            const FieldReader fields(Op::kName, fc, *field_names_.collection());
            return static_cast<nvinfer1::IPluginV3*>(Op::from_fields(fields).release());
        });
    }

private:
    FieldList field_names_;
};

// The creator of Op's plugins: one per process (what <op>_creator() of the op's header returns).
template <typename Op>
nvinfer1::IPluginCreatorV3One& creator_of() {
    static PluginCreator<Op> creator;
    return creator;
}

}  // namespace plugin
}  // namespace reid
