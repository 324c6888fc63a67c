#include "kiln/optimize/prune/prune.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>

namespace kiln::optimize {

namespace {

struct Consumer {
  std::string weight;  // parameter whose input dimension (1) follows the group's channels
  int64_t factor = 1;  // inputs per channel (a flattened C x H x W feature map: H * W)
};

struct Group {
  std::string name;
  std::vector<std::string> producers;
  std::vector<Consumer> consumers;
};

struct Plan {
  bool batch_norm = false;  // producers are "<name>.conv" + "<name>.bn", else "<name>.weight/.bias"
  std::vector<Group> groups;
};

Result<Plan> PlanFor(const train::CheckpointMeta& meta) {
  if (meta.arch == "seed-cnn") {
    const int64_t spatial = (meta.shape.height / 8) * (meta.shape.width / 8);
    return Plan{false,
                {{"conv1", {"conv1"}, {{"conv2.weight"}}},
                 {"conv2", {"conv2"}, {{"conv3.weight"}}},
                 {"conv3", {"conv3"}, {{"fc1.weight", spatial}}}}};
  }
  if (meta.arch == "kiln-resnet" || meta.arch == "resnet9") {
    return Plan{true,
                {{"prep", {"prep"}, {{"layer1.conv.weight"}}},
                 {"layer1", {"layer1", "res1b"}, {{"res1a.conv.weight"}, {"layer2.conv.weight"}}},
                 {"res1a", {"res1a"}, {{"res1b.conv.weight"}}},
                 {"layer2", {"layer2"}, {{"layer3.conv.weight"}}},
                 {"layer3", {"layer3", "res3b"}, {{"res3a.conv.weight"}, {"fc.weight"}}},
                 {"res3a", {"res3a"}, {{"res3b.conv.weight"}}}}};
  }
  if (meta.arch == "airbench94") {
    // No residual connections: every convolution is its own group.
    return Plan{true,
                {{"block1a", {"block1a"}, {{"block1b.conv.weight"}}},
                 {"block1b", {"block1b"}, {{"block2a.conv.weight"}}},
                 {"block2a", {"block2a"}, {{"block2b.conv.weight"}}},
                 {"block2b", {"block2b"}, {{"block3a.conv.weight"}}},
                 {"block3a", {"block3a"}, {{"block3b.conv.weight"}}},
                 {"block3b", {"block3b"}, {{"fc.weight"}}}}};
  }
  return UnimplementedError("no pruning plan for architecture '" + meta.arch + "'");
}

std::vector<std::string> ProducerTensors(const Plan& plan, const std::string& layer) {
  if (plan.batch_norm) {
    return {layer + ".conv.weight", layer + ".bn.weight", layer + ".bn.bias",
            layer + ".bn.running_mean", layer + ".bn.running_var"};
  }
  return {layer + ".weight", layer + ".bias"};
}

int64_t RoundKept(double exact, int64_t n, int64_t multiple) {
  if (n <= multiple) return n;
  auto k = static_cast<int64_t>(std::llround(exact / static_cast<double>(multiple))) * multiple;
  return std::clamp(k, multiple, n);
}

}  // namespace

Status PruneOptions::Validate() const {
  if (!(ratio >= 0.0 && ratio <= 0.95)) return InvalidArgumentError("prune ratio must be in [0, 0.95]");
  if (norm != "l1" && norm != "l2") return InvalidArgumentError("prune norm must be l1 or l2");
  if (scope != "layer" && scope != "global") {
    return InvalidArgumentError("prune scope must be layer or global");
  }
  if (multiple < 1 || multiple > 256) return InvalidArgumentError("channel multiple must be in [1, 256]");
  return Status::Ok();
}

Result<PruneResult> PruneCheckpoint(const train::Checkpoint& source, const PruneOptions& options) {
  KILN_RETURN_IF_ERROR(options.Validate());
  KILN_ASSIGN_OR_RETURN(Plan plan, PlanFor(source.meta));
  torch::NoGradGuard no_grad;
  std::map<std::string, torch::Tensor> tensors;
  for (const auto& p : source.model->named_parameters()) {
    tensors[p.key()] = p.value().detach().contiguous().clone();
  }
  for (const auto& b : source.model->named_buffers()) {
    tensors[b.key()] = b.value().detach().contiguous().clone();
  }
  auto get = [&](const std::string& key) -> Result<torch::Tensor> {
    auto it = tensors.find(key);
    if (it == tensors.end()) return InternalError("model has no tensor '" + key + "'");
    return it->second;
  };

  // Normalized importance of every channel of every group.
  std::vector<std::vector<double>> scores;
  for (const Group& g : plan.groups) {
    std::vector<double> score;
    for (const std::string& layer : g.producers) {
      KILN_ASSIGN_OR_RETURN(torch::Tensor w, get(ProducerTensors(plan, layer)[0]));
      w = w.to(torch::kDouble).flatten(1);
      if (plan.batch_norm) {
        KILN_ASSIGN_OR_RETURN(torch::Tensor gamma, get(layer + ".bn.weight"));
        KILN_ASSIGN_OR_RETURN(torch::Tensor var, get(layer + ".bn.running_var"));
        w = w * (gamma.to(torch::kDouble) / torch::sqrt(var.to(torch::kDouble) + train::BatchNormEps(source.meta.arch)))
                    .unsqueeze(1);
      }
      torch::Tensor norms = options.norm == "l1" ? w.abs().sum(1) : w.pow(2).sum(1).sqrt();
      const double mean = norms.mean().item<double>();
      norms = mean > 0 ? norms / mean : norms;
      if (score.empty()) score.assign(static_cast<size_t>(norms.size(0)), 0.0);
      if (static_cast<int64_t>(score.size()) != norms.size(0)) {
        return InternalError("layers of group '" + g.name + "' have different widths");
      }
      auto acc = norms.accessor<double, 1>();
      for (size_t c = 0; c < score.size(); ++c) score[c] += acc[static_cast<int64_t>(c)];
    }
    for (double& s : score) s /= static_cast<double>(g.producers.size());
    scores.push_back(std::move(score));
  }

  // How many channels each group keeps.
  std::vector<int64_t> keep(plan.groups.size());
  if (options.scope == "layer") {
    for (size_t i = 0; i < scores.size(); ++i) {
      const auto n = static_cast<int64_t>(scores[i].size());
      keep[i] = RoundKept((1.0 - options.ratio) * static_cast<double>(n), n, options.multiple);
    }
  } else {
    std::vector<std::pair<double, size_t>> all;
    for (size_t i = 0; i < scores.size(); ++i) {
      for (double s : scores[i]) all.emplace_back(s, i);
    }
    std::sort(all.begin(), all.end());
    std::vector<int64_t> removed(scores.size(), 0);
    const auto remove = static_cast<size_t>(std::llround(options.ratio * static_cast<double>(all.size())));
    for (size_t r = 0; r < remove; ++r) ++removed[all[r].second];
    for (size_t i = 0; i < scores.size(); ++i) {
      const auto n = static_cast<int64_t>(scores[i].size());
      keep[i] = RoundKept(static_cast<double>(n - removed[i]), n, options.multiple);
    }
  }

  PruneResult result;
  train::ModelWidths widths = source.meta.widths;
  for (size_t i = 0; i < plan.groups.size(); ++i) {
    const Group& g = plan.groups[i];
    std::vector<int64_t> order(scores[i].size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return scores[i][static_cast<size_t>(a)] > scores[i][static_cast<size_t>(b)]; });
    std::vector<int64_t> kept(order.begin(), order.begin() + keep[i]);
    std::sort(kept.begin(), kept.end());
    torch::Tensor index = torch::tensor(kept, torch::kInt64);
    for (const std::string& layer : g.producers) {
      for (const std::string& key : ProducerTensors(plan, layer)) {
        KILN_ASSIGN_OR_RETURN(torch::Tensor t, get(key));
        tensors[key] = t.index_select(0, index).contiguous();
      }
    }
    for (const Consumer& c : g.consumers) {
      KILN_ASSIGN_OR_RETURN(torch::Tensor t, get(c.weight));
      torch::Tensor cols = index;
      if (c.factor > 1) {
        cols = (index.unsqueeze(1) * c.factor + torch::arange(c.factor, torch::kInt64)).flatten();
      }
      tensors[c.weight] = t.index_select(1, cols).contiguous();
    }
    widths[g.name] = keep[i];
    result.groups.push_back({g.name, g.producers, static_cast<int64_t>(scores[i].size()), kept});
  }

