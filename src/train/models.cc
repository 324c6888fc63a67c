#include "kiln/train/models.h"

#include <algorithm>
#include <cstdlib>

namespace kiln::train {

namespace nn = torch::nn;

namespace {

int64_t WidthOr(const ModelWidths& widths, const std::string& layer, int64_t fallback) {
  auto it = widths.find(layer);
  return it == widths.end() ? fallback : it->second;
}

class SeedCnn : public Classifier {
 public:
  SeedCnn(const ModelShape& s, const ModelWidths& w)
      : SeedCnn(s, WidthOr(w, "conv1", 32), WidthOr(w, "conv2", 64), WidthOr(w, "conv3", 128)) {}
  SeedCnn(const ModelShape& s, int64_t c1, int64_t c2, int64_t c3)
      : conv1_(
            register_module("conv1", nn::Conv2d(nn::Conv2dOptions(s.channels, c1, 3).padding(1)))),
        conv2_(register_module("conv2", nn::Conv2d(nn::Conv2dOptions(c1, c2, 3).padding(1)))),
        conv3_(register_module("conv3", nn::Conv2d(nn::Conv2dOptions(c2, c3, 3).padding(1)))),
        fc1_(register_module("fc1", nn::Linear(c3 * (s.height / 8) * (s.width / 8), 256))),
        fc2_(register_module("fc2", nn::Linear(256, s.num_classes))) {}

  torch::Tensor forward(torch::Tensor x) override {
    x = torch::max_pool2d(torch::relu(conv1_->forward(x)), 2);
    x = torch::max_pool2d(torch::relu(conv2_->forward(x)), 2);
    x = torch::max_pool2d(torch::relu(conv3_->forward(x)), 2);
    x = torch::relu(fc1_->forward(x.flatten(1)));
    return fc2_->forward(x);
  }
  const std::string& arch() const override { return name_; }

 private:
  std::string name_ = "seed-cnn";
  nn::Conv2d conv1_, conv2_, conv3_;
  nn::Linear fc1_, fc2_;
};

// conv 3x3 (no bias) -> batch norm -> ReLU.
class ConvBnImpl : public nn::Module {
 public:
  ConvBnImpl(int64_t in, int64_t out)
      : conv(register_module("conv",
                             nn::Conv2d(nn::Conv2dOptions(in, out, 3).padding(1).bias(false)))),
        bn(register_module("bn", nn::BatchNorm2d(nn::BatchNorm2dOptions(out).eps(kBatchNormEps)))) {
  }
  torch::Tensor forward(torch::Tensor x) { return torch::relu(bn->forward(conv->forward(x))); }
  nn::Conv2d conv;
  nn::BatchNorm2d bn;
};
TORCH_MODULE(ConvBn);

class ResNet9 : public Classifier {
 public:
  // `w` base channels; `widths` overrides single layers (see ModelWidths).
  ResNet9(const ModelShape& s, int64_t w, const ModelWidths& widths, std::string name)
      : ResNet9(s, WidthOr(widths, "prep", w), WidthOr(widths, "layer1", 2 * w),
                WidthOr(widths, "res1a", 2 * w), WidthOr(widths, "layer2", 4 * w),
                WidthOr(widths, "layer3", 8 * w), WidthOr(widths, "res3a", 8 * w),
                std::move(name)) {}
  ResNet9(const ModelShape& s, int64_t prep, int64_t l1, int64_t r1, int64_t l2, int64_t l3,
          int64_t r3, std::string name)
      : name_(std::move(name)),
        prep_(register_module("prep", ConvBn(s.channels, prep))),
        layer1_(register_module("layer1", ConvBn(prep, l1))),
        res1a_(register_module("res1a", ConvBn(l1, r1))),
        res1b_(register_module("res1b", ConvBn(r1, l1))),
        layer2_(register_module("layer2", ConvBn(l1, l2))),
        layer3_(register_module("layer3", ConvBn(l2, l3))),
        res3a_(register_module("res3a", ConvBn(l3, r3))),
        res3b_(register_module("res3b", ConvBn(r3, l3))),
        fc_(register_module("fc", nn::Linear(nn::LinearOptions(l3, s.num_classes).bias(false)))) {
  }

