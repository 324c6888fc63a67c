#include "kiln/bench/roof.h"

#include <gtest/gtest.h>

namespace kiln::bench {
namespace {

TEST(RoofTest, PlausibleValues) {
  const Roof roof = MeasureRoof({1, 2}, 0.2);
  ASSERT_EQ(roof.points.size(), 2u);
  if (roof.isa == "none") GTEST_SKIP() << "CPU without AVX2: no roof";
  for (const RoofPoint& p : roof.points) {
    SCOPED_TRACE(p.threads);
    // Above zero, below anything a 2020s core could do (a broken timer or op count shows here).
    EXPECT_GT(p.fp32_gflops, 1.0);
    EXPECT_LT(p.fp32_gflops, 1000.0 * p.threads);
    // INT8 dot products do more work per instruction than FP32 FMAs on every x86 ISA here.
    EXPECT_GT(p.int8_gops, p.fp32_gflops);
  }
  EXPECT_EQ(roof.At(2)->threads, 2);
  EXPECT_EQ(roof.At(7)->threads, 2);  // the closest measured count
}

}  // namespace
}  // namespace kiln::bench
