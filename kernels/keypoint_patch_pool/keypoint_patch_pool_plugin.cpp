// KeypointPatchPool TensorRT plugin: attribute validation, output type and shape, formats, shape
// checks and the reid_keypoint_patch_pool_desc its launch fills; PluginBase (reid_plugin_base.h)
// does the IPluginV3 plumbing. No device code here.
#include "keypoint_patch_pool_plugin.h"

#include <cmath>
#include <iterator>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "reid_kernels.h"
#include "reid_plugin_base.h"

namespace reid {
namespace plugin {
namespace {

using nvinfer1::DataType;
using nvinfer1::Dims;

constexpr char kPartsField[] = "parts";
constexpr char kOutHwField[] = "out_hw";
constexpr char kPatchField[] = "patch";
constexpr char kVisThreshField[] = "vis_thresh";
constexpr char kModeField[] = "mode";

// Tensor positions: inputs, then outputs (TensorRT's numbering in supportsFormatCombination).
constexpr int32_t kKeypointsInput = 0;
constexpr int32_t kCropHwInput = 1;
constexpr int32_t kFrameValidInput = 2;
constexpr int32_t kWeightsOutput = 0;

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

// ------------------------------------------------------------------------------------------------
// Attributes
// ------------------------------------------------------------------------------------------------
// The op's attributes, validated.
struct KppAttributes {
    std::vector<int32_t> parts;      // joint groups, flat with -1 separators (the ONNX encoding)
    int32_t out_hw[2] = {256, 128};  // (height, width), serialised as one field
    int32_t patch = 16;
    float vis_thresh = 0.1f;
    std::string mode = "paper";

