// `kiln repo write` and `kiln repo check` end to end: a repository written from a small trained
// model's manifest passes the strict check, loads in `kiln serve --disable-auto-complete-config`
// and answers what the engines answer on real test images; the check finds each classic reason
// a model is UNAVAILABLE in Triton.
#include "kiln/serve/repo/repo.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "../test_models.h"
#include "../test_util.h"
#include "kiln/backend/factory/factory.h"
#include "kiln/core/process.h"
#include "kiln/data/loader.h"
#include "kiln/export/onnx_export.h"
#include "kiln/export/torchscript_export.h"
#include "kiln/optimize/quantize/quantize.h"
#include "serve_client.h"

namespace kiln::serve {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using testing::Http;
using testing::HttpRequest;
using testing::RunKiln;
using testing::ServerProcess;
using testing::SharedDataset;
using testing::TempDir;
using testing::Write;

std::string Read(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A small trained seed-cnn exported as kiln optimize leaves it: fp32.onnx, fp32.pt, an INT8
// (static QDQ) variant, and a manifest that also lists a failed variant and fp32-opt.
class RepoTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    const fs::path d = dir_->path() / "optimized";
    fs::create_directories(d);
    train::Checkpoint ckpt = testing::SmallTrainedModel("seed-cnn", /*seed=*/7, /*steps=*/8);
    KILN_ASSERT_OK(exporter::ExportOnnx(ckpt, {}, d / "fp32.onnx"));
    KILN_ASSERT_OK(exporter::ExportTorchScript(ckpt, d / "fp32.pt", ""));
    // INT8: calibrated on 128 training images with the model's own normalization.
    onnx::ModelProto fp32;
    {
      std::ifstream in(d / "fp32.onnx", std::ios::binary);
      ASSERT_TRUE(fp32.ParseFromIstream(&in));
    }
    const auto& train = SharedDataset().train;
    const int64_t n = 128;
    std::vector<float> images(static_cast<size_t>(n * train.image_bytes()));
    for (int64_t i = 0; i < n; ++i) {
      data::NormalizeImage(train.image(i), train.channels, train.height * train.width,
                           ckpt.meta.normalization, images.data() + i * train.image_bytes());
    }
    optimize::QuantizeOptions qo;
    auto ranges = optimize::Calibrate(fp32, images.data(), n, train.image_bytes(), qo, nullptr);
    KILN_ASSERT_RESULT_OK(ranges);
    auto int8 = optimize::QuantizeStatic(fp32, *ranges, qo);
    KILN_ASSERT_RESULT_OK(int8);
    {
      std::ofstream out(d / "int8-static.onnx", std::ios::binary);
      ASSERT_TRUE(int8->SerializeToOstream(&out));
    }
    json manifest = {
        {"format", "kiln-optimize-1"},
        {"arch", "seed-cnn"},
        {"variants",
         {{{"name", "fp32"},
           {"file", "fp32.onnx"},
           {"torchscript_file", "fp32.pt"},
           {"precision", "fp32"},
           {"status", "ok"}},
          {{"name", "fp32-opt"}, {"file", "fp32.onnx"}, {"precision", "fp32"}, {"status", "ok"}},
          {{"name", "int8-static"},
           {"file", "int8-static.onnx"},
           {"precision", "int8"},
           {"status", "ok"}},
          {{"name", "pruned-30"},
           {"file", "missing.onnx"},
           {"precision", "fp32"},
           {"status", "failed"},
           {"error", "accuracy 10.00% is 50 points below FP32"}}}}};
    Write(d / "manifest.json", manifest.dump(2));
    normalization_ = new data::Normalization(ckpt.meta.normalization);
  }
  static void TearDownTestSuite() {
    delete normalization_;
    delete dir_;
  }

  static fs::path Optimized() { return dir_->path() / "optimized"; }

  // `kiln repo write --manifest` into a fresh folder; the folder.
  static fs::path WriteRepo(const fs::path& out, const std::string& extra = "") {
    auto r = RunKiln("repo write --manifest " + (Optimized() / "manifest.json").string() +
                     " --out " + out.string() + " --data " + testing::DataArchive().string() +
                     " --max-batch-size 16 " + extra);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return out;
  }

  // `count` test images from `first`, normalized as the model expects.
  static std::vector<float> TestImages(int64_t first, int64_t count) {
    const auto& test = SharedDataset().test;
    std::vector<float> x(static_cast<size_t>(count * test.image_bytes()));
    for (int64_t i = 0; i < count; ++i) {
      data::NormalizeImage(test.image(first + i), test.channels, test.height * test.width,
                           *normalization_, x.data() + i * test.image_bytes());
    }
    return x;
  }

  static TempDir* dir_;
  static data::Normalization* normalization_;
};
TempDir* RepoTest::dir_ = nullptr;
data::Normalization* RepoTest::normalization_ = nullptr;

