// Structured pruning: exact channels removed, consistent shapes, and the pruned model equal to
// the original with those channels zeroed.
#include "kiln/optimize/prune/prune.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "kiln/export/onnx_export.h"
#include "kiln/optimize/quantize/onnx_graph.h"
#include "../test_models.h"
#include "../test_util.h"

namespace kiln::optimize {
namespace {

// A model with non-trivial weights and batch-norm statistics: a few SGD steps on real images.
train::Checkpoint Trained(const std::string& arch) {
  return testing::SmallTrainedModel(arch, /*seed=*/3, /*steps=*/6);
}

torch::Tensor Batch(int64_t n, const data::Normalization& norm) {
  const data::ImageSet& test = testing::SharedDataset().test;
  auto x = torch::empty({n, 3, 32, 32});
  data::BatchLoader loader(&test, norm, data::LoaderOptions::InOrder(n));
  std::vector<int64_t> labels(static_cast<size_t>(n));
  loader.FillBatch(0, 0, x.data_ptr<float>(), labels.data());
  return x;
}

std::map<std::string, torch::Tensor> Params(const torch::nn::Module& m) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& p : m.named_parameters()) out[p.key()] = p.value();
  for (const auto& b : m.named_buffers()) out[b.key()] = b.value();
  return out;
}

class PruneTest : public ::testing::TestWithParam<std::string> {};

TEST_P(PruneTest, PrunedModelEqualsOriginalWithChannelsZeroed) {
  train::Checkpoint ckpt = Trained(GetParam());
  for (const std::string scope : {"layer", "global"}) {
    SCOPED_TRACE(scope);
    PruneOptions opt;
    opt.scope = scope;
    auto pruned = PruneCheckpoint(ckpt, opt);
    KILN_ASSERT_OK(pruned.status());
    // Kept counts are multiples of 8 and smaller than before; widths recorded in the meta.
    int64_t before = 0, after = 0;
    for (const PrunedGroup& g : pruned->groups) {
      const auto kept = static_cast<int64_t>(g.kept.size());
      EXPECT_EQ(kept % 8, 0) << g.name;
      EXPECT_LE(kept, g.before) << g.name;
      EXPECT_TRUE(std::is_sorted(g.kept.begin(), g.kept.end()));
      EXPECT_EQ(pruned->checkpoint.meta.widths.at(g.name), kept);
      before += g.before;
      after += kept;
      if (scope == "layer") {
        // 30% per layer, rounded to a multiple of 8: 32 -> 24, 64 -> 48, 128 -> 88, 256 -> 176.
        EXPECT_EQ(kept, std::llround(0.7 * static_cast<double>(g.before) / 8) * 8) << g.name;
      }
    }
    EXPECT_NEAR(1.0 - static_cast<double>(after) / static_cast<double>(before), 0.3, 0.06);
    EXPECT_LT(train::CountParameters(*pruned->checkpoint.model),
              train::CountParameters(*ckpt.model));

    // The original with the removed channels zeroed computes the same logits.
    auto zeroed = train::CreateModel(GetParam(), {}, ckpt.meta.widths);
    KILN_ASSERT_OK(zeroed.status());
    {
      torch::NoGradGuard no_grad;
      auto src = Params(*ckpt.model);
      for (auto& [k, v] : Params(**zeroed)) v.copy_(src.at(k));
    }
    KILN_ASSERT_OK(ZeroRemovedChannels(**zeroed, GetParam(), pruned->groups));
    (*zeroed)->eval();
    torch::NoGradGuard no_grad;
    const torch::Tensor x = Batch(32, ckpt.meta.normalization);
    const torch::Tensor want = (*zeroed)->forward(x);
    const torch::Tensor got = pruned->checkpoint.model->forward(x);
    ASSERT_EQ(got.sizes(), want.sizes());
    EXPECT_LT((got - want).abs().max().item<float>(), 1e-4);
    // And zeroing changed something: the pruned channels did carry signal.
    EXPECT_GT((ckpt.model->forward(x) - want).abs().max().item<float>(), 1e-4);

    // It exports to a valid, physically smaller ONNX graph.
    auto bytes = exporter::BuildOnnxModel(pruned->checkpoint, {});
    KILN_ASSERT_OK(bytes.status());
    onnx::ModelProto m;
    ASSERT_TRUE(m.ParseFromString(*bytes));
    KILN_ASSERT_OK(CheckOnnx(m));
    auto full = exporter::BuildOnnxModel(ckpt, {});
    KILN_ASSERT_OK(full.status());
    onnx::ModelProto fm;
    ASSERT_TRUE(fm.ParseFromString(*full));
    EXPECT_LT(*FlopsPerSample(m), *FlopsPerSample(fm));
  }
}