    // Throws std::invalid_argument naming the bad attribute and the fix.
    static KppAttributes from_fields(const FieldReader& fields);
    int32_t num_parts() const noexcept;
    int32_t num_patches() const noexcept { return (out_hw[0] / patch) * (out_hw[1] / patch); }
    int32_t max_joint() const noexcept;  // largest joint index the parts use
    // Fills the attribute part of the C ABI description (parts as CSR, mode enum).
    void describe(reid_keypoint_patch_pool_desc& desc) const;
};

KppAttributes KppAttributes::from_fields(const FieldReader& fields) {
    KppAttributes a;
    a.parts.assign(std::begin(kKeyReIdParts), std::end(kKeyReIdParts));
    if (const auto parts = fields.ints(kPartsField)) {
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
    if (const auto out_hw = fields.ints(kOutHwField)) {
        if (out_hw->size() != 2) fields.fail("field 'out_hw' must be (height, width)");
        for (const int64_t side : *out_hw) {
            if (side < 1 || side > REID_KPP_MAX_SIDE) {
                fields.fail("field 'out_hw' sides must be in [1, " + std::to_string(REID_KPP_MAX_SIDE) +
                            "], got " + std::to_string(side));
            }
        }
        a.out_hw[0] = static_cast<int32_t>((*out_hw)[0]);
        a.out_hw[1] = static_cast<int32_t>((*out_hw)[1]);
    }
    if (const auto patch = fields.int_scalar(kPatchField)) {
        if (*patch < 1 || *patch > REID_KPP_MAX_SIDE) fields.fail("field 'patch' must be >= 1");
        a.patch = static_cast<int32_t>(*patch);
    }
    if (a.out_hw[0] % a.patch != 0 || a.out_hw[1] % a.patch != 0) {
        fields.fail("out_hw (" + std::to_string(a.out_hw[0]) + ", " + std::to_string(a.out_hw[1]) +
                    ") is not a multiple of patch " + std::to_string(a.patch) +
                    "; choose out_hw divisible by patch");
    }
    if (a.num_patches() > REID_KPP_MAX_PATCHES) {
        fields.fail(std::to_string(a.num_patches()) + " patches; at most " +
                    std::to_string(REID_KPP_MAX_PATCHES) + " (use a larger patch or a smaller out_hw)");
    }
    if (const auto vis_thresh = fields.float_scalar(kVisThreshField)) {
        if (!std::isfinite(*vis_thresh)) fields.fail("field 'vis_thresh' must be finite");
        a.vis_thresh = *vis_thresh;
    }
    if (const auto mode = fields.string(kModeField)) {
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
    desc.out_h = out_hw[0];
    desc.out_w = out_hw[1];
    desc.patch = patch;
    desc.vis_thresh = vis_thresh;
    for (const ModeName& m : kModes) {
        if (mode == m.name) desc.mode = m.mode;
    }
}

// ------------------------------------------------------------------------------------------------
// Plugin
// ------------------------------------------------------------------------------------------------
class KeypointPatchPoolPlugin final : public PluginBase<KeypointPatchPoolPlugin> {
public:
    static constexpr char kName[] = "KeypointPatchPool";
    static constexpr char kVersion[] = "1";
    static constexpr const char* kInputNames[] = {"keypoints", "crop_hw", "frame_valid"};
    static constexpr const char* kOutputNames[] = {"weights"};
    static constexpr FieldSpec kFields[] = {
        {kPartsField, nvinfer1::PluginFieldType::kINT32, 0},
        {kOutHwField, nvinfer1::PluginFieldType::kINT32, 2},
        {kPatchField, nvinfer1::PluginFieldType::kINT32, 1},
        {kVisThreshField, nvinfer1::PluginFieldType::kFLOAT32, 1},
        {kModeField, nvinfer1::PluginFieldType::kCHAR, 0}};

    explicit KeypointPatchPoolPlugin(KppAttributes attributes)
        : attributes_(std::move(attributes)) {}

    static std::unique_ptr<KeypointPatchPoolPlugin> from_fields(const FieldReader& fields) {
        return std::make_unique<KeypointPatchPoolPlugin>(KppAttributes::from_fields(fields));
    }

    void add_fields(FieldList& fields) const {
        fields.add(kPartsField, attributes_.parts.data(), nvinfer1::PluginFieldType::kINT32,
                   static_cast<int32_t>(attributes_.parts.size()));
        fields.add(kOutHwField, attributes_.out_hw, nvinfer1::PluginFieldType::kINT32, 2);
        fields.add(kPatchField, &attributes_.patch, nvinfer1::PluginFieldType::kINT32, 1);
        fields.add(kVisThreshField, &attributes_.vis_thresh, nvinfer1::PluginFieldType::kFLOAT32,
                   1);
        // with its NUL, as the ONNX parser passes strings
        fields.add(kModeField, attributes_.mode.c_str(), nvinfer1::PluginFieldType::kCHAR,
                   static_cast<int32_t>(attributes_.mode.size() + 1));
    }

    void output_types(DataType* outputs, const DataType* inputs) const {
        if (!is_kernel_float(inputs[kKeypointsInput]) || inputs[kCropHwInput] != DataType::kINT32 ||
            inputs[kFrameValidInput] != DataType::kBOOL) {
            throw std::invalid_argument("keypoints must be float32, float16 or bfloat16, crop_hw "
                                        "int32 and frame_valid bool");
        }
        outputs[kWeightsOutput] = inputs[kKeypointsInput];
    }

    // weights [B, P, K]: B from keypoints, P and K from the attributes.
    void output_shapes(const nvinfer1::DimsExprs* inputs, nvinfer1::DimsExprs* outputs,
                       nvinfer1::IExprBuilder& builder) const {
        if (inputs[kKeypointsInput].nbDims != 4) {
            throw std::invalid_argument("keypoints must be [B, T, J, 3]");
        }
        nvinfer1::DimsExprs& weights = outputs[kWeightsOutput];
        weights.nbDims = 3;
        weights.d[0] = inputs[kKeypointsInput].d[0];
        weights.d[1] = builder.constant(attributes_.num_parts());
        weights.d[2] = builder.constant(attributes_.num_patches());
    }

    bool supports_type(int32_t pos,
                       const nvinfer1::DynamicPluginTensorDesc* in_out) const noexcept {
        const DataType type = in_out[pos].desc.type;
        switch (pos) {
            case kKeypointsInput: return is_kernel_float(type);
            case kCropHwInput: return type == DataType::kINT32;
            case kFrameValidInput: return type == DataType::kBOOL;
            default: return type == in_out[kKeypointsInput].desc.type;  // weights
        }
    }

    // Ranks, B and T agreement, the 3 and 2 last axes, T >= 1, and J covering the parts' joints.
    void check_input_shapes(const Dims* inputs) const {
        const Dims& keypoints = inputs[kKeypointsInput];
        const Dims& crop_hw = inputs[kCropHwInput];
        const Dims& frame_valid = inputs[kFrameValidInput];
        const std::string shapes = inputs_text(inputs);
        if (keypoints.nbDims != 4 || crop_hw.nbDims != 3 || frame_valid.nbDims != 2) {
            throw std::invalid_argument("keypoints must be [B, T, J, 3], crop_hw [B, T, 2], "
                                        "frame_valid [B, T]" + shapes);
        }
        const auto known_and_differ = [](int64_t a, int64_t b) {
            return a >= 0 && b >= 0 && a != b;
        };
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

    int launch(const nvinfer1::PluginTensorDesc* input_desc,
               const nvinfer1::PluginTensorDesc* output_desc, const void* const* inputs,
               void* const* outputs, cudaStream_t stream) const {
        const Dims& keypoints = input_desc[kKeypointsInput].dims;
        const reid_keypoint_patch_pool_fn launcher =
            float_launcher(kLaunchers, input_desc[kKeypointsInput].type);
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
        copy_strides(input_desc[kCropHwInput].dims, desc.crop_hw_strides);
        copy_strides(input_desc[kFrameValidInput].dims, desc.frame_valid_strides);
        copy_strides(output_desc[kWeightsOutput].dims, desc.out_strides);
        return launcher(&desc, inputs[kKeypointsInput],
                        static_cast<const int32_t*>(inputs[kCropHwInput]),
                        static_cast<const uint8_t*>(inputs[kFrameValidInput]),
                        outputs[kWeightsOutput], stream);
    }

private:
    KppAttributes attributes_;
};

}  // namespace

nvinfer1::IPluginCreatorV3One& keypoint_patch_pool_creator() {
    return creator_of<KeypointPatchPoolPlugin>();
}

}  // namespace plugin
}  // namespace reid
