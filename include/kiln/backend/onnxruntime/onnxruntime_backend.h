// The ONNX Runtime backend (library provisioned by scripts/setup.sh, or the system's).
// Prefer CreateBackend("onnxruntime", ...) from factory/factory.h; this header is for code
// that needs this engine specifically. Thread-safe to call; see InferenceBackend for Run().
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kiln/backend/inference_backend.h"
#include "kiln/core/status.h"

namespace kiln::backend {

// The runtime's version string (e.g. "1.30.0"), after creating an Ort::Env; Unavailable if
// the library cannot provide the API version Kiln was compiled against.
Result<std::string> OnnxRuntimeVersion();

// Loads `options.model_path` (an .onnx file) into an ONNX Runtime session.
Result<std::unique_ptr<InferenceBackend>> CreateOnnxRuntimeBackend(const BackendOptions& options);

// A session over a serialized ONNX model that fetches every graph output, FP32 ones handed to a
// callback: calibration reads intermediate tensors this way (after adding them as outputs).
// Spinning is off (see BackendOptions::allow_spinning). Not thread-safe.
class OnnxTapSession {
 public:
  using Sink = std::function<void(size_t output, const float* data, size_t count)>;

  static Result<std::unique_ptr<OnnxTapSession>> Create(const std::string& model_bytes,
                                                        int threads);
  ~OnnxTapSession();

  const std::vector<std::string>& output_names() const;
  // Runs the model's single input on `input` of `shape` (batch first).
  Status Run(const float* input, const std::vector<int64_t>& shape, const Sink& sink);

 private:
  struct Impl;
  explicit OnnxTapSession(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kiln::backend