INSTANTIATE_TEST_SUITE_P(Archs, PruneTest,
                         ::testing::Values("seed-cnn", "kiln-resnet", "airbench94"));

TEST(PruneTest, RemovesTheSmallestFiltersOfALayer) {
  train::Checkpoint ckpt = Trained("seed-cnn");
  PruneOptions opt;
  opt.norm = "l1";
  auto pruned = PruneCheckpoint(ckpt, opt);
  KILN_ASSERT_OK(pruned.status());
  // conv1: the 24 filters with the largest L1 norm stay.
  const torch::Tensor norms = Params(*ckpt.model).at("conv1.weight").abs().flatten(1).sum(1);
  const torch::Tensor order = std::get<1>(norms.sort(/*dim=*/0, /*descending=*/true));
  std::vector<int64_t> expected(order.data_ptr<int64_t>(), order.data_ptr<int64_t>() + 24);
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(pruned->groups[0].name, "conv1");
  EXPECT_EQ(pruned->groups[0].kept, expected);
  // The kept filters are copied unchanged; the next layer keeps the matching input channels.
  const auto before = Params(*ckpt.model);
  const auto after = Params(*pruned->checkpoint.model);
  const torch::Tensor idx = torch::tensor(expected, torch::kInt64);
  EXPECT_TRUE(after.at("conv1.weight").equal(before.at("conv1.weight").index_select(0, idx)));
  EXPECT_TRUE(after.at("conv2.weight").equal(
      before.at("conv2.weight").index_select(0, torch::tensor(pruned->groups[1].kept, torch::kInt64))
          .index_select(1, idx)));
  // fc1 loses the 16 (4 x 4) inputs of each removed conv3 channel.
  EXPECT_EQ(after.at("fc1.weight").size(1), 16 * static_cast<int64_t>(pruned->groups[2].kept.size()));
}

TEST(PruneTest, CheckpointRoundTripKeepsWidths) {
  train::Checkpoint ckpt = Trained("kiln-resnet");
  auto pruned = PruneCheckpoint(ckpt, PruneOptions{});
  KILN_ASSERT_OK(pruned.status());
  testing::TempDir dir;
  KILN_ASSERT_OK(train::SaveCheckpoint(dir.path() / "p.ckpt", pruned->checkpoint.meta,
                                       *pruned->checkpoint.model, nullptr));
  auto back = train::LoadCheckpoint(dir.path() / "p.ckpt");
  KILN_ASSERT_OK(back.status());
  EXPECT_EQ(back->meta.widths, pruned->checkpoint.meta.widths);
  EXPECT_EQ(train::CountParameters(*back->model),
            train::CountParameters(*pruned->checkpoint.model));
}

TEST(PruneTest, BadOptionsAndUnknownWidthsAreErrors) {
  train::Checkpoint ckpt = Trained("seed-cnn");
  PruneOptions opt;
  opt.ratio = 0.99;
  EXPECT_EQ(PruneCheckpoint(ckpt, opt).status().code(), StatusCode::kInvalidArgument);
  opt = {};
  opt.norm = "l3";
  EXPECT_EQ(PruneCheckpoint(ckpt, opt).status().code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(train::CreateModel("seed-cnn", {}, {{"layer9", 8}}).ok());
  EXPECT_FALSE(train::CreateModel("seed-cnn", {}, {{"conv1", 0}}).ok());
}

}  // namespace
}  // namespace kiln::optimize
