#include "kiln/backend/model_metadata.h"

#include <cmath>
#include <nlohmann/json.hpp>
#include <numeric>

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
  if (auto it = metadata.find(kDriftReferenceKey); it != metadata.end()) {
    drift::Reference r;
    try {
      auto j = nlohmann::json::parse(it->second);
      r.images = j.at("images").get<int64_t>();
      r.source = j.value("source", "");
      r.class_share = j.at("class_share").get<std::vector<double>>();
      r.confidence_share = j.at("confidence_share").get<std::vector<double>>();
      r.mean_confidence = j.at("mean_confidence").get<double>();
      r.channel_mean = j.value("channel_mean", std::vector<double>{});
      r.channel_std = j.value("channel_std", std::vector<double>{});
      if (j.at("confidence_bounds").get<std::vector<double>>() != drift::ConfidenceBounds()) {
        return malformed(it->first, "confidence_bounds differ from this Kiln's buckets");
      }
    } catch (const std::exception& e) {
      return malformed(it->first, e.what());
    }
    auto distribution = [](const std::vector<double>& v) {
      double sum = 0;
      for (double x : v) {
        if (!(x >= 0 && x <= 1)) return false;
        sum += x;
      }
      return !v.empty() && std::abs(sum - 1) < 1e-6;
    };
    if (r.images <= 0) return malformed(it->first, "images must be positive");
    if (!distribution(r.class_share) || !distribution(r.confidence_share)) {
      return malformed(it->first, "class_share and confidence_share must each sum to 1");
    }
    if (r.confidence_share.size() != drift::ConfidenceBounds().size()) {
      return malformed(it->first, "confidence_share has the wrong number of buckets");
    }
    if (r.channel_mean.size() != r.channel_std.size()) {
      return malformed(it->first, "channel_mean and channel_std differ in length");
    }
    for (double s : r.channel_std) {
      if (!(s >= 0) || !std::isfinite(s)) return malformed(it->first, "channel_std must be >= 0");
    }
    if (out.has_labels() && out.labels.size() != r.class_share.size()) {
      return malformed(it->first, "class_share has " + std::to_string(r.class_share.size()) +
                                      " classes, the labels " + std::to_string(out.labels.size()));
    }
    out.drift_reference = std::move(r);
  }
  return out;
}

std::string DriftReferenceJson(const drift::Reference& r) {
  nlohmann::json j = {{"images", r.images},
                      {"source", r.source},
                      {"class_share", r.class_share},
                      {"confidence_bounds", drift::ConfidenceBounds()},
                      {"confidence_share", r.confidence_share},
                      {"mean_confidence", r.mean_confidence},
                      {"channel_mean", r.channel_mean},
                      {"channel_std", r.channel_std}};
  return j.dump();
}

}  // namespace kiln::backend
