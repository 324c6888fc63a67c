// `kiln pipeline --quick` end to end (train -> export -> optimize -> bench) on a small subset,
// then `kiln bench` again without Python torch.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <set>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>

#include "../test_util.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

json ReadJson(const fs::path& file) {
  std::ifstream in(file);
  return json::parse(in);
}

void ExpectPng(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  char sig[8] = {};
  in.read(sig, 8);
  EXPECT_EQ(std::string(sig, 8), std::string("\x89PNG\r\n\x1a\n", 8)) << file;
  const cv::Mat img = cv::imread(file.string());
  EXPECT_FALSE(img.empty()) << file;
  EXPECT_GT(img.cols, 100);
}

void ExpectConsistentCell(const json& r) {
  SCOPED_TRACE(r.dump());
  for (const char* k : {"median_ms", "p90_ms", "p99_ms", "min_ms", "max_ms", "images_per_second"}) {
    EXPECT_GT(r.at(k).get<double>(), 0.0) << k;
  }
  EXPECT_LE(r["min_ms"].get<double>(), r["median_ms"].get<double>());
  EXPECT_LE(r["median_ms"].get<double>(), r["p90_ms"].get<double>());
  EXPECT_LE(r["p90_ms"].get<double>(), r["p99_ms"].get<double>());
  EXPECT_LE(r["p99_ms"].get<double>(), r["max_ms"].get<double>());
  // images/s x latency = batch.
  EXPECT_NEAR(r["images_per_second"].get<double>() * r["median_ms"].get<double>() / 1000.0,
              r["batch"].get<double>(), 1e-6 * r["batch"].get<double>());
  EXPECT_GE(r["runs"].get<int>(), 3);
}