TEST_F(RepoTest, WritesACompleteRepositoryFromAManifest) {
  TempDir t;
  const fs::path repo = t.path() / "models";
  auto r = RunKiln("repo write --manifest " + (Optimized() / "manifest.json").string() + " --out " +
                   repo.string() + " --data " + testing::DataArchive().string() +
                   " --max-batch-size 16 --instances 2 --threads 1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // The passing variants and the TorchScript export; the failed variant and fp32-opt say why not.
  for (const char* m : {"seed-cnn-fp32", "seed-cnn-int8-static", "seed-cnn-torchscript"}) {
    EXPECT_TRUE(fs::exists(repo / m / "config.pbtxt")) << m;
    EXPECT_TRUE(fs::exists(repo / m / "labels.txt")) << m;
    EXPECT_EQ(fs::file_size(repo / m / "warmup" / "sample"), 3u * 32 * 32 * 4) << m;
  }
  EXPECT_TRUE(fs::exists(repo / "seed-cnn-fp32" / "1" / "model.onnx"));
  EXPECT_TRUE(fs::exists(repo / "seed-cnn-torchscript" / "1" / "model.pt"));
  EXPECT_FALSE(fs::exists(repo / "seed-cnn-pruned-30"));
  EXPECT_FALSE(fs::exists(repo / "seed-cnn-fp32-opt"));
  EXPECT_NE(r.output.find("skipped pruned-30: failed its accuracy gate"), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("skipped fp32-opt: ONNX Runtime's saved optimized graph"),
            std::string::npos);
  // Every field the config must state, explicitly.
  const std::string onnx = Read(repo / "seed-cnn-fp32" / "config.pbtxt");
  for (const char* field :
       {"platform: \"onnxruntime_onnx\"", "backend: \"onnxruntime\"", "max_batch_size: 16",
        "dims: [ 3, 32, 32 ]", "dims: [ 10 ]", "label_filename: \"labels.txt\"",
        "preferred_batch_size: [ 8, 16 ]", "max_queue_delay_microseconds: 1000", "count: 2",
        "kind: KIND_CPU", "\"intra_op_thread_count\" value: { string_value: \"1\" }",
        "graph: { level: 0 }", "input_data_file: \"sample\"", "batch_size: 16",
        "version_policy: { latest: { num_versions: 1 } }"}) {
    EXPECT_NE(onnx.find(field), std::string::npos) << field << "\n" << onnx;
  }
  const std::string torch = Read(repo / "seed-cnn-torchscript" / "config.pbtxt");
  for (const char* field :
       {"platform: \"pytorch_libtorch\"", "name: \"INPUT__0\"", "name: \"OUTPUT__0\"",
        "\"INTRA_OP_THREAD_COUNT\"", "key: \"INPUT__0\""}) {
    EXPECT_NE(torch.find(field), std::string::npos) << field << "\n" << torch;
  }
  auto check = RunKiln("repo check --strict " + repo.string());
  EXPECT_EQ(check.exit_code, 0) << check.output;
  EXPECT_NE(check.output.find("0 error(s), 0 warning(s)"), std::string::npos) << check.output;
  // Written again: refused without --force, replaced with it.
  auto again = RunKiln("repo write --model " + (Optimized() / "fp32.onnx").string() + " --out " +
                       repo.string() + " --data " + testing::DataArchive().string());
  EXPECT_EQ(again.exit_code, 0) << again.output;  // "fp32" is a new name
  auto clash = RunKiln("repo write --model seed-cnn-fp32=" + (Optimized() / "fp32.onnx").string() +
                       " --out " + repo.string() + " --data " + testing::DataArchive().string());
  EXPECT_EQ(clash.exit_code, 1) << clash.output;
  EXPECT_NE(clash.output.find("exists (--force"), std::string::npos) << clash.output;
  auto forced =
      RunKiln("repo write --force --model seed-cnn-fp32=" + (Optimized() / "fp32.onnx").string() +
              " --out " + repo.string() + " --data " + testing::DataArchive().string());
  EXPECT_EQ(forced.exit_code, 0) << forced.output;
  for (const auto& e : fs::directory_iterator(repo)) {
    EXPECT_NE(e.path().filename().string()[0], '.') << "left behind: " << e.path();
  }
}

// The point of a complete config: the repository loads with auto-completion off, and every
// model answers what its engine computes on real test images.
TEST_F(RepoTest, ServedWithAutoCompleteOffEveryModelAnswersAsItsEngine) {
  TempDir t;
  const fs::path repo = WriteRepo(t.path() / "models");
  ServerProcess server(repo, {"--disable-auto-complete-config"});
  ASSERT_TRUE(server.started()) << server.Log();
  const int64_t n = 16;
  const std::vector<float> images = TestImages(0, n);
  struct Case {
    const char* model;
    fs::path file;
    const char* backend;
    const char* input;
  };
  const Case cases[] = {
      {"seed-cnn-fp32", Optimized() / "fp32.onnx", "onnxruntime", "input"},
      {"seed-cnn-int8-static", Optimized() / "int8-static.onnx", "onnxruntime", "input"},
      {"seed-cnn-torchscript", Optimized() / "fp32.pt", "libtorch", "INPUT__0"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.model);
    EXPECT_EQ(Http(server.url() + "/v2/models/" + c.model + "/ready").status, 200) << server.Log();
    EXPECT_NE(server.Log().find("model '" + std::string(c.model) +
                                "' version 1: model_warmup 'sample_batch_16' (batch 16) ran"),
              std::string::npos)
        << server.Log();
    backend::BackendOptions bo;
    bo.model_path = c.file.string();
    bo.intra_op_threads = 1;
    auto engine = backend::CreateBackend(c.backend, bo);
    KILN_ASSERT_RESULT_OK(engine);
    std::vector<float> want(static_cast<size_t>(n * 10));
    KILN_ASSERT_OK((*engine)->Run(images.data(), n, want.data()));
    json body = {
        {"inputs",
         {{{"name", c.input}, {"shape", {n, 3, 32, 32}}, {"datatype", "FP32"}, {"data", images}}}}};
    HttpRequest req;
    req.method = "POST";
    req.body = body.dump();
    auto res = Http(server.url() + "/v2/models/" + c.model + "/infer", req);
    ASSERT_EQ(res.status, 200) << res.body;
    const auto got = json::parse(res.body)["outputs"][0]["data"].get<std::vector<float>>();
    ASSERT_EQ(got.size(), want.size());
    float max_diff = 0;
    int top1_differs = 0;
    for (int64_t i = 0; i < n; ++i) {
      auto row = [&](const std::vector<float>& v) {
        return std::max_element(v.begin() + i * 10, v.begin() + i * 10 + 10) - (v.begin() + i * 10);
      };
      top1_differs += row(got) != row(want) ? 1 : 0;
      for (int k = 0; k < 10; ++k)
        max_diff = std::max(max_diff, std::abs(got[i * 10 + k] - want[i * 10 + k]));
    }
    EXPECT_LE(max_diff, 1e-4f);
    EXPECT_EQ(top1_differs, 0);
  }
  EXPECT_EQ(server.Terminate(), 0) << server.Log();
}

// Auto-completion off: a config that leaves something to auto-completion makes its model
// UNAVAILABLE, saying what is missing; the same repository loads with auto-completion on.
TEST_F(RepoTest, AnIncompleteConfigIsUnavailableWithAutoCompleteOff) {
  TempDir t;
  const fs::path repo = WriteRepo(t.path() / "models");
  const fs::path config = repo / "seed-cnn-fp32" / "config.pbtxt";
  std::string text = Read(config);
  const size_t dims = text.find("    dims: [ 3, 32, 32 ]\n");
  ASSERT_NE(dims, std::string::npos);
  text.erase(dims, std::string("    dims: [ 3, 32, 32 ]\n").size());
  // Warmup names the input's dims too; drop the warmup so that only the dims are missing.
  text.erase(text.find("model_warmup ["));
  Write(config, text);
  fs::remove(repo / "seed-cnn-int8-static" / "config.pbtxt");
  {
    ServerProcess strict(repo, {"--disable-auto-complete-config"});
    ASSERT_TRUE(strict.started()) << strict.Log();
    auto index = json::parse(Http(strict.url() + "/v2/repository/index",
                                  [] {
                                    HttpRequest r;
                                    r.method = "POST";
                                    return r;
                                  }())
                                 .body);
    std::map<std::string, json> by_name;
    for (const auto& m : index) by_name[m["name"].get<std::string>()] = m;
    EXPECT_EQ(by_name["seed-cnn-fp32"]["state"], "UNAVAILABLE");
    EXPECT_NE(by_name["seed-cnn-fp32"]["reason"].get<std::string>().find(
                  "input 'input' has no dims (auto-completion is off"),
              std::string::npos)
        << by_name["seed-cnn-fp32"];
    EXPECT_NE(by_name["seed-cnn-int8-static"]["reason"].get<std::string>().find(
                  "no config.pbtxt, and auto-completion is off"),
              std::string::npos)
        << by_name["seed-cnn-int8-static"];
    EXPECT_EQ(by_name["seed-cnn-torchscript"]["state"], "READY");
    EXPECT_EQ(strict.Terminate(), 0) << strict.Log();
  }
  ServerProcess completing(repo, {});
  ASSERT_TRUE(completing.started()) << completing.Log();
  EXPECT_EQ(Http(completing.url() + "/v2/models/seed-cnn-fp32/ready").status, 200);
  EXPECT_EQ(Http(completing.url() + "/v2/models/seed-cnn-int8-static/ready").status, 200);
  EXPECT_EQ(completing.Terminate(), 0) << completing.Log();
}

// A PyTorch-written file (Debian's python3-torch): `script` gets the output path as argv[1].
void PythonTorch(const std::string& script, const fs::path& out) {
  auto rc = RunProcess({"/usr/bin/python3", "-c", script, out.string()});
  KILN_ASSERT_RESULT_OK(rc);
  ASSERT_EQ(*rc, 0) << script;
  ASSERT_TRUE(fs::exists(out));
}

// Each classic reason a model is UNAVAILABLE in Triton, planted into a copy of a good
// repository, is found with its fix; the good models stay clean.
TEST_F(RepoTest, CheckFindsEveryClassicMistake) {
  TempDir t;
  const fs::path good = WriteRepo(t.path() / "good");
  const fs::path repo = t.path() / "bad";
  fs::create_directories(repo);
  auto copy = [&](const std::string& from, const std::string& to) {
    fs::copy(good / from, repo / to, fs::copy_options::recursive);
    std::string text = Read(repo / to / "config.pbtxt");
    const std::string name = "name: \"" + from + "\"";
    text.replace(text.find(name), name.size(), "name: \"" + to + "\"");
    Write(repo / to / "config.pbtxt", text);
  };
  auto edit = [&](const std::string& model, const std::string& from, const std::string& to) {
    std::string text = Read(repo / model / "config.pbtxt");
    const size_t at = text.find(from);
    ASSERT_NE(at, std::string::npos) << from;
    text.replace(at, from.size(), to);
    Write(repo / model / "config.pbtxt", text);
  };
  copy("seed-cnn-fp32", "ok");
  copy("seed-cnn-fp32", "batch-in-dims");
  edit("batch-in-dims", "dims: [ 3, 32, 32 ]", "dims: [ -1, 3, 32, 32 ]");
  copy("seed-cnn-fp32", "fixed-batch");
  Write(repo / "fixed-batch" / "1" / "model.onnx",
        testing::FixedBatchOnnx(Read(good / "seed-cnn-fp32" / "1" / "model.onnx")));
  copy("seed-cnn-fp32", "wrong-name");
  edit("wrong-name", "name: \"input\"", "name: \"images\"");
  copy("seed-cnn-fp32", "no-version");
  fs::rename(repo / "no-version" / "1", repo / "no-version" / "v1");
  copy("seed-cnn-fp32", "labels");
  Write(repo / "labels" / "labels.txt", "cat\ndog\n");
  copy("seed-cnn-torchscript", "torch-names");
  edit("torch-names", "name: \"OUTPUT__0\"", "name: \"logits\"");
  copy("seed-cnn-torchscript", "pickle");
  Write(repo / "pickle" / "1" / "model.pt", std::string("\x80\x02}q\x00(X\x01", 8));
  copy("seed-cnn-torchscript", "torch-save-zip");
  PythonTorch("import sys, torch; torch.save(torch.nn.Linear(3, 2).state_dict(), sys.argv[1])",
              repo / "torch-save-zip" / "1" / "model.pt");
  copy("seed-cnn-torchscript", "quantized-gpu");
  PythonTorch(
      "import sys, torch\n"
      "m = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(torch.nn.Flatten(),"
      " torch.nn.Linear(3072, 10)), {torch.nn.Linear}, dtype=torch.qint8)\n"
      "torch.jit.script(m).save(sys.argv[1])",
      repo / "quantized-gpu" / "1" / "model.pt");
  edit("quantized-gpu", "kind: KIND_CPU", "kind: KIND_GPU");

  auto findings = repo::CheckRepository(repo, {});
  KILN_ASSERT_RESULT_OK(findings);
  std::map<std::string, std::string> errors;
  for (const auto& f : *findings) {
    if (f.severity == repo::Severity::kError)
      errors[f.model] += f.problem + " | fix: " + f.fix + "\n";
  }
  const std::map<std::string, std::string> expected = {
      {"batch-in-dims",
       "dims [-1, 3, 32, 32] include the batch dimension | fix: with "
       "max_batch_size > 0 the batch is implicit: write dims: [3, 32, 32]"},
      {"fixed-batch", "has a fixed first dimension (exported with a fixed batch)"},
      {"wrong-name", "input 'images' is not a tensor of model.onnx (it has 'input')"},
      {"no-version",
       "no numeric version folder (found: v1) | fix: put the model file into "
       "no-version/1/"},
      {"labels", "labels.txt has 2 labels but the output has 10 classes"},
      {"torch-names", "TorchScript output 'logits' is not named <name>__<index>"},
      {"pickle", "not a TorchScript archive (not a zip: a torch.save() pickle)"},
      {"torch-save-zip", "not a TorchScript archive (a zip without code/: a torch.save() file)"},
      {"quantized-gpu", "quantized TorchScript model on KIND_GPU"},
  };
  for (const auto& [model, want] : expected) {
    EXPECT_NE(errors[model].find(want), std::string::npos)
        << model << ": want \"" << want << "\", got:\n"
        << errors[model];
  }
  EXPECT_EQ(errors.count("ok"), 0u) << errors["ok"];
  EXPECT_EQ(errors.size(), expected.size());
  // The command prints the same findings with their fixes and fails.
  auto r = RunKiln("repo check " + repo.string());
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("batch-in-dims: error: input 'input': dims [-1, 3, 32, 32] include the "
                          "batch dimension\n  fix: "),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find(": 10 error(s)"), std::string::npos) << r.output;
}

