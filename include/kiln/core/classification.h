// The result of classifying a labelled image set: accuracy, per-class accuracy, the confusion
// matrix and every prediction. Plain data, so that training (libtorch) and engine evaluation
// (kiln_eval, any InferenceBackend) report in one shape without depending on each other.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace kiln {

struct EvalResult {
  int64_t images = 0;
  double accuracy = 0.0;  // fraction in [0, 1]
  double loss = 0.0;      // mean cross-entropy (no label smoothing); 0 when not computed
  std::vector<double> per_class_accuracy;
  std::vector<std::vector<int64_t>> confusion;  // [true label][predicted label]
  std::vector<int64_t> predictions;             // top-1 class of every image, in set order
  double seconds = 0.0;
};

// Fills per_class_accuracy and accuracy from r->confusion and r->images.
void SummarizeConfusion(EvalResult* r);

}  // namespace kiln
