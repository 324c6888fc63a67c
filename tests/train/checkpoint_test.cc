#include "kiln/train/checkpoint.h"

#include <gtest/gtest.h>

#include <fstream>

#include "../test_util.h"

namespace kiln::train {
namespace {

namespace fs = std::filesystem;

CheckpointMeta Meta(const std::string& arch) {
  CheckpointMeta m;
  m.arch = arch;
  m.class_names = {"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"};
  m.normalization = {{0.5F, 0.4F, 0.3F}, {0.2F, 0.25F, 0.3F}};
  m.train_options_json = R"({"arch":")" + arch + R"("})";
  m.epoch = 3;
  m.best_val_accuracy = 0.5;
  return m;
}

// Save -> load gives identical logits, batch-norm running statistics included.
TEST(CheckpointTest, SaveLoadRoundTripIsExact) {
  for (const char* arch : {"seed-cnn", "kiln-resnet"}) {
    SCOPED_TRACE(arch);
    torch::manual_seed(3);
    auto model = CreateModel(arch, {});
    KILN_ASSERT_RESULT_OK(model);
    // A few training-mode passes move the batch-norm running statistics off their defaults.
    (*model)->train();
    torch::optim::SGD opt((*model)->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
    for (int i = 0; i < 3; ++i) {
      opt.zero_grad();
      auto loss = (*model)->forward(torch::randn({8, 3, 32, 32})).square().mean();
      loss.backward();
      opt.step();
    }
    (*model)->eval();
    testing::TempDir dir;
    KILN_ASSERT_OK(SaveCheckpoint(dir.path() / "m.ckpt", Meta(arch), **model, &opt));
    auto loaded = LoadCheckpoint(dir.path() / "m.ckpt");
    KILN_ASSERT_RESULT_OK(loaded);
    EXPECT_EQ(loaded->meta.arch, arch);
    EXPECT_EQ(loaded->meta.epoch, 3);
    EXPECT_EQ(loaded->meta.class_names.size(), 10U);
    EXPECT_EQ(loaded->meta.normalization.std[1], 0.25F);
    auto x = torch::randn({5, 3, 32, 32});
    torch::NoGradGuard ng;
    EXPECT_TRUE(torch::equal((*model)->forward(x), loaded->model->forward(x)));

    // The optimizer state restores into a fresh optimizer over the loaded model.
    torch::optim::SGD fresh(loaded->model->parameters(),
                            torch::optim::SGDOptions(0.1).momentum(0.9));
    KILN_ASSERT_OK(LoadOptimizerState(dir.path() / "m.ckpt", fresh));
  }
}

TEST(CheckpointTest, ChannelsLastModelSavesTheSameWeights) {
  torch::manual_seed(5);
  auto model = CreateModel("kiln-resnet", {});
  KILN_ASSERT_RESULT_OK(model);
  (*model)->eval();
  auto x = torch::randn({4, 3, 32, 32});
  torch::NoGradGuard ng;
  auto before = (*model)->forward(x);
  SetChannelsLast(**model, true);
  testing::TempDir dir;
  KILN_ASSERT_OK(SaveCheckpoint(dir.path() / "cl.ckpt", Meta("kiln-resnet"), **model, nullptr));
  auto loaded = LoadCheckpoint(dir.path() / "cl.ckpt");
  KILN_ASSERT_RESULT_OK(loaded);
  EXPECT_TRUE(torch::allclose(before, loaded->model->forward(x), 1e-5, 1e-5));
}

TEST(CheckpointTest, BadFilesAreErrorsNotCrashes) {
  testing::TempDir dir;
  auto missing = LoadCheckpoint(dir.path() / "none.ckpt");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);

  fs::path garbage = dir.path() / "garbage.ckpt";
  std::ofstream(garbage) << "not a checkpoint at all";
  auto g = LoadCheckpoint(garbage);
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(g.status().message().find("garbage.ckpt"), std::string::npos);

  // A truncated real checkpoint.
  auto model = CreateModel("seed-cnn", {});
  KILN_ASSERT_RESULT_OK(model);
  fs::path good = dir.path() / "good.ckpt";
  KILN_ASSERT_OK(SaveCheckpoint(good, Meta("seed-cnn"), **model, nullptr));
  fs::resize_file(good, fs::file_size(good) / 2);
  auto t = LoadCheckpoint(good);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kInvalidArgument);

  // Weights of one architecture under the name of another.
  CheckpointMeta lie = Meta("kiln-resnet");
  fs::path wrong = dir.path() / "wrong.ckpt";
  KILN_ASSERT_OK(SaveCheckpoint(wrong, lie, **model, nullptr));
  auto w = LoadCheckpoint(wrong);
  ASSERT_FALSE(w.ok());
  EXPECT_NE(w.status().message().find("missing or has the wrong shape"), std::string::npos)
      << w.status().ToString();
}

TEST(ModelsTest, SeedCnnIsTheReferenceArchitecture) {
  auto m = CreateModel("seed-cnn", {});
  KILN_ASSERT_RESULT_OK(m);
  // conv 3->32, 32->64, 64->128 (3x3 + bias), fc 2048->256, 256->10.
  const int64_t want = (3 * 9 * 32 + 32) + (32 * 9 * 64 + 64) + (64 * 9 * 128 + 128) +
                       (2048 * 256 + 256) + (256 * 10 + 10);
  EXPECT_EQ(CountParameters(**m), want);
  (*m)->eval();
  torch::NoGradGuard ng;
  EXPECT_EQ((*m)->forward(torch::zeros({2, 3, 32, 32})).sizes(), (std::vector<int64_t>{2, 10}));
  auto bad = CreateModel("vgg-9000", {});
  ASSERT_FALSE(bad.ok());
  // The error lists every architecture by name.
  for (const std::string& name : ArchitectureNames()) {
    EXPECT_NE(bad.status().message().find(name), std::string::npos) << bad.status().message();
  }
}

}  // namespace
}  // namespace kiln::train
