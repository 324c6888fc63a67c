// `kiln optimize` end to end on a briefly trained seed-cnn: every variant is written, valid,
// loads in ONNX Runtime and agrees with the FP32 model; the manifest is complete; a failed
// accuracy gate exits non-zero.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "kiln/backend/factory/factory.h"
#include "kiln/backend/inference_backend.h"
#include "kiln/backend/model_metadata.h"
#include "kiln/optimize/quantize/onnx_graph.h"
#include "kiln/eval/evaluate.h"
#include "../test_util.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// Trains seed-cnn for 3 epochs (~40 s) and exports it into `dir`; returns model.onnx.
fs::path TrainAndExport(const fs::path& dir) {
  const std::string data = " --data '" + testing::DataArchive().string() + "'";
  auto t = testing::RunKiln("train --arch seed-cnn --epochs 3 --out '" + (dir / "run").string() +
                            "'" + data);
  EXPECT_EQ(t.exit_code, 0) << t.output;
  auto x = testing::RunKiln("export --checkpoint '" + (dir / "run" / "best.ckpt").string() + "'" +
                            data);
  EXPECT_EQ(x.exit_code, 0) << x.output;
  return dir / "run" / "export" / "model.onnx";
}

json ReadJson(const fs::path& file) {
  std::ifstream in(file);
  return json::parse(in);
}

// Top-1 agreement of two models on the first `n` test images.
double Agreement(const fs::path& a, const fs::path& b, const data::Normalization& norm, int64_t n) {
  std::vector<int64_t> idx(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) idx[static_cast<size_t>(i)] = i;
  const data::ImageSet test = testing::SharedDataset().test.Subset(idx);
  std::vector<std::vector<int64_t>> preds;
  for (const fs::path& f : {a, b}) {
    backend::BackendOptions bo;
    bo.model_path = f.string();
    auto engine = backend::CreateBackend("onnxruntime", bo);
    EXPECT_TRUE(engine.ok()) << f << ": " << engine.status().ToString();
    if (!engine.ok()) return 0;
    auto r = eval::EvaluateEngine(**engine, test, norm, 100);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    if (!r.ok()) return 0;
    preds.push_back(r->predictions);
  }
  int64_t same = 0;
  for (size_t i = 0; i < preds[0].size(); ++i) same += preds[0][i] == preds[1][i] ? 1 : 0;
  return static_cast<double>(same) / static_cast<double>(n);
}

