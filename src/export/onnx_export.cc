#include "kiln/export/onnx_export.h"

#include <onnx/checker.h>
#include <onnx/onnx_pb.h>
#include <onnx/shape_inference/implementation.h>

#include <limits>
#include <nlohmann/json.hpp>
#include <set>

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
    // Node names must be unique: a second node of the same kind under one hint gets a suffix.
    std::string name = hint + "/" + op;
    if (!node_names_.insert(name).second) {
      name += "_" + std::to_string(counter_);
      node_names_.insert(name);
    }
    n->set_name(name);
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

  // k x k convolution, stride 1, `pad` on every side.
  std::string Conv(const std::string& x, const std::string& hint, const torch::Tensor& w,
                   const torch::Tensor& b, int64_t pad) {
    std::vector<std::string> inputs = {x, Constant(hint + ".weight", w)};
    if (b.defined()) inputs.push_back(Constant(hint + ".bias", b));
    const int64_t k = w.size(2);
    return Node("Conv", inputs, hint, [k, pad](onnx::NodeProto* n) {
      Ints(n, "kernel_shape", {k, k});
      Ints(n, "pads", {pad, pad, pad, pad});
      Ints(n, "strides", {1, 1});
    });
  }
  // A float32 scalar initializer, one per value.
  std::string Scalar(float v) {
    const std::string name = "const_f" + std::to_string(v);
    if (scalars_.insert(name).second) Constant(name, torch::tensor(v));
    return name;
  }
  // An int64 initializer (shapes, pads, slice bounds).
  std::string Int64s(const std::string& name, const std::vector<int64_t>& values) {
    onnx::TensorProto* init = graph_->add_initializer();
    init->set_name(name);
    init->set_data_type(onnx::TensorProto::INT64);
    init->add_dims(static_cast<int64_t>(values.size()));
    for (int64_t v : values) init->add_int64_data(v);
    return name;
  }
  // Exact GELU from opset-13 operators: x * 0.5 * (1 + erf(x / sqrt(2))) (ONNX Runtime fuses it).
  std::string Gelu(const std::string& x, const std::string& hint) {
    std::string e = Node("Erf", {Node("Div", {x, Scalar(1.41421356237F)}, hint)}, hint);
    std::string y = Node("Mul", {x, Node("Add", {e, Scalar(1.0F)}, hint)}, hint);
    return Node("Mul", {y, Scalar(0.5F)}, hint);
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
  std::set<std::string> scalars_;
  std::set<std::string> node_names_;
};

// Test-time augmentation: the views of `input` concatenated along the batch ([V*N, C, H, W]).
std::string EmitViews(GraphBuilder& g, const LoweredModel& lowered, const std::string& input) {
  std::vector<std::string> views;
  for (size_t i = 0; i < lowered.tta.size(); ++i) {
    const train::TtaView& v = lowered.tta[i];
    const std::string hint = "tta/view" + std::to_string(i);
    std::string x = input;
    if (v.shift != 0) {
      const int64_t p = std::abs(v.shift);
      const int64_t y0 = p + v.shift;
      x = g.Node("Pad", {x, g.Int64s(hint + ".pads", {0, 0, p, p, 0, 0, p, p})}, hint,
                 [](onnx::NodeProto* n) {
                   onnx::AttributeProto* a = n->add_attribute();
                   a->set_name("mode");
                   a->set_type(onnx::AttributeProto::STRING);
                   a->set_s("reflect");
                 });
      x = g.Node("Slice",
                 {x, g.Int64s(hint + ".starts", {y0, y0}),
                  g.Int64s(hint + ".ends", {y0 + lowered.height, y0 + lowered.width}),
                  g.Int64s(hint + ".axes", {2, 3})},
                 hint);
    }
    if (v.mirror) {
      x = g.Node("Slice",
                 {x, g.Int64s(hint + ".mstarts", {-1}),
                  g.Int64s(hint + ".mends", {std::numeric_limits<int64_t>::min()}),
                  g.Int64s(hint + ".maxes", {3}), g.Int64s(hint + ".msteps", {-1})},
                 hint);
    }
    views.push_back(x);
  }
  return g.Node("Concat", views, "tta", [](onnx::NodeProto* n) { GraphBuilder::Int(n, "axis", 0); });
}

// [V*N, K] logits -> their weighted sum over the V views: [N, K].
std::string EmitViewMean(GraphBuilder& g, const LoweredModel& lowered, const std::string& logits) {
  const auto v = static_cast<int64_t>(lowered.tta.size());
  std::vector<float> weights;
  for (const auto& view : lowered.tta) weights.push_back(static_cast<float>(view.weight));
  const int64_t classes = lowered.ops.back().weight.size(0);  // the head's outputs
  std::string x =
      g.Node("Reshape", {logits, g.Int64s("tta/mean.shape", {v, -1, classes})}, "tta/mean");
  x = g.Node("Mul", {x, g.Constant("tta/mean.weights", torch::tensor(weights).view({v, 1, 1}))},
             "tta/mean");
  return g.Node("ReduceSum", {x, g.Int64s("tta/mean.axes", {0})}, "tta/mean",
                [](onnx::NodeProto* n) { GraphBuilder::Int(n, "keepdims", 0); });
}

// Emits the lowered ops as ONNX nodes; returns the name of the last value.
std::string EmitOnnx(GraphBuilder& g, const LoweredModel& lowered, const std::string& input) {
  using Kind = LoweredOp::Kind;
  const bool tta = lowered.tta.size() > 1;
  std::string x = tta ? EmitViews(g, lowered, input) : input;
  std::vector<std::string> skips;
  for (const LoweredOp& op : lowered.ops) {
    switch (op.kind) {
      case Kind::kConv:
        x = g.Conv(x, op.name, op.weight, op.bias, op.padding);
        break;
      case Kind::kRelu:
        x = g.Relu(x, op.name);
        break;
      case Kind::kGelu:
        x = g.Gelu(x, op.name);
        break;
      case Kind::kMaxPool2:
        x = g.MaxPool2(x, op.name);
        break;
      case Kind::kBias:
        x = g.Node("Add", {x, g.Constant(op.name + ".shift", op.bias.view({1, -1, 1, 1}))}, op.name);
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
  return tta ? EmitViewMean(g, lowered, x) : x;
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