TEST(PipelineTest, QuickRunProducesEveryStageAndAConsistentReport) {
  testing::TempDir dir;
  const fs::path out = dir.path() / "p";
  const std::string data = " --data '" + testing::DataArchive().string() + "'";
  auto r = testing::RunKiln("pipeline --quick --arch seed-cnn --out '" + out.string() + "'" + data);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("best model within 0.5 points"), std::string::npos) << r.output;
  // Every stage's output.
  for (const fs::path& f : {out / "train" / "best.ckpt", out / "train" / "summary.json",
                           out / "train" / "export" / "model.onnx", out / "train" / "export" / "model.pt",
                           out / "optimized" / "manifest.json", out / "optimized" / "int8-static.onnx",
                           out / "bench" / "report.json", out / "bench" / "REPORT.md"}) {
    EXPECT_TRUE(fs::exists(f)) << f;
  }
  for (const char* png : {"throughput.png", "latency_batch1.png", "pareto.png"}) {
    ExpectPng(out / "bench" / png);
  }
  const json report = ReadJson(out / "bench" / "report.json");
  for (const char* k : {"format", "created", "command", "machine", "versions", "method", "roof",
                        "variants", "results", "peers"}) {
    EXPECT_TRUE(report.contains(k)) << k;
  }
  EXPECT_FALSE(report["machine"].value("cpu", "").empty());
  EXPECT_GT(report["roof"]["points"][0]["fp32_gflops"].get<double>(), 0.0);
  std::set<std::string> variants;
  for (const json& v : report["variants"]) variants.insert(v["name"]);
  for (const char* v : {"fp32", "fp32-opt", "int8-static", "int8-dynamic", "pruned-30", "pruned-30-int8"}) {
    EXPECT_TRUE(variants.count(v)) << v;
  }
  std::set<std::string> engines;
  for (const json& cell : report["results"]) {
    ExpectConsistentCell(cell);
    engines.insert(cell["engine"]);
    for (const char* k : {"variant", "engine", "threads", "batch", "memory_bytes", "roof_fraction",
                          "achieved_gflops", "stable"}) {
      EXPECT_TRUE(cell.contains(k)) << k;
    }
    EXPECT_GE(cell["memory_bytes"].get<int64_t>(), 0);
    // Kiln's engines at a measured thread count carry their ratio to the reference measured
    // interleaved with them (the reference itself: 1 within its own bracket's drift).
    if (cell["threads"].is_number()) {
      ASSERT_TRUE(cell.contains("speedup")) << cell.dump();
      EXPECT_GT(cell["speedup"]["value"].get<double>(), 0.0);
    }
    // OpenVINO says what it compiled with: Kiln's f32 for "openvino", bf16 asked for by
    // "openvino-bf16" (the plugin keeps f32 on a CPU without bf16), its own choice for the peer.
    const std::string engine = cell["engine"];
    if (engine.rfind("openvino", 0) == 0) {
      ASSERT_TRUE(cell.contains("engine_settings")) << cell.dump();
      const std::string precision = cell["engine_settings"]["inference_precision"];
      if (engine == "openvino") {
        EXPECT_EQ(precision, "f32");
        EXPECT_EQ(cell["engine_settings"]["enable_cpu_pinning"], "false");
      }
      if (engine == "openvino-bf16") {
        EXPECT_TRUE(precision == "bf16" || precision == "f32") << precision;
      }
    }
  }
  EXPECT_TRUE(engines.count("onnxruntime"));
  EXPECT_TRUE(engines.count("openvino"));
  EXPECT_TRUE(engines.count("openvino-bf16"));
  EXPECT_TRUE(engines.count("libtorch"));
  EXPECT_TRUE(engines.count("onnxruntime-default"));
  EXPECT_TRUE(engines.count("openvino-default"));
  // Every (variant, engine) checked on the test images: OpenVINO classifies the FP32 model as
  // ONNX Runtime does (up to a borderline image), and the INT8 graph nearly so.
  std::map<std::pair<std::string, std::string>, json> accuracy;
  for (const json& row : report["accuracy"]) {
    accuracy[{row["variant"].get<std::string>(), row["engine"].get<std::string>()}] = row;
  }
  for (const char* variant : {"fp32", "int8-static"}) {
    SCOPED_TRACE(variant);
    const json& ov = accuracy[{variant, "openvino"}];
    ASSERT_TRUE(ov.contains("accuracy")) << ov.dump();
    EXPECT_GT(ov["images"].get<int64_t>(), 0);
    EXPECT_GE(ov["agreement_with_onnxruntime"].get<double>(),
              std::string(variant) == "fp32" ? 0.998 : 0.97);
  }
  if (report["peers"].value("available", false)) {
    for (const json& cell : report["peers"]["results"]) ExpectConsistentCell(cell);
    EXPECT_GE(report["peers"]["top1_agreement_with_onnxruntime"].get<double>(), 0.99);
  }
  std::ifstream md_in(out / "bench" / "REPORT.md");
  const std::string md((std::istreambuf_iterator<char>(md_in)), std::istreambuf_iterator<char>());
  for (const char* section : {"## Roof", "## Speed relative to the reference", "## Absolute numbers",
                              "## Accuracy by engine", "## Conclusions", "## Full matrix",
                              "## Method"}) {
    EXPECT_NE(md.find(section), std::string::npos) << section;
  }

  // A second run reuses every finished stage.
  r = testing::RunKiln("pipeline --quick --arch seed-cnn --out '" + out.string() + "'" + data);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output.find("$ kiln"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("already done"), std::string::npos);

  // Plain model files instead of a manifest: model.onnx and model.pt of one folder are one
  // variant, named after the folder, run on both engines; accuracy and FLOPs are not invented.
  const fs::path export_dir = out / "train" / "export";
  const fs::path files_out = dir.path() / "bench-files";
  r = testing::RunKiln("bench --quick --no-peers --model '" + (export_dir / "model.onnx").string() +
                       "' --model '" + (export_dir / "model.pt").string() + "' --output '" +
                       files_out.string() + "'" + data);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json files = ReadJson(files_out / "report.json");
  ASSERT_EQ(files["variants"].size(), 1U) << files["variants"].dump();
  EXPECT_EQ(files["variants"][0]["name"], "export");
  EXPECT_FALSE(files["variants"][0].contains("test_accuracy"));
  std::set<std::string> file_engines;
  for (const json& cell : files["results"]) {
    ExpectConsistentCell(cell);
    file_engines.insert(cell["engine"]);
    EXPECT_FALSE(cell.contains("roof_fraction")) << "no FLOPs are known for plain files";
  }
  EXPECT_EQ(file_engines,
            (std::set<std::string>{"onnxruntime", "openvino", "openvino-bf16", "libtorch",
                                   "onnxruntime-default", "openvino-default"}));
  std::ifstream files_md_in(files_out / "REPORT.md");
  const std::string files_md((std::istreambuf_iterator<char>(files_md_in)),
                             std::istreambuf_iterator<char>());
  EXPECT_NE(files_md.find("not measured"), std::string::npos);
  EXPECT_EQ(files_md.find("Fastest within"), std::string::npos) << "no accuracy, no budget claim";
  // --render writes REPORT.md and the plots again from report.json alone.
  const fs::path rendered = dir.path() / "rendered";
  r = testing::RunKiln("bench --render '" + (files_out / "report.json").string() + "' --output '" +
                       rendered.string() + "'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* png : {"throughput.png", "latency_batch1.png", "pareto.png"}) {
    ExpectPng(rendered / png);
  }
  EXPECT_TRUE(fs::exists(rendered / "REPORT.md"));
  EXPECT_EQ(
      testing::RunKiln("bench --render '" + (export_dir / "model.onnx").string() + "'").exit_code,
      2);

  // Not a model file; both a manifest and models.
  const fs::path notes = dir.path() / "notes.txt";
  std::ofstream(notes) << "hello";
  EXPECT_EQ(testing::RunKiln("bench --quick --model '" + notes.string() + "'" + data).exit_code, 2);
  EXPECT_EQ(testing::RunKiln("bench --quick --model '" + (export_dir / "model.onnx").string() +
                             "' --manifest '" + (out / "optimized" / "manifest.json").string() +
                             "'" + data)
                .exit_code,
            2);

  // Without Python torch the report says so instead of failing.
  const fs::path fake = dir.path() / "python-without-torch";
  std::ofstream(fake) << "#!/bin/sh\nexec /usr/bin/python3 -S \"$@\"\n";
  fs::permissions(fake, fs::perms::owner_all);
  const fs::path again = dir.path() / "bench2";
  r = testing::RunKiln("bench --quick --variants fp32 --engines onnxruntime --python '" + fake.string() +
                       "' --manifest '" + (out / "optimized" / "manifest.json").string() + "' --output '" +
                       again.string() + "'" + data);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json degraded = ReadJson(again / "report.json");
  EXPECT_FALSE(degraded["peers"]["available"].get<bool>());
  EXPECT_NE(degraded["peers"]["reason"].get<std::string>().find("torch"), std::string::npos);
  std::ifstream md2(again / "REPORT.md");
  const std::string text((std::istreambuf_iterator<char>(md2)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("were not measured"), std::string::npos);
}

TEST(PipelineTest, BadArgumentsAreUsageErrors) {
  auto r = testing::RunKiln("pipeline --skip nonsense --out /tmp/kiln-never-created");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("unknown stage"), std::string::npos) << r.output;
  r = testing::RunKiln("bench --manifest /nonexistent/manifest.json");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  // The smoke profile has its own small matrix; the full one would contradict it.
  r = testing::RunKiln("pipeline --quick --full-bench --out /tmp/kiln-never-created");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("excludes"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace kiln
