// Shared pieces of the reid TensorRT plugins (IPluginV3, TensorRT 10 / 11): logging through the
// logger TensorRT hands the plugin library (ILoggerFinder) or stderr, PluginField reading with
// type and length checks, the guard that turns exceptions into logged status codes, and the
// tensor helpers both plugins use. The IPluginV3 plumbing itself is reid_plugin_base.h. Host code
// only: no device code in plugin files.
#pragma once

#include <NvInferRuntime.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace reid {
namespace plugin {

// Plugins register in the default namespace: the ONNX parser looks nodes up with
// plugin_namespace "" unless the node carries a plugin_namespace attribute.
inline constexpr char kPluginNamespace[] = "";

// What IPluginV3 methods returning int32_t report (TensorRT treats any non-zero as failure).
constexpr int32_t kStatusSuccess = 0;
constexpr int32_t kStatusFailure = -1;

// ------------------------------------------------------------------------------------------------
// Logging
// ------------------------------------------------------------------------------------------------
// Set by the library entry point setLoggerFinder(); null until TensorRT calls it.
inline std::atomic<nvinfer1::ILoggerFinder*> g_logger_finder{nullptr};

inline void log(nvinfer1::ILogger::Severity severity, const std::string& message) noexcept {
    try {
        const std::string text = "[reid plugin] " + message;
        nvinfer1::ILoggerFinder* finder = g_logger_finder.load();
        nvinfer1::ILogger* logger = finder != nullptr ? finder->findLogger() : nullptr;
        if (logger != nullptr) {
            logger->log(severity, text.c_str());
        } else if (severity <= nvinfer1::ILogger::Severity::kWARNING) {
            std::fprintf(stderr, "%s\n", text.c_str());  // no TensorRT logger reachable
        }
    } catch (...) {
        // Logging must never throw out of a noexcept plugin method.
    }
}

inline void log_error(const std::string& message) noexcept {
    log(nvinfer1::ILogger::Severity::kERROR, message);
}

// Runs `body` and returns its value, or logs the exception it throws as "<scope> <method>:
// <what>" and returns `fallback`, so no exception crosses the TensorRT boundary.
template <typename T, typename Body>
T guarded_value(const char* scope, const char* method, T fallback, Body&& body) noexcept {
    try {
        return body();
    } catch (...) {
        try {
            std::string text = std::string(scope) + " " + method + ": ";
            try {
                throw;
            } catch (const std::exception& e) {
                text += e.what();
            } catch (...) {
                text += "unknown exception";
            }
            log_error(text);
        } catch (...) {
            // Out of memory while composing the message: the failure status still tells.
        }
    }
    return fallback;
}

// guarded_value for methods returning a TensorRT status: kStatusFailure on exception.
template <typename Body>
int32_t guarded(const char* scope, const char* method, Body&& body) noexcept {
    return guarded_value<int32_t>(scope, method, kStatusFailure, std::forward<Body>(body));
}

// ------------------------------------------------------------------------------------------------
// PluginField reading
// ------------------------------------------------------------------------------------------------
// Reads the fields of a PluginFieldCollection by name, checking types and lengths; `known` lists
// the fields there are (the creator's getFieldNames()). Errors throw std::invalid_argument naming
// the plugin, the field and the fix (createPlugin guards them).
class FieldReader {
public:
    FieldReader(const char* plugin, const nvinfer1::PluginFieldCollection* fields,
                const nvinfer1::PluginFieldCollection& known)
        : plugin_(plugin) {
        if (fields == nullptr) return;
        if (fields->nbFields < 0 || (fields->nbFields > 0 && fields->fields == nullptr)) {
            fail("the PluginFieldCollection is malformed (negative count or null fields)");
        }
        for (int32_t i = 0; i < fields->nbFields; ++i) {
            const nvinfer1::PluginField& field = fields->fields[i];
            if (field.name == nullptr) fail("a field has no name");
            bool is_known = false;
            std::string list;
            for (int32_t k = 0; k < known.nbFields; ++k) {
                is_known = is_known || std::strcmp(known.fields[k].name, field.name) == 0;
                list += std::string(k ? ", " : "") + known.fields[k].name;
            }
            if (!is_known) {
                fail(std::string("unknown field '") + field.name + "'; the fields are " + list);
            }
            if (field.length < 0 || (field.length > 0 && field.data == nullptr)) {
                fail(std::string("field '") + field.name + "' has no data");
            }
            fields_.push_back(&field);
        }
    }

    // Integer field as int64 values (any TensorRT integer field type), or nullopt when absent.
    std::optional<std::vector<int64_t>> ints(const char* name) const {
        const nvinfer1::PluginField* field = find(name);
        if (field == nullptr) return std::nullopt;
        switch (field->type) {
            case nvinfer1::PluginFieldType::kINT8: return widened<int8_t>(*field);
            case nvinfer1::PluginFieldType::kINT16: return widened<int16_t>(*field);
            case nvinfer1::PluginFieldType::kINT32: return widened<int32_t>(*field);
            case nvinfer1::PluginFieldType::kINT64: return widened<int64_t>(*field);
            default: fail(std::string("field '") + name + "' must be an integer field (kINT32)");
        }
    }