  train::CheckpointMeta meta = source.meta;
  meta.widths = widths;
  KILN_ASSIGN_OR_RETURN(auto model, train::CreateModel(meta.arch, meta.shape, widths));
  for (auto& p : model->named_parameters()) {
    const torch::Tensor& t = tensors.at(p.key());
    if (!t.sizes().equals(p.value().sizes())) {
      return InternalError("pruned tensor '" + p.key() + "' does not fit the smaller model");
    }
    p.value().copy_(t);
  }
  for (auto& b : model->named_buffers()) {
    const torch::Tensor& t = tensors.at(b.key());
    if (!t.sizes().equals(b.value().sizes())) {
      return InternalError("pruned buffer '" + b.key() + "' does not fit the smaller model");
    }
    b.value().copy_(t);
  }
  model->eval();
  result.checkpoint = train::Checkpoint{meta, model};
  return result;
}

Status ZeroRemovedChannels(train::Classifier& model, const std::string& arch,
                           const std::vector<PrunedGroup>& groups) {
  train::CheckpointMeta meta;
  meta.arch = arch;
  KILN_ASSIGN_OR_RETURN(Plan plan, PlanFor(meta));
  torch::NoGradGuard no_grad;
  std::map<std::string, torch::Tensor> params;
  for (auto& p : model.named_parameters()) params[p.key()] = p.value();
  for (const PrunedGroup& g : groups) {
    for (const std::string& layer : g.producers) {
      // A zero filter and bias (or zero batch-norm scale and shift) outputs exactly 0.
      const std::vector<std::string> keys =
          plan.batch_norm ? std::vector<std::string>{layer + ".bn.weight", layer + ".bn.bias"}
                          : std::vector<std::string>{layer + ".weight", layer + ".bias"};
      for (const std::string& key : keys) {
        auto it = params.find(key);
        if (it == params.end()) return InvalidArgumentError("model has no parameter '" + key + "'");
        for (int64_t c = 0; c < g.before; ++c) {
          if (!std::binary_search(g.kept.begin(), g.kept.end(), c)) it->second[c].zero_();
        }
      }
    }
  }
  return Status::Ok();
}

}  // namespace kiln::optimize
