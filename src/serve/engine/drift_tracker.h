// Per model version: a sliding window of the predictions served (the last `capacity`, none
// older than `max_age`), compared with the model's drift reference, and the Prometheus series
// that show it. Internal to kiln_serve_engine.
//
// Add() runs on the instance thread right after a batch ran, on the buffers the batch already
// has (the reduction to class, confidence and channel means happens outside the lock; the lock
// only guards the ring). Publish() runs when /metrics is rendered; Report() for /drift.
// Thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <vector>

#include "kiln/core/drift.h"
#include "kiln/serve/engine/engine.h"
#include "kiln/serve/metrics/metrics.h"

namespace kiln::serve {

class DriftTracker {
 public:
  using Clock = std::chrono::steady_clock;

  // `reference` may be empty: then only the raw confidence histogram is kept. `channels` and
  // `pixels_per_channel` describe the CHW input (channels 0: no input statistics).
  DriftTracker(const ModelInfo& info, std::optional<drift::Reference> reference,
               int64_t channels, int64_t pixels_per_channel, int64_t capacity,
               std::chrono::seconds max_age, metrics::Registry* registry);
  ~DriftTracker();

  // `n` output rows of `classes` values and their inputs (n images, or null).
  void Add(const float* outputs, int64_t n, int64_t classes, const float* inputs,
           Clock::time_point now = Clock::now());

  bool has_reference() const { return reference_.has_value(); }
  // The window as it stands (expired entries dropped).
  drift::Profile Window(Clock::time_point now = Clock::now());
  DriftReport Report(Clock::time_point now = Clock::now());
  // Sets the drift gauges from the current window.
  void Publish(Clock::time_point now = Clock::now());

 private:
  void Expire(Clock::time_point now);  // with mu_ held

  const std::string name_, version_;
  const std::optional<drift::Reference> reference_;
  const int64_t classes_, channels_, pixels_;
  const size_t capacity_;
  const Clock::duration max_age_;

  std::mutex mu_;
  // The ring: entry i holds a time, the top-1 class, its probability and `channels_` means.
  std::vector<Clock::time_point> time_;
  std::vector<int32_t> top1_;
  std::vector<float> confidence_;
  std::vector<double> means_;
  size_t head_ = 0, size_ = 0;  // oldest entry, entries held

  metrics::Series* confidence_histogram_ = nullptr;
  metrics::Series *samples_ = nullptr, *class_psi_ = nullptr, *class_js_ = nullptr,
                  *class_pvalue_ = nullptr, *confidence_psi_ = nullptr,
                  *mean_confidence_ = nullptr;
  std::vector<metrics::Series*> input_z_;
};

}  // namespace kiln::serve
