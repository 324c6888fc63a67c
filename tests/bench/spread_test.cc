#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "kiln/bench/bench.h"

namespace kiln::bench {
namespace {

// Hand-computed: mean 11, sd 1, t(0.975, 2) = 4.303, half-width 4.303 / sqrt(3) = 2.4844.
TEST(SpreadTest, ConfidenceIntervalOfThreeRounds) {
  auto ci = ConfidenceInterval95({10.0, 11.0, 12.0});
  ASSERT_TRUE(ci.has_value());
  EXPECT_NEAR(ci->first, 11.0 - 2.48434, 1e-4);
  EXPECT_NEAR(ci->second, 11.0 + 2.48434, 1e-4);
}

TEST(SpreadTest, IdenticalRoundsGiveAPointAndOneRoundNoInterval) {
  auto same = ConfidenceInterval95({5.0, 5.0, 5.0, 5.0});
  ASSERT_TRUE(same.has_value());
  EXPECT_DOUBLE_EQ(same->first, 5.0);
  EXPECT_DOUBLE_EQ(same->second, 5.0);
  EXPECT_FALSE(ConfidenceInterval95({5.0}).has_value());
  EXPECT_FALSE(ConfidenceInterval95({}).has_value());
  // Many rounds: the normal quantile; the interval still contains the mean and shrinks.
  std::vector<double> many(40);
  for (size_t i = 0; i < many.size(); ++i) many[i] = 10.0 + (i % 2 == 0 ? 1.0 : -1.0);
  auto wide = ConfidenceInterval95(many);
  ASSERT_TRUE(wide.has_value());
  EXPECT_LT(wide->first, 10.0);
  EXPECT_GT(wide->second, 10.0);
  EXPECT_LT(wide->second - wide->first, 1.0);
}

TEST(SpreadTest, CellsWithRoundsGetAnInterval) {
  nlohmann::json results = nlohmann::json::array(
      {{{"median_ms", 2.0}, {"round_medians_ms", {1.9, 2.0, 2.1}}},
       {{"median_ms", 3.0}, {"round_medians_ms", {3.0}}},
       {{"median_ms", 4.0}}});
  AddConfidenceIntervals(&results);
  ASSERT_TRUE(results[0].contains("ci95_ms"));
  EXPECT_LT(results[0]["ci95_ms"][0].get<double>(), 2.0);
  EXPECT_GT(results[0]["ci95_ms"][1].get<double>(), 2.0);
  EXPECT_FALSE(results[1].contains("ci95_ms"));
  EXPECT_FALSE(results[2].contains("ci95_ms"));
}

}  // namespace
}  // namespace kiln::bench
