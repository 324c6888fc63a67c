#include "kiln/train/models.h"

#include <algorithm>

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

}  // namespace

std::vector<std::string> ArchitectureNames() { return {"kiln-resnet", "resnet9", "seed-cnn"}; }

std::vector<std::string> WidthLayers(const std::string& arch) {
  if (arch == "seed-cnn") return {"conv1", "conv2", "conv3"};
  if (arch == "kiln-resnet" || arch == "resnet9") {
    return {"prep", "layer1", "res1a", "layer2", "layer3", "res3a"};
  }
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