// --backend openvino: every ONNX model for Triton's OpenVINO backend (backend "openvino",
// default_model_filename "model.onnx", its parameters), served by kiln serve through OpenVINO
// with auto-completion off: the answers are OpenVINO's, and agree with ONNX Runtime's (FP32
// within 1e-4; INT8 to the top-1 of every image here). repo check catches the IR default file.
TEST_F(RepoTest, OpenVinoRepositoryIsServedThroughOpenVino) {
  TempDir t;
  const fs::path repo = WriteRepo(t.path() / "models", "--backend openvino --threads 1");
  const std::string config = Read(repo / "seed-cnn-int8-static" / "config.pbtxt");
  for (const char* field : {"backend: \"openvino\"", "default_model_filename: \"model.onnx\"",
                            "\"INFERENCE_NUM_THREADS\" value: { string_value: \"1\" }",
                            "\"PERFORMANCE_HINT\" value: { string_value: \"LATENCY\" }",
                            "\"NUM_STREAMS\" value: { string_value: \"1\" }"}) {
    EXPECT_NE(config.find(field), std::string::npos) << field << "\n" << config;
  }
  EXPECT_EQ(config.find("platform:"), std::string::npos) << config;
  EXPECT_EQ(config.find("graph: {"), std::string::npos) << config;
  // TorchScript stays with libtorch.
  EXPECT_NE(Read(repo / "seed-cnn-torchscript" / "config.pbtxt").find("pytorch_libtorch"),
            std::string::npos);
  auto check = RunKiln("repo check --strict " + repo.string());
  EXPECT_EQ(check.exit_code, 0) << check.output;

  ServerProcess server(repo, {"--disable-auto-complete-config"});
  ASSERT_TRUE(server.started()) << server.Log();
  const int64_t n = 16;
  const std::vector<float> images = TestImages(0, n);
  for (const char* variant : {"fp32", "int8-static"}) {
    const std::string model = std::string("seed-cnn-") + variant;
    SCOPED_TRACE(model);
    ASSERT_EQ(Http(server.url() + "/v2/models/" + model + "/ready").status, 200) << server.Log();
    auto meta = json::parse(Http(server.url() + "/v2/models/" + model).body);
    EXPECT_EQ(meta["platform"], "openvino") << meta;
    json body = {
        {"inputs",
         {{{"name", "input"}, {"shape", {n, 3, 32, 32}}, {"datatype", "FP32"}, {"data", images}}}}};
    HttpRequest req;
    req.method = "POST";
    req.body = body.dump();
    auto res = Http(server.url() + "/v2/models/" + model + "/infer", req);
    ASSERT_EQ(res.status, 200) << res.body;
    const auto got = json::parse(res.body)["outputs"][0]["data"].get<std::vector<float>>();
    ASSERT_EQ(got.size(), static_cast<size_t>(n * 10));
    for (const char* engine : {"openvino", "onnxruntime"}) {
      backend::BackendOptions bo;
      bo.model_path = (Optimized() / (std::string(variant) + ".onnx")).string();
      bo.intra_op_threads = 1;
      auto e = backend::CreateBackend(engine, bo);
      KILN_ASSERT_RESULT_OK(e);
      std::vector<float> want(static_cast<size_t>(n * 10));
      KILN_ASSERT_OK((*e)->Run(images.data(), n, want.data()));
      float max_diff = 0;
      int top1_differs = 0;
      for (int64_t i = 0; i < n; ++i) {
        auto top = [&](const std::vector<float>& v) {
          return std::max_element(v.begin() + i * 10, v.begin() + i * 10 + 10) -
                 (v.begin() + i * 10);
        };
        top1_differs += top(got) != top(want) ? 1 : 0;
        for (int k = 0; k < 10; ++k)
          max_diff = std::max(max_diff, std::abs(got[i * 10 + k] - want[i * 10 + k]));
      }
      const bool same_engine = std::string(engine) == "openvino";
      if (same_engine || std::string(variant) == "fp32") {
        EXPECT_LE(max_diff, 1e-4f) << engine;
      }
      EXPECT_EQ(top1_differs, 0) << engine;
    }
  }
  EXPECT_EQ(server.Terminate(), 0) << server.Log();

  // Without default_model_filename Triton's OpenVINO backend looks for model.xml (IR).
  std::string text = Read(repo / "seed-cnn-fp32" / "config.pbtxt");
  text.erase(text.find("default_model_filename: \"model.onnx\"\n"),
             std::string("default_model_filename: \"model.onnx\"\n").size());
  Write(repo / "seed-cnn-fp32" / "config.pbtxt", text);
  auto lint = RunKiln("repo check " + repo.string());
  EXPECT_EQ(lint.exit_code, 1) << lint.output;
  EXPECT_NE(lint.output.find("looks for model.xml (OpenVINO IR) by default"), std::string::npos)
      << lint.output;
  EXPECT_NE(lint.output.find("add default_model_filename: \"model.onnx\""), std::string::npos)
      << lint.output;
}

