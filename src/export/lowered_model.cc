#include "kiln/export/lowered_model.h"

#include <map>
#include <nlohmann/json.hpp>

#include "kiln/core/version.h"

namespace kiln::exporter {

namespace {

using Kind = LoweredOp::Kind;

class Params {
 public:
  explicit Params(const torch::nn::Module& m) {
    for (const auto& p : m.named_parameters()) map_[p.key()] = p.value();
    for (const auto& b : m.named_buffers()) map_[b.key()] = b.value();
  }
  Result<torch::Tensor> Get(const std::string& key) const {
    auto it = map_.find(key);
    if (it == map_.end()) return InternalError("model has no tensor '" + key + "'");
    return it->second.detach().to(torch::kFloat).contiguous().clone();
  }

 private:
  std::map<std::string, torch::Tensor> map_;
};

// conv (no bias) + eval-mode batch norm -> one conv with bias:
// w' = w * g / sqrt(v + eps), b' = beta - m * g / sqrt(v + eps).
// `before_pool`: the batch norm follows a max-pool, which it commutes with only if no scale is
// negative.
Status AddConvBn(const Params& p, const std::string& prefix, double eps, bool before_pool,
                 LoweredModel* out) {
  KILN_ASSIGN_OR_RETURN(torch::Tensor w, p.Get(prefix + ".conv.weight"));
  KILN_ASSIGN_OR_RETURN(torch::Tensor gamma, p.Get(prefix + ".bn.weight"));
  KILN_ASSIGN_OR_RETURN(torch::Tensor beta, p.Get(prefix + ".bn.bias"));
  KILN_ASSIGN_OR_RETURN(torch::Tensor mean, p.Get(prefix + ".bn.running_mean"));
  KILN_ASSIGN_OR_RETURN(torch::Tensor var, p.Get(prefix + ".bn.running_var"));
  torch::Tensor scale = gamma.to(torch::kDouble) / torch::sqrt(var.to(torch::kDouble) + eps);
  if (before_pool && (scale < 0).any().item<bool>()) {
    return UnimplementedError("batch norm '" + prefix +
                              "' after a max-pool has a negative scale; it cannot be folded");
  }
  out->ops.push_back(
      {Kind::kConv, prefix, (w.to(torch::kDouble) * scale.view({-1, 1, 1, 1})).to(torch::kFloat),
       (beta.to(torch::kDouble) - mean.to(torch::kDouble) * scale).to(torch::kFloat),
       w.size(2) / 2});
  return Status::Ok();
}

Status AddConvBnRelu(const Params& p, const std::string& prefix, LoweredModel* out) {
  KILN_RETURN_IF_ERROR(AddConvBn(p, prefix, train::kBatchNormEps, false, out));
  out->ops.push_back({Kind::kRelu, prefix, {}, {}});
  return Status::Ok();
}

Status LowerSeedCnn(const Params& p, LoweredModel* out) {
  for (const char* conv : {"conv1", "conv2", "conv3"}) {
    KILN_ASSIGN_OR_RETURN(torch::Tensor w, p.Get(std::string(conv) + ".weight"));
    KILN_ASSIGN_OR_RETURN(torch::Tensor b, p.Get(std::string(conv) + ".bias"));
    out->ops.push_back({Kind::kConv, conv, w, b});
    out->ops.push_back({Kind::kRelu, conv, {}, {}});
    out->ops.push_back({Kind::kMaxPool2, conv, {}, {}});
  }
  out->ops.push_back({Kind::kFlatten, "flatten", {}, {}});
  KILN_ASSIGN_OR_RETURN(torch::Tensor w1, p.Get("fc1.weight"));
  KILN_ASSIGN_OR_RETURN(torch::Tensor b1, p.Get("fc1.bias"));
  KILN_ASSIGN_OR_RETURN(torch::Tensor w2, p.Get("fc2.weight"));
  KILN_ASSIGN_OR_RETURN(torch::Tensor b2, p.Get("fc2.bias"));
  out->ops.push_back({Kind::kLinear, "fc1", w1, b1});
  out->ops.push_back({Kind::kRelu, "fc1", {}, {}});
  out->ops.push_back({Kind::kLinear, "fc2", w2, b2});
  return Status::Ok();
}

Status LowerResNet9(const Params& p, LoweredModel* out) {
  KILN_RETURN_IF_ERROR(AddConvBnRelu(p, "prep", out));
  KILN_RETURN_IF_ERROR(AddConvBnRelu(p, "layer1", out));
  out->ops.push_back({Kind::kMaxPool2, "layer1", {}, {}});
  out->ops.push_back({Kind::kPushSkip, "res1", {}, {}});
  KILN_RETURN_IF_ERROR(AddConvBnRelu(p, "res1a", out));
  KILN_RETURN_IF_ERROR(AddConvBnRelu(p, "res1b", out));
  out->ops.push_back({Kind::kAddSkip, "res1", {}, {}});
  KILN_RETURN_IF_ERROR(AddConvBnRelu(p, "layer2", out));
  out->ops.push_back({Kind::kMaxPool2, "layer2", {}, {}});
  KILN_RETURN_IF_ERROR(AddConvBnRelu(p, "layer3", out));
  out->ops.push_back({Kind::kMaxPool2, "layer3", {}, {}});
  out->ops.push_back({Kind::kPushSkip, "res3", {}, {}});
  KILN_RETURN_IF_ERROR(AddConvBnRelu(p, "res3a", out));
  KILN_RETURN_IF_ERROR(AddConvBnRelu(p, "res3b", out));
  out->ops.push_back({Kind::kAddSkip, "res3", {}, {}});
  out->ops.push_back({Kind::kGlobalMaxPool, "pool", {}, {}});
  out->ops.push_back({Kind::kFlatten, "flatten", {}, {}});
  KILN_ASSIGN_OR_RETURN(torch::Tensor w, p.Get("fc.weight"));
  out->ops.push_back({Kind::kLinear, "fc", w * train::kResNetHeadScale, {}});
  return Status::Ok();
}

// whiten (2x2, no padding) -> GELU -> three blocks of [conv -> pool -> bn -> GELU -> conv -> bn ->
// GELU] -> global max-pool -> linear / 9, with the test-time augmentation the model carries.
Status LowerAirbench(const Params& p, const train::Classifier& model, LoweredModel* out) {
  KILN_ASSIGN_OR_RETURN(torch::Tensor ww, p.Get("whiten.weight"));
  KILN_ASSIGN_OR_RETURN(torch::Tensor wb, p.Get("whiten.bias"));
  out->ops.push_back({Kind::kConv, "whiten", ww, wb, 0});
  out->ops.push_back({Kind::kGelu, "whiten", {}, {}});
  for (const char* block : {"block1", "block2", "block3"}) {
    const std::string a = std::string(block) + "a";
    const std::string b = std::string(block) + "b";
    KILN_RETURN_IF_ERROR(AddConvBn(p, a, train::kAirbenchBatchNormEps, true, out));
    // The folded shift goes after the pool (max(x + b) = max(x) + b), as its own op.
    torch::Tensor shift = out->ops.back().bias;
    out->ops.back().bias = torch::Tensor();
    out->ops.push_back({Kind::kMaxPool2, a, {}, {}});
    out->ops.push_back({Kind::kBias, a, {}, shift});
    out->ops.push_back({Kind::kGelu, a, {}, {}});
    KILN_RETURN_IF_ERROR(AddConvBn(p, b, train::kAirbenchBatchNormEps, false, out));
    out->ops.push_back({Kind::kGelu, b, {}, {}});
  }
  out->ops.push_back({Kind::kGlobalMaxPool, "pool", {}, {}});
  out->ops.push_back({Kind::kFlatten, "flatten", {}, {}});
  KILN_ASSIGN_OR_RETURN(torch::Tensor w, p.Get("fc.weight"));
  out->ops.push_back({Kind::kLinear, "fc", (w.to(torch::kDouble) * train::kAirbenchHeadScale).to(torch::kFloat), {}});
  if (model.tta() != train::TtaLevel::kNone) out->tta = train::TtaViews(model.tta());
  return Status::Ok();
}

}  // namespace

Result<LoweredModel> LowerModel(const train::Checkpoint& checkpoint) {
  const std::string& arch = checkpoint.meta.arch;
  LoweredModel out;
  out.height = checkpoint.meta.shape.height;
  out.width = checkpoint.meta.shape.width;
  try {
    torch::NoGradGuard no_grad;
    Params params(*checkpoint.model);
    if (arch == "seed-cnn") {
      KILN_RETURN_IF_ERROR(LowerSeedCnn(params, &out));
    } else if (arch == "kiln-resnet" || arch == "resnet9") {
      KILN_RETURN_IF_ERROR(LowerResNet9(params, &out));
    } else if (arch == "airbench94") {
      KILN_RETURN_IF_ERROR(LowerAirbench(params, *checkpoint.model, &out));
    } else {
      return UnimplementedError("no exporter for architecture '" + arch + "'");
    }
  } catch (const std::exception& e) {
    return InternalError(std::string("lowering the model failed: ") + e.what());
  }
  return out;
}

std::map<std::string, std::string> ExportMetadata(
    const train::Checkpoint& checkpoint, const std::string& training_summary_json,
    const std::map<std::string, std::string>& extra) {
  using nlohmann::json;
  const train::CheckpointMeta& m = checkpoint.meta;
  std::map<std::string, std::string> out = {
      {"kiln.arch", m.arch},
      {"kiln.labels", json(m.class_names).dump()},
      {"kiln.normalization",
       json{{"mean", m.normalization.mean}, {"std", m.normalization.std}}.dump()},
      {"kiln.input_layout", "NCHW"},
      {"kiln.input_shape", json{-1, m.shape.channels, m.shape.height, m.shape.width}.dump()},
      {"kiln.version", Version()},
      {"kiln.checkpoint_created", m.created}};
  if (!training_summary_json.empty()) out["kiln.training_summary"] = training_summary_json;
  for (const auto& [key, value] : extra) out.emplace(key, value);
  return out;
}

}  // namespace kiln::exporter
