#include "kiln/data/loader.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

namespace kiln::data {

namespace {

// SplitMix64 finalizer: decorrelates nearby (seed, epoch, batch) triples.
uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

uint64_t StreamSeed(uint64_t seed, int64_t epoch, int64_t batch) {
  return Mix(Mix(Mix(seed) ^ static_cast<uint64_t>(epoch)) ^ static_cast<uint64_t>(batch + 1));
}

}  // namespace

Normalization ComputeNormalization(const ImageSet& set) {
  const int64_t c = set.channels;
  const int64_t hw = set.height * set.width;
  std::vector<double> sum(static_cast<size_t>(c), 0.0);
  std::vector<double> sq(static_cast<size_t>(c), 0.0);
  for (int64_t i = 0; i < set.size(); ++i) {
    const uint8_t* img = set.image(i);
    for (int64_t ch = 0; ch < c; ++ch) {
      uint64_t s = 0;
      uint64_t s2 = 0;
      for (int64_t k = 0; k < hw; ++k) {
        uint32_t v = img[ch * hw + k];
        s += v;
        s2 += v * v;
      }
      sum[ch] += static_cast<double>(s);
      sq[ch] += static_cast<double>(s2);
    }
  }
  Normalization norm;
  const double n = static_cast<double>(set.size() * hw);
  for (int64_t ch = 0; ch < c; ++ch) {
    double mean = n > 0 ? sum[ch] / n / 255.0 : 0.0;
    double var = n > 0 ? sq[ch] / n / (255.0 * 255.0) - mean * mean : 1.0;
    norm.mean.push_back(static_cast<float>(mean));
    norm.std.push_back(static_cast<float>(std::sqrt(std::max(var, 1e-12))));
  }
  return norm;
}

void NormalizeImage(const uint8_t* chw, int64_t channels, int64_t hw, const Normalization& norm,
                    float* out) {
  for (int64_t ch = 0; ch < channels; ++ch) {
    // out = (v / 255 - mean) / std, as one multiply-add per pixel with constants computed once
    // in float; every caller shares this exact arithmetic.
    const float scale = 1.0F / (255.0F * norm.std[ch]);
    const float shift = -norm.mean[ch] / norm.std[ch];
    const uint8_t* src = chw + ch * hw;
    float* dst = out + ch * hw;
    for (int64_t k = 0; k < hw; ++k) dst[k] = static_cast<float>(src[k]) * scale + shift;
  }
}

LoaderOptions LoaderOptions::InOrder(int64_t batch_size) {
  LoaderOptions o;
  o.batch_size = batch_size;
  o.shuffle = false;
  o.drop_last = false;
  o.augment = false;
  return o;
}

Status LoaderOptions::Validate() const {
  if (batch_size <= 0) return InvalidArgumentError("batch size must be positive");
  if (augmentation.pad < 0 || augmentation.pad > 16) {
    return InvalidArgumentError("crop padding must be in [0, 16]");
  }
  if (augmentation.cutout < 0) return InvalidArgumentError("cutout size must be >= 0");
  return Status::Ok();
}

BatchLoader::BatchLoader(const ImageSet* set, Normalization norm, LoaderOptions options)
    : set_(set), norm_(std::move(norm)), options_(options) {
  scratch_.resize(static_cast<size_t>(set_->image_bytes()));
}

int64_t BatchLoader::NumBatches() const {
  const int64_t n = set_->size();
  const int64_t bs = options_.batch_size;
  return options_.drop_last ? n / bs : (n + bs - 1) / bs;
}

const std::vector<int64_t>& BatchLoader::EpochOrder(int64_t epoch) {
  if (epoch != cached_epoch_) {
    order_.resize(static_cast<size_t>(set_->size()));
    std::iota(order_.begin(), order_.end(), 0);
    if (options_.shuffle) {
      std::mt19937_64 rng(StreamSeed(options_.seed, epoch, -1));
      std::shuffle(order_.begin(), order_.end(), rng);
    }
    cached_epoch_ = epoch;
  }
  return order_;
}

int64_t BatchLoader::FillBatch(int64_t epoch, int64_t batch, float* images, int64_t* labels) {
  const auto& order = EpochOrder(epoch);
  const int64_t bs = options_.batch_size;
  const int64_t begin = batch * bs;
  const int64_t count = std::clamp<int64_t>(set_->size() - begin, 0, bs);
  const int64_t c = set_->channels;
  const int64_t h = set_->height;
  const int64_t w = set_->width;
  const int64_t hw = h * w;
  const AugmentOptions& aug = options_.augmentation;
  std::mt19937_64 rng(StreamSeed(options_.seed, epoch, batch));

  for (int64_t i = 0; i < count; ++i) {
    const int64_t index = order[static_cast<size_t>(begin + i)];
    const uint8_t* src = set_->image(index);
    labels[i] = set_->labels[static_cast<size_t>(index)];
    float* dst = images + i * c * hw;
    if (!options_.augment) {
      NormalizeImage(src, c, hw, norm_, dst);
      continue;
    }
    // Draw every random number for this image in a fixed order, whether or not it is used.
    const int64_t span = 2 * aug.pad + 1;
    const auto dy = static_cast<int64_t>(rng() % static_cast<uint64_t>(span)) - aug.pad;
    const auto dx = static_cast<int64_t>(rng() % static_cast<uint64_t>(span)) - aug.pad;
    const bool flip = (rng() & 1U) != 0;
    const auto cy = static_cast<int64_t>(rng() % static_cast<uint64_t>(h));
    const auto cx = static_cast<int64_t>(rng() % static_cast<uint64_t>(w));
    const int64_t oy = aug.random_crop ? dy : 0;
    const int64_t ox = aug.random_crop ? dx : 0;
    bool do_flip = aug.flip && flip;
    if (aug.flip && aug.alternating_flip) {
      std::mt19937_64 image_rng(StreamSeed(options_.seed ^ 0xa17e7a7eULL, 0, index));
      do_flip = ((image_rng() & 1U) != 0) != (epoch % 2 == 1);
    }
    // Output pixel (y, x) reads source (y + oy, x' + ox) where x' is x mirrored when flipping;
    // outside the source it is a zero pixel, or the source reflected at its edge.
    const auto reflect = [](int64_t v, int64_t n) {
      if (v < 0) v = -v;
      if (v >= n) v = 2 * n - 2 - v;
      return std::clamp<int64_t>(v, 0, n - 1);  // a pad wider than the image
    };
    for (int64_t ch = 0; ch < c; ++ch) {
      uint8_t* plane = scratch_.data() + ch * hw;
      const uint8_t* sp = src + ch * hw;
      for (int64_t y = 0; y < h; ++y) {
        const int64_t sy = aug.reflect ? reflect(y + oy, h) : y + oy;
        for (int64_t x = 0; x < w; ++x) {
          const int64_t xx = do_flip ? (w - 1 - x) : x;
          const int64_t sx = aug.reflect ? reflect(xx + ox, w) : xx + ox;
          plane[y * w + x] =
              (sy >= 0 && sy < h && sx >= 0 && sx < w) ? sp[sy * w + sx] : uint8_t{0};
        }
      }
    }
    NormalizeImage(scratch_.data(), c, hw, norm_, dst);
    if (aug.cutout > 0) {
      // Square centred at (cy, cx), clipped to the image; 0 is the channel mean.
      const int64_t half = aug.cutout / 2;
      const int64_t y0 = std::max<int64_t>(0, cy - half);
      const int64_t y1 = std::min<int64_t>(h, cy - half + aug.cutout);
      const int64_t x0 = std::max<int64_t>(0, cx - half);
      const int64_t x1 = std::min<int64_t>(w, cx - half + aug.cutout);
      for (int64_t ch = 0; ch < c; ++ch) {
        for (int64_t y = y0; y < y1; ++y) {
          std::fill(dst + ch * hw + y * w + x0, dst + ch * hw + y * w + x1, 0.0F);
        }
      }
    }
  }
  return count;
}

}  // namespace kiln::data
