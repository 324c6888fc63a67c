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
//   airbench94   Keller Jordan's airbench94 network (2024): a frozen 2x2 patch-whitening
//                convolution (C -> 2*C*4, bias, no padding) + GELU, then three blocks of
//                conv 3x3 -> max-pool 2 -> batch norm -> GELU -> conv 3x3 -> batch norm -> GELU
//                (64, 256, 256 channels; convolutions identity-initialised, batch-norm scales
//                frozen at 1), global max-pool and a linear head scaled by 1/9. In eval mode its
//                forward() averages the logits of test-time-augmentation views (see TtaLevel),
//                so every evaluation of it, and every file exported from it, includes them.
// Input: float32 [N, C, H, W], normalized; H and W divisible by 8.
// Modules are not thread-safe; use one per thread or guard calls.
#pragma once

#include <torch/torch.h>

#include <functional>
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

// Test-time augmentation carried by a model (airbench94 only; others are kNone). Views, each
// the whole image shifted and/or mirrored, with its logits weighted:
//   kNone           the image (1 view).
//   kFlip           the image and its mirror, 1/2 each (2 views).
//   kFlipTranslate  kFlip's two views at 1/4 each, and the image shifted one pixel up-left and
//                   one down-right (reflect padding), each with its mirror, at 1/8 each (6 views).
enum class TtaLevel : int64_t { kNone = 0, kFlip = 1, kFlipTranslate = 2 };

struct TtaView {
  int64_t shift = 0;  // output pixel (y, x) reads input (y + shift, x + shift), reflected at edges
  bool mirror = false;
  double weight = 1.0;
};
std::vector<TtaView> TtaViews(TtaLevel level);
Result<TtaLevel> ParseTtaLevel(const std::string& name);  // "none", "flip", "flip-translate"
std::string TtaLevelName(TtaLevel level);

// The logits a model with `level` computes in eval mode, from a network `net` without TTA.
torch::Tensor ApplyTta(const std::function<torch::Tensor(const torch::Tensor&)>& net,
                       const torch::Tensor& x, TtaLevel level);

class Classifier : public torch::nn::Module {
 public:
  virtual torch::Tensor forward(torch::Tensor x) = 0;
  virtual const std::string& arch() const = 0;
  // Data-dependent initialisation from normalized training images ([N, C, H, W]); airbench94's
  // patch whitening. Others do nothing.
  virtual void InitFromData(const torch::Tensor& /*images*/) {}
  // The test-time augmentation forward() applies in eval mode (kNone where unsupported).
  virtual TtaLevel tta() const { return TtaLevel::kNone; }
  // InvalidArgument for an architecture that does not support it.
  virtual Status set_tta(TtaLevel level) {
    return level == TtaLevel::kNone ? Status::Ok()
                                    : InvalidArgumentError(arch() + " has no test-time augmentation");
  }
};

// Batch-norm epsilon of seed-cnn and the ResNets (libtorch's default), and the factor ResNet-9
// scales its logits by (keeps the initial softmax soft). Exporters fold both into weights.
inline constexpr double kBatchNormEps = 1e-5;
inline constexpr double kResNetHeadScale = 0.125;
// airbench94's batch-norm epsilon and logit scale (its paper's values).
inline constexpr double kAirbenchBatchNormEps = 1e-12;
inline constexpr double kAirbenchHeadScale = 1.0 / 9.0;

// The batch-norm epsilon of `arch`'s layers.
double BatchNormEps(const std::string& arch);

// Filters that whiten the k x k patches of `images` ([N, C, H, W], normalized): with the
// patch covariance S = V diag(l) V^T (patches flattened to C*k*k), the first C*k*k filters are
// the eigenvectors scaled by 1/sqrt(l + eps), largest eigenvalue first, and the next C*k*k
// their negatives (so a following GELU keeps both signs). Output [2*C*k*k, C, k, k].
torch::Tensor WhiteningFilters(const torch::Tensor& images, int64_t k, double eps = 5e-4);

std::vector<std::string> ArchitectureNames();

// Output channels of individual convolutions, by layer name, where they differ from the
// architecture's defaults (structured pruning makes them smaller). Layers: seed-cnn "conv1",
// "conv2", "conv3"; kiln-resnet/resnet9 "prep", "layer1" (also res1b, whose output is added to
// it), "res1a", "layer2", "layer3" (also res3b), "res3a"; airbench94 "block1a", "block1b",
// "block2a", "block2b", "block3a", "block3b" (the first and second convolution of each block).
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
