// Runs the reid TensorRT plugins' own code on the host, without TensorRT's library: creators and
// field validation, serialisation round trips, formats, output types and shapes (through a
// constant-folding IExprBuilder), the shape checks, the reid_*_desc every enqueue builds (the
// kernel launchers are replaced by recorders), and the plugin library's entry points (with an
// in-memory IPluginRegistry). Compiled against the TensorRT 10 or 11 headers by
// tests/ops/test_trt_plugins_host.py, which runs one named check per invocation:
//   harness <check>   -> prints "ok" and exits 0, or prints what failed and exits 1.
#include <NvInferRuntime.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "keypoint_patch_pool/keypoint_patch_pool_plugin.h"
#include "moe_combine/moe_combine_plugin.h"
#include "reid_kernels.h"

using namespace nvinfer1;
using reid::plugin::keypoint_patch_pool_creator;
using reid::plugin::moe_combine_creator;

// ------------------------------------------------------------------------------------------------
// Kernel launchers: record the description instead of launching.
// ------------------------------------------------------------------------------------------------
static reid_moe_combine_desc g_moe_desc;
static reid_keypoint_patch_pool_desc g_kpp_desc;
static std::string g_launched;
static int g_launch_result = 0;

template <typename Desc>
static int record(Desc& slot, const Desc* desc, const char* launcher) {
    slot = *desc;
    g_launched = launcher;
    return g_launch_result;
}

