// A small trained model for tests that need non-trivial weights and batch-norm statistics.
#pragma once

#include <cstdint>
#include <string>

#include "kiln/train/checkpoint.h"
#include "kiln/train/models.h"

namespace kiln::testing {

// `arch` after `steps` SGD steps (batch 64, lr 0.05, momentum 0.9) on the first training images
// of the shared data set, seeded with `seed`; eval mode. Fails the test if the model cannot be
// created. airbench94 is built at a reduced width (kSmallAirbenchWidths), its whitening layer
// fitted to the first 256 training images, with flip test-time augmentation (its default).
inline const train::ModelWidths kSmallAirbenchWidths = {
    {"block1a", 32}, {"block1b", 32}, {"block2a", 64},
    {"block2b", 64}, {"block3a", 64}, {"block3b", 64}};

train::Checkpoint SmallTrainedModel(const std::string& arch, uint64_t seed, int64_t steps);

}  // namespace kiln::testing
