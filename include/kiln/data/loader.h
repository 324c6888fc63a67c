// Normalization and the training data loader (shuffling, mini-batches, augmentation).
//
//   auto norm = kiln::data::ComputeNormalization(train);
//   kiln::data::BatchLoader loader(&train, norm, {.batch_size = 256, .seed = 7});
//   for (int64_t b = 0; b < loader.NumBatches(); ++b) {
//     int64_t n = loader.FillBatch(epoch, b, images.data(), labels.data());
//   }
//
// Determinism: the order of an epoch and every random augmentation of a batch are a pure
// function of (seed, epoch, batch index), so a run is reproducible and can resume mid-epoch.
// Output images are float32, planar (NCHW), normalized as (pixel / 255 - mean) / std.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "kiln/core/status.h"
#include "kiln/data/cifar10.h"

namespace kiln::data {

// Per-channel mean and standard deviation of pixel values scaled to [0, 1].
struct Normalization {
  std::vector<float> mean;
  std::vector<float> std;
};

// Mean/std per channel over every pixel of `set` (population std), computed in double.
Normalization ComputeNormalization(const ImageSet& set);

// The one normalization routine: training, evaluation and image preprocessing all call it, so
// the same pixels give bit-identical tensors everywhere. `chw` holds channels*hw bytes.
void NormalizeImage(const uint8_t* chw, int64_t channels, int64_t hw, const Normalization& norm,
                    float* out);

struct AugmentOptions {
  bool random_crop = true;  // pad by `pad` pixels and crop back at a random offset
  int64_t pad = 4;
  bool reflect = false;  // pad by reflection (airbench's translation) instead of black pixels
  bool flip = true;      // horizontal flip with probability 1/2
  // With `flip`: each image's flip is drawn once per run (from the seed and its index), and
  // every odd epoch mirrors it again, so an image is seen both ways in any two consecutive
  // epochs (airbench's alternating flip) instead of independently each epoch.
  bool alternating_flip = false;
  int64_t cutout = 0;  // side of a square set to the mean (0 after normalization); 0 = off
};

struct LoaderOptions {
  int64_t batch_size = 256;
  bool shuffle = true;
  bool drop_last = true;  // drop an incomplete final batch (training); false for evaluation
  bool augment = true;    // apply `augmentation`
  AugmentOptions augmentation;
  uint64_t seed = 0;

  // Every image once, in set order, unaugmented, the last batch possibly short: evaluation.
  static LoaderOptions InOrder(int64_t batch_size);

  Status Validate() const;
};

// Serves normalized (and optionally augmented) mini-batches from an ImageSet it does not own;
// the set must outlive the loader. Not thread-safe (caches the current epoch's order).
class BatchLoader {
 public:
  BatchLoader(const ImageSet* set, Normalization norm, LoaderOptions options);

  int64_t NumBatches() const;
  int64_t BatchSize() const { return options_.batch_size; }

  // Fills batch `batch` of `epoch`: `images` must hold BatchSize() * C*H*W floats and
  // `labels` BatchSize() int64s. Returns the number of images written (the last batch may be
  // short when drop_last is false).
  int64_t FillBatch(int64_t epoch, int64_t batch, float* images, int64_t* labels);

  // The order of `epoch` (indices into the set).
  const std::vector<int64_t>& EpochOrder(int64_t epoch);

 private:
  const ImageSet* set_;
  Normalization norm_;
  LoaderOptions options_;
  int64_t cached_epoch_ = -1;
  std::vector<int64_t> order_;
  std::vector<uint8_t> scratch_;
};

}  // namespace kiln::data
