#include "kiln/backend/factory/factory.h"

#include "kiln/backend/libtorch/libtorch_backend.h"
#include "kiln/backend/onnxruntime/onnxruntime_backend.h"

namespace kiln::backend {

std::vector<std::string> BackendNames() { return {"onnxruntime", "libtorch"}; }

Result<std::unique_ptr<InferenceBackend>> CreateBackend(const std::string& name,
                                                        const BackendOptions& options) {
  if (name == "onnxruntime") return CreateOnnxRuntimeBackend(options);
  if (name == "libtorch") return CreateLibtorchBackend(options);
  std::string known;
  for (const auto& n : BackendNames()) known += (known.empty() ? "" : ", ") + n;
  return InvalidArgumentError("unknown backend '" + name + "' (known: " + known + ")");
}

}  // namespace kiln::backend
