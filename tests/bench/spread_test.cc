#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "kiln/bench/bench.h"

namespace kiln::bench {
namespace {

// The interval itself is kiln::MeanConfidenceInterval (tests/core/statistics_test.cc); here:
// which cells of a report get one.
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
