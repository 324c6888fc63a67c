// Evaluating a classifier on an ImageSet: accuracy, loss, per-class accuracy, confusion matrix
// (an EvalResult, core/classification.h). Exported models are evaluated by kiln_eval.
// Runs in eval mode under torch::NoGradGuard; does not change the model's weights, but leaves
// it in eval mode. Not thread-safe with respect to the model.
#pragma once

#include <vector>

#include "kiln/core/classification.h"
#include "kiln/core/status.h"
#include "kiln/data/cifar10.h"
#include "kiln/data/loader.h"
#include "kiln/train/models.h"

namespace kiln::train {

struct EvalOptions {
  int64_t batch_size = 500;
  bool channels_last = false;  // feed inputs channels-last (model must match)
};

Result<EvalResult> Evaluate(Classifier& model, const data::ImageSet& set,
                            const data::Normalization& norm, int64_t num_classes,
                            const EvalOptions& options = {});

// Logits [set.size(), num_classes] for every image of `set`, in order.
Result<torch::Tensor> PredictLogits(Classifier& model, const data::ImageSet& set,
                                    const data::Normalization& norm,
                                    const EvalOptions& options = {});

}  // namespace kiln::train
