#include "kiln/core/classification.h"

namespace kiln {

void SummarizeConfusion(EvalResult* r) {
  int64_t correct = 0;
  r->per_class_accuracy.clear();
  for (size_t c = 0; c < r->confusion.size(); ++c) {
    int64_t total = 0;
    for (int64_t v : r->confusion[c]) total += v;
    correct += r->confusion[c][c];
    r->per_class_accuracy.push_back(
        total > 0 ? static_cast<double>(r->confusion[c][c]) / static_cast<double>(total) : 0.0);
  }
  r->accuracy = r->images > 0 ? static_cast<double>(correct) / static_cast<double>(r->images) : 0.0;
}

}  // namespace kiln
