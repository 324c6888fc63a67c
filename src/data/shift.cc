#include "kiln/data/shift.h"

#include <algorithm>
#include <cmath>
#include <random>

namespace kiln::data {

namespace {

uint8_t Clamp(double v) { return static_cast<uint8_t>(std::clamp(std::lround(v), 0L, 255L)); }

}  // namespace

Result<Shift> ParseShift(const std::string& name) {
  if (name == "brightness") return Shift::kBrightness;
  if (name == "contrast") return Shift::kContrast;
  if (name == "noise") return Shift::kNoise;
  return InvalidArgumentError("unknown shift '" + name + "' (brightness, contrast, noise)");
}

const char* ShiftName(Shift s) {
  switch (s) {
    case Shift::kBrightness: return "brightness";
    case Shift::kContrast: return "contrast";
    case Shift::kNoise: return "noise";
  }
  return "?";
}

ImageSet ShiftImages(const ImageSet& set, Shift shift, double amount, uint64_t seed) {
  ImageSet out = set;
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> noise(0.0, amount * 255.0);
  const int64_t plane = set.height * set.width;
  for (int64_t i = 0; i < set.size(); ++i) {
    uint8_t* img = out.pixels.data() + i * set.image_bytes();
    for (int64_t c = 0; c < set.channels; ++c) {
      uint8_t* p = img + c * plane;
      double mean = 0;
      if (shift == Shift::kContrast) {
        for (int64_t k = 0; k < plane; ++k) mean += p[k];
        mean /= static_cast<double>(plane);
      }
      for (int64_t k = 0; k < plane; ++k) {
        switch (shift) {
          case Shift::kBrightness: p[k] = Clamp(p[k] + amount * 255.0); break;
          case Shift::kContrast: p[k] = Clamp(mean + amount * (p[k] - mean)); break;
          case Shift::kNoise: p[k] = Clamp(p[k] + noise(rng)); break;
        }
      }
    }
  }
  return out;
}

ImageSet OnlyClass(const ImageSet& set, int64_t label) {
  std::vector<int64_t> idx;
  for (int64_t i = 0; i < set.size(); ++i) {
    if (set.labels[static_cast<size_t>(i)] == label) idx.push_back(i);
  }
  return set.Subset(idx);
}

ImageSet SyntheticShapes(int64_t count, int64_t channels, int64_t height, int64_t width,
                         uint64_t seed) {
  ImageSet out;
  out.channels = channels;
  out.height = height;
  out.width = width;
  out.pixels.resize(static_cast<size_t>(count * channels * height * width));
  out.labels.assign(static_cast<size_t>(count), 0);
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> colour(0, 255);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  const int64_t plane = height * width;
  std::vector<int> fill(static_cast<size_t>(channels));
  for (int64_t i = 0; i < count; ++i) {
    uint8_t* img = out.pixels.data() + i * channels * plane;
    for (int64_t c = 0; c < channels; ++c) {
      std::fill_n(img + c * plane, plane, static_cast<uint8_t>(colour(rng)));
    }
    const int shapes = 1 + static_cast<int>(unit(rng) * 4);
    for (int s = 0; s < shapes; ++s) {
      for (auto& f : fill) f = colour(rng);
      const bool disc = unit(rng) < 0.5;
      const double cx = unit(rng) * static_cast<double>(width);
      const double cy = unit(rng) * static_cast<double>(height);
      const double rx = (0.1 + 0.3 * unit(rng)) * static_cast<double>(width);
      const double ry = (0.1 + 0.3 * unit(rng)) * static_cast<double>(height);
      for (int64_t y = 0; y < height; ++y) {
        for (int64_t x = 0; x < width; ++x) {
          const double dx = (static_cast<double>(x) - cx) / rx;
          const double dy = (static_cast<double>(y) - cy) / ry;
          const bool inside = disc ? dx * dx + dy * dy <= 1.0
                                   : std::abs(dx) <= 1.0 && std::abs(dy) <= 1.0;
          if (!inside) continue;
          for (int64_t c = 0; c < channels; ++c) {
            img[c * plane + y * width + x] = static_cast<uint8_t>(fill[static_cast<size_t>(c)]);
          }
        }
      }
    }
  }
  return out;
}

}  // namespace kiln::data
