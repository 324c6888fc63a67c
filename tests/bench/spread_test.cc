#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "kiln/bench/bench.h"

namespace kiln::bench {
namespace {

// The interval itself is kiln::MeanConfidenceInterval (tests/core/statistics_test.cc); here:
// which cells of a report get one.
TEST(SpreadTest, CellsWithRoundsGetAnInterval) {
  nlohmann::json results =
      nlohmann::json::array({{{"median_ms", 2.0}, {"round_medians_ms", {1.9, 2.0, 2.1}}},
                             {{"median_ms", 3.0}, {"round_medians_ms", {3.0}}},
                             {{"median_ms", 4.0}}});
  AddConfidenceIntervals(&results);
  ASSERT_TRUE(results[0].contains("ci95_ms"));
  EXPECT_LT(results[0]["ci95_ms"][0].get<double>(), 2.0);
  EXPECT_GT(results[0]["ci95_ms"][1].get<double>(), 2.0);
  EXPECT_FALSE(results[1].contains("ci95_ms"));
  EXPECT_FALSE(results[2].contains("ci95_ms"));
}

// A cell's ratio pairs its rounds with the reference cell's rounds (same threads and batch).
TEST(SpreadTest, RatiosPairEachRoundWithTheReference) {
  using nlohmann::json;
  auto cell = [](const char* variant, const char* engine, json threads, int batch,
                 std::vector<double> rounds) {
    return json{{"variant", variant}, {"engine", engine},       {"threads", threads},
                {"batch", batch},     {"median_ms", rounds[0]}, {"round_medians_ms", rounds}};
  };
  // The machine gets 10% slower each round; int8 stays 2.5x faster than fp32 in every round.
  json results = json::array({cell("fp32", "onnxruntime", 2, 1, {1.0, 1.1, 1.21}),
                              cell("int8", "onnxruntime", 2, 1, {0.4, 0.44, 0.484}),
                              cell("fp32", "onnxruntime", 1, 1, {2.0, 2.0, 2.0}),
                              cell("int8", "libtorch", 1, 1, {4.0, 2.0, 1.0}),
                              cell("fp32", "onnxruntime-default", "default", 1, {1.0, 1.0, 1.0}),
                              cell("int8", "onnxruntime", 2, 64, {10.0, 11.0, 12.0}),
                              cell("int8", "onnxruntime", 4, 1, {1.0, 1.0})});
  AddRatios(json(results), "fp32", &results);

  const json& ref = results[0]["ratio"];
  EXPECT_EQ(ref["reference"], "fp32 / onnxruntime");
  EXPECT_DOUBLE_EQ(ref["median"].get<double>(), 1.0);
  const json& int8 = results[1]["ratio"];
  for (double r : int8["rounds"].get<std::vector<double>>()) EXPECT_NEAR(r, 2.5, 1e-12);
  EXPECT_NEAR(int8["min"].get<double>(), 2.5, 1e-12);
  EXPECT_NEAR(int8["max"].get<double>(), 2.5, 1e-12);
  ASSERT_TRUE(int8.contains("ci95"));
  EXPECT_NEAR(int8["ci95"][0].get<double>(), 2.5, 1e-9);
  // Rounds 2/4 = 0.5, 2/2 = 1, 2/1 = 2: median 1, min-max 0.5-2, and a wide interval.
  const json& lt = results[3]["ratio"];
  EXPECT_DOUBLE_EQ(lt["median"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(lt["min"].get<double>(), 0.5);
  EXPECT_DOUBLE_EQ(lt["max"].get<double>(), 2.0);
  EXPECT_LT(lt["ci95"][0].get<double>(), 0.5);
  // ONNX Runtime's default threads compare with FP32 at its default threads.
  EXPECT_EQ(results[4]["ratio"]["reference"], "fp32 / onnxruntime-default");
  // No reference at batch 64 or 4 threads: no ratio.
  EXPECT_FALSE(results[5].contains("ratio"));
  EXPECT_FALSE(results[6].contains("ratio"));
}

TEST(SpreadTest, NoRatioWhenTheRoundsDoNotPair) {
  using nlohmann::json;
  json results = json::array({{{"variant", "fp32"},
                               {"engine", "onnxruntime"},
                               {"threads", 2},
                               {"batch", 1},
                               {"round_medians_ms", {1.0, 1.0, 1.0}}},
                              {{"variant", "int8"},
                               {"engine", "onnxruntime"},
                               {"threads", 2},
                               {"batch", 1},
                               {"round_medians_ms", {0.5, 0.5}}}});
  AddRatios(json(results), "fp32", &results);
  EXPECT_TRUE(results[0].contains("ratio"));
  EXPECT_FALSE(results[1].contains("ratio"));
}

}  // namespace
}  // namespace kiln::bench
