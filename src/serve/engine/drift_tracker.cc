#include "drift_tracker.h"

#include <algorithm>

namespace kiln::serve {

namespace {

std::string Bound(double b) {
  std::string s = std::to_string(b);  // "0.950000"
  s.erase(s.find_last_not_of('0') + 1);
  if (!s.empty() && s.back() == '.') s.pop_back();
  return s;
}

}  // namespace

DriftTracker::DriftTracker(const ModelInfo& info, std::optional<drift::Reference> reference,
                           int64_t channels, int64_t pixels_per_channel, int64_t capacity,
                           std::chrono::seconds max_age, metrics::Registry* registry)
    : name_(info.name),
      version_(std::to_string(info.version)),
      reference_(std::move(reference)),
      classes_(info.output_elements),
      channels_(reference_ ? std::min<int64_t>(channels, reference_->channels()) : 0),
      pixels_(pixels_per_channel),
      capacity_(static_cast<size_t>(std::max<int64_t>(1, capacity))),
      max_age_(max_age),
      time_(capacity_),
      top1_(capacity_),
      confidence_(capacity_),
      means_(capacity_ * static_cast<size_t>(channels_)) {
  const metrics::Labels l = {{"model", name_}, {"version", version_}};
  auto with = [&](const std::string& k, const std::string& v) {
    metrics::Labels x = l;
    x.emplace_back(k, v);
    return x;
  };
  auto& r = *registry;
  confidence_histogram_ = r.Histogram(
      "kiln_prediction_confidence", "Top-1 probability (softmax) of each prediction served", l,
      drift::ConfidenceBounds());
  if (!reference_) return;
  const auto& ref = *reference_;
  samples_ = r.Gauge("kiln_drift_window_samples",
                     "Predictions in the drift window the scores are computed on", l);
  class_psi_ = r.Gauge("kiln_drift_class_psi",
                       "Population stability index of the window's predicted classes against "
                       "the reference",
                       l);
  class_js_ = r.Gauge("kiln_drift_class_js_divergence",
                      "Jensen-Shannon divergence (base 2) of the window's predicted classes "
                      "against the reference",
                      l);
  class_pvalue_ = r.Gauge("kiln_drift_class_chi2_pvalue",
                          "Chi-square goodness-of-fit p-value of the window's predicted class "
                          "counts under the reference shares",
                          l);
  confidence_psi_ = r.Gauge("kiln_drift_confidence_psi",
                            "Population stability index of the window's top-1 probability "
                            "histogram against the reference",
                            l);
  mean_confidence_ = r.Gauge("kiln_drift_mean_confidence",
                             "Mean top-1 probability over the drift window", l);
  r.Gauge("kiln_drift_reference_mean_confidence",
          "Mean top-1 probability on the reference data", l)
      ->Set(ref.mean_confidence);
  for (int64_t c = 0; c < channels_; ++c) {
    input_z_.push_back(r.Gauge("kiln_drift_input_mean_zscore",
                               "Window mean of an input channel's per-image mean, in reference "
                               "standard deviations from the reference mean",
                               with("channel", std::to_string(c))));
  }
  for (int64_t c = 0; c < ref.classes(); ++c) {
    const std::string label =
        c < static_cast<int64_t>(info.labels.size()) ? info.labels[c] : std::to_string(c);
    r.Gauge("kiln_drift_reference_class_ratio", "Share of each predicted class on the reference",
            with("class", label))
        ->Set(ref.class_share[static_cast<size_t>(c)]);
  }
  const auto& bounds = drift::ConfidenceBounds();
  for (size_t b = 0; b < bounds.size(); ++b) {
    r.Gauge("kiln_drift_reference_confidence_ratio",
            "Share of reference predictions in each confidence bucket (not cumulative; le = the "
            "bucket's upper bound, as in kiln_prediction_confidence)",
            with("le", Bound(bounds[b])))
        ->Set(ref.confidence_share[b]);
  }
}

DriftTracker::~DriftTracker() {
  // The version is going away: an empty window raises no drift alert for it.
  if (samples_ != nullptr) samples_->Set(0);
}

void DriftTracker::Add(const float* outputs, int64_t n, int64_t classes, const float* inputs,
                       Clock::time_point now) {
  if (n <= 0 || classes <= 0) return;
  std::vector<drift::Top1> top(static_cast<size_t>(n));
  std::vector<double> means(static_cast<size_t>(n * channels_));
  for (int64_t i = 0; i < n; ++i) {
    top[static_cast<size_t>(i)] = drift::TopProbability(outputs + i * classes, classes);
    confidence_histogram_->Observe(top[static_cast<size_t>(i)].probability);
    if (inputs != nullptr && channels_ > 0) {
      drift::ChannelMeans(inputs + i * channels_ * pixels_, channels_, pixels_,
                          means.data() + i * channels_);
    }
  }
  if (!reference_) return;
  std::lock_guard l(mu_);
  for (int64_t i = 0; i < n; ++i) {
    size_t slot;
    if (size_ < capacity_) {
      slot = (head_ + size_) % capacity_;
      ++size_;
    } else {  // full: overwrite the oldest
      slot = head_;
      head_ = (head_ + 1) % capacity_;
    }
    time_[slot] = now;
    top1_[slot] = static_cast<int32_t>(top[static_cast<size_t>(i)].index);
    confidence_[slot] = static_cast<float>(top[static_cast<size_t>(i)].probability);
    std::copy_n(means.begin() + i * channels_, channels_,
                means_.begin() + static_cast<ptrdiff_t>(slot) * channels_);
  }
}

void DriftTracker::Expire(Clock::time_point now) {
  while (size_ > 0 && now - time_[head_] > max_age_) {
    head_ = (head_ + 1) % capacity_;
    --size_;
  }
}

drift::Profile DriftTracker::Window(Clock::time_point now) {
  drift::Profile p(classes_, channels_);
  std::lock_guard l(mu_);
  Expire(now);
  for (size_t k = 0; k < size_; ++k) {
    const size_t slot = (head_ + k) % capacity_;
    p.Add(top1_[slot], confidence_[slot],
          channels_ > 0 ? means_.data() + slot * static_cast<size_t>(channels_) : nullptr);
  }
  return p;
}

DriftReport DriftTracker::Report(Clock::time_point now) {
  DriftReport r;
  r.name = name_;
  r.version = version_;
  r.window_size = static_cast<int64_t>(capacity_);
  r.window_seconds = std::chrono::duration_cast<std::chrono::seconds>(max_age_).count();
  r.reference = reference_;
  if (!reference_) return r;
  r.window = Window(now);
  r.scores = drift::Compare(*reference_, r.window);
  return r;
}

void DriftTracker::Publish(Clock::time_point now) {
  if (!reference_) return;
  const drift::Scores s = drift::Compare(*reference_, Window(now));
  samples_->Set(static_cast<double>(s.samples));
  class_psi_->Set(s.class_psi);
  class_js_->Set(s.class_js);
  class_pvalue_->Set(s.class_chi2_pvalue);
  confidence_psi_->Set(s.confidence_psi);
  mean_confidence_->Set(s.mean_confidence);
  for (size_t c = 0; c < input_z_.size() && c < s.input_z.size(); ++c) input_z_[c]->Set(s.input_z[c]);
}

}  // namespace kiln::serve
