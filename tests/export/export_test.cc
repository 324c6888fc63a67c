#include <gtest/gtest.h>
#include <onnx/checker.h>
#include <onnx/onnx_pb.h>
#include <torch/script.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "../test_models.h"
#include "../test_util.h"
#include "kiln/backend/factory/factory.h"
#include "kiln/backend/inference_backend.h"
#include "kiln/backend/model_metadata.h"
#include "kiln/export/drift_reference.h"
#include "kiln/export/onnx_export.h"
#include "kiln/export/torchscript_export.h"
#include "kiln/train/evaluate.h"

namespace kiln::exporter {
namespace {

namespace fs = std::filesystem;

// A model with non-trivial weights and batch-norm statistics: a few SGD steps on real images.
train::Checkpoint SmallTrainedModel(const std::string& arch) {
  return testing::SmallTrainedModel(arch, /*seed=*/7, /*steps=*/8);
}

data::ImageSet TestImages(int64_t n) {
  std::vector<int64_t> idx(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) idx[static_cast<size_t>(i)] = i;
  return testing::SharedDataset().test.Subset(idx);
}

// Each engine and the file `kiln export` writes for it.
const std::vector<std::pair<std::string, std::string>> kExportedEngines = {
    {"onnxruntime", "model.onnx"}, {"libtorch", "model.pt"}};

Result<std::unique_ptr<backend::InferenceBackend>> OpenExported(
    const std::filesystem::path& dir, const std::string& engine, const std::string& file) {
  backend::BackendOptions bo;
  bo.model_path = (dir / file).string();
  return backend::CreateBackend(engine, bo);
}

// Both exported files, each run by its engine (model.onnx by ONNX Runtime, model.pt by
// libtorch's TorchScript runtime), agree with the trained model in libtorch (eval mode) and with
// each other: max |diff| <= 1e-4 and the same top-1 for every image, at batch 1, 7 and 64
// through the symbolic batch dimension.
// airbench94 (at a reduced width) carries test-time augmentation, so its files compute the
// views (flip: 2; flip-translate: 6, shifted with reflect padding) and their mean in the graph.
TEST(ExportTest, BothEnginesMatchTheTrainedModel) {
  const std::vector<std::pair<std::string, train::TtaLevel>> models = {
      {"seed-cnn", train::TtaLevel::kNone},
      {"kiln-resnet", train::TtaLevel::kNone},
      {"airbench94", train::TtaLevel::kFlip},
      {"airbench94", train::TtaLevel::kFlipTranslate}};
  for (const auto& [arch, tta] : models) {
    SCOPED_TRACE(arch + " " + train::TtaLevelName(tta));
    train::Checkpoint ckpt = SmallTrainedModel(arch);
    KILN_ASSERT_OK(ckpt.model->set_tta(tta));
    testing::TempDir dir;
    KILN_ASSERT_OK(ExportOnnx(ckpt, {}, dir.path() / "model.onnx"));
    KILN_ASSERT_OK(ExportTorchScript(ckpt, dir.path() / "model.pt", ""));

    const data::ImageSet images = TestImages(64);
    auto reference = train::PredictLogits(*ckpt.model, images, ckpt.meta.normalization);
    KILN_ASSERT_RESULT_OK(reference);
    std::vector<float> input(static_cast<size_t>(64 * 3072));
    data::LoaderOptions lo;
    lo.batch_size = 64;
    lo.shuffle = false;
    lo.augment = false;
    std::vector<int64_t> labels(64);
    data::BatchLoader loader(&images, ckpt.meta.normalization, lo);
    loader.FillBatch(0, 0, input.data(), labels.data());

    std::map<std::string, torch::Tensor> full_batch;
    for (const auto& [engine_name, file] : kExportedEngines) {
      SCOPED_TRACE(engine_name);
      auto engine = OpenExported(dir.path(), engine_name, file);
      KILN_ASSERT_RESULT_OK(engine);
      EXPECT_EQ((*engine)->name(), engine_name);
      EXPECT_TRUE((*engine)->capabilities().dynamic_batch);
      EXPECT_EQ((*engine)->InputElementsPerSample(), 3072);
      EXPECT_EQ((*engine)->outputs()[0].shape, (std::vector<int64_t>{-1, 10}));
      EXPECT_EQ((*engine)->metadata().at("kiln.arch"), arch);
      EXPECT_EQ((*engine)->metadata().at("kiln.input_shape"), "[-1,3,32,32]");
      for (int64_t batch : {1, 7, 64}) {
        SCOPED_TRACE(batch);
        std::vector<float> out(static_cast<size_t>(batch * 10));
        KILN_ASSERT_OK((*engine)->Run(input.data(), batch, out.data()));
        auto got = torch::from_blob(out.data(), {batch, 10}).clone();
        auto want = reference->narrow(0, 0, batch);
        EXPECT_LE((got - want).abs().max().item<float>(), 1e-4F);
        EXPECT_TRUE(torch::equal(got.argmax(1), want.argmax(1)));
        if (batch == 64) full_batch[engine_name] = got;
      }
    }
    ASSERT_EQ(full_batch.size(), 2U);
    EXPECT_LE((full_batch["onnxruntime"] - full_batch["libtorch"]).abs().max().item<float>(),
              1e-4F);
  }
}

// The drift reference is the model's own predictions on the given images, and it travels in
// both formats (ONNX metadata_props, the TorchScript extra file) to what the server reads.
TEST(ExportTest, DriftReferenceTravelsInBothFormats) {
  train::Checkpoint ckpt = SmallTrainedModel("seed-cnn");
  const data::ImageSet images = TestImages(200);
  auto ref = ComputeDriftReference(ckpt, images, "first 200 test images");
  KILN_ASSERT_RESULT_OK(ref);
  EXPECT_EQ(ref->images, 200);
  ASSERT_EQ(ref->classes(), 10);
  ASSERT_EQ(ref->channels(), 3);
  // Class shares: the arg-max distribution of the checkpoint's logits on the same images.
  auto logits = train::PredictLogits(*ckpt.model, images, ckpt.meta.normalization);
  KILN_ASSERT_RESULT_OK(logits);
  const auto top = logits->argmax(1);
  for (int64_t c = 0; c < 10; ++c) {
    EXPECT_NEAR(ref->class_share[static_cast<size_t>(c)],
                top.eq(c).sum().item<double>() / 200.0, 1e-12);
  }
  const auto probs = torch::softmax(*logits, 1).amax(1);
  EXPECT_NEAR(ref->mean_confidence, probs.mean().item<double>(), 1e-5);

  const std::map<std::string, std::string> extra = {
      {backend::kDriftReferenceKey, backend::DriftReferenceJson(*ref)}};
  testing::TempDir dir;
  OnnxExportOptions o;
  o.extra_metadata = extra;
  KILN_ASSERT_OK(ExportOnnx(ckpt, o, dir.path() / "model.onnx"));
  KILN_ASSERT_OK(ExportTorchScript(ckpt, dir.path() / "model.pt", "", extra));
  for (const auto& [engine_name, file] : kExportedEngines) {
    SCOPED_TRACE(engine_name);
    auto engine = OpenExported(dir.path(), engine_name, file);
    KILN_ASSERT_RESULT_OK(engine);
    auto meta = backend::ReadKilnMetadata((*engine)->metadata(), (dir.path() / file).string());
    KILN_ASSERT_RESULT_OK(meta);
    ASSERT_TRUE(meta->drift_reference.has_value());
    EXPECT_EQ(meta->drift_reference->class_share, ref->class_share);
    EXPECT_EQ(meta->drift_reference->channel_mean, ref->channel_mean);
    EXPECT_EQ(meta->drift_reference->source, "first 200 test images");
  }
}

// model.pt is a real TorchScript archive: plain torch::jit::load opens it, no Kiln code needed.
TEST(ExportTest, TorchScriptLoadsWithoutKiln) {
  train::Checkpoint ckpt = SmallTrainedModel("kiln-resnet");
  testing::TempDir dir;
  const fs::path file = dir.path() / "model.pt";
  KILN_ASSERT_OK(ExportTorchScript(ckpt, file, R"({"test_accuracy": 0.25})"));
  torch::jit::ExtraFilesMap extra{{"kiln_metadata.json", ""}};
  torch::jit::Module m = torch::jit::load(file.string(), torch::kCPU, extra);
  m.eval();
  auto x = torch::randn({3, 3, 32, 32});
  torch::NoGradGuard ng;
  auto got = m.forward({x}).toTensor();
  auto want = ckpt.model->forward(x);
  EXPECT_LE((got - want).abs().max().item<float>(), 1e-4F);
  auto info = nlohmann::json::parse(extra["kiln_metadata.json"]);
  EXPECT_EQ(info.at("kiln.arch"), "kiln-resnet");
  EXPECT_EQ(nlohmann::json::parse(info.at("kiln.labels").get<std::string>()).at(0), "airplane");
  EXPECT_EQ(nlohmann::json::parse(info.at("kiln.training_summary").get<std::string>())
                .at("test_accuracy"),
            0.25);
  auto source = TorchScriptSource(ckpt);
  KILN_ASSERT_RESULT_OK(source);
  EXPECT_NE(source->find("torch.conv2d"), std::string::npos);
  EXPECT_EQ(source->find("batch_norm"), std::string::npos);  // folded into the convolutions
}

TEST(ExportTest, ModelPassesTheCheckerAndCarriesMetadata) {
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

TEST(ExportTest, BadOptionsAreRejected) {
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

TEST(BackendTest, ErrorsAreStatuses) {
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

  auto not_script = backend::CreateBackend("libtorch", bo);
  ASSERT_FALSE(not_script.ok());
  EXPECT_EQ(not_script.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(not_script.status().message().find("garbage.onnx"), std::string::npos)
      << not_script.status().ToString();

  auto unknown = backend::CreateBackend("tensorrt", bo);
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("known: onnxruntime, libtorch"), std::string::npos);

  bo.graph_optimization = "max";
  EXPECT_FALSE(bo.Validate().ok());
}

TEST(BackendTest, ShapesAndUnexpectedInputsAreRejected) {
  train::Checkpoint ckpt = SmallTrainedModel("seed-cnn");
  testing::TempDir dir;
  KILN_ASSERT_OK(ExportOnnx(ckpt, {}, dir.path() / "model.onnx"));
  KILN_ASSERT_OK(ExportTorchScript(ckpt, dir.path() / "model.pt", ""));
  for (const char* name : {"onnxruntime", "libtorch"}) {
    SCOPED_TRACE(name);
    backend::BackendOptions bo;
    bo.model_path =
        (dir.path() / (std::string(name) == "libtorch" ? "model.pt" : "model.onnx")).string();
    if (std::string(name) == "onnxruntime")
      bo.optimized_model_path = (dir.path() / "optimized.onnx").string();
    auto engine = backend::CreateBackend(name, bo);
    KILN_ASSERT_RESULT_OK(engine);
    KILN_ASSERT_OK((*engine)->ValidateInputShape({5, 3, 32, 32}));
    Status wrong = (*engine)->ValidateInputShape({5, 3, 28, 28});
    ASSERT_FALSE(wrong.ok());
    EXPECT_EQ(wrong.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(wrong.message().find("[5,3,28,28] does not match the model's [-1,3,32,32]"),
              std::string::npos)
        << wrong.ToString();
    EXPECT_FALSE((*engine)->ValidateInputShape({3, 32, 32}).ok());
    EXPECT_FALSE((*engine)->ValidateInputShape({0, 3, 32, 32}).ok());
    std::vector<float> in(3072), out(10);
    EXPECT_FALSE((*engine)->Run(in.data(), 0, out.data()).ok());
  }
  EXPECT_TRUE(fs::exists(dir.path() / "optimized.onnx"));  // ORT saved its optimized graph

  // An ONNX model with two inputs (x + y): not an image classifier Kiln can feed.
  onnx::ModelProto two;
  two.set_ir_version(8);
  two.add_opset_import()->set_version(17);
  auto* g = two.mutable_graph();
  g->set_name("two");
  for (const char* in : {"x", "y"}) {
    auto* v = g->add_input();
    v->set_name(in);
    auto* t = v->mutable_type()->mutable_tensor_type();
    t->set_elem_type(onnx::TensorProto::FLOAT);
    t->mutable_shape()->add_dim()->set_dim_value(4);
  }
  auto* out = g->add_output();
  out->set_name("z");
  out->mutable_type()->mutable_tensor_type()->set_elem_type(onnx::TensorProto::FLOAT);
  out->mutable_type()->mutable_tensor_type()->mutable_shape()->add_dim()->set_dim_value(4);
  auto* add = g->add_node();
  add->set_op_type("Add");
  add->add_input("x");
  add->add_input("y");
  add->add_output("z");
  const fs::path two_file = dir.path() / "two_inputs.onnx";
  std::ofstream(two_file, std::ios::binary) << two.SerializeAsString();
  backend::BackendOptions bo;
  bo.model_path = two_file.string();
  auto r = backend::CreateBackend("onnxruntime", bo);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("expected exactly one input"), std::string::npos)
      << r.status().ToString();
}

}  // namespace
}  // namespace kiln::exporter
