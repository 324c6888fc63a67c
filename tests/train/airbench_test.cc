// airbench94: the architecture's parts (patch whitening, identity initialisation, test-time
// augmentation), the recipe's data parts (alternating flip, reflect-padded translation), an exact
// resume with lookahead, and a short run against kiln-resnet's under the same budget.
#include <gtest/gtest.h>

#include <fstream>
#include <numeric>
#include <nlohmann/json.hpp>

#include "../test_models.h"
#include "../test_util.h"
#include "kiln/data/loader.h"
#include "kiln/train/checkpoint.h"
#include "kiln/train/evaluate.h"
#include "kiln/train/models.h"
#include "kiln/train/trainer.h"

namespace kiln::train {
namespace {

namespace fs = std::filesystem;

torch::Tensor NormalizedTrainImages(int64_t first, int64_t n, const data::Normalization& norm) {
  const data::ImageSet& set = testing::SharedDataset().train;
  auto x = torch::empty({n, set.channels, set.height, set.width});
  for (int64_t i = 0; i < n; ++i) {
    data::NormalizeImage(set.image(first + i), set.channels, set.height * set.width, norm,
                         x.data_ptr<float>() + i * set.image_bytes());
  }
  return x;
}

data::Normalization SampleNormalization() {
  const data::ImageSet& set = testing::SharedDataset().train;
  return data::ComputeNormalization(set.Subset({0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
}

// The first C*k*k filters map 2x2 patches to coordinates with identity second moment (eps 0),
// checked on the patches of the images they were fitted to; the rest are their negatives.
TEST(AirbenchTest, WhiteningFiltersWhitenThePatchCovariance) {
  const torch::Tensor x = NormalizedTrainImages(0, 200, SampleNormalization());
  const torch::Tensor filters = WhiteningFilters(x, 2, /*eps=*/0.0);
  ASSERT_EQ(filters.sizes(), (std::vector<int64_t>{24, 3, 2, 2}));
  EXPECT_TRUE(torch::equal(filters.narrow(0, 12, 12), -filters.narrow(0, 0, 12)));
  const torch::Tensor y = torch::conv2d(x.to(torch::kDouble), filters.narrow(0, 0, 12).to(torch::kDouble));
  const torch::Tensor flat = y.permute({0, 2, 3, 1}).reshape({-1, 12});
  const torch::Tensor moment = flat.t().matmul(flat) / static_cast<double>(flat.size(0));
  EXPECT_LT((moment - torch::eye(12, torch::kDouble)).abs().max().item<double>(), 1e-3)
      << moment;
  // Before whitening the patch coordinates are far from white (neighbouring pixels correlate).
  const torch::Tensor raw = x.to(torch::kDouble).unfold(2, 2, 1).unfold(3, 2, 1)
                                .permute({0, 2, 3, 1, 4, 5}).reshape({-1, 12});
  const torch::Tensor raw_moment = raw.t().matmul(raw) / static_cast<double>(raw.size(0));
  EXPECT_GT((raw_moment - torch::eye(12, torch::kDouble)).abs().max().item<double>(), 0.5);

  // The model's first layer takes them (with the default eps) and is frozen.
  auto model = CreateModel("airbench94", {});
  KILN_ASSERT_RESULT_OK(model);
  (*model)->InitFromData(x);
  for (const auto& p : (*model)->named_parameters()) {
    if (p.key() != "whiten.weight") continue;
    EXPECT_TRUE(torch::allclose(p.value(), WhiteningFilters(x, 2)));
    EXPECT_FALSE(p.value().requires_grad());
  }
}

// Each block's convolutions start as identities on their first input channels; batch-norm
// scales are frozen at 1.
TEST(AirbenchTest, ConvolutionsStartAsIdentities) {
  auto model = CreateModel("airbench94", {});
  KILN_ASSERT_RESULT_OK(model);
  int checked = 0;
  for (const auto& p : (*model)->named_parameters()) {
    if (p.key().find(".conv.weight") != std::string::npos) {
      const torch::Tensor w = p.value();
      const int64_t n = std::min(w.size(0), w.size(1));
      torch::Tensor dirac = torch::zeros({n, w.size(1), 3, 3});
      for (int64_t i = 0; i < n; ++i) dirac[i][i][1][1] = 1.0;
      EXPECT_TRUE(torch::equal(w.narrow(0, 0, n), dirac)) << p.key();
      ++checked;
    }
    if (p.key().find(".bn.weight") != std::string::npos) {
      EXPECT_FALSE(p.value().requires_grad()) << p.key();
      EXPECT_TRUE(torch::all(p.value() == 1).item<bool>()) << p.key();
    }
  }
  EXPECT_EQ(checked, 6);
}

// In eval mode forward() is the weighted mean of the views' logits; in train mode one view.
TEST(AirbenchTest, TestTimeAugmentationIsTheWeightedMeanOfItsViews) {
  train::Checkpoint ckpt = testing::SmallTrainedModel("airbench94", /*seed=*/5, /*steps=*/4);
  Classifier& m = *ckpt.model;
  EXPECT_EQ(m.tta(), TtaLevel::kFlip);
  torch::NoGradGuard no_grad;
  const torch::Tensor x = NormalizedTrainImages(100, 16, ckpt.meta.normalization);
  KILN_ASSERT_OK(m.set_tta(TtaLevel::kNone));
  const torch::Tensor plain = m.forward(x);
  const torch::Tensor mirrored = m.forward(x.flip({3}));
  const torch::Tensor padded = torch::reflection_pad2d(x, {1, 1, 1, 1});
  const torch::Tensor up_left = m.forward(padded.narrow(2, 0, 32).narrow(3, 0, 32));
  const torch::Tensor down_right = m.forward(padded.narrow(2, 2, 32).narrow(3, 2, 32));
  const torch::Tensor up_left_m = m.forward(padded.narrow(2, 0, 32).narrow(3, 0, 32).flip({3}));
  const torch::Tensor down_right_m = m.forward(padded.narrow(2, 2, 32).narrow(3, 2, 32).flip({3}));

  KILN_ASSERT_OK(m.set_tta(TtaLevel::kFlip));
  EXPECT_TRUE(torch::allclose(m.forward(x), 0.5 * plain + 0.5 * mirrored, 1e-5, 1e-5));
  KILN_ASSERT_OK(m.set_tta(TtaLevel::kFlipTranslate));
  const torch::Tensor want = 0.25 * (plain + mirrored) +
                             0.125 * (up_left + up_left_m + down_right + down_right_m);
  EXPECT_TRUE(torch::allclose(m.forward(x), want, 1e-5, 1e-5));
  EXPECT_FALSE(torch::allclose(want, plain, 1e-3, 1e-3));  // the views do differ

  for (TtaLevel level : {TtaLevel::kNone, TtaLevel::kFlip, TtaLevel::kFlipTranslate}) {
    double sum = 0;
    for (const TtaView& v : TtaViews(level)) sum += v.weight;
    EXPECT_DOUBLE_EQ(sum, 1.0);
    auto parsed = ParseTtaLevel(TtaLevelName(level));
    KILN_ASSERT_RESULT_OK(parsed);
    EXPECT_EQ(*parsed, level);
  }
  EXPECT_FALSE(ParseTtaLevel("mirror").ok());
  // Other architectures carry none.
  auto resnet = CreateModel("kiln-resnet", {});
  KILN_ASSERT_RESULT_OK(resnet);
  EXPECT_FALSE((*resnet)->set_tta(TtaLevel::kFlip).ok());
  EXPECT_TRUE((*resnet)->set_tta(TtaLevel::kNone).ok());
}

// Alternating flip: an image is mirrored in exactly one of any two consecutive epochs, and the
// same way two epochs apart. Reflect padding never shows a black pixel.
TEST(AirbenchTest, AlternatingFlipAndReflectPadding) {
  const data::ImageSet& train = testing::SharedDataset().train;
  std::vector<int64_t> idx;
  for (int64_t i = 0; i < 2000 && idx.size() < 64; ++i) {
    const uint8_t* p = train.image(i);
    if (std::find(p, p + train.image_bytes(), uint8_t{0}) == p + train.image_bytes()) {
      idx.push_back(i);  // images without a black pixel
    }
  }
  ASSERT_EQ(idx.size(), 64U);
  const data::ImageSet set = train.Subset(idx);
  const data::Normalization norm = SampleNormalization();
  const auto batch = [&](const data::AugmentOptions& aug, int64_t epoch) {
    data::LoaderOptions lo;
    lo.batch_size = 64;
    lo.shuffle = false;
    lo.augmentation = aug;
    lo.seed = 3;
    data::BatchLoader loader(&set, norm, lo);
    auto x = torch::empty({64, 3, 32, 32});
    std::vector<int64_t> labels(64);
    loader.FillBatch(epoch, 0, x.data_ptr<float>(), labels.data());
    return x;
  };
  data::AugmentOptions flip_only;
  flip_only.random_crop = false;
  flip_only.alternating_flip = true;
  const torch::Tensor e0 = batch(flip_only, 0), e1 = batch(flip_only, 1), e2 = batch(flip_only, 2);
  EXPECT_TRUE(torch::equal(e1, e0.flip({3})));
  EXPECT_TRUE(torch::equal(e2, e0));
  const torch::Tensor unflipped = batch({.random_crop = false, .flip = false}, 0);
  int64_t mirrored = 0;
  for (int64_t i = 0; i < 64; ++i) mirrored += torch::equal(e0[i], unflipped[i].flip({2})) ? 1 : 0;
  EXPECT_GT(mirrored, 10);  // about half, drawn per image
  EXPECT_LT(mirrored, 54);

  // The value a black pixel normalizes to, per channel.
  const auto has_black = [&](const torch::Tensor& x) {
    for (int64_t c = 0; c < 3; ++c) {
      const float black = (0.0F - norm.mean[static_cast<size_t>(c)]) / norm.std[static_cast<size_t>(c)];
      if (torch::any(x.select(1, c) == black).item<bool>()) return true;
    }
    return false;
  };
  data::AugmentOptions zeros{.random_crop = true, .pad = 2, .flip = false};
  data::AugmentOptions reflect = zeros;
  reflect.reflect = true;
  EXPECT_TRUE(has_black(batch(zeros, 0)));
  EXPECT_FALSE(has_black(batch(reflect, 0)));
}

// airbench94's recipe on 2,000 images (its options otherwise), at a batch small enough for it.
// The shared data set with only the first `n` test images: a run's final evaluation (two TTA
// views per image) would otherwise cost more than its training in these short runs.
const data::Dataset& DatasetWithTestImages(int64_t n) {
  static const data::Dataset* shortened = [n] {
    auto* d = new data::Dataset(testing::SharedDataset());
    std::vector<int64_t> first(n);
    std::iota(first.begin(), first.end(), 0);
    d->test = d->test.Subset(first);
    return d;
  }();
  EXPECT_EQ(shortened->test.size(), n);
  return *shortened;
}

TrainOptions SmallAirbenchRun(const fs::path& out, int64_t epochs) {
  TrainOptions o = TrainOptions::ForArch("airbench94");
  o.epochs = epochs;
  o.batch_size = 250;
  o.lr = 1.5 * 250 / 1024;  // airbench's lr is per 1,024 images
  o.train_limit = 2000;
  o.threads = 2;
  o.seed = 4;
  o.out_dir = out;
  return o;
}

// Lookahead keeps a moving average outside the weights; a run interrupted after its first
// epoch resumes from resume.ckpt + resume.lookahead to bit-for-bit the uninterrupted weights.
TEST(AirbenchTest, InterruptedRunWithLookaheadResumesExactly) {
  testing::TempDir straight, interrupted;
  const data::Dataset& data = DatasetWithTestImages(1000);
  auto full = Train(data, SmallAirbenchRun(straight.path(), 2), nullptr, nullptr);
  KILN_ASSERT_RESULT_OK(full);
  std::atomic<bool> stop{false};
  auto first = Train(data, SmallAirbenchRun(interrupted.path(), 2), nullptr,
                     &stop, [&](const EpochMetrics& m) {
                       if (m.epoch == 1) stop = true;
                     });
  ASSERT_FALSE(first.ok());
  EXPECT_TRUE(fs::exists(interrupted.path() / "resume.lookahead"));
  TrainOptions resume = SmallAirbenchRun(interrupted.path(), 2);
  EXPECT_TRUE(CanResume(resume));
  resume.resume = true;
  auto rest = Train(data, resume, nullptr, nullptr);
  KILN_ASSERT_RESULT_OK(rest);
  auto a = LoadCheckpoint(straight.path() / "model.ckpt");
  auto b = LoadCheckpoint(interrupted.path() / "model.ckpt");
  KILN_ASSERT_RESULT_OK(a);
  KILN_ASSERT_RESULT_OK(b);
  auto pa = a->model->named_parameters();
  for (const auto& p : b->model->named_parameters()) {
    EXPECT_TRUE(torch::equal(p.value(), pa[p.key()])) << p.key();
  }
  EXPECT_DOUBLE_EQ(rest->test_accuracy, full->test_accuracy);

  // No validation split: best.ckpt is the last epoch, and the summary says what TTA it has.
  EXPECT_EQ(full->best_epoch, 2);
  auto j = nlohmann::json::parse(std::ifstream(straight.path() / "summary.json"));
  EXPECT_EQ(j.at("tta"), "flip");
  EXPECT_EQ(j.at("validation_images"), 0);
  EXPECT_GT(j.at("test_accuracy_without_tta").get<double>(), 0.1);
  // Without the lookahead file the run cannot be resumed exactly, so it is not offered.
  fs::remove(interrupted.path() / "resume.lookahead");
  EXPECT_FALSE(CanResume(SmallAirbenchRun(interrupted.path(), 2)));
}

// Same images, epochs and batch size for both: airbench94's recipe beats kiln-resnet's.
TEST(AirbenchTest, ShortRunBeatsTheDefaultUnderTheSameBudget) {
  testing::TempDir a, r;
  TrainOptions airbench = SmallAirbenchRun(a.path(), 4);
  airbench.train_limit = 5000;
  TrainOptions resnet = TrainOptions::ForArch("kiln-resnet");
  resnet.epochs = 4;
  resnet.batch_size = 250;
  resnet.train_limit = 5000;
  resnet.validation_size = 0;
  resnet.threads = 2;
  resnet.seed = 4;
  resnet.out_dir = r.path();
  auto ra = Train(testing::SharedDataset(), airbench, nullptr, nullptr);
  KILN_ASSERT_RESULT_OK(ra);
  auto rr = Train(testing::SharedDataset(), resnet, nullptr, nullptr);
  KILN_ASSERT_RESULT_OK(rr);
  std::cout << "5,000 images, 4 epochs, batch 250: airbench94 " << 100 * ra->test_accuracy
            << "% (flip TTA) in " << ra->wall_seconds << " s, kiln-resnet " << 100 * rr->test_accuracy
            << "% in " << rr->wall_seconds << " s\n";
  EXPECT_GT(ra->test_accuracy, rr->test_accuracy);
}

}  // namespace
}  // namespace kiln::train
