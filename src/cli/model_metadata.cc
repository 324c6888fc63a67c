#include <nlohmann/json.hpp>

#include "commands.h"

namespace kiln::cli {

Result<ModelMetadata> ReadModelMetadata(const backend::InferenceBackend& engine,
                                        const std::string& model_path) {
  const auto& meta = engine.metadata();
  if (meta.count("kiln.normalization") == 0 || meta.count("kiln.labels") == 0) {
    return InvalidArgumentError(
        model_path +
        ": no Kiln metadata (kiln.normalization, kiln.labels); export it with kiln export");
  }
  ModelMetadata out;
  try {
    auto n = nlohmann::json::parse(meta.at("kiln.normalization"));
    out.normalization.mean = n.at("mean").get<std::vector<float>>();
    out.normalization.std = n.at("std").get<std::vector<float>>();
    out.labels = nlohmann::json::parse(meta.at("kiln.labels")).get<std::vector<std::string>>();
  } catch (const std::exception& e) {
    return InvalidArgumentError(model_path + ": malformed Kiln metadata: " + e.what());
  }
  if (out.normalization.mean.size() != out.normalization.std.size() ||
      out.normalization.mean.empty()) {
    return InvalidArgumentError(model_path +
                                ": malformed Kiln metadata: normalization mean/std sizes differ");
  }
  return out;
}

}  // namespace kiln::cli
