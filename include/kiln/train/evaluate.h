// Evaluating a classifier on an ImageSet: accuracy, per-class accuracy, confusion matrix.
// Runs in eval mode under torch::NoGradGuard; does not change the model's weights, but leaves
// it in eval mode. Not thread-safe with respect to the model.
#pragma once

#include <vector>

#include "kiln/backend/inference_backend.h"
#include "kiln/core/status.h"
#include "kiln/data/cifar10.h"
#include "kiln/data/loader.h"
#include "kiln/train/models.h"

namespace kiln::train {

struct EvalResult {
  int64_t images = 0;
  double accuracy = 0.0;  // fraction in [0, 1]
  double loss = 0.0;      // mean cross-entropy (no label smoothing)
  std::vector<double> per_class_accuracy;
  std::vector<std::vector<int64_t>> confusion;  // [true label][predicted label]
  std::vector<int64_t> predictions;             // top-1 class of every image, in set order
  double seconds = 0.0;
};

struct EvalOptions {
  int64_t batch_size = 500;
  bool channels_last = false;  // feed inputs channels-last (model must match)
};

// Fills per_class_accuracy and accuracy from r->confusion and r->images.
void SummarizeConfusion(EvalResult* r);

Result<EvalResult> Evaluate(Classifier& model, const data::ImageSet& set,
                            const data::Normalization& norm, int64_t num_classes,
                            const EvalOptions& options = {});

// The same through an inference engine (exported model): `engine` takes images normalized
// with `norm` and returns one score per class. Loss stays 0 (engines return logits or
// probabilities; only the top-1 class is used).
Result<EvalResult> EvaluateEngine(backend::InferenceBackend& engine, const data::ImageSet& set,
                                  const data::Normalization& norm, int64_t batch_size = 256);

// Logits [set.size(), num_classes] for every image of `set`, in order.
Result<torch::Tensor> PredictLogits(Classifier& model, const data::ImageSet& set,
                                    const data::Normalization& norm,
                                    const EvalOptions& options = {});

}  // namespace kiln::train
