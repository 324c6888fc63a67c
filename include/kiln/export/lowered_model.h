// A trained model lowered to a flat list of inference operations with eval-mode constants
// folded in — the one place that knows each architecture's structure for export. The ONNX and
// TorchScript writers both emit from it, so the two files always describe the same network.
//
// Batch norm is folded into the convolution before it (in double, rounded once to float) and
// ResNet-9's 1/8 (airbench94's 1/9) logit scale into the head's weights. airbench94's batch norm
// follows a max-pool; its scale folds into the convolution before the pool because it is never
// negative (frozen at 1), so it commutes with the max, and its shift is added after the pool
// (kBias), in front of the GELU. Written as conv-with-bias -> pool -> GELU, the graph is the same
// function, but OpenVINO's CPU plugin (2026.4, f32) fuses the GELU into the convolution across
// the max-pool, which is exact only for a non-decreasing activation such as ReLU; the separate
// Add after the pool stops that fusion (docs/decisions.md, "OpenVINO and airbench94").
// A model carrying test-time augmentation (airbench94) lowers it too: `tta` lists the views the
// writers build from the input, run through the network as one batch, and average. Residual
// connections use a small stack: kPushSkip saves the current value, kAddSkip adds the saved
// value to the current one.
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

#include "kiln/core/status.h"
#include "kiln/train/checkpoint.h"
#include "kiln/train/models.h"

namespace kiln::exporter {

struct LoweredOp {
  enum class Kind {
    kConv,  // stride 1, kernel from the weight, `padding` on every side
    kRelu,
    kGelu,  // exact (erf) GELU
    kBias,  // add `bias` [C] to every position of channel C
    kMaxPool2,
    kPushSkip,
    kAddSkip,
    kGlobalMaxPool,
    kFlatten,
    kLinear
  };
  Kind kind;
  std::string name;      // layer name, e.g. "layer1" (for node names)
  torch::Tensor weight;  // kConv: [out, in, k, k]; kLinear: [out, in]
  torch::Tensor bias;    // kBias; may be undefined for kConv and kLinear
  int64_t padding = 1;   // kConv
};

struct LoweredModel {
  std::vector<LoweredOp> ops;
  std::vector<train::TtaView> tta;  // empty or one view: none
  int64_t height = 0;               // input size (the views' crops need it)
  int64_t width = 0;
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
