// Checking an exported model against reference logits (those of the libtorch model it came
// from, computed by train::PredictLogits).
//
// Runs `engine` on every image of `images` and compares its outputs with `reference`
// ([images.size(), num_classes], row-major): the export is accepted when the largest absolute
// difference is <= `tolerance` and every image gets the same top-1 class. A mismatch is an
// InvalidArgument Status carrying the numbers; the report is filled either way.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/backend/inference_backend.h"
#include "kiln/core/status.h"
#include "kiln/data/cifar10.h"
#include "kiln/data/loader.h"

namespace kiln::eval {

struct ParityReport {
  std::string backend;
  int64_t images = 0;
  double max_abs_diff = 0.0;
  int64_t top1_mismatches = 0;
  double accuracy = 0.0;  // of the exported model on `images`
};

Status CheckParity(const std::vector<float>& reference, int64_t num_classes,
                   backend::InferenceBackend& engine, const data::ImageSet& images,
                   const data::Normalization& norm, double tolerance, ParityReport* report,
                   int64_t batch_size = 256);

}  // namespace kiln::eval