// Triton's OpenVINO parameter HINT_BF16: YES serves the model in bfloat16 (the answers are the
// OpenVINO engine's with bf16 precision, bit for bit), NO keeps f32, anything else is refused
// with the reason while the other models serve.
TEST_F(RepoTest, HintBf16ChoosesOpenVinosInferencePrecision) {
  TempDir t;
  const fs::path repo = WriteRepo(t.path() / "models", "--backend openvino --threads 1");
  auto add_parameter = [&](const std::string& model, const std::string& value) {
    const fs::path config = repo / model / "config.pbtxt";
    Write(config, Read(config) + "parameters { key: \"HINT_BF16\" value: { string_value: \"" +
                      value + "\" } }\n");
  };
  add_parameter("seed-cnn-fp32", "YES");
  add_parameter("seed-cnn-int8-static", "MAYBE");
  ServerProcess server(repo, {"--disable-auto-complete-config"});
  ASSERT_TRUE(server.started()) << server.Log();
  HttpRequest index_request;
  index_request.method = "POST";
  auto index = json::parse(Http(server.url() + "/v2/repository/index", index_request).body);
  std::map<std::string, json> by_name;
  for (const auto& m : index) by_name[m["name"].get<std::string>()] = m;
  EXPECT_EQ(by_name["seed-cnn-int8-static"]["state"], "UNAVAILABLE");
  EXPECT_NE(by_name["seed-cnn-int8-static"].value("reason", "").find(
                "parameters HINT_BF16 must be YES or NO, not 'MAYBE'"),
            std::string::npos)
      << by_name["seed-cnn-int8-static"];
  ASSERT_EQ(by_name["seed-cnn-fp32"]["state"], "READY") << server.Log();

  const int64_t n = 16;
  const std::vector<float> images = TestImages(0, n);
  json body = {
      {"inputs",
       {{{"name", "input"}, {"shape", {n, 3, 32, 32}}, {"datatype", "FP32"}, {"data", images}}}}};
  HttpRequest req;
  req.method = "POST";
  req.body = body.dump();
  auto res = Http(server.url() + "/v2/models/seed-cnn-fp32/infer", req);
  ASSERT_EQ(res.status, 200) << res.body;
  const auto got = json::parse(res.body)["outputs"][0]["data"].get<std::vector<float>>();
  EXPECT_EQ(server.Terminate(), 0) << server.Log();

  backend::BackendOptions bo;
  bo.model_path = (Optimized() / "fp32.onnx").string();
  bo.intra_op_threads = 1;
  bo.inference_precision = "bf16";
  auto engine = backend::CreateBackend("openvino", bo);
  KILN_ASSERT_RESULT_OK(engine);
  std::vector<float> want(static_cast<size_t>(n * 10));
  KILN_ASSERT_OK((*engine)->Run(images.data(), n, want.data()));
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i], want[i]) << i;
  // Where the CPU runs bf16 the answers differ from f32's; elsewhere the plugin keeps f32.
  if ((*engine)->settings()["inference_precision"] == "bf16") {
    bo.inference_precision = "f32";
    auto f32 = backend::CreateBackend("openvino", bo);
    KILN_ASSERT_RESULT_OK(f32);
    std::vector<float> exact(want.size());
    KILN_ASSERT_OK((*f32)->Run(images.data(), n, exact.data()));
    EXPECT_NE(exact, want) << "bf16 precision gave f32's logits exactly";
  }
}

