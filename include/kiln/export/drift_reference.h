// The drift reference profile that `kiln export` stores in every model it writes
// (backend::kDriftReferenceKey): the checkpoint's predictions on the validation split that its
// training run held out (same size and seed as the run's options), so the server can compare
// the traffic it serves with what the model saw on data it was not trained on.
//
//   KILN_ASSIGN_OR_RETURN(drift::Reference ref, exporter::ComputeDriftReference(ckpt, dataset));
//   options.extra_metadata[backend::kDriftReferenceKey] = backend::DriftReferenceJson(ref);
#pragma once

#include "kiln/core/drift.h"
#include "kiln/core/status.h"
#include "kiln/data/cifar10.h"
#include "kiln/train/checkpoint.h"

namespace kiln::exporter {

// A run that held out no validation images falls back to the test split (said in `source`).
// `limit` > 0 caps the number of images (the first ones of the split).
Result<drift::Reference> ComputeDriftReference(const train::Checkpoint& checkpoint,
                                               const data::Dataset& dataset, int64_t limit = 0);

// The same over any image set (normalized with the checkpoint's normalization).
Result<drift::Reference> ComputeDriftReference(const train::Checkpoint& checkpoint,
                                               const data::ImageSet& images,
                                               const std::string& source);

}  // namespace kiln::exporter
