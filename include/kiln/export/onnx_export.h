// Writing a trained Kiln model as an ONNX graph, built by Kiln itself with the ONNX protobuf
// API (libtorch's C++ API has no ONNX exporter).
//
//   KILN_ASSIGN_OR_RETURN(auto ckpt, kiln::train::LoadCheckpoint("runs/x/best.ckpt"));
//   kiln::exporter::OnnxExportOptions opt;            // opset 17, input "input", output "logits"
//   KILN_RETURN_IF_ERROR(kiln::exporter::ExportOnnx(ckpt, opt, "model.onnx"));
//
// The graph takes float32 [N, C, H, W] (N symbolic, named "batch") already normalized with the
// mean/std stored in metadata_props, and returns float32 logits [N, num_classes]. Batch norm is
// folded into the preceding convolution; ResNet-9's 1/8 head scale is folded into the head's
// weights. The written model passes onnx::checker and strict shape inference (both run before
// anything is written; a failure is an Internal Status, and no file is left behind).
// Thread-safe: reads the model, does not modify it.
#pragma once

#include <filesystem>
#include <map>
#include <string>

#include "kiln/core/status.h"
#include "kiln/train/checkpoint.h"

namespace kiln::exporter {

struct OnnxExportOptions {
  int64_t opset = 17;  // 13..17
  std::string input_name = "input";
  std::string output_name = "logits";
  std::string graph_name = "kiln";
  // Free-form JSON text stored as metadata "training_summary" (e.g. summary.json); may be empty.
  std::string training_summary_json;
  // More metadata_props (e.g. kiln.drift_reference); see ExportMetadata.
  std::map<std::string, std::string> extra_metadata;

  Status Validate() const;
};

// Builds the ONNX model in memory and returns it serialized (the bytes of a .onnx file).
Result<std::string> BuildOnnxModel(const train::Checkpoint& checkpoint,
                                   const OnnxExportOptions& options);

// BuildOnnxModel + atomic write to `file`.
Status ExportOnnx(const train::Checkpoint& checkpoint, const OnnxExportOptions& options,
                  const std::filesystem::path& file);

}  // namespace kiln::exporter
