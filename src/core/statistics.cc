#include "kiln/core/statistics.h"

#include <algorithm>
#include <boost/math/distributions/students_t.hpp>
#include <cmath>

namespace kiln {

double QuantileOfSorted(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0;
  const double h = std::clamp(q, 0.0, 1.0) * static_cast<double>(sorted.size() - 1);
  const auto lo = static_cast<size_t>(std::floor(h));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (h - static_cast<double>(lo));
}

double Quantile(std::vector<double> values, double q) {
  std::sort(values.begin(), values.end());
  return QuantileOfSorted(values, q);
}

std::optional<std::pair<double, double>> MeanConfidenceInterval(const std::vector<double>& samples,
                                                                double level) {
  const size_t n = samples.size();
  if (n < 2 || !(level > 0 && level < 1)) return std::nullopt;
  double mean = 0;
  for (double x : samples) mean += x;
  mean /= static_cast<double>(n);
  double ss = 0;
  for (double x : samples) ss += (x - mean) * (x - mean);
  const double sd = std::sqrt(ss / static_cast<double>(n - 1));
  const boost::math::students_t dist(static_cast<double>(n - 1));
  const double t = boost::math::quantile(dist, (1 + level) / 2);
  const double half = t * sd / std::sqrt(static_cast<double>(n));
  return std::make_pair(mean - half, mean + half);
}

}  // namespace kiln
