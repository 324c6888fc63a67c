// Shifted copies of an image set and a synthetic data set, for drift tests and `kiln drift
// calibrate`: traffic that a model in production may meet and its training data never showed.
//
//   data::ImageSet bright = data::ShiftImages(ds.test, data::Shift::kBrightness, 0.25, 1);
//   data::ImageSet shapes = data::SyntheticShapes(1000, 3, 32, 32, 7);
//
// Pure functions of their arguments (seeded); labels are kept (SyntheticShapes: all 0).
#pragma once

#include <cstdint>
#include <string>

#include "kiln/core/status.h"
#include "kiln/data/cifar10.h"

namespace kiln::data {

enum class Shift {
  kBrightness,  // every pixel + amount * 255 (clamped): amount in [-1, 1]
  kContrast,    // pixel = mean + amount * (pixel - mean), per image and channel: amount >= 0
  kNoise,       // + Gaussian noise of standard deviation amount * 255 (clamped)
};

// "brightness", "contrast", "noise"; InvalidArgument otherwise.
Result<Shift> ParseShift(const std::string& name);
const char* ShiftName(Shift s);

ImageSet ShiftImages(const ImageSet& set, Shift shift, double amount, uint64_t seed);

// The images of `set` whose label is `label`, in order.
ImageSet OnlyClass(const ImageSet& set, int64_t label);

// `count` images of filled rectangles and discs in random colours on a random background:
// nothing like natural photographs, the "other data set" of the drift tests.
ImageSet SyntheticShapes(int64_t count, int64_t channels, int64_t height, int64_t width,
                         uint64_t seed);

}  // namespace kiln::data
