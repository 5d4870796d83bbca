// Shared pieces of the reid TensorRT plugins (IPluginV3, TensorRT 10 / 11): logging through the
// logger TensorRT hands the plugin library (ILoggerFinder) or stderr, PluginField reading with
// type and length checks, the guard that turns exceptions into logged status codes, and the
// tensor-description helpers both plugins use. Host code only: no device code in plugin files.
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
#include <vector>

namespace reid {
namespace plugin {

// Plugins register in the default namespace: the ONNX parser looks nodes up with
// plugin_namespace "" unless the node carries a plugin_namespace attribute.
constexpr char kPluginNamespace[] = "";

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

// Runs `body` (returning int32_t) and turns any exception into a logged error and
// kStatusFailure, so no exception crosses the TensorRT boundary.
template <typename Body>
int32_t guarded(const char* where, Body&& body) noexcept {
    try {
        return body();
    } catch (const std::exception& e) {
        log_error(std::string(where) + ": " + e.what());
    } catch (...) {
        log_error(std::string(where) + ": unknown exception");
    }
    return kStatusFailure;
}

// Like guarded() for methods returning a value: `fallback` on exception.
template <typename T, typename Body>
T guarded_value(const char* where, T fallback, Body&& body) noexcept {
    try {
        return body();
    } catch (const std::exception& e) {
        log_error(std::string(where) + ": " + e.what());
    } catch (...) {
        log_error(std::string(where) + ": unknown exception");
    }
    return fallback;
}

// ------------------------------------------------------------------------------------------------
// PluginField reading
// ------------------------------------------------------------------------------------------------
// Reads the fields of a PluginFieldCollection by name, checking types and lengths. Errors throw
// std::invalid_argument naming the plugin, the field and the fix (createPlugin guards them).
class FieldReader {
public:
    FieldReader(const char* plugin, const nvinfer1::PluginFieldCollection* fields,
                const std::vector<std::string>& known)
        : plugin_(plugin) {
        if (fields == nullptr) return;
        if (fields->nbFields < 0 || (fields->nbFields > 0 && fields->fields == nullptr)) {
            fail("the PluginFieldCollection is malformed (negative count or null fields)");
        }
        for (int32_t i = 0; i < fields->nbFields; ++i) {
            const nvinfer1::PluginField& field = fields->fields[i];
            if (field.name == nullptr) fail("a field has no name");
            bool is_known = false;
            for (const std::string& name : known) is_known = is_known || name == field.name;
            if (!is_known) {
                std::string list;
                for (const std::string& name : known) list += (list.empty() ? "" : ", ") + name;
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
        std::vector<int64_t> values(static_cast<size_t>(field->length));
        for (size_t i = 0; i < values.size(); ++i) {
            switch (field->type) {
                case nvinfer1::PluginFieldType::kINT8:
                    values[i] = static_cast<const int8_t*>(field->data)[i];
                    break;
                case nvinfer1::PluginFieldType::kINT16:
                    values[i] = static_cast<const int16_t*>(field->data)[i];
                    break;
                case nvinfer1::PluginFieldType::kINT32:
                    values[i] = static_cast<const int32_t*>(field->data)[i];
                    break;
                case nvinfer1::PluginFieldType::kINT64:
                    values[i] = static_cast<const int64_t*>(field->data)[i];
                    break;
                default:
                    fail(std::string("field '") + name + "' must be an integer field (kINT32)");
            }
        }
        return values;
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
class FieldList {
public:
    void add(const char* name, const void* data, nvinfer1::PluginFieldType type, int32_t length) {
        fields_.emplace_back(name, data, type, length);
        collection_.nbFields = static_cast<int32_t>(fields_.size());
        collection_.fields = fields_.data();
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

// Index of the launcher for a float type in the {f32, f16, bf16} tables, -1 otherwise.
inline int kernel_float_index(nvinfer1::DataType type) noexcept {
    switch (type) {
        case nvinfer1::DataType::kFLOAT: return 0;
        case nvinfer1::DataType::kHALF: return 1;
        case nvinfer1::DataType::kBF16: return 2;
        default: return -1;
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
