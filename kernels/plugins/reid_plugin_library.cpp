// Entry points of libreid_trt_plugins.so, the plugin library of both reid ops.
//
// TensorRT 10 / 11 load plugin libraries with IPluginRegistry::loadLibrary (Python:
// trt.get_plugin_registry().load_library(path); trtexec --dynamicPlugins=path;
// IBuilderConfig::setPluginsToSerialize for version-compatible engines). loadLibrary looks up
// two C symbols (TensorRT OSS samples/trtexec/README.md, "Plugin Shared Libraries"):
//   setLoggerFinder(ILoggerFinder*)               gives the library the logger of the caller;
//   getCreators(int32_t&) -> IPluginCreatorInterface* const*   the creators it registers.
// The creators are not registered when the library is merely dlopen-ed: loadLibrary fails if any
// of its creators is already registered, so static registration would break the documented
// path. Callers that load the library with plain dlopen / ctypes call reidRegisterTrtPlugins()
// instead (idempotent); use one way or the other, not both.
#include <NvInferRuntime.h>

#include <cstdint>

#include "keypoint_patch_pool/keypoint_patch_pool_plugin.h"
#include "moe_combine/moe_combine_plugin.h"
#include "reid_plugin_common.h"

#define REID_PLUGIN_API __attribute__((visibility("default")))

namespace {

nvinfer1::IPluginCreatorInterface* const* all_creators(int32_t& count) {
    static nvinfer1::IPluginCreatorInterface* const creators[] = {
        &reid::plugin::moe_combine_creator(), &reid::plugin::keypoint_patch_pool_creator()};
    count = static_cast<int32_t>(sizeof(creators) / sizeof(creators[0]));
    return creators;
}

int32_t register_creators() {
    nvinfer1::IPluginRegistry* registry = getPluginRegistry();
    if (registry == nullptr) {
        reid::plugin::log_error("reidRegisterTrtPlugins: TensorRT has no plugin registry");
        return -1;
    }
    int32_t count = 0;
    nvinfer1::IPluginCreatorInterface* const* creators = all_creators(count);
    for (int32_t i = 0; i < count; ++i) {
        auto* creator = static_cast<nvinfer1::IPluginCreatorV3One*>(creators[i]);
        if (registry->getCreator(creator->getPluginName(), creator->getPluginVersion(),
                                 creator->getPluginNamespace()) != nullptr) {
            continue;  // already registered (an earlier call, or loadLibrary)
        }
        if (!registry->registerCreator(*creators[i], creator->getPluginNamespace())) {
            reid::plugin::log_error(std::string("reidRegisterTrtPlugins: could not register ") +
                                    creator->getPluginName());
            return -1;
        }
    }
    return count;
}

}  // namespace

extern "C" {

REID_PLUGIN_API void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
    reid::plugin::g_logger_finder.store(finder);
}

REID_PLUGIN_API nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
    nbCreators = 0;  // what TensorRT reads should building the creators fail
    return reid::plugin::guarded_value<nvinfer1::IPluginCreatorInterface* const*>(
        "libreid_trt_plugins", "getCreators", nullptr, [&] { return all_creators(nbCreators); });
}

// Registers both creators with the process's global plugin registry (getPluginRegistry()), for
// callers that dlopen the library themselves. Returns the number of reid creators registered
// afterwards (2), or -1 when a creator could not be registered (the reason is logged).
REID_PLUGIN_API int32_t reidRegisterTrtPlugins() {
    return reid::plugin::guarded_value<int32_t>("libreid_trt_plugins", "reidRegisterTrtPlugins",
                                                -1, register_creators);
}

}  // extern "C"
