#include "kiln/export/onnx_export.h"

#include <onnx/checker.h>
#include <onnx/onnx_pb.h>
#include <onnx/shape_inference/implementation.h>

#include <nlohmann/json.hpp>

#include "kiln/core/file.h"
#include "kiln/core/version.h"
#include "kiln/export/lowered_model.h"

namespace kiln::exporter {

namespace {

using nlohmann::json;

// Appends nodes and initializers to an ONNX graph; names every value uniquely.
class GraphBuilder {
 public:
  explicit GraphBuilder(onnx::GraphProto* graph) : graph_(graph) {}

  // A float32 initializer holding `t` (made contiguous); returns its name.
  std::string Constant(const std::string& name, const torch::Tensor& t) {
    torch::Tensor c = t.detach().to(torch::kFloat).contiguous();
    onnx::TensorProto* init = graph_->add_initializer();
    init->set_name(name);
    init->set_data_type(onnx::TensorProto::FLOAT);
    for (int64_t d : c.sizes()) init->add_dims(d);
    init->set_raw_data(
        std::string(static_cast<const char*>(c.data_ptr()), c.numel() * sizeof(float)));
    return name;
  }

  std::string Node(const std::string& op, const std::vector<std::string>& inputs,
                   const std::string& hint,
                   const std::function<void(onnx::NodeProto*)>& attrs = {}) {
    onnx::NodeProto* n = graph_->add_node();
    n->set_op_type(op);
    n->set_name(hint + "/" + op);
    for (const auto& in : inputs) n->add_input(in);
    std::string out = hint + "/" + op + "_out" + std::to_string(counter_++);
    n->add_output(out);
    if (attrs) attrs(n);
    return out;
  }

  static void Ints(onnx::NodeProto* n, const std::string& name,
                   const std::vector<int64_t>& values) {
    onnx::AttributeProto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::INTS);
    for (int64_t v : values) a->add_ints(v);
  }
  static void Int(onnx::NodeProto* n, const std::string& name, int64_t value) {
    onnx::AttributeProto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::INT);
    a->set_i(value);
  }

  // 3x3 convolution, stride 1, padding 1.
  std::string Conv3x3(const std::string& x, const std::string& hint, const torch::Tensor& w,
                      const torch::Tensor& b) {
    std::string wn = Constant(hint + ".weight", w);
    std::string bn = Constant(hint + ".bias", b);
    return Node("Conv", {x, wn, bn}, hint, [](onnx::NodeProto* n) {
      Ints(n, "kernel_shape", {3, 3});
      Ints(n, "pads", {1, 1, 1, 1});
      Ints(n, "strides", {1, 1});
    });
  }
  std::string Relu(const std::string& x, const std::string& hint) {
    return Node("Relu", {x}, hint);
  }
  std::string MaxPool2(const std::string& x, const std::string& hint) {
    return Node("MaxPool", {x}, hint, [](onnx::NodeProto* n) {
      Ints(n, "kernel_shape", {2, 2});
      Ints(n, "strides", {2, 2});
    });
  }
  // y = x W^T + b (PyTorch Linear layout: W is [out, in]).
  std::string Linear(const std::string& x, const std::string& hint, const torch::Tensor& w,
                     const std::optional<torch::Tensor>& b) {
    std::vector<std::string> in = {x, Constant(hint + ".weight", w)};
    if (b) in.push_back(Constant(hint + ".bias", *b));
    return Node("Gemm", in, hint, [](onnx::NodeProto* n) { Int(n, "transB", 1); });
  }

 private:
  onnx::GraphProto* graph_;
  int counter_ = 0;
};

// Emits the lowered ops as ONNX nodes; returns the name of the last value.
std::string EmitOnnx(GraphBuilder& g, const LoweredModel& lowered, const std::string& input) {
  using Kind = LoweredOp::Kind;
  std::string x = input;
  std::vector<std::string> skips;
  for (const LoweredOp& op : lowered.ops) {
    switch (op.kind) {
      case Kind::kConv3x3:
        x = g.Conv3x3(x, op.name, op.weight, op.bias);
        break;
      case Kind::kRelu:
        x = g.Relu(x, op.name);
        break;
      case Kind::kMaxPool2:
        x = g.MaxPool2(x, op.name);
        break;
      case Kind::kPushSkip:
        skips.push_back(x);
        break;
      case Kind::kAddSkip:
        x = g.Node("Add", {skips.back(), x}, op.name);
        skips.pop_back();
        break;
      // GlobalMaxPool keeps [N, C, 1, 1]; the Flatten that follows makes it [N, C].
      case Kind::kGlobalMaxPool:
        x = g.Node("GlobalMaxPool", {x}, op.name);
        break;
      case Kind::kFlatten:
        x = g.Node("Flatten", {x}, op.name,
                   [](onnx::NodeProto* n) { GraphBuilder::Int(n, "axis", 1); });
        break;
      case Kind::kLinear:
        x = g.Linear(x, op.name, op.weight,
                     op.bias.defined() ? std::optional<torch::Tensor>(op.bias) : std::nullopt);
        break;
    }
  }
  return x;
}

