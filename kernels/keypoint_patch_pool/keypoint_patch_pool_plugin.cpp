// KeypointPatchPool TensorRT plugin: attribute validation, shapes, formats, fields and the
// enqueue that fills reid_keypoint_patch_pool_desc for the launcher. No device code here.
#include "keypoint_patch_pool_plugin.h"

#include <cmath>
#include <utility>

#include "keypoint_patch_pool/keypoint_patch_pool_kernel.h"

namespace reid {
namespace plugin {
namespace {

using nvinfer1::DataType;
using nvinfer1::Dims;

const reid_keypoint_patch_pool_fn kLaunchers[] = {
    reid_keypoint_patch_pool_f32, reid_keypoint_patch_pool_f16, reid_keypoint_patch_pool_bf16};

// KeyRe-ID's six parts (head, torso, left arm, right arm, left leg, right leg), COCO-17 joints.
const int32_t kKeyReIdParts[] = {0, 1, 2, 3, 4, -1, 5, 6, 11, 12, -1, 7, 9, -1, 8, 10,
                                 -1, 13, 15, -1, 14, 16};

struct ModeName {
    const char* name;
    reid_kpp_mode mode;
};
const ModeName kModes[] = {{"paper", REID_KPP_MODE_PAPER},
                           {"max", REID_KPP_MODE_MAX},
                           {"constant", REID_KPP_MODE_CONSTANT}};

std::string shapes_text(const Dims& keypoints, const Dims& crop_hw, const Dims& frame_valid) {
    return " (keypoints " + dims_string(keypoints) + ", crop_hw " + dims_string(crop_hw) +
           ", frame_valid " + dims_string(frame_valid) + ")";
}

void require_inputs_and_outputs(int32_t num_inputs, int32_t num_outputs) {
    if (num_inputs != kKppNumInputs || num_outputs != kKppNumOutputs) {
        throw std::invalid_argument(
            "takes 3 inputs (keypoints, crop_hw, frame_valid) and gives 1 output (weights)");
    }
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// Attributes
// ------------------------------------------------------------------------------------------------
KppAttributes KppAttributes::from_fields(const nvinfer1::PluginFieldCollection* fc) {
    const FieldReader fields(kKppName, fc,
                             {kKppPartsField, kKppOutHwField, kKppPatchField, kKppVisThreshField,
                              kKppModeField});
    KppAttributes a;
    a.parts.assign(std::begin(kKeyReIdParts), std::end(kKeyReIdParts));
    if (const auto parts = fields.ints(kKppPartsField)) {
        a.parts.clear();
        for (const int64_t joint : *parts) {
            if (joint < -1 || joint >= REID_KPP_MAX_JOINTS) {
                fields.fail("field 'parts' holds joint index " + std::to_string(joint) +
                            "; joints are 0.." + std::to_string(REID_KPP_MAX_JOINTS - 1) +
                            " and -1 separates parts");
            }
            a.parts.push_back(static_cast<int32_t>(joint));
        }
    }
    int32_t group_size = 0;
    int32_t num_joints = 0;
    for (size_t i = 0; i <= a.parts.size(); ++i) {
        if (i == a.parts.size() || a.parts[i] == -1) {
            if (group_size == 0) {
                fields.fail("field 'parts' has an empty part (an empty list or a doubled, "
                            "leading or trailing -1); give every part >= 1 joint");
            }
            group_size = 0;
        } else {
            ++group_size;
            ++num_joints;
        }
    }
    if (a.num_parts() > REID_KPP_MAX_PARTS || num_joints > REID_KPP_MAX_PART_JOINTS) {
        fields.fail("field 'parts' lists " + std::to_string(a.num_parts()) + " parts and " +
                    std::to_string(num_joints) + " joints; at most " +
                    std::to_string(REID_KPP_MAX_PARTS) + " parts and " +
                    std::to_string(REID_KPP_MAX_PART_JOINTS) + " joints in all are supported");
    }
    if (const auto out_hw = fields.ints(kKppOutHwField)) {
        if (out_hw->size() != 2) fields.fail("field 'out_hw' must be (height, width)");
        for (const int64_t side : *out_hw) {
            if (side < 1 || side > kKppMaxSide) {
                fields.fail("field 'out_hw' sides must be in [1, " + std::to_string(kKppMaxSide) +
                            "], got " + std::to_string(side));
            }
        }
        a.out_h = static_cast<int32_t>((*out_hw)[0]);
        a.out_w = static_cast<int32_t>((*out_hw)[1]);
    }
    if (const auto patch = fields.int_scalar(kKppPatchField)) {
        if (*patch < 1 || *patch > kKppMaxSide) fields.fail("field 'patch' must be >= 1");
        a.patch = static_cast<int32_t>(*patch);
    }
    if (a.out_h % a.patch != 0 || a.out_w % a.patch != 0) {
        fields.fail("out_hw (" + std::to_string(a.out_h) + ", " + std::to_string(a.out_w) +
                    ") is not a multiple of patch " + std::to_string(a.patch) +
                    "; choose out_hw divisible by patch");
    }
    if (a.num_patches() > kKppMaxPatches) {
        fields.fail(std::to_string(a.num_patches()) + " patches; at most " +
                    std::to_string(kKppMaxPatches) + " (use a larger patch or a smaller out_hw)");
    }
    if (const auto vis_thresh = fields.float_scalar(kKppVisThreshField)) {
        if (!std::isfinite(*vis_thresh)) fields.fail("field 'vis_thresh' must be finite");
        a.vis_thresh = *vis_thresh;
    }
    if (const auto mode = fields.string(kKppModeField)) {
        bool known = false;
        for (const ModeName& m : kModes) known = known || *mode == m.name;
        if (!known) {
            fields.fail("field 'mode' is '" + *mode + "'; choose paper, max or constant");
        }
        a.mode = *mode;
    }
    return a;
}

int32_t KppAttributes::num_parts() const noexcept {
    int32_t count = 1;
    for (const int32_t joint : parts) count += joint == -1;
    return count;
}

int32_t KppAttributes::max_joint() const noexcept {
    int32_t largest = 0;
    for (const int32_t joint : parts) largest = joint > largest ? joint : largest;
    return largest;
}

void KppAttributes::describe(reid_keypoint_patch_pool_desc& desc) const {
    int32_t part = 0;
    int32_t slot = 0;
    desc.part_offsets[0] = 0;
    for (const int32_t joint : parts) {
        if (joint == -1) {
            desc.part_offsets[++part] = slot;
        } else {
            desc.part_joints[slot++] = joint;
        }
    }
    desc.part_offsets[++part] = slot;
    desc.num_parts = part;
    desc.out_h = out_h;
    desc.out_w = out_w;
    desc.patch = patch;
    desc.vis_thresh = vis_thresh;
    for (const ModeName& m : kModes) {
        if (mode == m.name) desc.mode = m.mode;
    }
}

// ------------------------------------------------------------------------------------------------
// Plugin
// ------------------------------------------------------------------------------------------------
KeypointPatchPoolPlugin::KeypointPatchPoolPlugin(KppAttributes attributes)
    : attributes_(std::move(attributes)) {
    describe_fields();
}

KeypointPatchPoolPlugin::KeypointPatchPoolPlugin(const KeypointPatchPoolPlugin& other)
    : nvinfer1::IPluginV3(other),
      nvinfer1::IPluginV3OneCore(other),
      nvinfer1::IPluginV3OneBuild(other),
      nvinfer1::IPluginV3OneRuntime(other),
      attributes_(other.attributes_) {
    describe_fields();
}

void KeypointPatchPoolPlugin::describe_fields() {
    out_hw_[0] = attributes_.out_h;
    out_hw_[1] = attributes_.out_w;
    serialized_.add(kKppPartsField, attributes_.parts.data(), nvinfer1::PluginFieldType::kINT32,
                    static_cast<int32_t>(attributes_.parts.size()));
    serialized_.add(kKppOutHwField, out_hw_, nvinfer1::PluginFieldType::kINT32, 2);
    serialized_.add(kKppPatchField, &attributes_.patch, nvinfer1::PluginFieldType::kINT32, 1);
    serialized_.add(kKppVisThreshField, &attributes_.vis_thresh,
                    nvinfer1::PluginFieldType::kFLOAT32, 1);
    // with its NUL, as the ONNX parser passes strings
    serialized_.add(kKppModeField, attributes_.mode.c_str(), nvinfer1::PluginFieldType::kCHAR,
                    static_cast<int32_t>(attributes_.mode.size() + 1));
}

void KeypointPatchPoolPlugin::check_shapes(const Dims& keypoints, const Dims& crop_hw,
                                           const Dims& frame_valid) const {
    const std::string shapes = shapes_text(keypoints, crop_hw, frame_valid);
    if (keypoints.nbDims != 4 || crop_hw.nbDims != 3 || frame_valid.nbDims != 2) {
        throw std::invalid_argument("keypoints must be [B, T, J, 3], crop_hw [B, T, 2], "
                                    "frame_valid [B, T]" + shapes);
    }
    const auto known_and_differ = [](int64_t a, int64_t b) { return a >= 0 && b >= 0 && a != b; };
    for (int32_t axis = 0; axis < 2; ++axis) {
        if (known_and_differ(keypoints.d[axis], crop_hw.d[axis]) ||
            known_and_differ(keypoints.d[axis], frame_valid.d[axis])) {
            throw std::invalid_argument("B and T differ between the inputs" + shapes);
        }
    }
    if (known_and_differ(keypoints.d[3], 3) || known_and_differ(crop_hw.d[2], 2)) {
        throw std::invalid_argument("keypoints' last axis must be 3 (x, y, confidence) and "
                                    "crop_hw's 2 (height, width)" + shapes);
    }
    if (keypoints.d[1] == 0) {
        throw std::invalid_argument("T = 0 frames; a clip needs at least one frame" + shapes);
    }
    const int64_t joints = keypoints.d[2];
    if (joints >= 0 && (joints > REID_KPP_MAX_JOINTS || joints <= attributes_.max_joint())) {
        throw std::invalid_argument(
            "keypoints have J = " + std::to_string(joints) + " joints; the parts use joint " +
            std::to_string(attributes_.max_joint()) + " and the kernel takes at most " +
            std::to_string(REID_KPP_MAX_JOINTS) + shapes);
    }
}

nvinfer1::IPluginCapability* KeypointPatchPoolPlugin::getCapabilityInterface(
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

nvinfer1::IPluginV3* KeypointPatchPoolPlugin::clone() noexcept {
    return guarded_value<nvinfer1::IPluginV3*>(
        "KeypointPatchPool clone", nullptr, [&] { return new KeypointPatchPoolPlugin(*this); });
}

const char* KeypointPatchPoolPlugin::getPluginName() const noexcept { return kKppName; }
const char* KeypointPatchPoolPlugin::getPluginVersion() const noexcept { return kKppVersion; }
const char* KeypointPatchPoolPlugin::getPluginNamespace() const noexcept {
    return kPluginNamespace;
}

int32_t KeypointPatchPoolPlugin::getNbOutputs() const noexcept { return kKppNumOutputs; }

int32_t KeypointPatchPoolPlugin::getOutputDataTypes(DataType* output_types, int32_t num_outputs,
                                                    const DataType* input_types,
                                                    int32_t num_inputs) const noexcept {
    return guarded("KeypointPatchPool getOutputDataTypes", [&] {
        require_inputs_and_outputs(num_inputs, num_outputs);
        if (!is_kernel_float(input_types[kKppKeypointsInput]) ||
            input_types[kKppCropHwInput] != DataType::kINT32 ||
            input_types[kKppFrameValidInput] != DataType::kBOOL) {
            throw std::invalid_argument("keypoints must be float32, float16 or bfloat16, crop_hw "
                                        "int32 and frame_valid bool");
        }
        output_types[kKppWeightsOutput] = input_types[kKppKeypointsInput];
        return kStatusSuccess;
    });
}

// weights [B, P, K]: B from keypoints, P and K from the attributes.
int32_t KeypointPatchPoolPlugin::getOutputShapes(const nvinfer1::DimsExprs* inputs,
                                                 int32_t num_inputs,
                                                 const nvinfer1::DimsExprs* /*shape_inputs*/,
                                                 int32_t /*num_shape_inputs*/,
                                                 nvinfer1::DimsExprs* outputs, int32_t num_outputs,
                                                 nvinfer1::IExprBuilder& builder) noexcept {
    return guarded("KeypointPatchPool getOutputShapes", [&] {
        require_inputs_and_outputs(num_inputs, num_outputs);
        if (inputs[kKppKeypointsInput].nbDims != 4) {
            throw std::invalid_argument("keypoints must be [B, T, J, 3]");
        }
        nvinfer1::DimsExprs& weights = outputs[kKppWeightsOutput];
        weights.nbDims = 3;
        weights.d[0] = inputs[kKppKeypointsInput].d[0];
        weights.d[1] = builder.constant(attributes_.num_parts());
        weights.d[2] = builder.constant(attributes_.num_patches());
        return kStatusSuccess;
    });
}

bool KeypointPatchPoolPlugin::supportsFormatCombination(
    int32_t pos, const nvinfer1::DynamicPluginTensorDesc* in_out, int32_t num_inputs,
    int32_t num_outputs) noexcept {
    if (in_out == nullptr || pos < 0 || pos >= num_inputs + num_outputs) return false;
    const nvinfer1::PluginTensorDesc& desc = in_out[pos].desc;
    if (desc.format != nvinfer1::TensorFormat::kLINEAR) return false;
    switch (pos) {
        case kKppKeypointsInput: return is_kernel_float(desc.type);
        case kKppCropHwInput: return desc.type == DataType::kINT32;
        case kKppFrameValidInput: return desc.type == DataType::kBOOL;
        default: return desc.type == in_out[kKppKeypointsInput].desc.type;  // weights
    }
}

int32_t KeypointPatchPoolPlugin::configurePlugin(const nvinfer1::DynamicPluginTensorDesc* in,
                                                 int32_t num_inputs,
                                                 const nvinfer1::DynamicPluginTensorDesc* /*out*/,
                                                 int32_t num_outputs) noexcept {
    return guarded("KeypointPatchPool configurePlugin", [&] {
        require_inputs_and_outputs(num_inputs, num_outputs);
        check_shapes(in[kKppKeypointsInput].desc.dims, in[kKppCropHwInput].desc.dims,
                     in[kKppFrameValidInput].desc.dims);
        return kStatusSuccess;
    });
}

size_t KeypointPatchPoolPlugin::getWorkspaceSize(
    const nvinfer1::DynamicPluginTensorDesc* /*inputs*/, int32_t /*num_inputs*/,
    const nvinfer1::DynamicPluginTensorDesc* /*outputs*/, int32_t /*num_outputs*/) const noexcept {
    return 0;  // the kernel keeps its per-part state in shared memory
}

int32_t KeypointPatchPoolPlugin::onShapeChange(const nvinfer1::PluginTensorDesc* in,
                                               int32_t num_inputs,
                                               const nvinfer1::PluginTensorDesc* /*out*/,
                                               int32_t num_outputs) noexcept {
    return guarded("KeypointPatchPool onShapeChange", [&] {
        require_inputs_and_outputs(num_inputs, num_outputs);
        check_shapes(in[kKppKeypointsInput].dims, in[kKppCropHwInput].dims,
                     in[kKppFrameValidInput].dims);
        return kStatusSuccess;
    });
}

int32_t KeypointPatchPoolPlugin::enqueue(const nvinfer1::PluginTensorDesc* input_desc,
                                         const nvinfer1::PluginTensorDesc* output_desc,
                                         const void* const* inputs, void* const* outputs,
                                         void* /*workspace*/, cudaStream_t stream) noexcept {
    return guarded("KeypointPatchPool enqueue", [&] {
        const Dims& keypoints = input_desc[kKppKeypointsInput].dims;
        const int index = kernel_float_index(input_desc[kKppKeypointsInput].type);
        if (index < 0) throw std::invalid_argument("unsupported keypoints type");
        reid_keypoint_patch_pool_desc desc{};
        desc.batch = keypoints.d[0];
        desc.frames = keypoints.d[1];
        desc.num_joints = keypoints.d[2];
        attributes_.describe(desc);
        const auto copy_strides = [](const Dims& dims, int64_t* strides) {
            const std::vector<int64_t> linear = linear_strides(dims);
            for (size_t axis = 0; axis < linear.size(); ++axis) strides[axis] = linear[axis];
        };
        copy_strides(keypoints, desc.keypoints_strides);
        copy_strides(input_desc[kKppCropHwInput].dims, desc.crop_hw_strides);
        copy_strides(input_desc[kKppFrameValidInput].dims, desc.frame_valid_strides);
        copy_strides(output_desc[kKppWeightsOutput].dims, desc.out_strides);

        const int code = kLaunchers[index](
            &desc, inputs[kKppKeypointsInput],
            static_cast<const int32_t*>(inputs[kKppCropHwInput]),
            static_cast<const uint8_t*>(inputs[kKppFrameValidInput]), outputs[kKppWeightsOutput],
            stream);
        if (code != 0) {
            log_error(std::string("KeypointPatchPool enqueue: ") + reid_kernels_error_string(code) +
                      shapes_text(keypoints, input_desc[kKppCropHwInput].dims,
                                  input_desc[kKppFrameValidInput].dims));
        }
        return code;
    });
}

nvinfer1::IPluginV3* KeypointPatchPoolPlugin::attachToContext(
    nvinfer1::IPluginResourceContext* /*context*/) noexcept {
    return clone();  // no per-context resources
}

const nvinfer1::PluginFieldCollection* KeypointPatchPoolPlugin::getFieldsToSerialize() noexcept {
    return serialized_.collection();
}

// ------------------------------------------------------------------------------------------------
// Creator
// ------------------------------------------------------------------------------------------------
KeypointPatchPoolPluginCreator::KeypointPatchPoolPluginCreator() {
    field_names_.add(kKppPartsField, nullptr, nvinfer1::PluginFieldType::kINT32, 0);
    field_names_.add(kKppOutHwField, nullptr, nvinfer1::PluginFieldType::kINT32, 2);
    field_names_.add(kKppPatchField, nullptr, nvinfer1::PluginFieldType::kINT32, 1);
    field_names_.add(kKppVisThreshField, nullptr, nvinfer1::PluginFieldType::kFLOAT32, 1);
    field_names_.add(kKppModeField, nullptr, nvinfer1::PluginFieldType::kCHAR, 0);
}

const char* KeypointPatchPoolPluginCreator::getPluginName() const noexcept { return kKppName; }
const char* KeypointPatchPoolPluginCreator::getPluginVersion() const noexcept {
    return kKppVersion;
}
const char* KeypointPatchPoolPluginCreator::getPluginNamespace() const noexcept {
    return kPluginNamespace;
}

const nvinfer1::PluginFieldCollection* KeypointPatchPoolPluginCreator::getFieldNames() noexcept {
    return field_names_.collection();
}

nvinfer1::IPluginV3* KeypointPatchPoolPluginCreator::createPlugin(
    const char* /*name*/, const nvinfer1::PluginFieldCollection* fc,
    nvinfer1::TensorRTPhase /*phase*/) noexcept {
    return guarded_value<nvinfer1::IPluginV3*>("KeypointPatchPool createPlugin", nullptr, [&] {
        return static_cast<nvinfer1::IPluginV3*>(
            new KeypointPatchPoolPlugin(KppAttributes::from_fields(fc)));
    });
}

}  // namespace plugin
}  // namespace reid
