// Writing a trained Kiln model as a TorchScript archive (model.pt) that `torch::jit::load` (or
// Python's `torch.jit.load`) opens without any Kiln code.
//
// Debian's libtorch 1.13 C++ API cannot trace or script a C++ torch::nn::Module, and
// `torch::save` of one writes a plain tensor archive that torch::jit::load rejects. So Kiln
// compiles the network from TorchScript source with torch::jit::Module::define() — forward
// written with torch.conv2d, torch.relu, torch.max_pool2d, torch.addmm, ... from the same
// lowered op list as the ONNX writer (batch norm folded) — registers the trained tensors as the
// module's parameters, and saves it with Module::save(). The archive carries the extra file
// backend::kTorchScriptMetadataFile: the same keys as the ONNX file's metadata_props
// (ExportMetadata()). Input float32 [N, C, H, W] normalized; output logits [N, num_classes].
// Thread-safe.
#pragma once

#include <filesystem>
#include <map>
#include <string>

#include "kiln/core/status.h"
#include "kiln/train/checkpoint.h"

namespace kiln::exporter {

// The TorchScript source of the model's forward() (for tests and curious users).
Result<std::string> TorchScriptSource(const train::Checkpoint& checkpoint);

// Writes the archive atomically. `training_summary_json` may be empty; `extra_metadata` joins
// the metadata file (see ExportMetadata).
Status ExportTorchScript(const train::Checkpoint& checkpoint, const std::filesystem::path& file,
                         const std::string& training_summary_json,
                         const std::map<std::string, std::string>& extra_metadata = {});

}  // namespace kiln::exporter
