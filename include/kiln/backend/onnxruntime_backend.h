// The ONNX Runtime backend (library provisioned by scripts/setup.sh, or the system's).
// Prefer CreateBackend("onnxruntime", ...) from inference_backend.h; this header is for code
// that needs this engine specifically. Thread-safe to call; see InferenceBackend for Run().
#pragma once

#include <memory>
#include <string>

#include "kiln/backend/inference_backend.h"
#include "kiln/core/status.h"

namespace kiln::backend {

// The runtime's version string (e.g. "1.30.0"), after creating an Ort::Env; Unavailable if
// the library cannot provide the API version Kiln was compiled against.
Result<std::string> OnnxRuntimeVersion();

// Loads `options.model_path` (an .onnx file) into an ONNX Runtime session.
Result<std::unique_ptr<InferenceBackend>> CreateOnnxRuntimeBackend(const BackendOptions& options);

}  // namespace kiln::backend
