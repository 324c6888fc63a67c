#include <onnxruntime_cxx_api.h>

#include "kiln/backend/onnxruntime/onnxruntime_backend.h"

namespace kiln::backend {

Result<std::string> OnnxRuntimeVersion() {
  const OrtApiBase* base = OrtGetApiBase();
  if (base == nullptr || base->GetApi(ORT_API_VERSION) == nullptr) {
    return UnavailableError("libonnxruntime does not provide ORT API version " +
                            std::to_string(ORT_API_VERSION) + " (library too old?)");
  }
  try {
    Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "kiln");
    return std::string(base->GetVersionString());
  } catch (const Ort::Exception& e) {
    return UnavailableError(std::string("cannot create an ONNX Runtime environment: ") + e.what());
  }
}

}  // namespace kiln::backend