  torch::Tensor forward(torch::Tensor x) override {
    x = prep_->forward(x);
    x = torch::max_pool2d(layer1_->forward(x), 2);
    x = x + res1b_->forward(res1a_->forward(x));
    x = torch::max_pool2d(layer2_->forward(x), 2);
    x = torch::max_pool2d(layer3_->forward(x), 2);
    x = x + res3b_->forward(res3a_->forward(x));
    x = torch::amax(x, {2, 3});  // global max-pool
    return fc_->forward(x) * kResNetHeadScale;
  }
  const std::string& arch() const override { return name_; }

 private:
  std::string name_;
  ConvBn prep_, layer1_, res1a_, res1b_, layer2_, layer3_, res3a_, res3b_;
  nn::Linear fc_;
};

// GELU computed on the tensor's own memory order. libtorch 1.13's GELU kernels (forward and
// backward) are ~7x slower on a channels-last 4-D tensor than on the same memory seen as a
// contiguous NHWC tensor (measured: 38.6 vs 5.2 ms for bf16 [1024, 64, 15, 15]), which made
// them a quarter of airbench94's training step. The permutes are views; the values are the same.
torch::Tensor Gelu(const torch::Tensor& x) {
  if (x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(torch::MemoryFormat::ChannelsLast)) {
    return torch::gelu(x.permute({0, 2, 3, 1})).permute({0, 3, 1, 2});
  }
  return torch::gelu(x);
}

// airbench94's convolution: 3x3, identity-initialised (the first min(in, out) filters pass their
// input channel through), no bias; [max-pool 2 ->] batch norm (scale frozen at 1) -> GELU.
class AirbenchConvImpl : public nn::Module {
 public:
  AirbenchConvImpl(int64_t in, int64_t out, bool pool)
      : pool_(pool),
        conv(register_module("conv",
                             nn::Conv2d(nn::Conv2dOptions(in, out, 3).padding(1).bias(false)))),
        bn(register_module("bn", nn::BatchNorm2d(nn::BatchNorm2dOptions(out)
                                                     .eps(kAirbenchBatchNormEps)
                                                     .momentum(0.4)))) {
    torch::NoGradGuard no_grad;
    nn::init::dirac_(conv->weight.narrow(0, 0, std::min(in, out)));
    bn->weight.set_requires_grad(false);
  }
  torch::Tensor forward(torch::Tensor x) {
    x = conv->forward(x);
    if (pool_) x = torch::max_pool2d(x, 2);
    return Gelu(bn->forward(x));
  }

 private:
  bool pool_;

 public:
  nn::Conv2d conv;
  nn::BatchNorm2d bn;
};
TORCH_MODULE(AirbenchConv);

class Airbench : public Classifier {
 public:
  Airbench(const ModelShape& s, const ModelWidths& w)
      : whiten_(register_module(
            "whiten", nn::Conv2d(nn::Conv2dOptions(s.channels, 2 * s.channels * 4, 2).bias(true)))),
        block1a_(register_module("block1a",
                                 AirbenchConv(2 * s.channels * 4, WidthOr(w, "block1a", 64), true))),
        block1b_(register_module("block1b", AirbenchConv(WidthOr(w, "block1a", 64),
                                                         WidthOr(w, "block1b", 64), false))),
        block2a_(register_module("block2a", AirbenchConv(WidthOr(w, "block1b", 64),
                                                         WidthOr(w, "block2a", 256), true))),
        block2b_(register_module("block2b", AirbenchConv(WidthOr(w, "block2a", 256),
                                                         WidthOr(w, "block2b", 256), false))),
        block3a_(register_module("block3a", AirbenchConv(WidthOr(w, "block2b", 256),
                                                         WidthOr(w, "block3a", 256), true))),
        block3b_(register_module("block3b", AirbenchConv(WidthOr(w, "block3a", 256),
                                                         WidthOr(w, "block3b", 256), false))),
        fc_(register_module("fc", nn::Linear(nn::LinearOptions(WidthOr(w, "block3b", 256),
                                                               s.num_classes)
                                                 .bias(false)))),
        tta_(register_buffer("tta", torch::tensor(static_cast<int64_t>(TtaLevel::kFlip)))) {
    torch::NoGradGuard no_grad;
    whiten_->bias.zero_();
    whiten_->weight.set_requires_grad(false);
  }

