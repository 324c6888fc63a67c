// Facts about the ONNX Runtime library Kiln links (the InferenceBackend built on it comes with
// model inference). Creating an Ort::Env proves the library loads and its C API version
// matches the headers. Thread-safe.
#pragma once

#include <string>

#include "kiln/core/status.h"

namespace kiln::backend {

// The runtime's version string (e.g. "1.30.0"), after creating an Ort::Env; Unavailable if
// the library cannot provide the API version Kiln was compiled against.
Result<std::string> OnnxRuntimeVersion();

}  // namespace kiln::backend
