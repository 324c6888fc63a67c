// Kiln's metadata in an exported model (written by `kiln export`; ONNX metadata_props, or the
// TorchScript archive's kTorchScriptMetadataFile): the label names ("kiln.labels", a JSON array
// of strings), the input normalization ("kiln.normalization", {"mean": [...], "std": [...]})
// and the drift reference profile ("kiln.drift_reference", see DriftReferenceJson).
// The one reader of these keys: eval, predict, bench and the server all call it.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "kiln/core/drift.h"
#include "kiln/core/status.h"

namespace kiln::backend {

struct KilnModelMetadata {
  std::vector<std::string> labels;  // empty when the file has no "kiln.labels"
  std::vector<float> mean;          // per channel; empty when the file has no normalization
  std::vector<float> stddev;
  // What the model's predictions looked like on held-out data (kiln export); absent in models
  // exported before it existed or by other tools: such a model has no drift metrics.
  std::optional<drift::Reference> drift_reference;
  bool has_labels() const { return !labels.empty(); }
  bool has_normalization() const { return !mean.empty(); }
};

// Reads whichever of the two keys `metadata` holds (a missing key leaves its fields empty).
// InvalidArgument naming `model_path` when a key is present but malformed (not JSON, wrong
// types, mean/std of different or zero length, a std of zero or less, a drift reference whose
// shares are not distributions or whose sizes disagree).
Result<KilnModelMetadata> ReadKilnMetadata(const std::map<std::string, std::string>& metadata,
                                           const std::string& model_path);

inline constexpr const char* kDriftReferenceKey = "kiln.drift_reference";
// The value of kDriftReferenceKey: {"images", "source", "class_share": [...],
// "confidence_bounds": [...], "confidence_share": [...], "mean_confidence",
// "channel_mean": [...], "channel_std": [...]}.
std::string DriftReferenceJson(const drift::Reference& reference);

}  // namespace kiln::backend