  torch::Tensor forward(torch::Tensor x) override {
    if (is_training()) return Net(x);
    return ApplyTta([this](const torch::Tensor& v) { return Net(v); }, x, tta());
  }
  const std::string& arch() const override { return name_; }

  void InitFromData(const torch::Tensor& images) override {
    torch::NoGradGuard no_grad;
    whiten_->weight.copy_(WhiteningFilters(images, whiten_->weight.size(2)));
  }
  TtaLevel tta() const override { return static_cast<TtaLevel>(tta_.item<int64_t>()); }
  Status set_tta(TtaLevel level) override {
    tta_.fill_(static_cast<int64_t>(level));
    return Status::Ok();
  }

 private:
  torch::Tensor Net(torch::Tensor x) {
    x = Gelu(whiten_->forward(x));
    x = block1b_->forward(block1a_->forward(x));
    x = block2b_->forward(block2a_->forward(x));
    x = block3b_->forward(block3a_->forward(x));
    x = torch::amax(x, {2, 3});  // global max-pool (airbench's MaxPool2d(3) on 32x32 inputs)
    return fc_->forward(x) * kAirbenchHeadScale;
  }

  std::string name_ = "airbench94";
  nn::Conv2d whiten_;
  AirbenchConv block1a_, block1b_, block2a_, block2b_, block3a_, block3b_;
  nn::Linear fc_;
  torch::Tensor tta_;
};

// Output pixel (y, x) reads input (y + shift, x + shift), reflected at the edges.
torch::Tensor Shift(const torch::Tensor& x, int64_t shift) {
  if (shift == 0) return x;
  const int64_t p = std::abs(shift);
  torch::Tensor padded = torch::reflection_pad2d(x, {p, p, p, p});
  return padded.narrow(2, p + shift, x.size(2)).narrow(3, p + shift, x.size(3));
}

}  // namespace

std::vector<TtaView> TtaViews(TtaLevel level) {
  switch (level) {
    case TtaLevel::kNone:
      return {{0, false, 1.0}};
    case TtaLevel::kFlip:
      return {{0, false, 0.5}, {0, true, 0.5}};
    case TtaLevel::kFlipTranslate:
      return {{0, false, 0.25}, {0, true, 0.25},  {-1, false, 0.125},
              {-1, true, 0.125}, {1, false, 0.125}, {1, true, 0.125}};
  }
  return {{0, false, 1.0}};
}

Result<TtaLevel> ParseTtaLevel(const std::string& name) {
  for (TtaLevel l : {TtaLevel::kNone, TtaLevel::kFlip, TtaLevel::kFlipTranslate}) {
    if (TtaLevelName(l) == name) return l;
  }
  return InvalidArgumentError("test-time augmentation must be 'none', 'flip' or 'flip-translate', not '" +
                              name + "'");
}

std::string TtaLevelName(TtaLevel level) {
  switch (level) {
    case TtaLevel::kNone:
      return "none";
    case TtaLevel::kFlip:
      return "flip";
    case TtaLevel::kFlipTranslate:
      return "flip-translate";
  }
  return "unknown";
}

torch::Tensor ApplyTta(const std::function<torch::Tensor(const torch::Tensor&)>& net,
                       const torch::Tensor& x, TtaLevel level) {
  const std::vector<TtaView> views = TtaViews(level);
  if (views.size() == 1) return net(x);
  std::vector<torch::Tensor> inputs;
  for (const TtaView& v : views) {
    torch::Tensor view = Shift(x, v.shift);
    inputs.push_back(v.mirror ? view.flip({3}) : view);
  }
  torch::Tensor logits = net(torch::cat(inputs)).to(torch::kFloat);
  logits = logits.view({static_cast<int64_t>(views.size()), x.size(0), -1});
  std::vector<float> weights;
  for (const TtaView& v : views) weights.push_back(static_cast<float>(v.weight));
  return (logits * torch::tensor(weights).view({-1, 1, 1})).sum(0);
}

torch::Tensor WhiteningFilters(const torch::Tensor& images, int64_t k, double eps) {
  torch::NoGradGuard no_grad;
  const torch::Tensor x = images.to(torch::kDouble).contiguous();
  const int64_t c = x.size(1);
  // [N, C, H', W', k, k] -> one row per patch, flattened as (channel, row, column).
  torch::Tensor patches = x.unfold(2, k, 1).unfold(3, k, 1).permute({0, 2, 3, 1, 4, 5});
  patches = patches.reshape({-1, c * k * k});
  const torch::Tensor covariance = patches.t().matmul(patches) / static_cast<double>(patches.size(0));
  auto [eigenvalues, eigenvectors] = torch::linalg::eigh(covariance, "U");  // ascending
  eigenvalues = eigenvalues.flip({0});
  eigenvectors = eigenvectors.flip({1});
  const torch::Tensor filters =
      (eigenvectors.t() / torch::sqrt(eigenvalues + eps).unsqueeze(1)).reshape({c * k * k, c, k, k});
  return torch::cat({filters, -filters}).to(torch::kFloat).contiguous();
}

double BatchNormEps(const std::string& arch) {
  return arch == "airbench94" ? kAirbenchBatchNormEps : kBatchNormEps;
}

std::vector<std::string> ArchitectureNames() {
  return {"airbench94", "kiln-resnet", "resnet9", "seed-cnn"};
}

std::vector<std::string> WidthLayers(const std::string& arch) {
  if (arch == "seed-cnn") return {"conv1", "conv2", "conv3"};
  if (arch == "kiln-resnet" || arch == "resnet9") {
    return {"prep", "layer1", "res1a", "layer2", "layer3", "res3a"};
  }
  if (arch == "airbench94") return {"block1a", "block1b", "block2a", "block2b", "block3a", "block3b"};
  return {};
}

Result<std::shared_ptr<Classifier>> CreateModel(const std::string& arch, const ModelShape& shape,
                                                const ModelWidths& widths) {
  if (shape.channels <= 0 || shape.num_classes < 2 || shape.height < 8 || shape.width < 8 ||
      shape.height % 8 != 0 || shape.width % 8 != 0) {
    return InvalidArgumentError(
        "model input must be at least 8x8 with sides divisible by 8, "
        "with >= 1 channel and >= 2 classes");
  }
  const std::vector<std::string> layers = WidthLayers(arch);
  for (const auto& [layer, width] : widths) {
    if (std::find(layers.begin(), layers.end(), layer) == layers.end()) {
      return InvalidArgumentError("architecture '" + arch + "' has no layer '" + layer +
                                  "' whose width can be set");
    }
    if (width < 1 || width > 65536) {
      return InvalidArgumentError("width " + std::to_string(width) + " of layer '" + layer +
                                  "' is out of range [1, 65536]");
    }
  }
  if (arch == "seed-cnn") {
    return std::shared_ptr<Classifier>(std::make_shared<SeedCnn>(shape, widths));
  }
  if (arch == "kiln-resnet") {
    return std::shared_ptr<Classifier>(std::make_shared<ResNet9>(shape, 32, widths, arch));
  }
  if (arch == "resnet9") {
    return std::shared_ptr<Classifier>(std::make_shared<ResNet9>(shape, 64, widths, arch));
  }
  if (arch == "airbench94") {
    return std::shared_ptr<Classifier>(std::make_shared<Airbench>(shape, widths));
  }
  std::string known;
  for (const auto& n : ArchitectureNames()) known += (known.empty() ? "" : ", ") + n;
  return InvalidArgumentError("unknown architecture '" + arch + "' (known: " + known + ")");
}

int64_t CountParameters(const torch::nn::Module& model) {
  int64_t n = 0;
  for (const auto& p : model.parameters()) {
    if (p.requires_grad()) n += p.numel();
  }
  return n;
}

}  // namespace kiln::train