// --backend auto: per ONNX model, the faster of ONNX Runtime and OpenVINO in a kiln bench report
// (speedups over the batch sizes served); the reason is written into the config.
TEST_F(RepoTest, AutoBackendChoosesTheFasterEngineOfABenchReport) {
  TempDir t;
  json results = json::array();
  auto cell = [&](const char* variant, const char* engine, int64_t batch, double speedup) {
    results.push_back({{"variant", variant},
                       {"engine", engine},
                       {"threads", 2},
                       {"batch", batch},
                       {"images_per_second", 1000.0 * speedup},
                       {"speedup", {{"value", speedup}}}});
  };
  for (int64_t b : {1, 8, 64}) {
    cell("fp32", "onnxruntime", b, 1.0);
    cell("fp32", "openvino", b, 0.9);
    cell("int8-static", "onnxruntime", b, 2.0);
    // OpenVINO is slower at batch 64, which the repository (max batch 16) never runs.
    cell("int8-static", "openvino", b, b == 64 ? 1.0 : 2.5);
  }
  Write(t.path() / "report.json", json{{"results", results}}.dump());
  const fs::path repo = WriteRepo(
      t.path() / "models", "--backend auto --bench-report " + (t.path() / "report.json").string());
  const std::string fp32 = Read(repo / "seed-cnn-fp32" / "config.pbtxt");
  const std::string int8 = Read(repo / "seed-cnn-int8-static" / "config.pbtxt");
  EXPECT_NE(fp32.find("platform: \"onnxruntime_onnx\""), std::string::npos) << fp32;
  EXPECT_NE(int8.find("backend: \"openvino\""), std::string::npos) << int8;
  EXPECT_NE(int8.find("# Engine: openvino, chosen by kiln repo write --backend auto"),
            std::string::npos)
      << int8;
  EXPECT_NE(int8.find("over batch 1, 8 at 2 threads, openvino 2.500 vs onnxruntime 2.000"),
            std::string::npos)
      << int8;
  // auto needs a report.
  auto r = RunKiln("repo write --backend auto --manifest " +
                   (Optimized() / "manifest.json").string() + " --out " +
                   (t.path() / "other").string() + " --data " + testing::DataArchive().string());
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--bench-report"), std::string::npos) << r.output;
}

