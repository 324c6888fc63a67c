#include "kiln/backend/factory/factory.h"

#include "kiln/backend/libtorch/libtorch_backend.h"
#include "kiln/backend/onnxruntime/onnxruntime_backend.h"
#ifdef KILN_HAVE_OPENVINO
#include "kiln/backend/openvino/openvino_backend.h"
#endif

namespace kiln::backend {

std::vector<std::string> BackendNames() {
#ifdef KILN_HAVE_OPENVINO
  return {"onnxruntime", "libtorch", "openvino"};
#else
  return {"onnxruntime", "libtorch"};
#endif
}

Result<std::unique_ptr<InferenceBackend>> CreateBackend(const std::string& name,
                                                        const BackendOptions& options) {
  if (name == "onnxruntime") return CreateOnnxRuntimeBackend(options);
  if (name == "libtorch") return CreateLibtorchBackend(options);
#ifdef KILN_HAVE_OPENVINO
  if (name == "openvino") return CreateOpenVinoBackend(options);
#else
  if (name == "openvino") {
    return UnimplementedError(
        "this kiln was built without OpenVINO (scripts/setup.sh provisions "
        "it into third_party/openvino; then configure again)");
  }
#endif
  std::string known;
  for (const auto& n : BackendNames()) known += (known.empty() ? "" : ", ") + n;
  return InvalidArgumentError("unknown backend '" + name + "' (known: " + known + ")");
}

}  // namespace kiln::backend
