// Prediction drift: a model's reference profile (what its predictions and inputs look like on
// held-out data) and the scores that compare a window of served traffic with it.
//
//   drift::Profile p(/*classes=*/10, /*channels=*/3);
//   for (each image) p.Add(logits, classes, input_chw, /*pixels_per_channel=*/1024);
//   drift::Reference ref = drift::MakeReference(p, "validation split");   // at export time
//   ...
//   drift::Scores s = drift::Compare(ref, window_profile);                 // in the server
//
// Statistics kept per prediction: the top-1 class, the top-1 probability ("confidence", the
// softmax of the output row, or the row itself when it already is a probability vector) in the
// fixed buckets of ConfidenceBounds(), and the mean of each input channel over its pixels (the
// model's input, after normalization). Scores:
//   - class PSI: sum_i (a_i - e_i) ln(a_i / e_i) over class shares, each share floored at
//     kShareFloor so an empty class gives a large but finite value;
//   - class Jensen-Shannon divergence, base 2 (0 = same distribution, 1 = disjoint);
//   - chi-square goodness of fit of the window's class counts to the reference shares
//     (k - 1 degrees of freedom), as a p-value (Boost.Math);
//   - confidence PSI over the confidence buckets;
//   - mean confidence of the window (a label-free estimate of accuracy when the model is
//     calibrated) beside the reference's;
//   - per input channel, a z-score: (window mean of the per-image channel means - reference
//     mean) / reference standard deviation of the per-image channel means. It does not grow
//     with the window size: 1.0 means the average served image is one reference standard
//     deviation brighter in that channel.
// Plain value types; not thread-safe to mutate concurrently.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kiln::drift {

// Upper bounds of the confidence buckets: 0.2, 0.3, ..., 0.9, 0.95, 0.99, 1. A probability p
// falls into the first bucket whose bound is >= p (Prometheus's `le`).
const std::vector<double>& ConfidenceBounds();
size_t ConfidenceBucket(double p);

// Shares below this are raised to it in PSI and the chi-square test's expected counts.
inline constexpr double kShareFloor = 1e-4;

// Index of the highest value of `row` and its probability: the softmax of the row, unless the
// row already is a probability vector (every value in [0, 1], summing to 1 within 1e-3).
struct Top1 {
  int64_t index = 0;
  double probability = 0;
};
Top1 TopProbability(const float* row, int64_t classes);

// Per-channel means of one CHW image of `pixels_per_channel` values per channel.
void ChannelMeans(const float* chw, int64_t channels, int64_t pixels_per_channel, double* out);

// Counts and sums over a set of predictions.
struct Profile {
  Profile() = default;
  Profile(int64_t classes, int64_t channels);

  // One prediction. `input` (CHW, may be null) feeds the channel statistics.
  void Add(const float* output_row, const float* input, int64_t pixels_per_channel);
  // One prediction from values already reduced (what the server's window stores).
  void Add(int64_t top1, double confidence, const double* channel_means);

  int64_t count = 0;
  std::vector<double> class_counts;       // per class
  std::vector<double> confidence_counts;  // per bucket of ConfidenceBounds()
  double confidence_sum = 0;
  std::vector<double> channel_sum, channel_sumsq;  // of the per-image channel means
};

struct Reference {
  int64_t images = 0;
  std::string source;                     // what it was computed on
  std::vector<double> class_share;        // sums to 1
  std::vector<double> confidence_share;   // per bucket, sums to 1
  double mean_confidence = 0;
  std::vector<double> channel_mean;       // empty when the model's input is not an image
  std::vector<double> channel_std;
  int64_t classes() const { return static_cast<int64_t>(class_share.size()); }
  int64_t channels() const { return static_cast<int64_t>(channel_mean.size()); }
};

Reference MakeReference(const Profile& p, const std::string& source);

struct Scores {
  int64_t samples = 0;
  double class_psi = 0, class_js = 0, class_chi2 = 0, class_chi2_pvalue = 1;
  double confidence_psi = 0;
  double mean_confidence = 0;
  std::vector<double> input_z;  // per channel; empty when the reference has no channels
};

// `window` must have the reference's classes and channels (else the missing parts score 0).
// An empty window scores 0 everywhere (p-value 1).
Scores Compare(const Reference& ref, const Profile& window);

// The scores' building blocks, exposed for tests and offline calibration. `expected` are
// shares, `actual` counts (normalized inside).
double Psi(const std::vector<double>& expected, const std::vector<double>& actual);
double JensenShannon(const std::vector<double>& expected, const std::vector<double>& actual);
// Pearson's statistic and its p-value with (categories - 1) degrees of freedom.
double ChiSquare(const std::vector<double>& expected, const std::vector<double>& actual);
double ChiSquarePValue(double statistic, int64_t degrees_of_freedom);

}  // namespace kiln::drift
