#include "kiln/train/evaluate.h"

#include <algorithm>
#include <chrono>

namespace kiln::train {

namespace {

template <typename Fn>
Status ForEachBatch(Classifier& model, const data::ImageSet& set, const data::Normalization& norm,
                    const EvalOptions& options, Fn&& fn) {
  if (options.batch_size <= 0) return InvalidArgumentError("batch size must be positive");
  try {
    torch::NoGradGuard no_grad;
    model.eval();
    data::BatchLoader loader(&set, norm, data::LoaderOptions::InOrder(options.batch_size));
    auto images = torch::empty({options.batch_size, set.channels, set.height, set.width});
    auto labels = torch::empty({options.batch_size}, torch::kInt64);
    for (int64_t b = 0; b < loader.NumBatches(); ++b) {
      int64_t n = loader.FillBatch(0, b, images.data_ptr<float>(), labels.data_ptr<int64_t>());
      auto x = images.narrow(0, 0, n);
      if (options.channels_last) x = x.contiguous(torch::MemoryFormat::ChannelsLast);
      fn(model.forward(x), labels.narrow(0, 0, n));
    }
  } catch (const std::exception& e) {
    return InternalError(std::string("evaluation failed: ") + e.what());
  }
  return Status::Ok();
}

}  // namespace

Result<EvalResult> Evaluate(Classifier& model, const data::ImageSet& set,
                            const data::Normalization& norm, int64_t num_classes,
                            const EvalOptions& options) {
  auto start = std::chrono::steady_clock::now();
  EvalResult r;
  r.confusion.assign(static_cast<size_t>(num_classes),
                     std::vector<int64_t>(static_cast<size_t>(num_classes), 0));
  double loss_sum = 0.0;
  Status s = ForEachBatch(
      model, set, norm, options, [&](const torch::Tensor& logits, const torch::Tensor& labels) {
        loss_sum += torch::nn::functional::cross_entropy(
                        logits, labels,
                        torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                        .item<double>();
        auto pred = logits.argmax(1);
        auto* p = pred.data_ptr<int64_t>();
        auto* l = labels.data_ptr<int64_t>();
        for (int64_t i = 0; i < labels.size(0); ++i) {
          if (l[i] < num_classes && p[i] < num_classes) ++r.confusion[l[i]][p[i]];
          r.predictions.push_back(p[i]);
        }
        r.images += labels.size(0);
      });
  KILN_RETURN_IF_ERROR(s);
  SummarizeConfusion(&r);
  r.loss = r.images > 0 ? loss_sum / static_cast<double>(r.images) : 0.0;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

Result<torch::Tensor> PredictLogits(Classifier& model, const data::ImageSet& set,
                                    const data::Normalization& norm, const EvalOptions& options) {
  std::vector<torch::Tensor> parts;
  KILN_RETURN_IF_ERROR(ForEachBatch(model, set, norm, options,
                                    [&](const torch::Tensor& logits, const torch::Tensor&) {
                                      parts.push_back(logits.contiguous().clone());
                                    }));
  if (parts.empty()) return InvalidArgumentError("empty image set");
  return torch::cat(parts, 0);
}

}  // namespace kiln::train
