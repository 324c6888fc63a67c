#include "kiln/eval/evaluate.h"

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

namespace kiln::eval {

Result<EvalResult> EvaluateEngine(backend::InferenceBackend& engine, const data::ImageSet& set,
                                  const data::Normalization& norm, int64_t batch_size) {
  if (batch_size <= 0) return InvalidArgumentError("batch size must be positive");
  const int64_t k = engine.OutputElementsPerSample();
  if (engine.InputElementsPerSample() != set.image_bytes() || k < 2 ||
      static_cast<int64_t>(norm.mean.size()) != set.channels) {
    return InvalidArgumentError(
        "the model's input/output do not match the data set (" +
        std::to_string(engine.InputElementsPerSample()) + " inputs per image for " +
        std::to_string(set.image_bytes()) + " pixels, " + std::to_string(k) + " outputs)");
  }
  auto start = std::chrono::steady_clock::now();
  data::BatchLoader loader(&set, norm, data::LoaderOptions::InOrder(batch_size));
  std::vector<float> input(static_cast<size_t>(batch_size * set.image_bytes()));
  std::vector<int64_t> truth(static_cast<size_t>(batch_size));
  std::vector<float> logits(static_cast<size_t>(batch_size * k));
  EvalResult r;
  r.confusion.assign(static_cast<size_t>(k), std::vector<int64_t>(static_cast<size_t>(k), 0));
  r.predictions.reserve(static_cast<size_t>(set.size()));
  for (int64_t b = 0; b < loader.NumBatches(); ++b) {
    const int64_t n = loader.FillBatch(0, b, input.data(), truth.data());
    KILN_RETURN_IF_ERROR(engine.Run(input.data(), n, logits.data()));
    for (int64_t i = 0; i < n; ++i) {
      const float* row = logits.data() + i * k;
      const int64_t pred = std::max_element(row, row + k) - row;
      const int64_t label = truth[static_cast<size_t>(i)];
      if (label < k) ++r.confusion[static_cast<size_t>(label)][static_cast<size_t>(pred)];
      r.predictions.push_back(pred);
    }
    r.images += n;
  }
  SummarizeConfusion(&r);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

}  // namespace kiln::eval
