#include "kiln/core/drift.h"

#include <algorithm>
#include <boost/math/distributions/chi_squared.hpp>
#include <cmath>
#include <numeric>

namespace kiln::drift {

namespace {

std::vector<double> Shares(const std::vector<double>& counts) {
  const double total = std::accumulate(counts.begin(), counts.end(), 0.0);
  std::vector<double> s(counts.size(), 0.0);
  if (total <= 0) return s;
  for (size_t i = 0; i < counts.size(); ++i) s[i] = counts[i] / total;
  return s;
}

}  // namespace

const std::vector<double>& ConfidenceBounds() {
  static const std::vector<double> bounds = {0.2, 0.3, 0.4, 0.5,  0.6,  0.7,
                                             0.8, 0.9, 0.95, 0.99, 1.0};
  return bounds;
}

size_t ConfidenceBucket(double p) {
  const auto& b = ConfidenceBounds();
  const auto it = std::lower_bound(b.begin(), b.end(), p);
  return it == b.end() ? b.size() - 1 : static_cast<size_t>(it - b.begin());
}

Top1 TopProbability(const float* row, int64_t classes) {
  Top1 t;
  if (classes <= 0) return t;
  const float* best = std::max_element(row, row + classes);
  t.index = best - row;
  bool probabilities = true;
  double sum = 0;
  for (int64_t i = 0; i < classes; ++i) {
    if (!(row[i] >= 0.f && row[i] <= 1.f)) probabilities = false;
    sum += row[i];
  }
  if (probabilities && std::abs(sum - 1.0) <= 1e-3) {
    t.probability = *best;
    return t;
  }
  // softmax(row)[best] = 1 / sum_i exp(row_i - row_best)
  double denom = 0;
  for (int64_t i = 0; i < classes; ++i) denom += std::exp(static_cast<double>(row[i]) - *best);
  t.probability = std::isfinite(denom) && denom > 0 ? 1.0 / denom : 0.0;
  return t;
}

void ChannelMeans(const float* chw, int64_t channels, int64_t pixels_per_channel, double* out) {
  for (int64_t c = 0; c < channels; ++c) {
    const float* p = chw + c * pixels_per_channel;
    double s = 0;
    for (int64_t i = 0; i < pixels_per_channel; ++i) s += p[i];
    out[c] = pixels_per_channel > 0 ? s / static_cast<double>(pixels_per_channel) : 0.0;
  }
}

Profile::Profile(int64_t classes, int64_t channels)
    : class_counts(static_cast<size_t>(std::max<int64_t>(0, classes)), 0.0),
      confidence_counts(ConfidenceBounds().size(), 0.0),
      channel_sum(static_cast<size_t>(std::max<int64_t>(0, channels)), 0.0),
      channel_sumsq(static_cast<size_t>(std::max<int64_t>(0, channels)), 0.0) {}

void Profile::Add(const float* output_row, const float* input, int64_t pixels_per_channel) {
  const Top1 t = TopProbability(output_row, static_cast<int64_t>(class_counts.size()));
  std::vector<double> means(channel_sum.size(), 0.0);
  if (input != nullptr) {
    ChannelMeans(input, static_cast<int64_t>(means.size()), pixels_per_channel, means.data());
  }
  Add(t.index, t.probability, input != nullptr ? means.data() : nullptr);
}

void Profile::Add(int64_t top1, double confidence, const double* channel_means) {
  ++count;
  if (top1 >= 0 && top1 < static_cast<int64_t>(class_counts.size())) {
    class_counts[static_cast<size_t>(top1)] += 1;
  }
  confidence_counts[ConfidenceBucket(confidence)] += 1;
  confidence_sum += confidence;
  if (channel_means == nullptr) return;
  for (size_t c = 0; c < channel_sum.size(); ++c) {
    channel_sum[c] += channel_means[c];
    channel_sumsq[c] += channel_means[c] * channel_means[c];
  }
}

Reference MakeReference(const Profile& p, const std::string& source) {
  Reference r;
  r.images = p.count;
  r.source = source;
  r.class_share = Shares(p.class_counts);
  r.confidence_share = Shares(p.confidence_counts);
  r.mean_confidence = p.count > 0 ? p.confidence_sum / static_cast<double>(p.count) : 0.0;
  if (p.count > 1) {
    const double n = static_cast<double>(p.count);
    for (size_t c = 0; c < p.channel_sum.size(); ++c) {
      const double mean = p.channel_sum[c] / n;
      // Sample variance of the per-image channel means.
      const double var = std::max(0.0, (p.channel_sumsq[c] - n * mean * mean) / (n - 1));
      r.channel_mean.push_back(mean);
      r.channel_std.push_back(std::sqrt(var));
    }
  }
  return r;
}

double Psi(const std::vector<double>& expected, const std::vector<double>& actual) {
  const std::vector<double> a = Shares(actual);
  double psi = 0;
  for (size_t i = 0; i < expected.size() && i < a.size(); ++i) {
    const double e = std::max(expected[i], kShareFloor), x = std::max(a[i], kShareFloor);
    psi += (x - e) * std::log(x / e);
  }
  return psi;
}

double JensenShannon(const std::vector<double>& expected, const std::vector<double>& actual) {
  const std::vector<double> a = Shares(actual);
  auto kl_to_mid = [](double p, double m) { return p > 0 ? p * std::log2(p / m) : 0.0; };
  double js = 0;
  for (size_t i = 0; i < expected.size() && i < a.size(); ++i) {
    const double m = 0.5 * (expected[i] + a[i]);
    if (m <= 0) continue;
    js += 0.5 * kl_to_mid(expected[i], m) + 0.5 * kl_to_mid(a[i], m);
  }
  return std::clamp(js, 0.0, 1.0);
}

double ChiSquare(const std::vector<double>& expected, const std::vector<double>& actual) {
  const double n = std::accumulate(actual.begin(), actual.end(), 0.0);
  double stat = 0;
  for (size_t i = 0; i < expected.size() && i < actual.size(); ++i) {
    const double e = n * std::max(expected[i], kShareFloor);
    if (e > 0) stat += (actual[i] - e) * (actual[i] - e) / e;
  }
  return stat;
}

double ChiSquarePValue(double statistic, int64_t degrees_of_freedom) {
  if (degrees_of_freedom < 1 || !(statistic > 0)) return 1.0;
  if (!std::isfinite(statistic)) return 0.0;
  const boost::math::chi_squared_distribution<double> d(static_cast<double>(degrees_of_freedom));
  return boost::math::cdf(boost::math::complement(d, statistic));
}

Scores Compare(const Reference& ref, const Profile& window) {
  Scores s;
  s.samples = window.count;
  s.input_z.assign(ref.channel_mean.size(), 0.0);
  if (window.count <= 0) return s;
  s.class_psi = Psi(ref.class_share, window.class_counts);
  s.class_js = JensenShannon(ref.class_share, window.class_counts);
  s.class_chi2 = ChiSquare(ref.class_share, window.class_counts);
  s.class_chi2_pvalue = ChiSquarePValue(s.class_chi2, ref.classes() - 1);
  s.confidence_psi = Psi(ref.confidence_share, window.confidence_counts);
  s.mean_confidence = window.confidence_sum / static_cast<double>(window.count);
  for (size_t c = 0; c < s.input_z.size() && c < window.channel_sum.size(); ++c) {
    const double mean = window.channel_sum[c] / static_cast<double>(window.count);
    const double sd = ref.channel_std[c] > 0 ? ref.channel_std[c] : 1.0;
    s.input_z[c] = (mean - ref.channel_mean[c]) / sd;
  }
  return s;
}

}  // namespace kiln::drift
