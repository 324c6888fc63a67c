#include "test_models.h"

#include <gtest/gtest.h>

#include "kiln/data/loader.h"
#include "test_util.h"

namespace kiln::testing {

train::Checkpoint SmallTrainedModel(const std::string& arch, uint64_t seed, int64_t steps) {
  torch::manual_seed(seed);
  const train::ModelWidths widths =
      arch == "airbench94" ? kSmallAirbenchWidths : train::ModelWidths{};
  auto model = train::CreateModel(arch, {}, widths);
  EXPECT_TRUE(model.ok()) << model.status().ToString();
  const data::ImageSet& train = SharedDataset().train;
  train::Checkpoint ckpt;
  ckpt.meta.arch = arch;
  ckpt.meta.widths = widths;
  ckpt.meta.class_names = SharedDataset().class_names;
  ckpt.meta.normalization = data::ComputeNormalization(train.Subset({0, 1, 2, 3, 4, 5, 6, 7}));
  ckpt.model = *model;
  {
    constexpr int64_t kFit = 256;
    auto fit = torch::empty({kFit, train.channels, train.height, train.width});
    for (int64_t i = 0; i < kFit; ++i) {
      data::NormalizeImage(train.image(i), train.channels, train.height * train.width,
                           ckpt.meta.normalization, fit.data_ptr<float>() + i * train.image_bytes());
    }
    ckpt.model->InitFromData(fit);  // airbench94's whitening; a no-op for the others
  }
  data::LoaderOptions lo;
  lo.batch_size = 64;
  data::BatchLoader loader(&train, ckpt.meta.normalization, lo);
  auto images = torch::empty({64, 3, 32, 32});
  auto labels = torch::empty({64}, torch::kInt64);
  torch::optim::SGD opt(ckpt.model->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  ckpt.model->train();
  for (int64_t b = 0; b < steps; ++b) {
    loader.FillBatch(0, b, images.data_ptr<float>(), labels.data_ptr<int64_t>());
    opt.zero_grad();
    torch::nn::functional::cross_entropy(ckpt.model->forward(images), labels).backward();
    opt.step();
  }
  ckpt.model->eval();
  return ckpt;
}

}  // namespace kiln::testing
