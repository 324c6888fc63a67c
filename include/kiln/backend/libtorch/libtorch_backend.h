// The libtorch backend: runs a TorchScript archive (model.pt, e.g. from `kiln export`) with
// torch::jit. Options used: intra_op_threads (libtorch's thread count is process-wide: the
// last backend created sets it), channels_last, freeze (torch::jit::freeze +
// optimize_for_inference, which fold and pre-pack weights for oneDNN). Runs under
// c10::InferenceMode. Exceptions from torch never escape. See InferenceBackend for Run().
#pragma once

#include <memory>
#include <string>

#include "kiln/backend/inference_backend.h"

namespace kiln::backend {

Result<std::unique_ptr<InferenceBackend>> CreateLibtorchBackend(const BackendOptions& options);

// The libtorch this backend was built against, for reports ("libtorch 1.13.1").
std::string LibtorchVersion();

}  // namespace kiln::backend
