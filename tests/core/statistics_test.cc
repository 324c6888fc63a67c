#include "kiln/core/statistics.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

namespace kiln {
namespace {

// numpy.percentile(x, q) (linear, the default) gives these for x = [15, 20, 35, 40, 50]:
// q=0 -> 15, 25 -> 20, 40 -> 29, 50 -> 35, 90 -> 46, 99 -> 49.6, 100 -> 50.
TEST(StatisticsTest, QuantileInterpolatesBetweenClosestRanks) {
  const std::vector<double> x = {40, 15, 50, 35, 20};  // unsorted on purpose
  EXPECT_DOUBLE_EQ(Quantile(x, 0.0), 15);
  EXPECT_DOUBLE_EQ(Quantile(x, 0.25), 20);
  EXPECT_DOUBLE_EQ(Quantile(x, 0.40), 29);
  EXPECT_DOUBLE_EQ(Quantile(x, 0.50), 35);
  EXPECT_DOUBLE_EQ(Quantile(x, 0.90), 46);
  EXPECT_NEAR(Quantile(x, 0.99), 49.6, 1e-12);
  EXPECT_DOUBLE_EQ(Quantile(x, 1.0), 50);
  // Out-of-range q is clamped; no values give 0; one value is every quantile.
  EXPECT_DOUBLE_EQ(Quantile(x, 1.5), 50);
  EXPECT_DOUBLE_EQ(Quantile(x, -1), 15);
  EXPECT_DOUBLE_EQ(Quantile({}, 0.5), 0);
  EXPECT_DOUBLE_EQ(Quantile({7}, 0.99), 7);
  // The median of an even count is the mean of the middle two.
  EXPECT_DOUBLE_EQ(Quantile({1, 2, 3, 4}, 0.5), 2.5);
  std::vector<double> sorted = {15, 20, 35, 40, 50};
  EXPECT_DOUBLE_EQ(QuantileOfSorted(sorted, 0.40), 29);
}

// mean 11, sd 1; t(0.975, 2) = 4.302652729911275 (Student's t, 2 degrees of freedom), so the
// half-width is 4.302652729911275 / sqrt(3) = 2.484137... A table's rounded 4.303 would give
// 2.48434, outside the tolerance: this checks that the exact quantile is used.
TEST(StatisticsTest, ConfidenceIntervalUsesStudentsT) {
  auto ci = MeanConfidenceInterval({10.0, 11.0, 12.0}, 0.95);
  ASSERT_TRUE(ci.has_value());
  EXPECT_NEAR(ci->first, 11.0 - 2.4841377, 1e-6);
  EXPECT_NEAR(ci->second, 11.0 + 2.4841377, 1e-6);
  // 99%: t(0.995, 2) = 9.924843200918
  auto wide = MeanConfidenceInterval({10.0, 11.0, 12.0}, 0.99);
  ASSERT_TRUE(wide.has_value());
  EXPECT_NEAR(wide->second - 11.0, 9.924843200918 / std::sqrt(3.0), 1e-6);
}

TEST(StatisticsTest, ConfidenceIntervalEdgeCases) {
  auto same = MeanConfidenceInterval({5.0, 5.0, 5.0, 5.0});
  ASSERT_TRUE(same.has_value());
  EXPECT_DOUBLE_EQ(same->first, 5.0);
  EXPECT_DOUBLE_EQ(same->second, 5.0);
  EXPECT_FALSE(MeanConfidenceInterval({5.0}).has_value());
  EXPECT_FALSE(MeanConfidenceInterval({}).has_value());
  EXPECT_FALSE(MeanConfidenceInterval({1.0, 2.0}, 1.0).has_value());
  EXPECT_FALSE(MeanConfidenceInterval({1.0, 2.0}, 0.0).has_value());
  // 40 samples alternating 9 and 11: mean 10, sd 1.0127; t(0.975, 39) = 2.0226909.
  std::vector<double> many(40);
  for (size_t i = 0; i < many.size(); ++i) many[i] = 10.0 + (i % 2 == 0 ? 1.0 : -1.0);
  auto ci = MeanConfidenceInterval(many);
  ASSERT_TRUE(ci.has_value());
  const double sd = std::sqrt(40.0 / 39.0);
  EXPECT_NEAR(ci->second - 10.0, 2.0226909 * sd / std::sqrt(40.0), 1e-6);
  EXPECT_NEAR(10.0 - ci->first, 2.0226909 * sd / std::sqrt(40.0), 1e-6);
}

}  // namespace
}  // namespace kiln