// --gpu: KIND_GPU and TensorRT FP16 for Triton on a GPU host; INT8 left out. Kiln serves on CPU
// only, so its server refuses the GPU configs with the reason.
TEST_F(RepoTest, GpuRepositoryIsForTritonOnAGpuHost) {
  TempDir t;
  const fs::path repo = WriteRepo(t.path() / "gpu", "--gpu");
  EXPECT_FALSE(fs::exists(repo / "seed-cnn-int8-static"));
  const std::string onnx = Read(repo / "seed-cnn-fp32" / "config.pbtxt");
  EXPECT_NE(onnx.find("kind: KIND_GPU"), std::string::npos) << onnx;
  EXPECT_NE(onnx.find("name: \"tensorrt\""), std::string::npos) << onnx;
  EXPECT_NE(onnx.find("key: \"precision_mode\" value: \"FP16\""), std::string::npos) << onnx;
  EXPECT_EQ(onnx.find("intra_op_thread_count"), std::string::npos) << onnx;
  auto check = RunKiln("repo check --strict " + repo.string());
  EXPECT_EQ(check.exit_code, 0) << check.output;
  ServerProcess server(repo, {});
  ASSERT_TRUE(server.started()) << server.Log();
  EXPECT_NE(server.Log().find("KIND_GPU: this server runs on CPU only"), std::string::npos)
      << server.Log();
  EXPECT_EQ(server.Terminate(), 0) << server.Log();
}

// --- traffic between versions on a real server (FP32 as version 1, INT8 as version 2) --------

