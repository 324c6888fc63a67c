#include "kiln/train/models.h"

namespace kiln::train {

namespace nn = torch::nn;

namespace {

class SeedCnn : public Classifier {
 public:
  explicit SeedCnn(const ModelShape& s)
      : conv1_(
            register_module("conv1", nn::Conv2d(nn::Conv2dOptions(s.channels, 32, 3).padding(1)))),
        conv2_(register_module("conv2", nn::Conv2d(nn::Conv2dOptions(32, 64, 3).padding(1)))),
        conv3_(register_module("conv3", nn::Conv2d(nn::Conv2dOptions(64, 128, 3).padding(1)))),
        fc1_(register_module("fc1", nn::Linear(128 * (s.height / 8) * (s.width / 8), 256))),
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
  ResNet9(const ModelShape& s, int64_t w, std::string name)
      : name_(std::move(name)),
        prep_(register_module("prep", ConvBn(s.channels, w))),
        layer1_(register_module("layer1", ConvBn(w, 2 * w))),
        res1a_(register_module("res1a", ConvBn(2 * w, 2 * w))),
        res1b_(register_module("res1b", ConvBn(2 * w, 2 * w))),
        layer2_(register_module("layer2", ConvBn(2 * w, 4 * w))),
        layer3_(register_module("layer3", ConvBn(4 * w, 8 * w))),
        res3a_(register_module("res3a", ConvBn(8 * w, 8 * w))),
        res3b_(register_module("res3b", ConvBn(8 * w, 8 * w))),
        fc_(register_module("fc",
                            nn::Linear(nn::LinearOptions(8 * w, s.num_classes).bias(false)))) {}

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

Result<std::shared_ptr<Classifier>> CreateModel(const std::string& arch, const ModelShape& shape) {
  if (shape.channels <= 0 || shape.num_classes < 2 || shape.height < 8 || shape.width < 8 ||
      shape.height % 8 != 0 || shape.width % 8 != 0) {
    return InvalidArgumentError(
        "model input must be at least 8x8 with sides divisible by 8, "
        "with >= 1 channel and >= 2 classes");
  }
  if (arch == "seed-cnn") return std::shared_ptr<Classifier>(std::make_shared<SeedCnn>(shape));
  if (arch == "kiln-resnet") {
    return std::shared_ptr<Classifier>(std::make_shared<ResNet9>(shape, 32, arch));
  }
  if (arch == "resnet9") {
    return std::shared_ptr<Classifier>(std::make_shared<ResNet9>(shape, 64, arch));
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
