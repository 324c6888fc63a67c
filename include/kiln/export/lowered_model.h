// A trained model lowered to a flat list of inference operations with eval-mode constants
// folded in — the one place that knows each architecture's structure for export. The ONNX and
// TorchScript writers both emit from it, so the two files always describe the same network.
//
// Batch norm is folded into the convolution before it (in double, rounded once to float) and
// ResNet-9's 1/8 logit scale into the head's weights. Residual connections use a small stack:
// kPushSkip saves the current value, kAddSkip adds the saved value to the current one.
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

#include "kiln/core/status.h"
#include "kiln/train/checkpoint.h"

namespace kiln::exporter {

struct LoweredOp {
  enum class Kind {
    kConv3x3,
    kRelu,
    kMaxPool2,
    kPushSkip,
    kAddSkip,
    kGlobalMaxPool,
    kFlatten,
    kLinear
  };
  Kind kind;
  std::string name;      // layer name, e.g. "layer1" (for node names)
  torch::Tensor weight;  // kConv3x3: [out, in, 3, 3]; kLinear: [out, in]
  torch::Tensor bias;    // may be undefined for kLinear
};

struct LoweredModel {
  std::vector<LoweredOp> ops;
};

// Lowers `checkpoint.model` (eval mode). Unknown architectures are Unimplemented.
Result<LoweredModel> LowerModel(const train::Checkpoint& checkpoint);

// The metadata every exported file carries (ONNX metadata_props; TorchScript extra file
// "kiln_metadata.json" holding the same keys): kiln.arch, kiln.labels (JSON array),
// kiln.normalization (JSON {mean, std} on pixels scaled to [0, 1]), kiln.input_layout ("NCHW"),
// kiln.input_shape (JSON [-1, C, H, W]), kiln.version, kiln.checkpoint_created and, when given,
// kiln.training_summary (JSON), plus `extra` (e.g. kiln.drift_reference; it may not replace
// the keys above).
std::map<std::string, std::string> ExportMetadata(
    const train::Checkpoint& checkpoint, const std::string& training_summary_json,
    const std::map<std::string, std::string>& extra = {});

}  // namespace kiln::exporter
