// CreateBackend: the one place that knows every engine (kiln_backend_factory links them all).
// Code that only runs an engine it was handed needs kiln/backend/inference_backend.h alone.
//
//   KILN_ASSIGN_OR_RETURN(auto engine, kiln::backend::CreateBackend("onnxruntime", opt));
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "kiln/backend/inference_backend.h"
#include "kiln/core/status.h"

namespace kiln::backend {

// Creates a backend by name ("onnxruntime", "libtorch", "openvino"). Unknown names are
// InvalidArgument listing the known ones; "openvino" in a build without OpenVINO (a serve-only
// build on a machine where scripts/setup.sh did not provision it) is Unimplemented.
Result<std::unique_ptr<InferenceBackend>> CreateBackend(const std::string& name,
                                                        const BackendOptions& options);

// The engines this build has.
std::vector<std::string> BackendNames();

}  // namespace kiln::backend
