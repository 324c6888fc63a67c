// The statistics Kiln reports, each defined once: the benchmark (kiln bench), the load
// generator (kiln loadgen) and the server's /stats page all call these.
//
//   double p99 = kiln::Quantile(latencies_ms, 0.99);
//   auto ci = kiln::MeanConfidenceInterval(round_medians_ms, 0.95);  // nullopt below 2 values
#pragma once

#include <optional>
#include <utility>
#include <vector>

namespace kiln {

// The q-quantile (q in [0, 1], clamped) of `values`, by linear interpolation between the closest
// ranks (Hyndman & Fan's type 7; numpy's and R's default, and bench/peers.py's): with the values
// sorted x[0] <= ... <= x[n-1] and h = q * (n - 1), the quantile is
// x[floor(h)] + (h - floor(h)) * (x[floor(h) + 1] - x[floor(h)]). So q = 0.5 is the median, q = 0
// the minimum and q = 1 the maximum. 0 for no values.
double Quantile(std::vector<double> values, double q);

// The same for values already sorted in ascending order (no copy, no sort).
double QuantileOfSorted(const std::vector<double>& sorted, double q);

// The two-sided confidence interval of the mean of `samples` at `level` (0 < level < 1), from
// Student's t with n - 1 degrees of freedom (Boost.Math): mean -+ t((1 + level) / 2, n - 1) *
// sd / sqrt(n), sd the sample standard deviation. nullopt for fewer than 2 samples or a level
// outside (0, 1).
std::optional<std::pair<double, double>> MeanConfidenceInterval(const std::vector<double>& samples,
                                                                double level = 0.95);

}  // namespace kiln
