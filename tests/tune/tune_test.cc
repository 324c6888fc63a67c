// kiln tune end to end: a small trained model's manifest, a tiny grid against the real `kiln
// serve`. The winner meets the SLO by its own measurements, the variant over the accuracy budget
// is left out, the written config.pbtxt passes `kiln repo check --strict` and loads in a fresh
// server, and a second run resumes from results.jsonl instead of measuring again.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "../serve/serve_client.h"
#include "../test_models.h"
#include "../test_util.h"
#include "kiln/export/onnx_export.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using testing::RunKiln;
using testing::TempDir;

std::string Read(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

size_t Lines(const fs::path& p) {
  std::ifstream in(p);
  size_t n = 0;
  for (std::string line; std::getline(in, line);) n += !line.empty();
  return n;
}

TEST(TuneTest, ATinyGridPicksAConfigurationThatMeetsTheSloAndItsConfigLoads) {
  TempDir dir;
  const fs::path optimized = dir.path() / "optimized";
  fs::create_directories(optimized);
  train::Checkpoint ckpt = testing::SmallTrainedModel("seed-cnn", /*seed=*/3, /*steps=*/4);
  KILN_ASSERT_OK(exporter::ExportOnnx(ckpt, {}, optimized / "fp32.onnx"));
  // "lossy" stands for a variant 5 points below FP32: over the 0.5-point budget.
  const json manifest = {{"format", "kiln-optimize-1"},
                         {"arch", "seed-cnn"},
                         {"variants",
                          {{{"name", "fp32"},
                            {"file", "fp32.onnx"},
                            {"precision", "fp32"},
                            {"status", "ok"},
                            {"test_accuracy", 0.3},
                            {"accuracy_delta_points", 0.0}},
                           {{"name", "lossy"},
                            {"file", "fp32.onnx"},
                            {"precision", "fp32"},
                            {"status", "ok"},
                            {"test_accuracy", 0.25},
                            {"accuracy_delta_points", -5.0}}}}};
  testing::Write(optimized / "manifest.json", manifest.dump(2));
  const fs::path repo = dir.path() / "models", out = dir.path() / "tune";
  const double slo_ms = 50;
  const std::string command = "tune --manifest '" + (optimized / "manifest.json").string() +
                              "' --repo '" + repo.string() + "' --out '" + out.string() +
                              "' --data '" + testing::DataArchive().string() +
                              "' --slo-p99-ms 50 --max-batch 1,4 --queue-delay-us 0 "
                              "--instances 1 --threads 1 --window-ms 300 --max-windows 4 "
                              "--images 32 --apply";
  auto r = RunKiln(command);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("skipped seed-cnn-lossy"), std::string::npos) << r.output;

  const json report = json::parse(Read(out / "tune.json"));
  // The grid's two points and kiln repo write's default configuration, all measured.
  ASSERT_EQ(report["points"].size(), 3u) << report.dump(2);
  for (const auto& p : report["points"]) {
    EXPECT_EQ(p["model"], "seed-cnn-fp32");
    EXPECT_EQ(p["error"], "") << p.dump();
    EXPECT_GT(p["probe_throughput"].get<double>(), 0);
  }
  EXPECT_EQ(Lines(out / "results.jsonl"), 3u);
  ASSERT_TRUE(report["winner"].is_object()) << report.dump(2);
  const json& w = report["winner"];
  // Its own measurements: the step at the winning rate met the SLO and was sustained, and no
  // point passed a higher rate.
  const double rate = w["max_rate"].get<double>();
  ASSERT_GT(rate, 0);
  bool found = false;
  for (const auto& s : w["steps"]) {
    if (s["offered"].get<double>() != rate) continue;
    found = true;
    EXPECT_TRUE(s["ok"].get<bool>());
    EXPECT_LE(s["p99_ms"].get<double>(), slo_ms);
    EXPECT_GE(s["achieved"].get<double>(), 0.95 * rate);
    EXPECT_EQ(s["errors"], 0);
    EXPECT_EQ(s["refused"], 0);
  }
  EXPECT_TRUE(found) << w.dump(2);
  for (const auto& p : report["points"]) EXPECT_LE(p["max_rate"].get<double>(), rate);
  EXPECT_EQ(report["nginx_limit_req_rate"].get<double>(), std::floor(0.8 * rate));
  EXPECT_EQ(report["hpa_target_requests_per_second"].get<double>(), std::floor(0.7 * rate));

  // The winner's config, in --out and applied to the repository: the winning values, CPU only.
  const std::string config = Read(repo / "seed-cnn-fp32" / "config.pbtxt");
  EXPECT_EQ(config, Read(out / "winner" / "seed-cnn-fp32" / "config.pbtxt"));
  EXPECT_NE(
      config.find("max_batch_size: " + std::to_string(w["config"]["max_batch_size"].get<int>())),
      std::string::npos)
      << config;
  EXPECT_NE(config.find("KIND_CPU"), std::string::npos);
  EXPECT_EQ(config.find("KIND_GPU"), std::string::npos);
  auto check = RunKiln("repo check --strict '" + repo.string() + "'");
  EXPECT_EQ(check.exit_code, 0) << check.output;
  {
    testing::ServerProcess server(repo, {"--disable-auto-complete-config"});
    ASSERT_TRUE(server.started()) << server.Log();
    auto ready = testing::Http(server.url() + "/v2/models/seed-cnn-fp32/ready");
    EXPECT_EQ(ready.status, 200) << server.Log();
  }
  const std::string table = Read(out / "TUNE.md");
  EXPECT_NE(table.find("**winner**"), std::string::npos) << table;
  EXPECT_NE(table.find("rate=" + std::to_string(static_cast<int>(std::floor(0.8 * rate))) + "r/s"),
            std::string::npos)
      << table;
  EXPECT_TRUE(fs::file_size(out / "throughput-vs-p99.png") > 0);

  // Run again: every point comes from results.jsonl; nothing is measured or appended.
  auto again = RunKiln(command);
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_NE(again.output.find("resuming: 3 points"), std::string::npos) << again.output;
  EXPECT_EQ(again.output.find("probe "), std::string::npos) << again.output;
  EXPECT_EQ(Lines(out / "results.jsonl"), 3u);
  EXPECT_EQ(json::parse(Read(out / "tune.json"))["winner"]["key"], w["key"]);
}

TEST(TuneTest, BadOptionsAreUsageErrors) {
  EXPECT_EQ(RunKiln("tune --repo /tmp/x --slo-p99-ms 10").exit_code, 2);  // no models
  EXPECT_EQ(RunKiln("tune --repo /tmp/x --model m --slo-p99-ms 0").exit_code, 2);
  EXPECT_EQ(RunKiln("tune --repo /tmp/x --model m --slo-p99-ms 10 --engines tensorrt").exit_code,
            2);
  EXPECT_EQ(RunKiln("tune --repo /tmp/x --model m --slo-p99-ms 10 --search random").exit_code, 2);
  auto help = RunKiln("tune --help");
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.output.find("--slo-p99-ms"), std::string::npos);
}

}  // namespace
}  // namespace kiln
