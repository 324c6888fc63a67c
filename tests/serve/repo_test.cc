// `kiln repo write` and `kiln repo check` end to end: a repository written from a small trained
// model's manifest passes the strict check, loads in `kiln serve --disable-auto-complete-config`
// and answers what the engines answer on real test images; the check finds each classic reason
// a model is UNAVAILABLE in Triton.
#include "kiln/serve/repo/repo.h"

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

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

}  // namespace
}  // namespace kiln::serve
