// Evaluating an exported model through any inference engine on a labelled image set.
//
//   KILN_ASSIGN_OR_RETURN(EvalResult r, eval::EvaluateEngine(*engine, test, norm));
//
// `engine` takes images normalized with `norm` and returns one score per class; only the top-1
// class is used, so EvalResult::loss stays 0. The libtorch model itself is evaluated by
// train::Evaluate, which also computes the loss; both report an EvalResult (core).
#pragma once

#include <cstdint>

#include "kiln/backend/inference_backend.h"
#include "kiln/core/classification.h"
#include "kiln/core/status.h"
#include "kiln/data/cifar10.h"
#include "kiln/data/loader.h"

namespace kiln::eval {

Result<EvalResult> EvaluateEngine(backend::InferenceBackend& engine, const data::ImageSet& set,
                                  const data::Normalization& norm, int64_t batch_size = 256);

}  // namespace kiln::eval
