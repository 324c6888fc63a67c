// A small trained model for tests that need non-trivial weights and batch-norm statistics.
#pragma once

#include <cstdint>
#include <string>

#include "kiln/train/checkpoint.h"

namespace kiln::testing {

// `arch` after `steps` SGD steps (batch 64, lr 0.05, momentum 0.9) on the first training images
// of the shared data set, seeded with `seed`; eval mode. Fails the test if the model cannot be
// created.
train::Checkpoint SmallTrainedModel(const std::string& arch, uint64_t seed, int64_t steps);

}  // namespace kiln::testing
