// Shared by the two KServe fuzz targets: the model they decode requests for, and the checks made
// on ParseInferRequest's answer and on FormatInferResponse's.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "../../src/serve/http/kserve_codec.h"
#include "fuzz_check.h"

namespace kiln::fuzz {

// A batching image classifier: input "input" FP32 [-1, 3, h, w], output "logits" [-1, 10],
// max_batch_size 8, ten labels.
inline serve::ModelInfo MakeModelInfo(int64_t h, int64_t w) {
  serve::ModelInfo m;
  m.name = "tiny";
  m.version = 1;
  m.platform = serve::kOnnxPlatform;
  m.max_batch_size = 8;
  m.input_name = "input";
  m.output_name = "logits";
  m.input_dims = {3, h, w};
  m.output_dims = {10};
  m.input_elements = 3 * h * w;
  m.output_elements = 10;
  m.labels = {"airplane", "automobile", "bird", "cat", "deer",
              "dog", "frog", "horse", "ship", "truck"};
  return m;
}

// Decodes `body` (with the Inference-Header-Content-Length `header_length`), checks the result,
// and on success formats an answer from a fake result and checks that too.
inline void CheckInfer(const serve::ModelInfo& m, std::string_view body,
                       std::string_view header_length) {
  namespace rest = serve::rest;
  const rest::JsonLimits limits{1 << 20, 16};
  auto req = rest::ParseInferRequest(m, body, header_length, limits);
  if (!req.ok()) {
    const StatusCode c = req.status().code();
    KILN_FUZZ_CHECK(c == StatusCode::kInvalidArgument || c == StatusCode::kResourceExhausted,
                    req.status().ToString());
    CheckErrorResponse(rest::Error(req.status()));
    return;
  }
  KILN_FUZZ_CHECK(req->batch >= 1 && req->batch <= m.max_batch_size,
                  "batch " + std::to_string(req->batch));
  KILN_FUZZ_CHECK(req->input.size() == static_cast<size_t>(req->batch * m.input_elements),
                  std::to_string(req->input.size()) + " values for batch " +
                      std::to_string(req->batch));
  KILN_FUZZ_CHECK(req->classification >= 0, "negative classification");
  KILN_FUZZ_CHECK(req->id.is_null() || req->id.is_string(), "id");

  // A fake result: logits from the input (NaN and Inf included, as a real model could give).
  serve::InferResult r;
  r.batch = req->batch;
  r.executed_batch = req->batch;
  r.output.resize(static_cast<size_t>(req->batch * m.output_elements));
  for (size_t i = 0; i < r.output.size(); ++i) {
    r.output[i] = req->input[i % req->input.size()] * static_cast<float>(i % 7);
  }
  const rest::Response resp = rest::FormatInferResponse(m, *req, r);
  KILN_FUZZ_CHECK(resp.status == 200, std::to_string(resp.status));
  std::string_view json_part = resp.body;
  size_t header_len = resp.body.size();
  for (const auto& [k, v] : resp.headers) {
    if (k == "Inference-Header-Content-Length") header_len = std::stoul(v);
  }
  KILN_FUZZ_CHECK(header_len <= resp.body.size(), "header length past the body");
  json_part = json_part.substr(0, header_len);
  const nlohmann::json j = MustParseJson(json_part);
  KILN_FUZZ_CHECK(j.contains("outputs") && j["outputs"].is_array() && j["outputs"].size() == 1,
                  resp.body);
  const nlohmann::json& o = j["outputs"][0];
  KILN_FUZZ_CHECK(o["name"] == m.output_name, o.dump());
  KILN_FUZZ_CHECK(o["shape"].is_array() && o["shape"][0] == req->batch, o.dump());
  if (req->binary_output) {
    KILN_FUZZ_CHECK(resp.content_type == "application/octet-stream", resp.content_type);
    KILN_FUZZ_CHECK(o["parameters"]["binary_data_size"] == resp.body.size() - header_len,
                    o.dump());
  } else {
    KILN_FUZZ_CHECK(resp.content_type == "application/json", resp.content_type);
    KILN_FUZZ_CHECK(header_len == resp.body.size(), "binary tail without binary output");
    const size_t want = static_cast<size_t>(
        req->batch * (req->classification > 0 ? std::min<int64_t>(req->classification, 10) : 10));
    KILN_FUZZ_CHECK(o["data"].is_array() && o["data"].size() == want, o.dump());
  }
}

}  // namespace kiln::fuzz
