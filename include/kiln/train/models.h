// Image classifier architectures, built with libtorch and selected by name.
//
//   KILN_ASSIGN_OR_RETURN(auto model, kiln::train::CreateModel("seed-cnn", {}));
//   torch::Tensor logits = model->forward(images);  // [N, num_classes]
//
// Architectures (see ArchitectureNames()):
//   seed-cnn     the reference project's model: three 3x3 convolutions 3->32->64->128, each
//                ReLU + 2x2 max-pool, then 2048->256->num_classes fully connected (ReLU between).
//   kiln-resnet  Kiln's default: a ResNet-9-style network with batch norm (prep conv, three
//                stages with max-pool, residual blocks after stages 1 and 3, global max-pool and
//                a scaled linear head), 32 base channels — sized to train well on 2 CPU cores.
//   resnet9      the same network at 64 base channels (the DAWNBench ResNet-9; slower, stronger).
// Input: float32 [N, C, H, W], normalized; H and W divisible by 8.
// Modules are not thread-safe; use one per thread or guard calls.
#pragma once

#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kiln/core/status.h"

namespace kiln::train {

struct ModelShape {
  int64_t channels = 3;
  int64_t height = 32;
  int64_t width = 32;
  int64_t num_classes = 10;
};

class Classifier : public torch::nn::Module {
 public:
  virtual torch::Tensor forward(torch::Tensor x) = 0;
  virtual const std::string& arch() const = 0;
};

// Batch-norm epsilon used by every architecture (libtorch's default), and the factor ResNet-9
// scales its logits by (keeps the initial softmax soft). Exporters fold both into weights.
inline constexpr double kBatchNormEps = 1e-5;
inline constexpr double kResNetHeadScale = 0.125;

std::vector<std::string> ArchitectureNames();

// Output channels of individual convolutions, by layer name, where they differ from the
// architecture's defaults (structured pruning makes them smaller). Layers: seed-cnn "conv1",
// "conv2", "conv3"; kiln-resnet/resnet9 "prep", "layer1" (also res1b, whose output is added to
// it), "res1a", "layer2", "layer3" (also res3b), "res3a".
using ModelWidths = std::map<std::string, int64_t>;

// The layer names ModelWidths accepts for `arch` (empty for an unknown arch).
std::vector<std::string> WidthLayers(const std::string& arch);

// Creates a freshly initialised model. Unknown names, unknown width layers and impossible
// shapes are InvalidArgument.
Result<std::shared_ptr<Classifier>> CreateModel(const std::string& arch, const ModelShape& shape,
                                                const ModelWidths& widths = {});

// Number of trainable parameters.
int64_t CountParameters(const torch::nn::Module& model);

}  // namespace kiln::train