// One launcher per dtype of an op, with the op's parameters after the description.
#define RECORDING_LAUNCHER(name, slot, ...)                                                  \
    extern "C" int name(const decltype(slot)* desc, __VA_ARGS__) {                           \
        return record(slot, desc, #name);                                                    \
    }
#define RECORDING_LAUNCHERS(op, slot, ...)                                                   \
    RECORDING_LAUNCHER(reid_##op##_f32, slot, __VA_ARGS__)                                   \
    RECORDING_LAUNCHER(reid_##op##_f16, slot, __VA_ARGS__)                                   \
    RECORDING_LAUNCHER(reid_##op##_bf16, slot, __VA_ARGS__)
RECORDING_LAUNCHERS(moe_combine, g_moe_desc, const void*, const void*, void*, void*)
RECORDING_LAUNCHERS(keypoint_patch_pool, g_kpp_desc, const void*, const int32_t*, const uint8_t*,
                    void*, void*)

extern "C" const char* reid_kernels_error_string(int code) {
    return code == REID_ERROR_UNSUPPORTED_SHAPE ? "shape outside the limits" : "recorded error";
}

// ------------------------------------------------------------------------------------------------
// TensorRT internals the plugins touch: logger finder, expression builder, plugin registry.
// ------------------------------------------------------------------------------------------------
class CapturingLogger : public ILogger {
public:
    void log(Severity severity, const char* message) noexcept override {
        if (severity <= Severity::kERROR) errors += std::string(message) + "\n";
    }
    std::string errors;
};

class FakeLoggerFinder : public ILoggerFinder {
public:
    ILogger* findLogger() override { return &logger; }
    CapturingLogger logger;
};

static FakeLoggerFinder g_finder;

class ConstantDim : public IDimensionExpr {
public:
    explicit ConstantDim(int64_t value) : impl_(value) { mImpl = &impl_; }
    ~ConstantDim() noexcept override = default;

private:
    struct Impl : apiv::VDimensionExpr {
        explicit Impl(int64_t v) : value(v) {}
        bool isConstant() const override { return true; }
        int64_t getConstantValue() const override { return value; }
        bool isSizeTensor() const override { return false; }
        int64_t value;
    };
    Impl impl_;
};

class FoldingBuilder : public IExprBuilder {
public:
    FoldingBuilder() { mImpl = &impl_; }
    ~FoldingBuilder() noexcept override = default;
    const IDimensionExpr* dim(int64_t value) { return impl_.make(value); }

private:
    struct Impl : apiv::VExprBuilder {
        const IDimensionExpr* make(int64_t value) {
            dims.push_back(std::make_unique<ConstantDim>(value));
            return dims.back().get();
        }
        const IDimensionExpr* constant(int64_t value) override { return make(value); }
        const IDimensionExpr* operation(DimensionOperation op, const IDimensionExpr& first,
                                        const IDimensionExpr& second) override {
            const int64_t a = first.getConstantValue(), b = second.getConstantValue();
            switch (op) {
                case DimensionOperation::kSUM: return make(a + b);
                case DimensionOperation::kPROD: return make(a * b);
                case DimensionOperation::kMAX: return make(a > b ? a : b);
                case DimensionOperation::kMIN: return make(a < b ? a : b);
                case DimensionOperation::kSUB: return make(a - b);
                case DimensionOperation::kEQUAL: return make(a == b);
                case DimensionOperation::kLESS: return make(a < b);
                case DimensionOperation::kFLOOR_DIV: return make(a / b);
                case DimensionOperation::kCEIL_DIV: return make((a + b - 1) / b);
            }
            return nullptr;
        }
        const IDimensionExpr* declareSizeTensor(int32_t, const IDimensionExpr&,
                                                const IDimensionExpr&) override {
            return nullptr;
        }
        std::deque<std::unique_ptr<ConstantDim>> dims;
    };
    Impl impl_;
};

class FakeRegistry : public IPluginRegistry {
public:
    std::vector<IPluginCreatorInterface*> creators;
    int registrations = 0;

    bool registerCreator(IPluginCreatorInterface& creator, const AsciiChar* const) noexcept override {
        for (IPluginCreatorInterface* c : creators) {
            if (c == &creator) return false;
        }
        creators.push_back(&creator);
        ++registrations;
        return true;
    }
    IPluginCreatorInterface* getCreator(const AsciiChar* const name, const AsciiChar* const version,
                                        const AsciiChar* const) noexcept override {
        for (IPluginCreatorInterface* c : creators) {
            auto* v3 = static_cast<IPluginCreatorV3One*>(c);
            if (!std::strcmp(v3->getPluginName(), name) && !std::strcmp(v3->getPluginVersion(), version)) {
                return c;
            }
        }
        return nullptr;
    }
    IPluginCreatorInterface* const* getAllCreators(int32_t* const n) const noexcept override {
        *n = static_cast<int32_t>(creators.size());
        return creators.data();
    }
    IPluginCreatorInterface* const* getAllCreatorsRecursive(int32_t* const n) noexcept override {
        return getAllCreators(n);
    }
    void setErrorRecorder(IErrorRecorder* const) noexcept override {}
    IErrorRecorder* getErrorRecorder() const noexcept override { return nullptr; }
    bool isParentSearchEnabled() const override { return false; }
    void setParentSearchEnabled(bool const) override {}
    PluginLibraryHandle loadLibrary(const AsciiChar*) noexcept override { return nullptr; }
    void deregisterLibrary(PluginLibraryHandle) noexcept override {}
    bool deregisterCreator(const IPluginCreatorInterface&) noexcept override { return false; }
    IPluginResource* acquirePluginResource(const AsciiChar*, IPluginResource*) noexcept override {
        return nullptr;
    }
    int32_t releasePluginResource(const AsciiChar*) noexcept override { return 0; }
#if NV_TENSORRT_MAJOR < 11
    bool registerCreator(IPluginCreator&, const AsciiChar* const) noexcept override { return false; }
    IPluginCreator* const* getPluginCreatorList(int32_t* const n) const noexcept override {
        *n = 0;
        return nullptr;
    }
    IPluginCreator* getPluginCreator(const AsciiChar* const, const AsciiChar* const,
                                     const AsciiChar* const) noexcept override {
        return nullptr;
    }
    bool deregisterCreator(const IPluginCreator&) noexcept override { return false; }
#endif
};

static FakeRegistry g_registry;
extern "C" IPluginRegistry* getPluginRegistry() noexcept { return &g_registry; }

extern "C" void setLoggerFinder(ILoggerFinder* finder);
extern "C" IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
extern "C" int32_t reidRegisterTrtPlugins();

// ------------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------------
static int g_failures = 0;

#define EXPECT(condition)                                                                  \
    do {                                                                                   \
        if (!(condition)) {                                                                \
            std::printf("FAILED line %d: %s\n", __LINE__, #condition);                    \
            ++g_failures;                                                                  \
        }                                                                                  \
    } while (0)

static std::string take_errors() {
    std::string errors = g_finder.logger.errors;
    g_finder.logger.errors.clear();
    return errors;
}

static bool contains(const std::string& text, const char* part) {
    return text.find(part) != std::string::npos;
}

static Dims dims(std::initializer_list<int64_t> values) {
    Dims d{};
    d.nbDims = static_cast<int32_t>(values.size());
    int32_t i = 0;
    for (int64_t v : values) d.d[i++] = v;
    return d;
}

static PluginTensorDesc tensor(Dims d, DataType type) {
    PluginTensorDesc desc{};
    desc.dims = d;
    desc.type = type;
    desc.format = TensorFormat::kLINEAR;
    return desc;
}

static DynamicPluginTensorDesc dynamic(Dims d, DataType type) {
    DynamicPluginTensorDesc desc{};
    desc.desc = tensor(d, type);
    desc.min = desc.max = desc.opt = d;
    return desc;
}

static std::vector<int64_t> values(const int64_t* data, int count) {
    return std::vector<int64_t>(data, data + count);
}

static std::vector<int64_t> values(const int32_t* data, int count) {
    return std::vector<int64_t>(data, data + count);
}

static IPluginV3OneBuild* build(IPluginV3* plugin) {
    return static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
}

static IPluginV3OneRuntime* runtime(IPluginV3* plugin) {
    return static_cast<IPluginV3OneRuntime*>(
        plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
}

static std::unique_ptr<IPluginV3> create(IPluginCreatorV3One& creator,
                                         std::vector<PluginField> fields,
                                         TensorRTPhase phase = TensorRTPhase::kBUILD) {
    PluginFieldCollection fc{static_cast<int32_t>(fields.size()), fields.data()};
    return std::unique_ptr<IPluginV3>(creator.createPlugin("node", &fc, phase));
}

// Output dims of `plugin` for constant input dims.
static std::vector<int64_t> output_shape(IPluginV3* plugin, std::vector<Dims> inputs) {
    FoldingBuilder builder;
    std::vector<DimsExprs> exprs(inputs.size());
    for (size_t i = 0; i < inputs.size(); ++i) {
        exprs[i].nbDims = inputs[i].nbDims;
        for (int32_t a = 0; a < inputs[i].nbDims; ++a) exprs[i].d[a] = builder.dim(inputs[i].d[a]);
    }
    DimsExprs out{};
    if (build(plugin)->getOutputShapes(exprs.data(), static_cast<int32_t>(exprs.size()), nullptr, 0,
                                       &out, 1, builder) != 0) {
        return {};
    }
    std::vector<int64_t> shape;
    for (int32_t a = 0; a < out.nbDims; ++a) shape.push_back(out.d[a]->getConstantValue());
    return shape;
}

// ------------------------------------------------------------------------------------------------
// MoECombine
// ------------------------------------------------------------------------------------------------
static std::unique_ptr<IPluginV3> moe_plugin(int32_t softmax) {
    return create(moe_combine_creator(),
                  {PluginField("softmax", &softmax, PluginFieldType::kINT32, 1)});
}

static void moe_creator_and_fields() {
    IPluginCreatorV3One& creator = moe_combine_creator();
    EXPECT(!std::strcmp(creator.getPluginName(), "MoECombine"));
    EXPECT(!std::strcmp(creator.getPluginVersion(), "1"));
    EXPECT(!std::strcmp(creator.getPluginNamespace(), ""));
    const PluginFieldCollection* names = creator.getFieldNames();
    EXPECT(names->nbFields == 1 && !std::strcmp(names->fields[0].name, "softmax") &&
           names->fields[0].type == PluginFieldType::kINT32);

    for (int32_t softmax : {0, 1}) {
        auto plugin = create(creator, {PluginField("softmax", &softmax, PluginFieldType::kINT32, 1)});
        EXPECT(plugin != nullptr);
        const PluginFieldCollection* saved = runtime(plugin.get())->getFieldsToSerialize();
        EXPECT(saved->nbFields == 1 && *static_cast<const int32_t*>(saved->fields[0].data) == softmax);
        // deserialisation: the saved fields recreate the same plugin
        std::vector<PluginField> copy(saved->fields, saved->fields + saved->nbFields);
        auto again = create(creator, copy, TensorRTPhase::kRUNTIME);
        EXPECT(again != nullptr);
        const PluginFieldCollection* again_saved =
            runtime(again.get())->getFieldsToSerialize();
        EXPECT(*static_cast<const int32_t*>(again_saved->fields[0].data) == softmax);
    }
    auto defaulted = create(creator, {});
    EXPECT(defaulted != nullptr);
    EXPECT(*static_cast<const int32_t*>(
               runtime(defaulted.get())->getFieldsToSerialize()->fields[0].data) == 1);
    take_errors();
}

static void moe_bad_fields() {
    IPluginCreatorV3One& creator = moe_combine_creator();
    const int32_t two = 2;
    const float one_f = 1.0f;
    const int32_t pair[] = {1, 1};
    struct Case {
        std::vector<PluginField> fields;
        const char* message;
    } cases[] = {
        {{PluginField("softmax", &two, PluginFieldType::kINT32, 1)}, "must be 1"},
        {{PluginField("softmax", &one_f, PluginFieldType::kFLOAT32, 1)}, "integer field"},
        {{PluginField("softmax", pair, PluginFieldType::kINT32, 2)}, "one value"},
        {{PluginField("soft_max", &two, PluginFieldType::kINT32, 1)}, "unknown field 'soft_max'"},
        {{PluginField("softmax", nullptr, PluginFieldType::kINT32, 1)}, "no data"},
    };
    for (Case& c : cases) {
        auto plugin = create(creator, c.fields);
        const std::string errors = take_errors();
        EXPECT(plugin == nullptr);
        EXPECT(contains(errors, "MoECombine") && contains(errors, c.message));
        if (!contains(errors, c.message)) std::printf("  logged: %s", errors.c_str());
    }
}

static void moe_formats_and_types() {
    auto plugin = moe_plugin(1);
    IPluginV3OneBuild* b = build(plugin.get());
    EXPECT(plugin->getCapabilityInterface(PluginCapabilityType::kCORE) != nullptr);
    for (DataType type : {DataType::kFLOAT, DataType::kHALF, DataType::kBF16}) {
        DynamicPluginTensorDesc io[] = {dynamic(dims({2, 8}), type), dynamic(dims({8, 3}), type),
                                        dynamic(dims({2, 3}), type)};
        for (int pos = 0; pos < 3; ++pos) EXPECT(b->supportsFormatCombination(pos, io, 2, 1));
        io[1].desc.type = type == DataType::kFLOAT ? DataType::kHALF : DataType::kFLOAT;
        EXPECT(!b->supportsFormatCombination(1, io, 2, 1));
        DataType in[] = {type, type}, out[1];
        EXPECT(b->getOutputDataTypes(out, 1, in, 2) == 0 && out[0] == type);
    }
    DynamicPluginTensorDesc ints[] = {dynamic(dims({2, 8}), DataType::kINT32)};
    EXPECT(!b->supportsFormatCombination(0, ints, 2, 1));
    DynamicPluginTensorDesc chw[] = {dynamic(dims({2, 8}), DataType::kHALF)};
    chw[0].desc.format = TensorFormat::kHWC8;
    EXPECT(!b->supportsFormatCombination(0, chw, 2, 1));
    DataType mixed[] = {DataType::kHALF, DataType::kFLOAT}, out[1];
    EXPECT(b->getOutputDataTypes(out, 1, mixed, 2) != 0);
    EXPECT(contains(take_errors(), "same type"));
}

static void moe_output_shapes() {
    const auto plugin = moe_plugin(1);
    IPluginV3* moe = plugin.get();
    using Shape = std::vector<int64_t>;
    EXPECT(output_shape(moe, {dims({2, 3, 16, 8}), dims({2, 1, 8, 3})}) == Shape({2, 3, 16, 3}));
    EXPECT(output_shape(moe, {dims({2, 3, 16, 8}), dims({8, 3})}) == Shape({2, 3, 16, 3}));
    EXPECT(output_shape(moe, {dims({1, 3, 16, 8}), dims({4, 1, 8, 3})}) == Shape({4, 3, 16, 3}));
    EXPECT(output_shape(moe, {dims({0, 257, 512, 8}), dims({1, 257, 8, 3})}) ==
           Shape({0, 257, 512, 3}));
    EXPECT(output_shape(moe, {dims({16, 8}), dims({5, 8, 2})}) == Shape({5, 16, 2}));
    EXPECT(output_shape(moe, {dims({8}), dims({8, 3})}).empty());
    take_errors();
}

static void moe_shape_checks() {
    auto plugin = moe_plugin(1);
    IPluginV3OneBuild* b = build(plugin.get());
    IPluginV3OneRuntime* r = runtime(plugin.get());
    const auto configure = [&](Dims experts, Dims gate) {
        DynamicPluginTensorDesc in[] = {dynamic(experts, DataType::kHALF), dynamic(gate, DataType::kHALF)};
        DynamicPluginTensorDesc out[] = {dynamic(dims({}), DataType::kHALF)};
        return b->configurePlugin(in, 2, out, 1);
    };
    EXPECT(configure(dims({-1, 257, 512, 8}), dims({-1, 257, 8, 3})) == 0);
    EXPECT(configure(dims({-1, 257, 512, 8}), dims({-1, 1, 8, 3})) == 0);
    take_errors();
    struct Case {
        Dims experts, gate;
        const char* message;
    } cases[] = {
        {dims({4, 16, 8}), dims({4, 7, 3}), "disagree on E"},
        {dims({4, 16, 17}), dims({4, 17, 3}), "E must be 1..16"},
        {dims({4, 16, 8}), dims({4, 8, 9}), "J must be at most 8"},
        {dims({4, 16, 8}), dims({3, 8, 3}), "do not broadcast"},
        {dims({8}), dims({8, 3}), "must be [..., C, E]"},
    };
    for (const Case& c : cases) {
        EXPECT(configure(c.experts, c.gate) != 0);
        PluginTensorDesc in[] = {tensor(c.experts, DataType::kFLOAT), tensor(c.gate, DataType::kFLOAT)};
        PluginTensorDesc out[] = {tensor(dims({}), DataType::kFLOAT)};
        EXPECT(r->onShapeChange(in, 2, out, 1) != 0);
        const std::string errors = take_errors();
        EXPECT(contains(errors, c.message));
        if (!contains(errors, c.message)) std::printf("  logged: %s", errors.c_str());
    }
}

static void moe_enqueue_description() {
    auto plugin = moe_plugin(0);
    IPluginV3OneRuntime* r = runtime(plugin.get());
    float dummy[4];
    const void* inputs[] = {dummy, dummy};
    void* outputs[] = {dummy};
    {
        PluginTensorDesc in[] = {tensor(dims({2, 3, 16, 8}), DataType::kHALF),
                                 tensor(dims({2, 1, 8, 3}), DataType::kHALF)};
        PluginTensorDesc out[] = {tensor(dims({2, 3, 16, 3}), DataType::kHALF)};
        EXPECT(r->enqueue(in, out, inputs, outputs, nullptr, nullptr) == 0);
        const reid_moe_combine_desc& d = g_moe_desc;
        EXPECT(g_launched == "reid_moe_combine_f16");
        EXPECT(d.num_lead_dims == 2 && d.apply_softmax == 0);
        EXPECT(values(d.lead_shape, 2) == std::vector<int64_t>({2, 3}));
        EXPECT(values(d.experts_lead_strides, 2) == std::vector<int64_t>({384, 128}));
        EXPECT(values(d.gate_lead_strides, 2) == std::vector<int64_t>({24, 0}));
        EXPECT(values(d.out_lead_strides, 2) == std::vector<int64_t>({144, 48}));
        EXPECT(d.channels == 16 && d.num_experts == 8 && d.num_outputs == 3);
        EXPECT(d.experts_stride_c == 8 && d.experts_stride_e == 1);
        EXPECT(d.gate_stride_e == 3 && d.gate_stride_j == 1);
        EXPECT(d.out_stride_c == 3 && d.out_stride_j == 1);
    }
    {   // missing gate axes and a size-1 experts axis both broadcast with stride 0
        PluginTensorDesc in[] = {tensor(dims({1, 5, 4}), DataType::kBF16),
                                 tensor(dims({6, 4, 2}), DataType::kBF16)};
        PluginTensorDesc out[] = {tensor(dims({6, 5, 2}), DataType::kBF16)};
        EXPECT(r->enqueue(in, out, inputs, outputs, nullptr, nullptr) == 0);
        EXPECT(g_launched == "reid_moe_combine_bf16");
        EXPECT(g_moe_desc.num_lead_dims == 1 && g_moe_desc.lead_shape[0] == 6);
        EXPECT(g_moe_desc.experts_lead_strides[0] == 0 && g_moe_desc.gate_lead_strides[0] == 8);
        PluginTensorDesc in2[] = {tensor(dims({7, 5, 4}), DataType::kFLOAT),
                                  tensor(dims({4, 2}), DataType::kFLOAT)};
        PluginTensorDesc out2[] = {tensor(dims({7, 5, 2}), DataType::kFLOAT)};
        EXPECT(r->enqueue(in2, out2, inputs, outputs, nullptr, nullptr) == 0);
        EXPECT(g_launched == "reid_moe_combine_f32");
        EXPECT(g_moe_desc.experts_lead_strides[0] == 20 && g_moe_desc.gate_lead_strides[0] == 0);
    }
    {   // a launcher error comes back non-zero, logged with its message
        g_launch_result = REID_ERROR_UNSUPPORTED_SHAPE;
        PluginTensorDesc in[] = {tensor(dims({2, 16, 8}), DataType::kFLOAT),
                                 tensor(dims({2, 8, 3}), DataType::kFLOAT)};
        PluginTensorDesc out[] = {tensor(dims({2, 16, 3}), DataType::kFLOAT)};
        EXPECT(r->enqueue(in, out, inputs, outputs, nullptr, nullptr) == REID_ERROR_UNSUPPORTED_SHAPE);
        EXPECT(contains(take_errors(), "shape outside the limits"));
        g_launch_result = 0;
    }
    std::unique_ptr<IPluginV3> clone(r->attachToContext(nullptr));
    EXPECT(clone != nullptr && clone.get() != plugin.get());
    const PluginFieldCollection* clone_fields =
        runtime(clone.get())->getFieldsToSerialize();
    EXPECT(*static_cast<const int32_t*>(clone_fields->fields[0].data) == 0);
    EXPECT(clone_fields != r->getFieldsToSerialize());  // the clone owns its fields
}

// ------------------------------------------------------------------------------------------------
// KeypointPatchPool
// ------------------------------------------------------------------------------------------------
static std::unique_ptr<IPluginV3> kpp_plugin(std::vector<PluginField> fields = {}) {
    return create(keypoint_patch_pool_creator(), std::move(fields));
}

static void kpp_defaults_and_round_trip() {
    IPluginCreatorV3One& creator = keypoint_patch_pool_creator();
    EXPECT(!std::strcmp(creator.getPluginName(), "KeypointPatchPool"));
    EXPECT(!std::strcmp(creator.getPluginVersion(), "1"));
    const PluginFieldCollection* names = creator.getFieldNames();
    std::vector<std::string> listed;
    for (int i = 0; i < names->nbFields; ++i) listed.push_back(names->fields[i].name);
    EXPECT(listed == std::vector<std::string>({"parts", "out_hw", "patch", "vis_thresh", "mode"}));

    auto plugin = kpp_plugin();
    EXPECT(plugin != nullptr);
    const PluginFieldCollection* saved = runtime(plugin.get())->getFieldsToSerialize();
    EXPECT(saved->nbFields == 5);
    const std::vector<int64_t> keyreid = {0, 1, 2, 3, 4, -1, 5, 6, 11, 12, -1, 7, 9, -1, 8, 10,
                                          -1, 13, 15, -1, 14, 16};
    EXPECT(values(static_cast<const int32_t*>(saved->fields[0].data), saved->fields[0].length) == keyreid);
    EXPECT(values(static_cast<const int32_t*>(saved->fields[1].data), 2) == std::vector<int64_t>({256, 128}));
    EXPECT(*static_cast<const int32_t*>(saved->fields[2].data) == 16);
    EXPECT(*static_cast<const float*>(saved->fields[3].data) == 0.1f);
    EXPECT(!std::strcmp(static_cast<const char*>(saved->fields[4].data), "paper"));

    // custom attributes, the mode string as the ONNX parser passes it (length counts the NUL)
    const int32_t parts[] = {3, 3, 5, -1, 0};
    const int32_t out_hw[] = {12, 20};
    const int32_t patch = 4;
    const float vis = 0.25f;
    const char mode[] = "max";
    auto custom = kpp_plugin({PluginField("parts", parts, PluginFieldType::kINT32, 5),
                              PluginField("out_hw", out_hw, PluginFieldType::kINT32, 2),
                              PluginField("patch", &patch, PluginFieldType::kINT32, 1),
                              PluginField("vis_thresh", &vis, PluginFieldType::kFLOAT32, 1),
                              PluginField("mode", mode, PluginFieldType::kCHAR, 4)});
    EXPECT(custom != nullptr);
    const PluginFieldCollection* fields = runtime(custom.get())->getFieldsToSerialize();
    std::vector<PluginField> copy(fields->fields, fields->fields + fields->nbFields);
    auto again = create(creator, copy, TensorRTPhase::kRUNTIME);
    EXPECT(again != nullptr);
    EXPECT(output_shape(again.get(), {dims({3, 2, 6, 3}), dims({3, 2, 2}), dims({3, 2})}) ==
           std::vector<int64_t>({3, 2, 15}));
    // the same mode without its NUL (length = characters)
    auto no_nul = kpp_plugin({PluginField("mode", mode, PluginFieldType::kCHAR, 3)});
    EXPECT(no_nul != nullptr);
    take_errors();
}

static void kpp_bad_fields() {
    const int32_t trailing[] = {0, 1, -1};
    const int32_t doubled[] = {0, -1, -1, 1};
    const int32_t big_joint[] = {0, 40};
    std::vector<int32_t> many_parts;
    for (int p = 0; p < 17; ++p) {
        if (p) many_parts.push_back(-1);
        many_parts.push_back(p % 17);
    }
    const int32_t odd_hw[] = {250, 128};
    const int32_t three_hw[] = {256, 128, 1};
    const int32_t zero = 0;
    const int32_t tiny_patch = 1;
    const float nan = std::numeric_limits<float>::quiet_NaN();
    const char median[] = "median";
    const float half_patch = 16.0f;
    struct Case {
        std::vector<PluginField> fields;
        const char* message;
    } cases[] = {
        {{PluginField("parts", trailing, PluginFieldType::kINT32, 3)}, "empty part"},
        {{PluginField("parts", doubled, PluginFieldType::kINT32, 4)}, "empty part"},
        {{PluginField("parts", big_joint, PluginFieldType::kINT32, 2)}, "joint index 40"},
        {{PluginField("parts", many_parts.data(), PluginFieldType::kINT32,
                      static_cast<int32_t>(many_parts.size()))}, "at most 16 parts"},
        {{PluginField("out_hw", odd_hw, PluginFieldType::kINT32, 2)}, "not a multiple of patch"},
        {{PluginField("out_hw", three_hw, PluginFieldType::kINT32, 3)}, "(height, width)"},
        {{PluginField("patch", &zero, PluginFieldType::kINT32, 1)}, "'patch' must be >= 1"},
        {{PluginField("patch", &tiny_patch, PluginFieldType::kINT32, 1)}, "at most 2048"},
        {{PluginField("patch", &half_patch, PluginFieldType::kFLOAT32, 1)}, "integer field"},
        {{PluginField("vis_thresh", &nan, PluginFieldType::kFLOAT32, 1)}, "finite"},
        {{PluginField("mode", median, PluginFieldType::kCHAR, 7)}, "choose paper, max or constant"},
        {{PluginField("modes", median, PluginFieldType::kCHAR, 7)}, "unknown field 'modes'"},
    };
    for (Case& c : cases) {
        auto plugin = kpp_plugin(c.fields);
        const std::string errors = take_errors();
        EXPECT(plugin == nullptr);
        EXPECT(contains(errors, "KeypointPatchPool") && contains(errors, c.message));
        if (!contains(errors, c.message)) std::printf("  logged: %s", errors.c_str());
    }
}

static void kpp_formats_shapes_and_enqueue() {
    auto plugin = kpp_plugin();
    IPluginV3OneBuild* b = build(plugin.get());
    IPluginV3OneRuntime* r = runtime(plugin.get());
    DynamicPluginTensorDesc io[] = {
        dynamic(dims({2, 4, 17, 3}), DataType::kHALF), dynamic(dims({2, 4, 2}), DataType::kINT32),
        dynamic(dims({2, 4}), DataType::kBOOL), dynamic(dims({2, 6, 128}), DataType::kHALF)};
    for (int pos = 0; pos < 4; ++pos) EXPECT(b->supportsFormatCombination(pos, io, 3, 1));
    io[1].desc.type = DataType::kFLOAT;
    EXPECT(!b->supportsFormatCombination(1, io, 3, 1));
    io[2].desc.type = DataType::kINT32;
    EXPECT(!b->supportsFormatCombination(2, io, 3, 1));
    io[3].desc.type = DataType::kFLOAT;
    EXPECT(!b->supportsFormatCombination(3, io, 3, 1));
    DataType in_types[] = {DataType::kBF16, DataType::kINT32, DataType::kBOOL}, out_type[1];
    EXPECT(b->getOutputDataTypes(out_type, 1, in_types, 3) == 0 && out_type[0] == DataType::kBF16);
    in_types[2] = DataType::kFLOAT;
    EXPECT(b->getOutputDataTypes(out_type, 1, in_types, 3) != 0);
    EXPECT(output_shape(plugin.get(), {dims({5, 4, 17, 3}), dims({5, 4, 2}), dims({5, 4})}) ==
           std::vector<int64_t>({5, 6, 128}));
    take_errors();

    const auto check = [&](Dims keypoints, Dims crop_hw, Dims valid) {
        PluginTensorDesc in[] = {tensor(keypoints, DataType::kFLOAT), tensor(crop_hw, DataType::kINT32),
                                 tensor(valid, DataType::kBOOL)};
        PluginTensorDesc out[] = {tensor(dims({}), DataType::kFLOAT)};
        return r->onShapeChange(in, 3, out, 1);
    };
    EXPECT(check(dims({2, 4, 17, 3}), dims({2, 4, 2}), dims({2, 4})) == 0);
    EXPECT(check(dims({2, 4, 10, 3}), dims({2, 4, 2}), dims({2, 4})) != 0);
    EXPECT(contains(take_errors(), "the parts use joint 16"));
    EXPECT(check(dims({2, 4, 17, 3}), dims({2, 5, 2}), dims({2, 4})) != 0);
    EXPECT(contains(take_errors(), "B and T differ"));
    EXPECT(check(dims({2, 4, 17, 2}), dims({2, 4, 2}), dims({2, 4})) != 0);
    EXPECT(contains(take_errors(), "last axis must be 3"));
    EXPECT(check(dims({2, 0, 17, 3}), dims({2, 0, 2}), dims({2, 0})) != 0);
    EXPECT(contains(take_errors(), "at least one frame"));

    float dummy[4];
    const void* inputs[] = {dummy, dummy, dummy};
    void* outputs[] = {dummy};
    PluginTensorDesc in[] = {tensor(dims({2, 4, 17, 3}), DataType::kFLOAT),
                             tensor(dims({2, 4, 2}), DataType::kINT32), tensor(dims({2, 4}), DataType::kBOOL)};
    PluginTensorDesc out[] = {tensor(dims({2, 6, 128}), DataType::kFLOAT)};
    EXPECT(r->enqueue(in, out, inputs, outputs, nullptr, nullptr) == 0);
    const reid_keypoint_patch_pool_desc& d = g_kpp_desc;
    EXPECT(g_launched == "reid_keypoint_patch_pool_f32");
    EXPECT(d.batch == 2 && d.frames == 4 && d.num_joints == 17 && d.num_parts == 6);
    EXPECT(values(d.part_offsets, 7) == std::vector<int64_t>({0, 5, 9, 11, 13, 15, 17}));
    EXPECT(values(d.part_joints, 17) ==
           std::vector<int64_t>({0, 1, 2, 3, 4, 5, 6, 11, 12, 7, 9, 8, 10, 13, 15, 14, 16}));
    EXPECT(d.out_h == 256 && d.out_w == 128 && d.patch == 16 && d.vis_thresh == 0.1f);
    EXPECT(d.mode == REID_KPP_MODE_PAPER);
    EXPECT(values(d.keypoints_strides, 4) == std::vector<int64_t>({204, 51, 3, 1}));
    EXPECT(values(d.crop_hw_strides, 3) == std::vector<int64_t>({8, 2, 1}));
    EXPECT(values(d.frame_valid_strides, 2) == std::vector<int64_t>({4, 1}));
    EXPECT(values(d.out_strides, 3) == std::vector<int64_t>({768, 128, 1}));

    const char constant[] = "constant";
    auto constant_plugin = kpp_plugin({PluginField("mode", constant, PluginFieldType::kCHAR, 9)});
    in[0].type = out[0].type = DataType::kHALF;
    EXPECT(runtime(constant_plugin.get())->enqueue(in, out, inputs, outputs, nullptr, nullptr) == 0);
    EXPECT(g_launched == "reid_keypoint_patch_pool_f16" && g_kpp_desc.mode == REID_KPP_MODE_CONSTANT);
}

// ------------------------------------------------------------------------------------------------
// The plumbing both plugins share (reid_plugin_base.h)
// ------------------------------------------------------------------------------------------------
static std::vector<int64_t> serialised_ints(IPluginV3* plugin, int field) {
    const PluginField& f = runtime(plugin)->getFieldsToSerialize()->fields[field];
    return values(static_cast<const int32_t*>(f.data), f.length);
}

static void shared_plumbing() {
    // capabilities are the three V3One interfaces, each naming the plugin's op
    auto moe = moe_plugin(1);
    auto kpp = kpp_plugin();
    for (IPluginV3* plugin : {moe.get(), kpp.get()}) {
        IPluginCapability* core = plugin->getCapabilityInterface(PluginCapabilityType::kCORE);
        EXPECT(!std::strcmp(core->getInterfaceInfo().kind, "PLUGIN_V3ONE_CORE"));
        EXPECT(!std::strcmp(build(plugin)->getInterfaceInfo().kind, "PLUGIN_V3ONE_BUILD"));
        EXPECT(!std::strcmp(runtime(plugin)->getInterfaceInfo().kind, "PLUGIN_V3ONE_RUNTIME"));
        EXPECT(build(plugin)->getNbOutputs() == 1);
    }
    auto* core =
        static_cast<IPluginV3OneCore*>(kpp->getCapabilityInterface(PluginCapabilityType::kCORE));
    EXPECT(!std::strcmp(core->getPluginName(), "KeypointPatchPool") &&
           !std::strcmp(core->getPluginVersion(), "1") &&
           !std::strcmp(core->getPluginNamespace(), ""));

    // wrong tensor counts are refused with the op's tensors named
    DataType types[] = {DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT}, out_type[1];
    EXPECT(build(moe.get())->getOutputDataTypes(out_type, 1, types, 3) != 0);
    EXPECT(contains(take_errors(), "MoECombine getOutputDataTypes: takes 2 inputs (experts, "
                                   "gate_logits) and gives 1 output (out), got 3 and 1"));
    DynamicPluginTensorDesc two[] = {dynamic(dims({2, 4, 17, 3}), DataType::kFLOAT),
                                     dynamic(dims({2, 4, 2}), DataType::kINT32)};
    EXPECT(build(kpp.get())->configurePlugin(two, 2, two, 1) != 0);
    EXPECT(contains(take_errors(), "takes 3 inputs (keypoints, crop_hw, frame_valid) and gives 1 "
                                   "output (weights), got 2 and 1"));

    // a tensor type without a launcher fails in enqueue, launching nothing
    g_launched.clear();
    float dummy[4];
    const void* inputs[] = {dummy, dummy};
    void* outputs[] = {dummy};
    PluginTensorDesc in[] = {tensor(dims({2, 8}), DataType::kINT32),
                             tensor(dims({8, 3}), DataType::kINT32)};
    PluginTensorDesc out[] = {tensor(dims({2, 3}), DataType::kINT32)};
    EXPECT(runtime(moe.get())->enqueue(in, out, inputs, outputs, nullptr, nullptr) != 0);
    EXPECT(g_launched.empty());
    EXPECT(contains(take_errors(), "MoECombine enqueue: unsupported tensor type"));

    // a clone serialises its own copy of the fields: still valid once the original is gone, and
    // asking twice gives the same fields, not more
    const int32_t parts[] = {3, 3, 5, -1, 0};
    const int32_t out_hw[] = {12, 20};
    const int32_t patch = 4;
    auto original = kpp_plugin({PluginField("parts", parts, PluginFieldType::kINT32, 5),
                                PluginField("out_hw", out_hw, PluginFieldType::kINT32, 2),
                                PluginField("patch", &patch, PluginFieldType::kINT32, 1)});
    std::unique_ptr<IPluginV3> clone(original->clone());
    const PluginFieldCollection* original_fields = runtime(original.get())->getFieldsToSerialize();
    EXPECT(clone != nullptr && runtime(clone.get())->getFieldsToSerialize() != original_fields);
    original.reset();
    EXPECT(serialised_ints(clone.get(), 0) == std::vector<int64_t>({3, 3, 5, -1, 0}));
    EXPECT(serialised_ints(clone.get(), 1) == std::vector<int64_t>({12, 20}));
    EXPECT(serialised_ints(clone.get(), 2) == std::vector<int64_t>({4}));
    EXPECT(runtime(clone.get())->getFieldsToSerialize()->nbFields == 5);
    std::unique_ptr<IPluginV3> attached(runtime(clone.get())->attachToContext(nullptr));
    clone.reset();
    EXPECT(serialised_ints(attached.get(), 0) == std::vector<int64_t>({3, 3, 5, -1, 0}));
    EXPECT(output_shape(attached.get(), {dims({3, 2, 6, 3}), dims({3, 2, 2}), dims({3, 2})}) ==
           std::vector<int64_t>({3, 2, 15}));
    EXPECT(take_errors().empty());
}

// ------------------------------------------------------------------------------------------------
// The plugin library
// ------------------------------------------------------------------------------------------------
static void library_entry_points() {
    int32_t count = 0;
    IPluginCreatorInterface* const* creators = getCreators(count);
    EXPECT(count == 2);
    std::vector<std::string> names;
    for (int32_t i = 0; i < count; ++i) {
        EXPECT(!std::strcmp(creators[i]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE"));
        names.push_back(static_cast<IPluginCreatorV3One*>(creators[i])->getPluginName());
    }
    EXPECT(names == std::vector<std::string>({"MoECombine", "KeypointPatchPool"}));
    EXPECT(reidRegisterTrtPlugins() == 2 && g_registry.registrations == 2);
    EXPECT(reidRegisterTrtPlugins() == 2 && g_registry.registrations == 2);  // idempotent
    EXPECT(g_registry.getCreator("MoECombine", "1", "") == creators[0]);
    EXPECT(g_registry.getCreator("KeypointPatchPool", "1", "") == creators[1]);
}

int main(int argc, char** argv) {
    setLoggerFinder(&g_finder);
    const std::map<std::string, std::function<void()>> checks = {
        {"moe_creator_and_fields", moe_creator_and_fields},
        {"moe_bad_fields", moe_bad_fields},
        {"moe_formats_and_types", moe_formats_and_types},
        {"moe_output_shapes", moe_output_shapes},
        {"moe_shape_checks", moe_shape_checks},
        {"moe_enqueue_description", moe_enqueue_description},
        {"kpp_defaults_and_round_trip", kpp_defaults_and_round_trip},
        {"kpp_bad_fields", kpp_bad_fields},
        {"kpp_formats_shapes_and_enqueue", kpp_formats_shapes_and_enqueue},
        {"shared_plumbing", shared_plumbing},
        {"library_entry_points", library_entry_points},
    };
    if (argc != 2 || !checks.count(argv[1])) {
        std::printf("usage: %s <check>; checks:", argv[0]);
        for (const auto& entry : checks) std::printf(" %s", entry.first.c_str());
        std::printf("\n");
        return 2;
    }
    checks.at(argv[1])();
    if (g_failures == 0) std::printf("ok\n");
    return g_failures == 0 ? 0 : 1;
}
