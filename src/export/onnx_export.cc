#include "kiln/export/onnx_export.h"

#include <onnx/checker.h>
#include <onnx/onnx_pb.h>
#include <onnx/shape_inference/implementation.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "kiln/core/version.h"

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

// Parameters and buffers of a module by name.
class Params {
 public:
  explicit Params(const torch::nn::Module& m) {
    for (const auto& p : m.named_parameters()) map_[p.key()] = p.value();
    for (const auto& b : m.named_buffers()) map_[b.key()] = b.value();
  }
  Result<torch::Tensor> Get(const std::string& key) const {
    auto it = map_.find(key);
    if (it == map_.end()) return InternalError("model has no tensor '" + key + "'");
    return it->second.detach().to(torch::kFloat).contiguous();
  }

 private:
  std::map<std::string, torch::Tensor> map_;
};

// Conv (no bias) + eval-mode BatchNorm folded into one convolution with bias:
// w' = w * g / sqrt(v + eps), b' = beta - m * g / sqrt(v + eps).
Result<std::string> ConvBnRelu(GraphBuilder& g, const Params& p, const std::string& prefix,
                               const std::string& x, double eps) {
  KILN_ASSIGN_OR_RETURN(torch::Tensor w, p.Get(prefix + ".conv.weight"));
  KILN_ASSIGN_OR_RETURN(torch::Tensor gamma, p.Get(prefix + ".bn.weight"));
  KILN_ASSIGN_OR_RETURN(torch::Tensor beta, p.Get(prefix + ".bn.bias"));
  KILN_ASSIGN_OR_RETURN(torch::Tensor mean, p.Get(prefix + ".bn.running_mean"));
  KILN_ASSIGN_OR_RETURN(torch::Tensor var, p.Get(prefix + ".bn.running_var"));
  // Fold in double precision, then round once to float.
  torch::Tensor scale = gamma.to(torch::kDouble) / torch::sqrt(var.to(torch::kDouble) + eps);
  torch::Tensor wf = (w.to(torch::kDouble) * scale.view({-1, 1, 1, 1})).to(torch::kFloat);
  torch::Tensor bf = (beta.to(torch::kDouble) - mean.to(torch::kDouble) * scale).to(torch::kFloat);
  return g.Relu(g.Conv3x3(x, prefix, wf, bf), prefix);
}

Result<std::string> BuildSeedCnn(GraphBuilder& g, const Params& p, const std::string& input) {
  std::string x = input;
  for (const char* conv : {"conv1", "conv2", "conv3"}) {
    KILN_ASSIGN_OR_RETURN(torch::Tensor w, p.Get(std::string(conv) + ".weight"));
    KILN_ASSIGN_OR_RETURN(torch::Tensor b, p.Get(std::string(conv) + ".bias"));
    x = g.MaxPool2(g.Relu(g.Conv3x3(x, conv, w, b), conv), conv);
  }
  x = g.Node("Flatten", {x}, "flatten",
             [](onnx::NodeProto* n) { GraphBuilder::Int(n, "axis", 1); });
  KILN_ASSIGN_OR_RETURN(torch::Tensor w1, p.Get("fc1.weight"));
  KILN_ASSIGN_OR_RETURN(torch::Tensor b1, p.Get("fc1.bias"));
  KILN_ASSIGN_OR_RETURN(torch::Tensor w2, p.Get("fc2.weight"));
  KILN_ASSIGN_OR_RETURN(torch::Tensor b2, p.Get("fc2.bias"));
  x = g.Relu(g.Linear(x, "fc1", w1, b1), "fc1");
  return g.Linear(x, "fc2", w2, b2);
}

Result<std::string> BuildResNet9(GraphBuilder& g, const Params& p, const std::string& input,
                                 double eps, double head_scale) {
  KILN_ASSIGN_OR_RETURN(std::string x, ConvBnRelu(g, p, "prep", input, eps));
  KILN_ASSIGN_OR_RETURN(x, ConvBnRelu(g, p, "layer1", x, eps));
  x = g.MaxPool2(x, "layer1");
  KILN_ASSIGN_OR_RETURN(std::string r, ConvBnRelu(g, p, "res1a", x, eps));
  KILN_ASSIGN_OR_RETURN(r, ConvBnRelu(g, p, "res1b", r, eps));
  x = g.Node("Add", {x, r}, "res1");
  KILN_ASSIGN_OR_RETURN(x, ConvBnRelu(g, p, "layer2", x, eps));
  x = g.MaxPool2(x, "layer2");
  KILN_ASSIGN_OR_RETURN(x, ConvBnRelu(g, p, "layer3", x, eps));
  x = g.MaxPool2(x, "layer3");
  KILN_ASSIGN_OR_RETURN(r, ConvBnRelu(g, p, "res3a", x, eps));
  KILN_ASSIGN_OR_RETURN(r, ConvBnRelu(g, p, "res3b", r, eps));
  x = g.Node("Add", {x, r}, "res3");
  // Global max-pool: GlobalMaxPool keeps [N, C, 1, 1]; Flatten makes it [N, C].
  x = g.Node("GlobalMaxPool", {x}, "pool");
  x = g.Node("Flatten", {x}, "flatten",
             [](onnx::NodeProto* n) { GraphBuilder::Int(n, "axis", 1); });
  KILN_ASSIGN_OR_RETURN(torch::Tensor w, p.Get("fc.weight"));
  return g.Linear(x, "fc", w * head_scale, std::nullopt);
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
  GraphBuilder g(graph);
  Params params(*checkpoint.model);
  Result<std::string> out =
      InternalError("no ONNX graph builder for architecture '" + meta.arch + "'");
  try {
    torch::NoGradGuard no_grad;
    if (meta.arch == "seed-cnn") {
      out = BuildSeedCnn(g, params, options.input_name);
    } else if (meta.arch == "kiln-resnet" || meta.arch == "resnet9") {
      out = BuildResNet9(g, params, options.input_name, train::kBatchNormEps,
                         train::kResNetHeadScale);
    }
  } catch (const std::exception& e) {
    return InternalError(std::string("building the ONNX graph failed: ") + e.what());
  }
  if (!out.ok()) return out.status();
  // Rename the last value to the requested output name.
  onnx::NodeProto* last = graph->mutable_node(graph->node_size() - 1);
  last->set_output(0, options.output_name);
  SetFloatTensorType(graph->add_output(), options.output_name, {-1, meta.shape.num_classes});

  AddMeta(&model, "kiln.arch", meta.arch);
  AddMeta(&model, "kiln.labels", json(meta.class_names).dump());
  AddMeta(
      &model, "kiln.normalization",
      json{{"mean", meta.normalization.mean}, {"std", meta.normalization.std}, {"scale", "x/255"}}
          .dump());
  AddMeta(&model, "kiln.input_layout", "NCHW");
  AddMeta(&model, "kiln.version", Version());
  AddMeta(&model, "kiln.checkpoint_created", meta.created);
  if (!options.training_summary_json.empty())
    AddMeta(&model, "kiln.training_summary", options.training_summary_json);

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
  const std::filesystem::path tmp = file.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary);
    if (!out) return InvalidArgumentError("cannot write " + tmp.string());
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out) return InternalError("write error on " + tmp.string());
  }
  std::error_code ec;
  std::filesystem::rename(tmp, file, ec);
  if (ec) return InternalError("cannot rename " + tmp.string() + ": " + ec.message());
  return Status::Ok();
}

}  // namespace kiln::exporter
