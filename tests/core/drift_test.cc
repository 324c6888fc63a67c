#include "kiln/core/drift.h"

#include <gtest/gtest.h>

#include <cmath>

namespace kiln::drift {
namespace {

TEST(DriftTest, PsiJsAndChiSquareMatchHandComputedValues) {
  const std::vector<double> expected = {0.5, 0.5};
  const std::vector<double> counts = {30, 70};
  // (0.3 - 0.5) ln(0.3 / 0.5) + (0.7 - 0.5) ln(0.7 / 0.5)
  EXPECT_NEAR(Psi(expected, counts), 0.2 * std::log(0.5 / 0.3) + 0.2 * std::log(1.4), 1e-12);
  // m = (0.4, 0.6): 0.5 KL(e || m) + 0.5 KL(a || m), base 2.
  const double kl_e = 0.5 * std::log2(0.5 / 0.4) + 0.5 * std::log2(0.5 / 0.6);
  const double kl_a = 0.3 * std::log2(0.3 / 0.4) + 0.7 * std::log2(0.7 / 0.6);
  EXPECT_NEAR(JensenShannon(expected, counts), 0.5 * (kl_e + kl_a), 1e-12);
  // n = 100, expected 50 / 50: (20^2 / 50) * 2 = 16; P(chi2_1 > 16) = erfc(sqrt(8)).
  EXPECT_NEAR(ChiSquare(expected, counts), 16.0, 1e-12);
  EXPECT_NEAR(ChiSquarePValue(16.0, 1), std::erfc(std::sqrt(8.0)), 1e-12);
  // The 95% critical values of chi-square tables.
  EXPECT_NEAR(ChiSquarePValue(3.841459, 1), 0.05, 1e-6);
  EXPECT_NEAR(ChiSquarePValue(16.918978, 9), 0.05, 1e-6);
  EXPECT_EQ(ChiSquarePValue(0.0, 9), 1.0);
  // Same distribution: every score at its "no drift" value.
  EXPECT_NEAR(Psi(expected, {50, 50}), 0.0, 1e-15);
  EXPECT_NEAR(JensenShannon(expected, {50, 50}), 0.0, 1e-15);
  // Disjoint distributions: JS is 1; PSI is large but finite thanks to the share floor.
  EXPECT_NEAR(JensenShannon({1.0, 0.0}, {0, 10}), 1.0, 1e-12);
  EXPECT_TRUE(std::isfinite(Psi({1.0, 0.0}, {0, 10})));
  EXPECT_GT(Psi({1.0, 0.0}, {0, 10}), 10.0);
}

TEST(DriftTest, TopProbabilityIsTheSoftmaxUnlessTheRowIsAlreadyADistribution) {
  const float logits[] = {0.f, std::log(3.f)};  // softmax (0.25, 0.75)
  Top1 t = TopProbability(logits, 2);
  EXPECT_EQ(t.index, 1);
  EXPECT_NEAR(t.probability, 0.75, 1e-7);
  const float probs[] = {0.1f, 0.2f, 0.7f};
  t = TopProbability(probs, 3);
  EXPECT_EQ(t.index, 2);
  EXPECT_NEAR(t.probability, 0.7, 1e-7);
  // In [0, 1] but not summing to 1: logits after all.
  const float small[] = {0.1f, 0.2f};
  EXPECT_NEAR(TopProbability(small, 2).probability, 1 / (1 + std::exp(-0.1)), 1e-6);
}

TEST(DriftTest, ConfidenceBucketsFollowPrometheusLe) {
  EXPECT_EQ(ConfidenceBounds().size(), 11u);
  EXPECT_EQ(ConfidenceBucket(0.05), 0u);
  EXPECT_EQ(ConfidenceBucket(0.2), 0u);  // le: bound included
  EXPECT_EQ(ConfidenceBucket(0.2000001), 1u);
  EXPECT_EQ(ConfidenceBucket(0.96), 9u);
  EXPECT_EQ(ConfidenceBucket(1.0), 10u);
}

TEST(DriftTest, ReferenceAndWindowScores) {
  // Two classes, one channel of two pixels.
  Profile ref_p(2, 1);
  const float a[] = {5.f, 0.f}, b[] = {0.f, 5.f};
  const float dark[] = {0.f, 0.f}, bright[] = {2.f, 2.f};  // channel means 0 and 2
  ref_p.Add(a, dark, 2);
  ref_p.Add(b, bright, 2);
  const Reference ref = MakeReference(ref_p, "test");
  EXPECT_EQ(ref.images, 2);
  EXPECT_EQ(ref.class_share, (std::vector<double>{0.5, 0.5}));
  ASSERT_EQ(ref.channels(), 1);
  EXPECT_NEAR(ref.channel_mean[0], 1.0, 1e-12);
  EXPECT_NEAR(ref.channel_std[0], std::sqrt(2.0), 1e-12);  // sample sd of {0, 2}
  const double conf = 1 / (1 + std::exp(-5.0));
  EXPECT_NEAR(ref.mean_confidence, conf, 1e-7);
  EXPECT_NEAR(ref.confidence_share[ConfidenceBucket(conf)], 1.0, 1e-12);

  // A window of the same predictions scores 0; one whose inputs are one reference sd brighter
  // scores z = 1 whatever its size.
  Profile same(2, 1);
  same.Add(a, dark, 2);
  same.Add(b, bright, 2);
  Scores s = Compare(ref, same);
  EXPECT_EQ(s.samples, 2);
  EXPECT_NEAR(s.class_psi, 0, 1e-12);
  EXPECT_NEAR(s.confidence_psi, 0, 1e-12);
  EXPECT_NEAR(s.class_chi2_pvalue, 1, 1e-12);
  EXPECT_NEAR(s.input_z[0], 0, 1e-12);
  Profile shifted(2, 1);
  const double m = 1 + std::sqrt(2.0);
  for (int i = 0; i < 50; ++i) shifted.Add(0, conf, &m);
  s = Compare(ref, shifted);
  EXPECT_NEAR(s.input_z[0], 1.0, 1e-12);
  EXPECT_NEAR(s.class_psi, Psi({0.5, 0.5}, {50, 0}), 1e-12);
  EXPECT_GT(s.class_psi, 1.0);
  EXPECT_LT(s.class_chi2_pvalue, 1e-6);

  // An empty window: nothing to compare, no drift.
  s = Compare(ref, Profile(2, 1));
  EXPECT_EQ(s.samples, 0);
  EXPECT_EQ(s.class_psi, 0);
  EXPECT_EQ(s.class_chi2_pvalue, 1);
}

}  // namespace
}  // namespace kiln::drift
