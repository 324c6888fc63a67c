#include "kiln/backend/inference_backend.h"

namespace kiln::backend {

std::string_view DataTypeName(DataType t) {
  switch (t) {
    case DataType::kFloat32:
      return "FP32";
    case DataType::kFloat16:
      return "FP16";
    case DataType::kInt8:
      return "INT8";
    case DataType::kUInt8:
      return "UINT8";
    case DataType::kInt32:
      return "INT32";
    case DataType::kInt64:
      return "INT64";
    case DataType::kOther:
      break;
  }
  return "OTHER";
}

Status BackendOptions::Validate() const {
  if (model_path.empty()) return InvalidArgumentError("no model file given");
  if (intra_op_threads < 1 || intra_op_threads > 256 || inter_op_threads < 1 ||
      inter_op_threads > 256) {
    return InvalidArgumentError("thread counts must be in [1, 256]");
  }
  if (graph_optimization != "disable" && graph_optimization != "basic" &&
      graph_optimization != "extended" && graph_optimization != "all") {
    return InvalidArgumentError(
        "graph optimization must be disable, basic, extended or all, not '" + graph_optimization +
        "'");
  }
  if (performance_hint != "LATENCY" && performance_hint != "THROUGHPUT") {
    return InvalidArgumentError("performance hint must be LATENCY or THROUGHPUT, not '" +
                                performance_hint + "'");
  }
  if (streams < 0 || streams > 256) return InvalidArgumentError("streams must be in [0, 256]");
  if (inference_precision != "f32" && inference_precision != "bf16") {
    return InvalidArgumentError("inference precision must be f32 or bf16, not '" +
                                inference_precision + "'");
  }
  return Status::Ok();
}

namespace {
int64_t PerSample(const TensorInfo& t) {
  int64_t n = 1;
  for (size_t d = 1; d < t.shape.size(); ++d) n *= t.shape[d];
  return n;
}
}  // namespace

namespace {
std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i > 0 ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}
}  // namespace

Status InferenceBackend::ValidateInputShape(const std::vector<int64_t>& shape) const {
  const std::vector<int64_t>& want = inputs().at(0).shape;
  bool ok = shape.size() == want.size() && !shape.empty() && shape[0] > 0;
  for (size_t d = 0; ok && d < shape.size(); ++d) ok = want[d] < 0 || want[d] == shape[d];
  if (!ok) {
    return InvalidArgumentError("input shape " + ShapeString(shape) +
                                " does not match the model's " + ShapeString(want) + " for '" +
                                inputs().at(0).name + "'");
  }
  return Status::Ok();
}

Status InferenceBackend::CheckBatch(int64_t batch) const {
  if (batch <= 0) return InvalidArgumentError("batch must be positive");
  const Capabilities caps = capabilities();
  if (!caps.dynamic_batch && batch != caps.max_batch) {
    return InvalidArgumentError("model '" + inputs().at(0).name + "' has a fixed batch of " +
                                std::to_string(caps.max_batch) + ", got " + std::to_string(batch));
  }
  return Status::Ok();
}

Status CheckModelSignature(const std::string& model_path, const std::vector<TensorInfo>& inputs,
                           const std::vector<TensorInfo>& outputs) {
  if (inputs.size() != 1 || outputs.empty()) {
    return InvalidArgumentError(model_path +
                                ": expected exactly one input and at least one output, found " +
                                std::to_string(inputs.size()) + " inputs and " +
                                std::to_string(outputs.size()) + " outputs");
  }
  for (const TensorInfo* t : {&inputs[0], &outputs[0]}) {
    if (t->dtype != DataType::kFloat32) {
      return InvalidArgumentError(model_path + ": tensor '" + t->name + "' is " +
                                  std::string(DataTypeName(t->dtype)) +
                                  ", Kiln backends take FP32");
    }
    if (t->shape.empty()) {
      return InvalidArgumentError(model_path + ": tensor '" + t->name + "' is a scalar");
    }
    for (size_t d = 1; d < t->shape.size(); ++d) {
      if (t->shape[d] < 0) {
        return InvalidArgumentError(model_path + ": tensor '" + t->name +
                                    "' has a dynamic non-batch dimension");
      }
    }
  }
  return Status::Ok();
}

Capabilities SignatureCapabilities(const TensorInfo& input, const TensorInfo& output) {
  Capabilities c;
  c.dynamic_batch = input.shape[0] < 0 && output.shape[0] < 0;
  c.max_batch = c.dynamic_batch ? 0 : input.shape[0];
  return c;
}

int64_t InferenceBackend::InputElementsPerSample() const { return PerSample(inputs().at(0)); }
int64_t InferenceBackend::OutputElementsPerSample() const { return PerSample(outputs().at(0)); }

}  // namespace kiln::backend
