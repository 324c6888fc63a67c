#include "kiln/export/onnx_export.h"

#include <gtest/gtest.h>
#include <onnx/checker.h>
#include <onnx/onnx_pb.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "../test_util.h"
#include "kiln/backend/inference_backend.h"
#include "kiln/train/evaluate.h"

namespace kiln::exporter {
namespace {

namespace fs = std::filesystem;

// A model with non-trivial weights and batch-norm statistics: a few SGD steps on real images.
train::Checkpoint SmallTrainedModel(const std::string& arch) {
  torch::manual_seed(7);
  auto model = train::CreateModel(arch, {});
  EXPECT_TRUE(model.ok()) << model.status().ToString();
  const data::ImageSet& train = testing::SharedDataset().train;
  train::Checkpoint ckpt;
  ckpt.meta.arch = arch;
  ckpt.meta.class_names = testing::SharedDataset().class_names;
  ckpt.meta.normalization = data::ComputeNormalization(train.Subset({0, 1, 2, 3, 4, 5, 6, 7}));
  ckpt.model = *model;
  data::LoaderOptions lo;
  lo.batch_size = 64;
  data::BatchLoader loader(&train, ckpt.meta.normalization, lo);
  auto images = torch::empty({64, 3, 32, 32});
  auto labels = torch::empty({64}, torch::kInt64);
  torch::optim::SGD opt(ckpt.model->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  ckpt.model->train();
  for (int64_t b = 0; b < 8; ++b) {
    loader.FillBatch(0, b, images.data_ptr<float>(), labels.data_ptr<int64_t>());
    opt.zero_grad();
    torch::nn::functional::cross_entropy(ckpt.model->forward(images), labels).backward();
    opt.step();
  }
  ckpt.model->eval();
  return ckpt;
}

data::ImageSet TestImages(int64_t n) {
  std::vector<int64_t> idx(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) idx[static_cast<size_t>(i)] = i;
  return testing::SharedDataset().test.Subset(idx);
}

// Exported ONNX run by ONNX Runtime agrees with libtorch (eval mode): max |diff| <= 1e-4 and the
// same top-1 for every image, at batch 1, 7 and 64 through the symbolic batch dimension.
TEST(OnnxExportTest, OnnxRuntimeMatchesLibtorch) {
  for (const char* arch : {"seed-cnn", "kiln-resnet"}) {
    SCOPED_TRACE(arch);
    train::Checkpoint ckpt = SmallTrainedModel(arch);
    testing::TempDir dir;
    const fs::path file = dir.path() / "model.onnx";
    KILN_ASSERT_OK(ExportOnnx(ckpt, {}, file));

    const data::ImageSet images = TestImages(64);
    auto reference = train::PredictLogits(*ckpt.model, images, ckpt.meta.normalization);
    KILN_ASSERT_RESULT_OK(reference);

    backend::BackendOptions bo;
    bo.model_path = file.string();
    auto engine = backend::CreateBackend("onnxruntime", bo);
    KILN_ASSERT_RESULT_OK(engine);
    EXPECT_TRUE((*engine)->capabilities().dynamic_batch);
    EXPECT_EQ((*engine)->inputs()[0].name, "input");
    EXPECT_EQ((*engine)->outputs()[0].name, "logits");
    EXPECT_EQ((*engine)->outputs()[0].shape, (std::vector<int64_t>{-1, 10}));

    std::vector<float> input(static_cast<size_t>(64 * 3072));
    data::LoaderOptions lo;
    lo.batch_size = 64;
    lo.shuffle = false;
    lo.augment = false;
    std::vector<int64_t> labels(64);
    data::BatchLoader loader(&images, ckpt.meta.normalization, lo);
    loader.FillBatch(0, 0, input.data(), labels.data());
    for (int64_t batch : {1, 7, 64}) {
      SCOPED_TRACE(batch);
      std::vector<float> out(static_cast<size_t>(batch * 10));
      KILN_ASSERT_OK((*engine)->Run(input.data(), batch, out.data()));
      auto got = torch::from_blob(out.data(), {batch, 10}).clone();
      auto want = reference->narrow(0, 0, batch);
      EXPECT_LE((got - want).abs().max().item<float>(), 1e-4F);
      EXPECT_TRUE(torch::equal(got.argmax(1), want.argmax(1)));
    }
  }
}

TEST(OnnxExportTest, ModelPassesTheCheckerAndCarriesMetadata) {
  train::Checkpoint ckpt = SmallTrainedModel("kiln-resnet");
  OnnxExportOptions o;
  o.opset = 13;
  o.input_name = "images";
  o.output_name = "scores";
  o.training_summary_json = R"({"test_accuracy": 0.5})";
  auto bytes = BuildOnnxModel(ckpt, o);
  KILN_ASSERT_RESULT_OK(bytes);
  onnx::ModelProto model;
  ASSERT_TRUE(model.ParseFromString(*bytes));
  EXPECT_NO_THROW(onnx::checker::check_model(model));
  EXPECT_EQ(model.opset_import(0).version(), 13);
  EXPECT_EQ(model.graph().input(0).name(), "images");
  EXPECT_EQ(model.graph().input(0).type().tensor_type().shape().dim(0).dim_param(), "batch");
  EXPECT_EQ(model.graph().output(0).name(), "scores");
  // Batch norm is folded away: no BatchNormalization node, one Conv per conv layer.
  int convs = 0;
  for (const auto& n : model.graph().node()) {
    EXPECT_NE(n.op_type(), "BatchNormalization");
    convs += n.op_type() == "Conv" ? 1 : 0;
  }
  EXPECT_EQ(convs, 8);
  std::map<std::string, std::string> meta;
  for (const auto& p : model.metadata_props()) meta[p.key()] = p.value();
  EXPECT_EQ(meta["kiln.arch"], "kiln-resnet");
  EXPECT_EQ(nlohmann::json::parse(meta["kiln.labels"]).at(3), "cat");
  EXPECT_EQ(nlohmann::json::parse(meta["kiln.normalization"]).at("mean").size(), 3U);
  EXPECT_EQ(meta["kiln.input_layout"], "NCHW");
  EXPECT_EQ(nlohmann::json::parse(meta["kiln.training_summary"]).at("test_accuracy"), 0.5);
}

TEST(OnnxExportTest, BadOptionsAreRejected) {
  train::Checkpoint ckpt = SmallTrainedModel("seed-cnn");
  for (int64_t opset : {12, 18}) {
    OnnxExportOptions o;
    o.opset = opset;
    auto r = BuildOnnxModel(ckpt, o);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  }
  OnnxExportOptions same;
  same.output_name = same.input_name;
  EXPECT_FALSE(BuildOnnxModel(ckpt, same).ok());
}

TEST(OnnxRuntimeBackendTest, ErrorsAreStatuses) {
  backend::BackendOptions bo;
  bo.model_path = "/nonexistent/model.onnx";
  auto missing = backend::CreateBackend("onnxruntime", bo);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);

  testing::TempDir dir;
  const fs::path garbage = dir.path() / "garbage.onnx";
  std::ofstream(garbage) << "definitely not protobuf";
  bo.model_path = garbage.string();
  auto bad = backend::CreateBackend("onnxruntime", bo);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("garbage.onnx"), std::string::npos)
      << bad.status().ToString();

  auto unknown = backend::CreateBackend("tensorrt", bo);
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("known: onnxruntime"), std::string::npos);

  bo.graph_optimization = "max";
  EXPECT_FALSE(bo.Validate().ok());
}

}  // namespace
}  // namespace kiln::exporter
