#include "kiln/eval/parity.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>

namespace kiln::eval {

Status CheckParity(const std::vector<float>& reference, int64_t num_classes,
                   backend::InferenceBackend& engine, const data::ImageSet& images,
                   const data::Normalization& norm, double tolerance, ParityReport* report,
                   int64_t batch_size) {
  *report = ParityReport{};
  report->backend = engine.name();
  const int64_t classes = num_classes;
  if (batch_size <= 0) return InvalidArgumentError("batch size must be positive");
  if (engine.InputElementsPerSample() != images.image_bytes() ||
      engine.OutputElementsPerSample() != classes) {
    return InvalidArgumentError(
        "the exported model's input/output sizes do not match the reference model");
  }
  if (static_cast<int64_t>(reference.size()) != images.size() * classes) {
    return InvalidArgumentError("the reference logits do not cover the image set (" +
                                std::to_string(reference.size()) + " values for " +
                                std::to_string(images.size()) + " images of " +
                                std::to_string(classes) + " classes)");
  }
  const auto lo = data::LoaderOptions::InOrder(batch_size);
  data::BatchLoader loader(&images, norm, lo);
  std::vector<float> input(static_cast<size_t>(batch_size * images.image_bytes()));
  std::vector<int64_t> labels(static_cast<size_t>(batch_size));
  std::vector<float> output(static_cast<size_t>(batch_size * classes));
  int64_t correct = 0;
  for (int64_t b = 0; b < loader.NumBatches(); ++b) {
    const int64_t n = loader.FillBatch(0, b, input.data(), labels.data());
    KILN_RETURN_IF_ERROR(engine.Run(input.data(), n, output.data()));
    const float* want = reference.data() + b * batch_size * classes;
    for (int64_t i = 0; i < n; ++i) {
      int64_t arg_got = 0;
      int64_t arg_want = 0;
      for (int64_t c = 0; c < classes; ++c) {
        const float g = output[static_cast<size_t>(i * classes + c)];
        const float w = want[i * classes + c];
        report->max_abs_diff =
            std::max(report->max_abs_diff, static_cast<double>(std::fabs(g - w)));
        if (g > output[static_cast<size_t>(i * classes + arg_got)]) arg_got = c;
        if (w > want[i * classes + arg_want]) arg_want = c;
      }
      report->top1_mismatches += arg_got != arg_want ? 1 : 0;
      correct += arg_got == labels[static_cast<size_t>(i)] ? 1 : 0;
    }
    report->images += n;
  }
  report->accuracy =
      report->images > 0 ? static_cast<double>(correct) / static_cast<double>(report->images) : 0;
  if (report->max_abs_diff > tolerance || report->top1_mismatches > 0) {
    char msg[256];
    std::snprintf(
        msg, sizeof msg,
        "%s disagrees with libtorch on %lld images: max |diff| %.3g (tolerance %.1g), %lld top-1 "
        "mismatches",
        report->backend.c_str(), static_cast<long long>(report->images), report->max_abs_diff,
        tolerance, static_cast<long long>(report->top1_mismatches));
    return InvalidArgumentError(msg);
  }
  return Status::Ok();
}

}  // namespace kiln::eval
