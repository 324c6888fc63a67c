// Kiln's metadata in an exported model (written by `kiln export`; ONNX metadata_props, or the
// TorchScript archive's kTorchScriptMetadataFile): the label names ("kiln.labels", a JSON array
// of strings) and the input normalization ("kiln.normalization", {"mean": [...], "std": [...]}).
// The one reader of these keys: eval, predict, bench and the server all call it.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "kiln/core/status.h"

namespace kiln::backend {

struct KilnModelMetadata {
  std::vector<std::string> labels;  // empty when the file has no "kiln.labels"
  std::vector<float> mean;          // per channel; empty when the file has no normalization
  std::vector<float> stddev;
  bool has_labels() const { return !labels.empty(); }
  bool has_normalization() const { return !mean.empty(); }
};

// Reads whichever of the two keys `metadata` holds (a missing key leaves its fields empty).
// InvalidArgument naming `model_path` when a key is present but malformed (not JSON, wrong
// types, mean/std of different or zero length, a std of zero or less).
Result<KilnModelMetadata> ReadKilnMetadata(const std::map<std::string, std::string>& metadata,
                                           const std::string& model_path);

}  // namespace kiln::backend