class RoutingTest : public RepoTest {
 protected:
  fs::path MakeRepo(const std::string& routing, const std::map<int, std::string>& extra = {}) {
    const fs::path dir = root_.path() / "models" / "ab";
    std::string config =
        "platform: \"onnxruntime_onnx\"\nmax_batch_size: 16\nversion_policy: { all {} }\n"
        "parameters { key: \"intra_op_thread_count\" value: { string_value: \"1\" } }\n";
    if (!routing.empty()) {
      config +=
          "parameters { key: \"kiln.routing\" value: { string_value: " + json(routing).dump() +
          " } }\n";
    }
    Write(dir / "config.pbtxt", config);
    Write(dir / "1" / "model.onnx", Read(Optimized() / "fp32.onnx"));
    Write(dir / "2" / "model.onnx", Read(Optimized() / "int8-static.onnx"));
    for (const auto& [v, bytes] : extra) Write(dir / std::to_string(v) / "model.onnx", bytes);
    return root_.path() / "models";
  }
  // One KServe request of test images [first, first + n); its status and body.
  static testing::HttpResult Infer(const ServerProcess& server, int64_t first, int64_t n,
                                   const std::string& key = "") {
    json body = {{"inputs",
                  {{{"name", "input"},
                    {"shape", {n, 3, 32, 32}},
                    {"datatype", "FP32"},
                    {"data", TestImages(first, n)}}}}};
    HttpRequest req;
    req.method = "POST";
    req.body = body.dump();
    if (!key.empty()) req.headers.push_back("X-Kiln-Routing-Key: " + key);
    return Http(server.url() + "/v2/models/ab/infer", req);
  }
  static json Routing(const ServerProcess& server) {
    return json::parse(Http(server.url() + "/v2/repository/models/ab/routing").body);
  }
  static testing::HttpResult SetRouting(const ServerProcess& server, const std::string& policy) {
    HttpRequest req;
    req.method = "POST";
    req.body = policy;
    return Http(server.url() + "/v2/repository/models/ab/routing", req);
  }
  TempDir root_;
};

// The policy of config.pbtxt splits requests 70/30: the observed share of version 2 over 300
// requests is within 4.5 binomial standard deviations of 0.3; a routing key always reaches the
// same version; every answer says which version gave it.
TEST_F(RoutingTest, SplitAndStickyKeysOnARealServer) {
  ServerProcess server(MakeRepo(R"({"weights": {"1": 70, "2": 30}})"), {});
  ASSERT_TRUE(server.started()) << server.Log();
  const int n = 300;
  int second = 0;
  for (int i = 0; i < n; ++i) {
    auto r = Infer(server, i % 100, 1);
    ASSERT_EQ(r.status, 200) << r.body;
    second += json::parse(r.body)["model_version"] == "2" ? 1 : 0;
  }
  EXPECT_NEAR(second, n * 0.3, 4.5 * std::sqrt(n * 0.3 * 0.7));
  std::set<std::string> seen;
  for (int k = 0; k < 30; ++k) {
    const std::string key = "client-" + std::to_string(k);
    std::set<std::string> versions;
    for (int i = 0; i < 4; ++i) {
      auto r = Infer(server, i, 1, key);
      ASSERT_EQ(r.status, 200) << r.body;
      versions.insert(json::parse(r.body)["model_version"].get<std::string>());
    }
    EXPECT_EQ(versions.size(), 1u) << key;
    seen.insert(versions.begin(), versions.end());
  }
  EXPECT_EQ(seen.size(), 2u);
  const json state = Routing(server);
  EXPECT_EQ(
      state["versions"]["1"]["requests"].get<int>() + state["versions"]["2"]["requests"].get<int>(),
      n + 120);
  const std::string metrics = Http(server.metrics_url() + "/metrics").body;
  EXPECT_NE(metrics.find("kiln_routing_requests_total{model=\"ab\",version=\"2\"}"),
            std::string::npos);
  EXPECT_NE(metrics.find("kiln_routing_request_duration_seconds_bucket{model=\"ab\",version=\"1\""),
            std::string::npos);
  EXPECT_EQ(server.Terminate(), 0) << server.Log();
}

