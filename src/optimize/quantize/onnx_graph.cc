#include "kiln/optimize/quantize/onnx_graph.h"

#include <onnx/checker.h>
#include <onnx/shape_inference/implementation.h>

#include <fstream>
#include <sstream>

#include "kiln/core/file.h"

namespace kiln::optimize {

namespace fs = std::filesystem;

Result<onnx::ModelProto> LoadOnnx(const fs::path& file) {
  if (!fs::exists(file)) return NotFoundError(file.string() + ": no such ONNX file");
  std::ifstream in(file, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  if (!in && !in.eof()) return InvalidArgumentError(file.string() + ": cannot read");
  onnx::ModelProto model;
  if (!model.ParseFromString(buffer.str()) || !model.has_graph()) {
    return InvalidArgumentError(file.string() + ": not an ONNX model (protobuf parse failed)");
  }
  return model;
}

Status SaveOnnx(const onnx::ModelProto& model, const fs::path& file) {
  std::string bytes;
  if (!model.SerializeToString(&bytes)) return InternalError("cannot serialize the ONNX model");
  return WriteFileAtomic(file, bytes);
}

Status CheckOnnx(const onnx::ModelProto& model) {
  try {
    onnx::checker::check_model(model);
    onnx::ModelProto inferred = model;
    onnx::shape_inference::InferShapes(
        inferred, onnx::OpSchemaRegistry::Instance(),
        onnx::ShapeInferenceOptions(/*check_type=*/true, /*strict_mode=*/1));
  } catch (const std::exception& e) {
    return InvalidArgumentError(std::string("ONNX checker: ") + e.what());
  }
  return Status::Ok();
}

namespace {

std::vector<int64_t> Dims(const onnx::TypeProto& type) {
  std::vector<int64_t> dims;
  if (!type.has_tensor_type() || !type.tensor_type().has_shape()) return dims;
  for (const auto& d : type.tensor_type().shape().dim()) {
    dims.push_back(d.has_dim_value() ? d.dim_value() : -1);
  }
  return dims;
}

int64_t Product(const std::vector<int64_t>& dims, size_t from) {
  int64_t p = 1;
  for (size_t i = from; i < dims.size(); ++i) p *= dims[i];
  return p;
}

}  // namespace

Result<int64_t> FlopsPerSample(const onnx::ModelProto& model) {
  onnx::ModelProto m = model;
  auto* graph = m.mutable_graph();
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& init : graph->initializer()) {
    shapes[init.name()] = std::vector<int64_t>(init.dims().begin(), init.dims().end());
  }
  for (auto& in : *graph->mutable_input()) {
    if (shapes.count(in.name())) continue;
    auto* shape = in.mutable_type()->mutable_tensor_type()->mutable_shape();
    if (shape->dim_size() > 0) shape->mutable_dim(0)->set_dim_value(1);  // batch of one
  }
  try {
    onnx::shape_inference::InferShapes(m);
  } catch (const std::exception& e) {
    return InvalidArgumentError(std::string("shape inference failed: ") + e.what());
  }
  for (const auto* list : {&graph->input(), &graph->value_info(), &graph->output()}) {
    for (const auto& v : *list) {
      if (!shapes.count(v.name())) shapes[v.name()] = Dims(v.type());
    }
  }
  auto shape_of = [&](const std::string& name) -> std::vector<int64_t> {
    auto it = shapes.find(name);
    return it == shapes.end() ? std::vector<int64_t>{} : it->second;
  };
  int64_t flops = 0;
  for (const auto& node : graph->node()) {
    const std::string& op = node.op_type();
    if (node.output_size() == 0) continue;
    const std::vector<int64_t> out = shape_of(node.output(0));
    if (op == "Conv" || op == "ConvInteger" || op == "QLinearConv") {
      const int weight_input = op == "QLinearConv" ? 3 : 1;
      if (node.input_size() <= weight_input) continue;
      const std::vector<int64_t> w = shape_of(node.input(weight_input));
      if (w.size() < 3 || out.size() < 2) {
        return InvalidArgumentError("no static shape for " + op + " node '" + node.name() + "'");
      }
      flops += 2 * Product(out, 1) * Product(w, 1);
    } else if (op == "Gemm" || op == "MatMul" || op == "MatMulInteger" || op == "QGemm") {
      const std::vector<int64_t> a = shape_of(node.input(0));
      if (a.empty() || out.empty() || a.back() < 0) {
        return InvalidArgumentError("no static shape for " + op + " node '" + node.name() + "'");
      }
      bool trans_a = false;
      for (const auto& attr : node.attribute()) {
        if (attr.name() == "transA") trans_a = attr.i() != 0;
      }
      const int64_t k = trans_a ? a[0] : a.back();
      flops += 2 * Product(out, 0) * k;
    }
  }
  return flops;
}

int64_t CountParameters(const onnx::ModelProto& model) {
  int64_t n = 0;
  for (const auto& init : model.graph().initializer()) {
    const std::string& name = init.name();
    if (name.ends_with("_scale") || name.ends_with("_zero_point")) continue;
    int64_t e = 1;
    for (int64_t d : init.dims()) e *= d;
    n += e;
  }
  return n;
}

std::map<std::string, int64_t> CountOperators(const onnx::ModelProto& model) {
  std::map<std::string, int64_t> ops;
  for (const auto& node : model.graph().node()) ++ops[node.op_type()];
  return ops;
}

int64_t OnnxOpset(const onnx::ModelProto& model) {
  for (const auto& o : model.opset_import()) {
    if (o.domain().empty() || o.domain() == "ai.onnx") return o.version();
  }
  return 0;
}

void SetMetadata(onnx::ModelProto* model, const std::string& key, const std::string& value) {
  for (auto& e : *model->mutable_metadata_props()) {
    if (e.key() == key) {
      e.set_value(value);
      return;
    }
  }
  auto* e = model->add_metadata_props();
  e->set_key(key);
  e->set_value(value);
}

std::string GetMetadata(const onnx::ModelProto& model, const std::string& key) {
  for (const auto& e : model.metadata_props()) {
    if (e.key() == key) return e.value();
  }
  return "";
}

}  // namespace kiln::optimize
