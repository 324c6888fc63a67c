#include "kiln/backend/model_metadata.h"

#include <nlohmann/json.hpp>

namespace kiln::backend {

Result<KilnModelMetadata> ReadKilnMetadata(const std::map<std::string, std::string>& metadata,
                                           const std::string& model_path) {
  KilnModelMetadata out;
  auto malformed = [&](const std::string& key, const std::string& why) {
    return InvalidArgumentError(model_path + ": malformed Kiln metadata '" + key + "': " + why);
  };
  if (auto it = metadata.find("kiln.labels"); it != metadata.end()) {
    try {
      out.labels = nlohmann::json::parse(it->second).get<std::vector<std::string>>();
    } catch (const std::exception& e) {
      return malformed(it->first, e.what());
    }
    if (out.labels.empty()) return malformed(it->first, "no labels");
  }
  if (auto it = metadata.find("kiln.normalization"); it != metadata.end()) {
    try {
      auto n = nlohmann::json::parse(it->second);
      out.mean = n.at("mean").get<std::vector<float>>();
      out.stddev = n.at("std").get<std::vector<float>>();
    } catch (const std::exception& e) {
      return malformed(it->first, e.what());
    }
    if (out.mean.empty() || out.mean.size() != out.stddev.size()) {
      return malformed(it->first, "mean and std must have the same, non-zero length");
    }
    for (float s : out.stddev) {
      if (!(s > 0)) return malformed(it->first, "std must be positive");
    }
  }
  return out;
}

}  // namespace kiln::backend
