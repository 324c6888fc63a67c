#include <fstream>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "kiln/bench/bench.h"
#include "../test_util.h"

namespace kiln::bench {
namespace {

// A row of REPORT.md's table under `heading` that starts with "| label |", or "".
std::string TableRow(const std::string& md, const std::string& heading, const std::string& label) {
  const size_t section = md.find(heading);
  if (section == std::string::npos) return "";
  const size_t row = md.find("\n| " + label + " |", section);
  if (row == std::string::npos) return "";
  return md.substr(row + 1, md.find('\n', row + 1) - row - 1);
}

// report_engine_disagrees.json is an excerpt of a real `kiln bench` report (airbench94, 2026-12-06):
// fp32 on ONNX Runtime, OpenVINO and libtorch, where OpenVINO computed 91.83% on the 10,000 test
// images against ONNX Runtime's 94.14% (the manifest's accuracy) and was the fastest of the three.
// The report must judge each engine by what it computed, not by the manifest.
TEST(ReportTest, EngineIsJudgedByTheAccuracyItComputed) {
  std::ifstream in(std::string(KILN_SOURCE_DIR) + "/tests/bench/testdata/report_engine_disagrees.json");
  ASSERT_TRUE(in) << "missing test data";
  const nlohmann::json report = nlohmann::json::parse(in);
  testing::TempDir dir;
  ASSERT_TRUE(WriteReport(report, dir.path()).ok());
  std::ifstream md_in(dir.path() / "REPORT.md");
  std::stringstream ss;
  ss << md_in.rdbuf();
  const std::string md = ss.str();

  const std::string openvino = TableRow(md, "## Absolute numbers", "fp32 / openvino");
  EXPECT_NE(openvino.find("| 91.83% | -2.31 |"), std::string::npos) << openvino;
  const std::string ort = TableRow(md, "## Absolute numbers", "fp32 / onnxruntime");
  EXPECT_NE(ort.find("| 94.14% | +0.00 |"), std::string::npos) << ort;

  // OpenVINO has the most images/s but lost 2.31 points: the fastest within 0.0, 0.5 and 1.0
  // points is ONNX Runtime.
  const size_t conclusions = md.find("## Conclusions");
  ASSERT_NE(conclusions, std::string::npos);
  const std::string text = md.substr(conclusions, md.find("\n## ", conclusions + 1) - conclusions);
  EXPECT_NE(text.find("Fastest within 0.0 points of FP32 accuracy: **fp32 / onnxruntime**"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("Fastest within 1.0 points of FP32 accuracy: **fp32 / onnxruntime**"),
            std::string::npos)
      << text;
  EXPECT_EQ(text.find("**fp32 / openvino**"), std::string::npos) << text;
}

}  // namespace
}  // namespace kiln::bench