// A shadow beside FP32: every answer comes from FP32, and the shadow's disagreement counter
// equals the top-1 disagreements computed offline on the same 400 test images. Shown twice: INT8
// as the shadow (it agrees with FP32 on nearly every image), and an untrained network of the
// same shape (it disagrees on most).
TEST_F(RoutingTest, ShadowDisagreementMatchesTheOfflineCount) {
  const std::string untrained = testing::MakeRepository()->onnx;
  Write(dir_->path() / "optimized" / "untrained.onnx", untrained);
  ServerProcess server(MakeRepo("", {{3, untrained}}), {});
  ASSERT_TRUE(server.started()) << server.Log();
  for (const auto& [shadow_version, shadow_file] :
       std::vector<std::pair<int, std::string>>{{2, "int8-static.onnx"}, {3, "untrained.onnx"}}) {
    SCOPED_TRACE(shadow_file);
    const std::string v = std::to_string(shadow_version);
    auto set = SetRouting(
        server, R"({"weights": {"1": 1}, "shadow": {"version": )" + v + R"(, "share": 1}})");
    ASSERT_EQ(set.status, 200) << set.body;
    const int64_t batch = 8, requests = 50;
    for (int64_t i = 0; i < requests; ++i) {
      auto r = Infer(server, i * batch, batch);
      ASSERT_EQ(r.status, 200) << r.body;
      EXPECT_EQ(json::parse(r.body)["model_version"], "1");
    }
    for (int i = 0; i < 300 && Routing(server)["shadow"][v]["requests"] != requests; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    const json shadow = Routing(server)["shadow"][v];
    ASSERT_EQ(shadow["requests"], requests) << shadow;
    // Offline: both engines over the same images in the same batches.
    int64_t disagree = 0;
    std::vector<std::unique_ptr<backend::InferenceBackend>> engines;
    for (const std::string& f : {std::string("fp32.onnx"), shadow_file}) {
      backend::BackendOptions bo;
      bo.model_path = (Optimized() / f).string();
      bo.intra_op_threads = 1;
      auto e = backend::CreateBackend("onnxruntime", bo);
      KILN_ASSERT_RESULT_OK(e);
      engines.push_back(std::move(e).value());
    }
    for (int64_t i = 0; i < requests; ++i) {
      const auto x = TestImages(i * batch, batch);
      std::vector<float> a(batch * 10), b(batch * 10);
      KILN_ASSERT_OK(engines[0]->Run(x.data(), batch, a.data()));
      KILN_ASSERT_OK(engines[1]->Run(x.data(), batch, b.data()));
      for (int64_t k = 0; k < batch; ++k) {
        disagree +=
            std::max_element(a.begin() + k * 10, a.begin() + k * 10 + 10) - a.begin() !=
                    std::max_element(b.begin() + k * 10, b.begin() + k * 10 + 10) - b.begin()
                ? 1
                : 0;
      }
    }
    EXPECT_EQ(shadow["images"], requests * batch);
    EXPECT_EQ(shadow["disagreements"], disagree);
    std::cout << "shadow " << shadow_file << ": " << disagree << " of " << requests * batch
              << " test images disagree with FP32\n";
    if (shadow_version == 3) {
      EXPECT_GT(disagree, 0);
    }
  }
  EXPECT_EQ(server.Terminate(), 0) << server.Log();
}

// The FP32 model made to fail at run time (a Reshape to [7, -1] first, which no batch of 3072
// floats per image fills unless it is a multiple of 7), as version 3.
std::string BrokenAtRunTime(const std::string& bytes) {
  onnx::ModelProto m;
  EXPECT_TRUE(m.ParseFromString(bytes));
  auto* g = m.mutable_graph();
  const std::string in = g->input(0).name();
  for (auto& node : *g->mutable_node()) {
    for (auto& i : *node.mutable_input()) {
      if (i == in) i = "broken_back";
    }
  }
  auto constant = [&](const std::string& name, std::vector<int64_t> dims) {
    auto* t = g->add_initializer();
    t->set_name(name);
    t->set_data_type(onnx::TensorProto::INT64);
    t->add_dims(static_cast<int64_t>(dims.size()));
    for (int64_t d : dims) t->add_int64_data(d);
  };
  constant("broken_shape", {7, -1});
  constant("back_shape", {-1, 3, 32, 32});
  onnx::NodeProto a, b;
  a.set_op_type("Reshape");
  a.add_input(in);
  a.add_input("broken_shape");
  a.add_output("broken_7");
  b.set_op_type("Reshape");
  b.add_input("broken_7");
  b.add_input("back_shape");
  b.add_output("broken_back");
  // Topological order: the two Reshapes first, then the graph as it was.
  google::protobuf::RepeatedPtrField<onnx::NodeProto> nodes;
  *nodes.Add() = a;
  *nodes.Add() = b;
  for (const auto& n : g->node()) *nodes.Add() = n;
  g->mutable_node()->Swap(&nodes);
  return m.SerializeAsString();
}

// A canary that fails is rolled back end to end, and while it is, four clients get every
// answer from the stable version (0 failed requests).
TEST_F(RoutingTest, AFailingCanaryIsRolledBackWithNoFailedRequest) {
  const auto models =
      MakeRepo(R"({"weights": {"1": 50, "3": 50}, "rollout": {"canary": 3, "min_requests": 20}})",
               {{3, BrokenAtRunTime(Read(Optimized() / "fp32.onnx"))}});
  ServerProcess server(models, {});
  ASSERT_TRUE(server.started()) << server.Log();
  std::atomic<int> ok{0}, failed{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 4; ++c) {
    clients.emplace_back([&, c] {
      for (int i = 0; i < 40; ++i) {
        auto r = Infer(server, (c * 40 + i) % 100, 1);
        (r.status == 200 && json::parse(r.body)["model_version"] == "1" ? ok : failed)++;
      }
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(ok.load(), 160);
  const json state = Routing(server);
  ASSERT_EQ(state["decisions"].size(), 1u) << state;
  EXPECT_EQ(state["decisions"][0].get<std::string>().rfind("rollback version 3", 0), 0u) << state;
  EXPECT_EQ(state["policy"]["weights"], json({{"1", 50.0}}));
  EXPECT_NE(server.Log().find("canary version 3 rolled back"), std::string::npos);
  const std::string metrics = Http(server.metrics_url() + "/metrics").body;
  EXPECT_NE(metrics.find(
                "kiln_rollout_decisions_total{model=\"ab\",version=\"3\",decision=\"rollback\"} 1"),
            std::string::npos)
      << metrics.substr(0, 2000);
  // The policy is bad input like any other: refused with the reason, the one in force stays.
  auto bad = SetRouting(server, R"({"weights": {"9": 1}})");
  EXPECT_EQ(bad.status, 400) << bad.body;
  EXPECT_NE(bad.body.find("version 9 of 'ab' is not READY"), std::string::npos) << bad.body;
  EXPECT_EQ(server.Terminate(), 0) << server.Log();
}

}  // namespace
}  // namespace kiln::serve
