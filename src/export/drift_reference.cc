#include "kiln/export/drift_reference.h"

#include <nlohmann/json.hpp>

#include "kiln/data/loader.h"
#include "kiln/train/evaluate.h"

namespace kiln::exporter {

Result<drift::Reference> ComputeDriftReference(const train::Checkpoint& checkpoint,
                                               const data::ImageSet& images,
                                               const std::string& source) {
  if (images.size() == 0) return InvalidArgumentError("no images for the drift reference");
  const auto& norm = checkpoint.meta.normalization;
  torch::Tensor logits;
  try {
    KILN_ASSIGN_OR_RETURN(logits, train::PredictLogits(*checkpoint.model, images, norm));
    logits = logits.to(torch::kFloat).contiguous();
  } catch (const std::exception& e) {
    return InternalError(std::string("drift reference: ") + e.what());
  }
  const int64_t classes = logits.size(1);
  const int64_t hw = images.height * images.width;
  drift::Profile profile(classes, images.channels);
  std::vector<float> input(static_cast<size_t>(images.image_bytes()));
  const float* rows = logits.data_ptr<float>();
  for (int64_t i = 0; i < images.size(); ++i) {
    data::NormalizeImage(images.image(i), images.channels, hw, norm, input.data());
    profile.Add(rows + i * classes, input.data(), hw);
  }
  return drift::MakeReference(profile, source);
}

Result<drift::Reference> ComputeDriftReference(const train::Checkpoint& checkpoint,
                                               const data::Dataset& dataset, int64_t limit) {
  int64_t validation_size = 5000;
  uint64_t seed = 0;
  try {
    const auto o = nlohmann::json::parse(checkpoint.meta.train_options_json);
    validation_size = o.value("validation_size", validation_size);
    seed = o.value("seed", seed);
  } catch (const std::exception& e) {
    return InvalidArgumentError(std::string("the checkpoint's training options are not JSON: ") +
                                e.what());
  }
  data::ImageSet set;
  std::string source;
  if (validation_size > 0 && validation_size < dataset.train.size()) {
    KILN_ASSIGN_OR_RETURN(auto split, data::SplitValidation(dataset.train, validation_size, seed));
    set = std::move(split.second);
    source = "validation split (" + std::to_string(validation_size) + " training images held out, "
             "seed " + std::to_string(seed) + ")";
  } else {
    set = dataset.test;
    source = "test split (the training run held out no validation images)";
  }
  if (limit > 0 && limit < set.size()) {
    std::vector<int64_t> first(static_cast<size_t>(limit));
    for (int64_t i = 0; i < limit; ++i) first[static_cast<size_t>(i)] = i;
    set = set.Subset(first);
    source += ", first " + std::to_string(limit) + " images";
  }
  return ComputeDriftReference(checkpoint, set, source);
}

}  // namespace kiln::exporter