    // Exactly one integer, or nullopt when absent.
    std::optional<int64_t> int_scalar(const char* name) const {
        const std::optional<std::vector<int64_t>> values = ints(name);
        if (!values) return std::nullopt;
        if (values->size() != 1) {
            fail(std::string("field '") + name + "' must hold one value, got " +
                 std::to_string(values->size()));
        }
        return values->front();
    }

    std::optional<float> float_scalar(const char* name) const {
        const nvinfer1::PluginField* field = find(name);
        if (field == nullptr) return std::nullopt;
        if (field->length != 1) {
            fail(std::string("field '") + name + "' must hold one value, got " +
                 std::to_string(field->length));
        }
        if (field->type == nvinfer1::PluginFieldType::kFLOAT32) {
            return *static_cast<const float*>(field->data);
        }
        if (field->type == nvinfer1::PluginFieldType::kFLOAT64) {
            return static_cast<float>(*static_cast<const double*>(field->data));
        }
        fail(std::string("field '") + name + "' must be a float field (kFLOAT32)");
    }

    // kCHAR field as a string; the length may or may not count a terminating NUL (the ONNX
    // parser counts it).
    std::optional<std::string> string(const char* name) const {
        const nvinfer1::PluginField* field = find(name);
        if (field == nullptr) return std::nullopt;
        if (field->type != nvinfer1::PluginFieldType::kCHAR) {
            fail(std::string("field '") + name + "' must be a string field (kCHAR)");
        }
        const char* text = static_cast<const char*>(field->data);
        return std::string(text, strnlen(text, static_cast<size_t>(field->length)));
    }

    [[noreturn]] void fail(const std::string& message) const {
        throw std::invalid_argument(std::string(plugin_) + ": " + message);
    }

private:
    template <typename T>
    static std::vector<int64_t> widened(const nvinfer1::PluginField& field) {
        const T* values = static_cast<const T*>(field.data);
        return std::vector<int64_t>(values, values + field.length);
    }

    const nvinfer1::PluginField* find(const char* name) const {
        const nvinfer1::PluginField* found = nullptr;
        for (const nvinfer1::PluginField* field : fields_) {
            if (std::strcmp(field->name, name) != 0) continue;
            if (found != nullptr) fail(std::string("field '") + name + "' is given twice");
            found = field;
        }
        return found;
    }

    const char* plugin_;
    std::vector<const nvinfer1::PluginField*> fields_;
};

// A PluginFieldCollection over fields owned by the caller (field names, serialised values).
// Not copyable: its collection points into its own storage.
class FieldList {
public:
    FieldList() = default;
    FieldList(const FieldList&) = delete;
    FieldList& operator=(const FieldList&) = delete;

    void add(const char* name, const void* data, nvinfer1::PluginFieldType type, int32_t length) {
        fields_.emplace_back(name, data, type, length);
        collection_.nbFields = static_cast<int32_t>(fields_.size());
        collection_.fields = fields_.data();
    }
    void clear() noexcept {
        fields_.clear();
        collection_ = nvinfer1::PluginFieldCollection{};
    }
    const nvinfer1::PluginFieldCollection* collection() const noexcept { return &collection_; }

private:
    std::vector<nvinfer1::PluginField> fields_;
    nvinfer1::PluginFieldCollection collection_{};
};

// ------------------------------------------------------------------------------------------------
// Tensors
// ------------------------------------------------------------------------------------------------
inline bool is_kernel_float(nvinfer1::DataType type) noexcept {
    return type == nvinfer1::DataType::kFLOAT || type == nvinfer1::DataType::kHALF ||
           type == nvinfer1::DataType::kBF16;
}

// The launcher for a tensor type in a {float32, float16, bfloat16} table of launchers.
// Throws std::invalid_argument for any other type.
template <typename Launcher>
Launcher float_launcher(const Launcher (&launchers)[3], nvinfer1::DataType type) {
    switch (type) {
        case nvinfer1::DataType::kFLOAT: return launchers[0];
        case nvinfer1::DataType::kHALF: return launchers[1];
        case nvinfer1::DataType::kBF16: return launchers[2];
        default:
            throw std::invalid_argument("unsupported tensor type; the kernels take float32, "
                                        "float16 or bfloat16");
    }
}

// Row-major element strides of a linear (kLINEAR) tensor.
inline std::vector<int64_t> linear_strides(const nvinfer1::Dims& dims) {
    std::vector<int64_t> strides(static_cast<size_t>(dims.nbDims));
    int64_t stride = 1;
    for (int32_t axis = dims.nbDims - 1; axis >= 0; --axis) {
        strides[static_cast<size_t>(axis)] = stride;
        stride *= dims.d[axis] > 0 ? dims.d[axis] : 1;
    }
    return strides;
}

inline std::string dims_string(const nvinfer1::Dims& dims) {
    std::string text = "[";
    for (int32_t axis = 0; axis < dims.nbDims; ++axis) {
        text += (axis ? ", " : "") + std::to_string(dims.d[axis]);
    }
    return text + "]";
}

}  // namespace plugin
}  // namespace reid