// One test (one trained model): ctest runs every TEST in its own process.
TEST(OptimizeCliTest, VariantsAreValidAgreeWithFp32AndTheGateWorks) {
  testing::TempDir dir;
  const fs::path model = TrainAndExport(dir.path());
  ASSERT_TRUE(fs::exists(model));
  const fs::path out = dir.path() / "optimized";
  auto r = testing::RunKiln("optimize --model '" + model.string() + "' --output '" + out.string() +
                            "' --data '" + testing::DataArchive().string() +
                            "' --finetune-epochs 1 --finetune-limit 10000 --prune-budget 100");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json m = ReadJson(out / "manifest.json");
  EXPECT_EQ(m["format"], "kiln-optimize-1");
  EXPECT_EQ(m["test_images"], 10000);
  EXPECT_EQ(m["calibration"]["images"], 1024);
  EXPECT_EQ(m["calibration"]["split"], "train");
  std::map<std::string, json> by_name;
  for (const json& v : m["variants"]) by_name[v["name"].get<std::string>()] = v;
  auto source = optimize::LoadOnnx(model);
  KILN_ASSERT_OK(source.status());
  const std::string source_reference =
      optimize::GetMetadata(*source, backend::kDriftReferenceKey);
  EXPECT_FALSE(source_reference.empty()) << "kiln export stores a drift reference";
  for (const char* name :
       {"fp32", "fp32-opt", "int8-static", "int8-dynamic", "pruned-30", "pruned-30-int8"}) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(by_name.count(name));
    const json& v = by_name[name];
    EXPECT_EQ(v["status"], "ok");
    for (const char* key : {"file", "size_bytes", "parameters", "flops_per_image", "test_accuracy",
                            "agreement_with_fp32", "accuracy_delta_points", "settings",
                            "optimize_seconds", "budget_points", "test_images"}) {
      EXPECT_TRUE(v.contains(key)) << key;
    }
    const fs::path file = out / v["file"].get<std::string>();
    EXPECT_EQ(v["size_bytes"].get<int64_t>(), static_cast<int64_t>(fs::file_size(file)));
    EXPECT_GT(v["parameters"].get<int64_t>(), 0);
    EXPECT_GT(v["flops_per_image"].get<int64_t>(), 0);
    EXPECT_GT(v["test_accuracy"].get<double>(), 0.3);  // 3 epochs of seed-cnn: ~65%
    auto model = optimize::LoadOnnx(file);
    KILN_ASSERT_OK(model.status());
    KILN_EXPECT_OK(optimize::CheckOnnx(*model));
    // Every variant keeps the exported model's drift reference, unchanged.
    EXPECT_FALSE(optimize::GetMetadata(*model, backend::kDriftReferenceKey).empty());
    EXPECT_EQ(optimize::GetMetadata(*model, backend::kDriftReferenceKey), source_reference);
  }
  const json& fp32 = by_name["fp32"];
  const json& int8 = by_name["int8-static"];
  // INT8 files are ~4x smaller; pruning removes parameters and FLOPs.
  EXPECT_LT(int8["size_bytes"].get<int64_t>() * 3, fp32["size_bytes"].get<int64_t>());
  EXPECT_LT(by_name["pruned-30"]["flops_per_image"].get<int64_t>(),
            fp32["flops_per_image"].get<int64_t>() * 3 / 4);
  EXPECT_LT(by_name["pruned-30"]["parameters"].get<int64_t>(), fp32["parameters"].get<int64_t>());
  // ONNX Runtime runs the static INT8 graph on integer kernels: no float convolution is left.
  const json& ops = int8["runtime_operators"];
  EXPECT_EQ(ops.value("QLinearConv", 0), 3) << ops.dump();
  EXPECT_EQ(ops.value("Conv", 0) + ops.value("FusedConv", 0), 0) << ops.dump();
  EXPECT_EQ(ops.value("QGemm", 0), 2) << ops.dump();

  // Independently of the manifest: >= 99% top-1 agreement on 1,000 test images.
  data::Normalization norm;
  norm.mean = m["normalization"]["mean"].get<std::vector<float>>();
  norm.std = m["normalization"]["std"].get<std::vector<float>>();
  EXPECT_GE(Agreement(out / "fp32.onnx", out / "int8-static.onnx", norm, 1000), 0.99);
  EXPECT_GE(Agreement(out / "fp32.onnx", out / "int8-dynamic.onnx", norm, 1000), 0.99);
  EXPECT_GE(Agreement(out / "fp32.onnx", out / "fp32-opt.onnx", norm, 1000), 0.999);
  EXPECT_GE(Agreement(out / "pruned-30.onnx", out / "pruned-30-int8.onnx", norm, 1000), 0.99);
  // The pruned model also ships as TorchScript.
  EXPECT_TRUE(fs::exists(out / "pruned-30.pt"));

  // The peer quantizers (bench/peer_quantizers.py in .venv) on the same model and calibration
  // images: evaluated like Kiln's variants, marked as peers with their tool and settings, never
  // gated; a static INT8 graph as small as Kiln's that agrees with FP32.
  for (const char* name : {"ort-int8-minmax", "ort-int8-entropy", "nncf-int8"}) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(by_name.count(name));
    const json& v = by_name[name];
    ASSERT_EQ(v["status"], "ok") << v.dump();
    ASSERT_TRUE(v.contains("peer")) << v.dump();
    EXPECT_FALSE(v["peer"].value("tool", "").empty());
    EXPECT_FALSE(v["peer"].value("version", "").empty());
    EXPECT_EQ(v["precision"], "int8");
    EXPECT_EQ(v["test_images"], 10000);
    EXPECT_LT(v["size_bytes"].get<int64_t>() * 3, fp32["size_bytes"].get<int64_t>());
    EXPECT_GE(Agreement(out / "fp32.onnx", out / v["file"].get<std::string>(), norm, 1000), 0.97);
    // Kiln's metadata (labels, normalization, drift reference) is carried over.
    auto peer = optimize::LoadOnnx(out / v["file"].get<std::string>());
    KILN_ASSERT_OK(peer.status());
    EXPECT_EQ(optimize::GetMetadata(*peer, backend::kDriftReferenceKey), source_reference);
  }
  EXPECT_EQ(by_name["ort-int8-minmax"]["peer"]["settings"]["calibration_images"], 1024);
  EXPECT_EQ(by_name["ort-int8-entropy"]["peer"]["settings"]["calibrate_method"], "Entropy");

  // A failed accuracy gate exits non-zero and marks the variant failed in the manifest.
  const fs::path gate = dir.path() / "gate";
  // 90% of the channels removed and no fine-tuning: far over a zero-point budget.
  r = testing::RunKiln("optimize --model '" + model.string() + "' --output '" + gate.string() +
                       "' --data '" + testing::DataArchive().string() +
                       "' --variants pruned --prune-ratio 0.9 --finetune-epochs 0 "
                            "--prune-budget 0 --test-limit 1000");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("accuracy gate failed"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("pruned-90"), std::string::npos) << r.output;
  const json g = ReadJson(gate / "manifest.json");
  bool found = false;
  for (const json& v : g["variants"]) {
    if (v["name"] == "pruned-90") {
      found = true;
      EXPECT_EQ(v["status"], "failed");
      EXPECT_NE(v["error"].get<std::string>().find("budget"), std::string::npos);
    }
  }
  EXPECT_TRUE(found);
}

TEST(OptimizeCliTest, BadInputsGiveClearErrors) {
  const std::string data = " --data '" + testing::DataArchive().string() + "'";
  testing::TempDir dir;
  const fs::path junk = dir.path() / "junk.onnx";
  std::ofstream(junk) << "not a model";
  auto r = testing::RunKiln("optimize --model '" + junk.string() + "' --output '" +
                            (dir.path() / "o").string() + "'" + data);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("not an ONNX model"), std::string::npos) << r.output;
  r = testing::RunKiln("optimize --model '" + junk.string() + "' --variants int9" + data);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("unknown variant"), std::string::npos) << r.output;
  r = testing::RunKiln("optimize --model '" + junk.string() + "' --calibration kl" + data);
  EXPECT_EQ(r.exit_code, 2) << r.output;
}

}  // namespace
}  // namespace kiln
