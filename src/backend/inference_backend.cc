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

int64_t InferenceBackend::InputElementsPerSample() const { return PerSample(inputs().at(0)); }
int64_t InferenceBackend::OutputElementsPerSample() const { return PerSample(outputs().at(0)); }

}  // namespace kiln::backend
