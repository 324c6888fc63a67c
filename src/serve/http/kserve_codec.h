// KServe v2 REST inference bodies: the JSON request (with Triton's binary tensor extension:
// `Inference-Header-Content-Length` and `binary_data_size`, and its classification extension)
// decoded into an engine request, and an engine result encoded into the JSON (+ binary) answer.
// Pure functions of bytes: no sockets, no engine (the fuzz target calls them directly).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/core/status.h"
#include "kiln/serve/engine/engine.h"
#include "message.h"

namespace kiln::serve::rest {

struct InferRequest {
  json id;  // null when the request had none
  std::vector<float> input;
  int64_t batch = 1;
  bool binary_output = false;  // the output as a binary tensor
  int64_t classification = 0;  // k > 0: the top-k "<value>:<index>[:<label>]" strings
};

// `header_length` is the Inference-Header-Content-Length header ("" when absent; "0" means the
// whole body is one raw FP32 tensor of batch 1). InvalidArgument with the client's mistake.
Result<InferRequest> ParseInferRequest(const ModelInfo& model, std::string_view body,
                                       std::string_view header_length, const JsonLimits& limits);

// The answer to `request` from `result` (binary parts appended after the JSON, with the
// Inference-Header-Content-Length header, when asked for).
Response FormatInferResponse(const ModelInfo& model, const InferRequest& request,
                             const InferResult& result);

}  // namespace kiln::serve::rest