void AddMeta(onnx::ModelProto* model, const std::string& key, const std::string& value) {
  onnx::StringStringEntryProto* e = model->add_metadata_props();
  e->set_key(key);
  e->set_value(value);
}

void SetFloatTensorType(onnx::ValueInfoProto* v, const std::string& name,
                        const std::vector<int64_t>& dims) {
  v->set_name(name);
  onnx::TypeProto_Tensor* t = v->mutable_type()->mutable_tensor_type();
  t->set_elem_type(onnx::TensorProto::FLOAT);
  for (int64_t d : dims) {
    onnx::TensorShapeProto_Dimension* dim = t->mutable_shape()->add_dim();
    if (d < 0) {
      dim->set_dim_param("batch");
    } else {
      dim->set_dim_value(d);
    }
  }
}

}  // namespace

Status OnnxExportOptions::Validate() const {
  if (opset < 13 || opset > 17) {
    return InvalidArgumentError("opset " + std::to_string(opset) + " is not supported (13..17)");
  }
  if (input_name.empty() || output_name.empty() || input_name == output_name) {
    return InvalidArgumentError("input and output names must be non-empty and different");
  }
  if (!training_summary_json.empty() && !json::accept(training_summary_json)) {
    return InvalidArgumentError("training summary is not valid JSON");
  }
  return Status::Ok();
}

Result<std::string> BuildOnnxModel(const train::Checkpoint& checkpoint,
                                   const OnnxExportOptions& options) {
  KILN_RETURN_IF_ERROR(options.Validate());
  const train::CheckpointMeta& meta = checkpoint.meta;
  onnx::ModelProto model;
  model.set_ir_version(8);  // ONNX 1.10+; what opsets 13-17 are published with
  model.set_producer_name("kiln");
  model.set_producer_version(Version());
  model.set_model_version(1);
  onnx::OperatorSetIdProto* opset = model.add_opset_import();
  opset->set_domain("");
  opset->set_version(options.opset);
  onnx::GraphProto* graph = model.mutable_graph();
  graph->set_name(options.graph_name);

  SetFloatTensorType(graph->add_input(), options.input_name,
                     {-1, meta.shape.channels, meta.shape.height, meta.shape.width});
  KILN_ASSIGN_OR_RETURN(LoweredModel lowered, LowerModel(checkpoint));
  GraphBuilder g(graph);
  try {
    EmitOnnx(g, lowered, options.input_name);
  } catch (const std::exception& e) {
    return InternalError(std::string("building the ONNX graph failed: ") + e.what());
  }
  // Rename the last value to the requested output name.
  onnx::NodeProto* last = graph->mutable_node(graph->node_size() - 1);
  last->set_output(0, options.output_name);
  SetFloatTensorType(graph->add_output(), options.output_name, {-1, meta.shape.num_classes});

  for (const auto& [key, value] : ExportMetadata(checkpoint, options.training_summary_json,
                                                   options.extra_metadata)) {
    AddMeta(&model, key, value);
  }

  try {
    onnx::checker::check_model(model);
    onnx::ModelProto inferred = model;
    onnx::shape_inference::InferShapes(
        inferred, onnx::OpSchemaRegistry::Instance(),
        onnx::ShapeInferenceOptions(/*check_type=*/true, /*strict_mode=*/1));
  } catch (const std::exception& e) {
    return InternalError(std::string("exported ONNX graph failed validation: ") + e.what());
  }
  std::string bytes;
  if (!model.SerializeToString(&bytes)) return InternalError("cannot serialize the ONNX model");
  return bytes;
}

Status ExportOnnx(const train::Checkpoint& checkpoint, const OnnxExportOptions& options,
                  const std::filesystem::path& file) {
  KILN_ASSIGN_OR_RETURN(std::string bytes, BuildOnnxModel(checkpoint, options));
  return WriteFileAtomic(file, bytes);
}

}  // namespace kiln::exporter
