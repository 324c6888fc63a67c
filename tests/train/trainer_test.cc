#include "kiln/train/trainer.h"

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "../test_util.h"
#include "kiln/train/checkpoint.h"
#include "kiln/train/evaluate.h"

namespace kiln::train {
namespace {

namespace fs = std::filesystem;

// A small but real run: seed-cnn on 2,000 training images, validation on 1,000.
TrainOptions SmallRun(const fs::path& out, int64_t epochs) {
  TrainOptions o = TrainOptions::ForArch("seed-cnn");
  o.epochs = epochs;
  o.batch_size = 64;
  o.train_limit = 2000;
  o.validation_size = 1000;
  o.threads = 2;
  o.seed = 11;
  o.out_dir = out;
  return o;
}

torch::Tensor TestLogits(const fs::path& ckpt_file, int64_t n) {
  auto ckpt = LoadCheckpoint(ckpt_file);
  EXPECT_TRUE(ckpt.ok()) << ckpt.status().ToString();
  std::vector<int64_t> idx(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) idx[static_cast<size_t>(i)] = i;
  auto logits = PredictLogits(*ckpt->model, testing::SharedDataset().test.Subset(idx),
                              ckpt->meta.normalization);
  EXPECT_TRUE(logits.ok()) << logits.status().ToString();
  return *logits;
}

TEST(TrainerTest, ShortRunLearnsAndWritesEverything) {
  testing::TempDir dir;
  auto summary = Train(testing::SharedDataset(), SmallRun(dir.path(), 3), nullptr, nullptr);
  KILN_ASSERT_RESULT_OK(summary);
  ASSERT_EQ(summary->epochs.size(), 3U);
  EXPECT_LT(summary->epochs.back().train_loss, summary->epochs.front().train_loss);
  // Chance is 10%; the held-out test set must be clearly above it.
  EXPECT_GT(summary->test_accuracy, 0.25);
  EXPECT_GT(summary->train_images_per_second, 0);
  EXPECT_EQ(summary->parameters, 620362);  // seed-cnn: 3 convs + 2048->256->10
  for (const char* f : {"best.ckpt", "model.ckpt", "resume.ckpt", "metrics.csv",
                        "training_curve.png", "summary.json"}) {
    EXPECT_TRUE(fs::exists(dir.path() / f)) << f;
  }
  std::ifstream png(dir.path() / "training_curve.png", std::ios::binary);
  char sig[8] = {};
  png.read(sig, 8);
  EXPECT_EQ(std::string(sig + 1, 3), "PNG");

  std::ifstream csv(dir.path() / "metrics.csv");
  std::string line;
  int rows = 0;
  while (std::getline(csv, line)) ++rows;
  EXPECT_EQ(rows, 4);  // header + one row per epoch

  auto j = nlohmann::json::parse(std::ifstream(dir.path() / "summary.json"));
  EXPECT_DOUBLE_EQ(j.at("test_accuracy").get<double>(), summary->test_accuracy);
  EXPECT_EQ(j.at("per_class_test_accuracy").size(), 10U);
  EXPECT_EQ(j.at("train_images").get<int64_t>(), 2000);
  EXPECT_EQ(j.at("test_images").get<int64_t>(), 10000);
  EXPECT_TRUE(j.at("versions").contains("torch"));
  EXPECT_GT(j.at("checkpoint_bytes").get<int64_t>(), 620362 * 4);
}

// Ctrl-C between epochs, then --resume, gives bit-for-bit the weights of an uninterrupted run:
// this checks both the resume logic and that a seed reproduces a run.
TEST(TrainerTest, InterruptedRunResumesExactly) {
  testing::TempDir straight, interrupted;
  auto full = Train(testing::SharedDataset(), SmallRun(straight.path(), 3), nullptr, nullptr);
  KILN_ASSERT_RESULT_OK(full);

  std::atomic<bool> stop{false};
  auto first = Train(testing::SharedDataset(), SmallRun(interrupted.path(), 3), nullptr, &stop,
                     [&](const EpochMetrics& m) {
                       if (m.epoch == 1) stop = true;
                     });
  ASSERT_FALSE(first.ok());
  EXPECT_EQ(first.status().code(), StatusCode::kCancelled);
  EXPECT_NE(first.status().message().find("resume.ckpt"), std::string::npos);
  auto saved = LoadCheckpoint(interrupted.path() / "resume.ckpt");
  KILN_ASSERT_RESULT_OK(saved);
  EXPECT_EQ(saved->meta.epoch, 1);

  TrainOptions resume = SmallRun(interrupted.path(), 3);
  resume.resume = true;
  auto rest = Train(testing::SharedDataset(), resume, nullptr, nullptr);
  KILN_ASSERT_RESULT_OK(rest);
  ASSERT_EQ(rest->epochs.size(), 3U);
  EXPECT_DOUBLE_EQ(rest->epochs[0].val_accuracy, full->epochs[0].val_accuracy);
  EXPECT_DOUBLE_EQ(rest->epochs[2].train_loss, full->epochs[2].train_loss);
  EXPECT_TRUE(torch::equal(TestLogits(straight.path() / "model.ckpt", 200),
                           TestLogits(interrupted.path() / "model.ckpt", 200)));
  EXPECT_DOUBLE_EQ(rest->test_accuracy, full->test_accuracy);
}

TEST(TrainerTest, ResumeRefusesADifferentRun) {
  testing::TempDir dir;
  auto first = Train(testing::SharedDataset(), SmallRun(dir.path(), 1), nullptr, nullptr);
  KILN_ASSERT_RESULT_OK(first);
  TrainOptions other = SmallRun(dir.path(), 2);
  other.seed = 99;
  other.resume = true;
  auto r = Train(testing::SharedDataset(), other, nullptr, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("same options"), std::string::npos) << r.status().ToString();
}

TEST(TrainerTest, OptionsAreValidated) {
  struct Case {
    const char* name;
    std::function<void(TrainOptions&)> change;
    const char* message;
  };
  const Case cases[] = {
      {"epochs", [](TrainOptions& o) { o.epochs = 0; }, "--epochs"},
      {"batch", [](TrainOptions& o) { o.batch_size = -3; }, "--batch-size"},
      {"optimizer", [](TrainOptions& o) { o.optimizer = "rmsprop"; }, "--optimizer"},
      {"schedule", [](TrainOptions& o) { o.schedule = "step"; }, "--schedule"},
      {"lr", [](TrainOptions& o) { o.lr = 0; }, "--lr"},
      {"smoothing", [](TrainOptions& o) { o.label_smoothing = 1.5; }, "--label-smoothing"},
      {"threads", [](TrainOptions& o) { o.threads = 0; }, "--threads"},
      {"precision", [](TrainOptions& o) { o.precision = "fp16"; }, "--precision"},
  };
  for (const auto& c : cases) {
    TrainOptions o;
    c.change(o);
    Status s = o.Validate();
    EXPECT_FALSE(s.ok()) << c.name;
    EXPECT_NE(s.message().find(c.message), std::string::npos) << c.name << ": " << s.ToString();
  }
  EXPECT_TRUE(TrainOptions().Validate().ok());
  EXPECT_TRUE(TrainOptions::ForArch("seed-cnn").Validate().ok());
}

TEST(TrainerTest, ScheduleShapes) {
  TrainOptions o;
  o.lr = 1.0;
  o.warmup_fraction = 0.25;
  EXPECT_DOUBLE_EQ(LearningRateAt(o, 0, 100), 0.0);
  EXPECT_DOUBLE_EQ(LearningRateAt(o, 25, 100), 1.0);
  EXPECT_NEAR(LearningRateAt(o, 50, 100), 2.0 / 3.0, 1e-12);  // linear decay
  EXPECT_NEAR(LearningRateAt(o, 100, 100), 0.0, 1e-12);
  o.schedule = "cosine";
  EXPECT_NEAR(LearningRateAt(o, 25 + 75 / 2, 100), 0.5, 0.03);
  EXPECT_NEAR(LearningRateAt(o, 100, 100), 0.0, 1e-12);
}

}  // namespace
}  // namespace kiln::train
