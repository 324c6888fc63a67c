#include "kiln/data/loader.h"

#include <gtest/gtest.h>

#include <cmath>

#include "../test_util.h"

namespace kiln::data {
namespace {

constexpr int64_t kPixels = 3072;

ImageSet FirstImages(int64_t n) {
  std::vector<int64_t> idx(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) idx[static_cast<size_t>(i)] = i;
  return testing::SharedDataset().train.Subset(idx);
}

std::vector<float> Batch(BatchLoader& loader, int64_t epoch, int64_t b,
                         std::vector<int64_t>* labels) {
  std::vector<float> images(static_cast<size_t>(loader.BatchSize() * kPixels));
  labels->assign(static_cast<size_t>(loader.BatchSize()), -1);
  loader.FillBatch(epoch, b, images.data(), labels->data());
  return images;
}

TEST(NormalizationTest, MatchesADirectComputation) {
  ImageSet set = FirstImages(500);
  Normalization n = ComputeNormalization(set);
  ASSERT_EQ(n.mean.size(), 3U);
  for (int ch = 0; ch < 3; ++ch) {
    // Two-pass mean/variance over the scaled values, the textbook way.
    double sum = 0;
    int64_t count = 0;
    for (int64_t i = 0; i < set.size(); ++i) {
      for (int64_t k = 0; k < 1024; ++k) sum += set.image(i)[ch * 1024 + k] / 255.0;
      count += 1024;
    }
    const double mean = sum / static_cast<double>(count);
    double var = 0;
    for (int64_t i = 0; i < set.size(); ++i) {
      for (int64_t k = 0; k < 1024; ++k) {
        const double d = set.image(i)[ch * 1024 + k] / 255.0 - mean;
        var += d * d;
      }
    }
    EXPECT_NEAR(n.mean[ch], mean, 1e-6);
    EXPECT_NEAR(n.std[ch], std::sqrt(var / static_cast<double>(count)), 1e-6);
  }
}

TEST(NormalizationTest, FullTrainingSetHasTheWellKnownStatistics) {
  Normalization n = ComputeNormalization(testing::SharedDataset().train);
  const float mean[] = {0.4914F, 0.4822F, 0.4465F};
  const float std[] = {0.2470F, 0.2435F, 0.2616F};
  for (int ch = 0; ch < 3; ++ch) {
    EXPECT_NEAR(n.mean[ch], mean[ch], 1e-3);
    EXPECT_NEAR(n.std[ch], std[ch], 1e-3);
  }
}

TEST(LoaderTest, WithoutAugmentationBatchesAreNormalizedImagesInOrder) {
  ImageSet set = FirstImages(10);
  Normalization norm = ComputeNormalization(set);
  LoaderOptions o;
  o.batch_size = 4;
  o.shuffle = false;
  o.augment = false;
  o.drop_last = false;
  BatchLoader loader(&set, norm, o);
  EXPECT_EQ(loader.NumBatches(), 3);
  std::vector<int64_t> labels;
  auto last = Batch(loader, 0, 2, &labels);
  std::vector<float> want(kPixels);
  NormalizeImage(set.image(9), 3, 1024, norm, want.data());
  EXPECT_EQ(std::vector<float>(last.begin() + kPixels, last.begin() + 2 * kPixels), want);
  EXPECT_EQ(labels[1], set.labels[9]);
  // Spot-check the arithmetic against the formula.
  EXPECT_NEAR(want[5], (set.image(9)[5] / 255.0F - norm.mean[0]) / norm.std[0], 1e-5);
}

TEST(LoaderTest, ShufflingAndAugmentationAreDeterministicForASeed) {
  ImageSet set = FirstImages(256);
  Normalization norm = ComputeNormalization(set);
  LoaderOptions o;
  o.batch_size = 64;
  o.seed = 42;
  o.augmentation.cutout = 8;
  BatchLoader a(&set, norm, o), b(&set, norm, o);
  LoaderOptions other = o;
  other.seed = 43;
  BatchLoader c(&set, norm, other);
  std::vector<int64_t> la, lb, lc;
  EXPECT_EQ(Batch(a, 3, 1, &la), Batch(b, 3, 1, &lb));
  EXPECT_EQ(la, lb);
  EXPECT_NE(Batch(a, 3, 1, &la), Batch(c, 3, 1, &lc));
  const std::vector<int64_t> epoch0 = a.EpochOrder(0);
  EXPECT_NE(epoch0, a.EpochOrder(1));  // a new order every epoch
  // Random access is stable: batch 1 of epoch 3 does not depend on what was read before.
  BatchLoader fresh(&set, norm, o);
  std::vector<int64_t> lf;
  Batch(fresh, 0, 0, &lf);
  EXPECT_EQ(Batch(fresh, 3, 1, &lf), Batch(b, 3, 1, &lb));
}

// With only flips enabled, every output is the image or its mirror; with only crops, every
// output is the image shifted by at most `pad` pixels with zero pixels (normalized) around it.
TEST(LoaderTest, FlipAndCropDoWhatTheySay) {
  ImageSet set = FirstImages(64);
  Normalization norm{{0, 0, 0}, {1, 1, 1}};  // out = pixel / 255, so zero padding stays 0
  LoaderOptions o;
  o.batch_size = 64;
  o.shuffle = false;
  o.augmentation.random_crop = false;
  BatchLoader flips(&set, norm, o);
  std::vector<int64_t> labels;
  auto out = Batch(flips, 0, 0, &labels);
  int flipped = 0;
  for (int64_t i = 0; i < 64; ++i) {
    const uint8_t* src = set.image(i);
    bool same = true, mirror = true;
    for (int64_t ch = 0; ch < 3; ++ch) {
      for (int64_t y = 0; y < 32; ++y) {
        for (int64_t x = 0; x < 32; ++x) {
          float v = out[i * kPixels + ch * 1024 + y * 32 + x] * 255.0F;
          same &= std::lround(v) == src[ch * 1024 + y * 32 + x];
          mirror &= std::lround(v) == src[ch * 1024 + y * 32 + (31 - x)];
        }
      }
    }
    EXPECT_TRUE(same || mirror) << "image " << i;
    flipped += (mirror && !same) ? 1 : 0;
  }
  EXPECT_GT(flipped, 10);
  EXPECT_LT(flipped, 54);

  o.augmentation.random_crop = true;
  o.augmentation.flip = false;
  BatchLoader crops(&set, norm, o);
  out = Batch(crops, 0, 0, &labels);
  for (int64_t i = 0; i < 64; ++i) {
    bool found = false;
    for (int64_t dy = -4; dy <= 4 && !found; ++dy) {
      for (int64_t dx = -4; dx <= 4 && !found; ++dx) {
        bool match = true;
        for (int64_t k = 0; k < kPixels && match; ++k) {
          const int64_t ch = k / 1024, y = (k % 1024) / 32, x = k % 32;
          const int64_t sy = y + dy, sx = x + dx;
          const int want = (sy >= 0 && sy < 32 && sx >= 0 && sx < 32)
                               ? set.image(i)[ch * 1024 + sy * 32 + sx]
                               : 0;
          match = std::lround(out[i * kPixels + k] * 255.0F) == want;
        }
        found = match;
      }
    }
    EXPECT_TRUE(found) << "image " << i << " is not a shifted copy";
  }
}

TEST(LoaderTest, OptionsAreValidated) {
  LoaderOptions o;
  EXPECT_TRUE(o.Validate().ok());
  o.batch_size = 0;
  EXPECT_FALSE(o.Validate().ok());
  o.batch_size = 8;
  o.augmentation.pad = -1;
  EXPECT_FALSE(o.Validate().ok());
}

}  // namespace
}  // namespace kiln::data
