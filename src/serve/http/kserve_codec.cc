#include "kserve_codec.h"

#include <algorithm>
#include <cstring>

namespace kiln::serve::rest {

namespace {

// Appends every number of a (possibly nested) JSON array to `out`, up to `limit` values.
Status Flatten(const json& j, std::vector<float>* out, size_t limit) {
  if (j.is_array()) {
    for (const auto& x : j) KILN_RETURN_IF_ERROR(Flatten(x, out, limit));
    return Status::Ok();
  }
  if (j.is_number()) {
    if (out->size() >= limit) return InvalidArgumentError("tensor 'data' holds too many values");
    out->push_back(j.get<float>());
    return Status::Ok();
  }
  return InvalidArgumentError("tensor 'data' must hold numbers, found " +
                              std::string(j.type_name()));
}

Result<size_t> ParseSize(std::string_view text) {
  size_t n = 0;
  if (text.empty() || text.size() > 19) return InvalidArgumentError("x");
  for (char c : text) {
    if (c < '0' || c > '9') return InvalidArgumentError("x");
    n = n * 10 + static_cast<size_t>(c - '0');
  }
  return n;
}

Status ParseInput(const ModelInfo& m, const json& j, std::string_view binary, InferRequest* r) {
  if (!j.contains("inputs") || !j["inputs"].is_array()) {
    return InvalidArgumentError("the request has no 'inputs' array");
  }
  const json& inputs = j["inputs"];
  if (inputs.size() != 1) return CheckInferInput(m, inputs.size(), "", "", {}).status();
  const json& in = inputs[0];
  if (!in.is_object() || !in.contains("name") || !in["name"].is_string()) {
    return InvalidArgumentError("input must be an object with a 'name'");
  }
  const std::string name = in["name"].get<std::string>();
  if (!in.contains("datatype") || !in["datatype"].is_string()) {
    return InvalidArgumentError("input '" + name + "' has no 'datatype'");
  }
  if (!in.contains("shape") || !in["shape"].is_array()) {
    return InvalidArgumentError("input '" + name + "' has no 'shape' array");
  }
  std::vector<int64_t> shape;
  for (const auto& d : in["shape"]) {
    if (!d.is_number_integer()) return InvalidArgumentError("shape must hold integers");
    shape.push_back(d.get<int64_t>());
  }
  KILN_ASSIGN_OR_RETURN(r->batch, CheckInferInput(m, inputs.size(), name,
                                                  in["datatype"].get<std::string>(), shape));
  const size_t elements = static_cast<size_t>(r->batch * m.input_elements);
  const json* params = in.contains("parameters") ? &in["parameters"] : nullptr;
  if (params != nullptr && params->is_object() && params->contains("binary_data_size")) {
    const json& size = (*params)["binary_data_size"];
    if (!size.is_number_unsigned()) {
      return InvalidArgumentError("binary_data_size must be a non-negative integer");
    }
    const size_t bytes = size.get<size_t>();
    KILN_RETURN_IF_ERROR(
        CheckInferDataSize(m, shape, r->batch, bytes, "bytes", "parameters.binary_data_size"));
    if (binary.size() != bytes) {
      return InvalidArgumentError("the binary part of the body has " +
                                  std::to_string(binary.size()) + " bytes, binary_data_size says " +
                                  std::to_string(bytes));
    }
    r->input.resize(elements);
    std::memcpy(r->input.data(), binary.data(), bytes);
    return Status::Ok();
  }
  if (!in.contains("data")) {
    return InvalidArgumentError("input '" + m.input_name +
                                "' has neither 'data' nor parameters.binary_data_size");
  }
  r->input.reserve(elements);
  KILN_RETURN_IF_ERROR(Flatten(in["data"], &r->input, elements + 1));
  return CheckInferDataSize(m, shape, r->batch, r->input.size(), "values", "'data'");
}

Status ParseOutputs(const ModelInfo& m, const json& j, InferRequest* r) {
  if (j.contains("parameters") && j["parameters"].is_object()) {
    const auto& p = j["parameters"];
    if (p.contains("binary_data_output") && p["binary_data_output"].is_boolean())
      r->binary_output = p["binary_data_output"].get<bool>();
  }
  if (!j.contains("outputs")) return Status::Ok();
  if (!j["outputs"].is_array()) return InvalidArgumentError("'outputs' must be an array");
  for (const auto& o : j["outputs"]) {
    if (!o.is_object() || !o.contains("name") || !o["name"].is_string())
      return InvalidArgumentError("each requested output needs a 'name'");
    KILN_RETURN_IF_ERROR(CheckInferOutput(m, o["name"].get<std::string>()));
    if (!o.contains("parameters") || !o["parameters"].is_object()) continue;
    const auto& p = o["parameters"];
    if (p.contains("binary_data") && p["binary_data"].is_boolean())
      r->binary_output = p["binary_data"].get<bool>();
    if (p.contains("classification")) {
      if (!p["classification"].is_number_integer() || p["classification"].get<int64_t>() < 1) {
        return InvalidArgumentError("classification must be a positive integer");
      }
      r->classification = p["classification"].get<int64_t>();
    }
  }
  return Status::Ok();
}

}  // namespace

Result<InferRequest> ParseInferRequest(const ModelInfo& m, std::string_view body,
                                       std::string_view header_length, const JsonLimits& limits) {
  InferRequest r;
  json j;
  std::string_view binary;
  if (!header_length.empty()) {
    auto n = ParseSize(header_length);
    if (!n.ok()) {
      return InvalidArgumentError("Inference-Header-Content-Length '" +
                                  std::string(header_length) + "' is not a number");
    }
    if (*n > body.size()) {
      return InvalidArgumentError("Inference-Header-Content-Length " + std::to_string(*n) +
                                  " is larger than the body (" + std::to_string(body.size()) +
                                  " bytes)");
    }
    if (*n == 0) {
      // The whole body is one raw tensor: single-input model, batch 1.
      const size_t want = static_cast<size_t>(m.input_elements) * sizeof(float);
      if (body.size() != want) {
        return InvalidArgumentError("raw binary input of " + std::to_string(body.size()) +
                                    " bytes, expected " + std::to_string(want) + " (FP32 " +
                                    ShapeString(m.input_dims) + ", batch 1)");
      }
      r.input.resize(static_cast<size_t>(m.input_elements));
      std::memcpy(r.input.data(), body.data(), want);
      return r;
    }
    KILN_ASSIGN_OR_RETURN(j, ParseJson(body.substr(0, *n), limits));
    binary = body.substr(*n);
  } else {
    KILN_ASSIGN_OR_RETURN(j, ParseJson(body, limits));
  }
  if (!j.is_object()) return InvalidArgumentError("the inference request must be a JSON object");
  if (j.contains("id")) {
    if (!j["id"].is_string()) return InvalidArgumentError("'id' must be a string");
    r.id = j["id"];
  }
  KILN_RETURN_IF_ERROR(ParseInput(m, j, binary, &r));
  KILN_RETURN_IF_ERROR(ParseOutputs(m, j, &r));
  return r;
}

Response FormatInferResponse(const ModelInfo& m, const InferRequest& req, const InferResult& r) {
  // The version that answered (a routing policy may have chosen another than `m`).
  json out = {{"model_name", m.name},
              {"model_version", std::to_string(r.version > 0 ? r.version : m.version)}};
  if (!req.id.is_null()) out["id"] = req.id;
  json o = {{"name", m.output_name}};
  std::string blob;
  const int64_t classes = m.output_elements;
  if (req.classification > 0 && classes > 0) {
    const int64_t k = std::min(req.classification, classes);
    const int64_t rows = static_cast<int64_t>(r.output.size()) / classes;
    const std::vector<std::string> strings = ClassificationStrings(m, r.output, k);
    o["datatype"] = "BYTES";
    o["shape"] = m.max_batch_size > 0 ? json{rows, k} : json{k};
    if (req.binary_output) {
      for (const auto& str : strings) {
        const auto len = static_cast<uint32_t>(str.size());
        blob.append(reinterpret_cast<const char*>(&len), sizeof len);
        blob += str;
      }
      o["parameters"] = {{"binary_data_size", blob.size()}};
    } else {
      o["data"] = strings;
    }
  } else {
    std::vector<int64_t> shape;
    if (m.max_batch_size > 0) shape.push_back(req.batch);
    shape.insert(shape.end(), m.output_dims.begin(), m.output_dims.end());
    o["datatype"] = "FP32";
    o["shape"] = shape;
    if (req.binary_output) {
      blob.assign(reinterpret_cast<const char*>(r.output.data()), r.output.size() * sizeof(float));
      o["parameters"] = {{"binary_data_size", blob.size()}};
    } else {
      o["data"] = r.output;
    }
  }
  out["outputs"] = json::array({o});
  Response resp = Json(out);
  if (!blob.empty()) {
    resp.headers.emplace_back("Inference-Header-Content-Length", std::to_string(resp.body.size()));
    resp.content_type = "application/octet-stream";
    resp.body += blob;
  }
  return resp;
}

}  // namespace kiln::serve::rest
