// kiln_eval on a fake engine: EvaluateEngine's confusion matrix and predictions, and
// CheckParity's verdicts, on a tiny hand-made image set (no model file, no data archive).
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "kiln/eval/evaluate.h"
#include "kiln/eval/parity.h"

namespace kiln::eval {
namespace {

// Two classes; the score of class c is the c-th (normalized) pixel, so the larger pixel wins.
class PixelEngine : public backend::InferenceBackend {
 public:
  const std::string& name() const override { return name_; }
  const std::vector<backend::TensorInfo>& inputs() const override { return inputs_; }
  const std::vector<backend::TensorInfo>& outputs() const override { return outputs_; }
  backend::Capabilities capabilities() const override { return {true, 0, "cpu"}; }
  const std::map<std::string, std::string>& metadata() const override { return metadata_; }
  Status Run(const float* input, int64_t batch, float* output) override {
    batches.push_back(batch);
    for (int64_t i = 0; i < 2 * batch; ++i) output[i] = input[i];
    return Status::Ok();
  }
  std::vector<int64_t> batches;

 private:
  std::string name_ = "pixel";
  std::vector<backend::TensorInfo> inputs_{{"x", backend::DataType::kFloat32, {-1, 1, 1, 2}}};
  std::vector<backend::TensorInfo> outputs_{{"y", backend::DataType::kFloat32, {-1, 2}}};
  std::map<std::string, std::string> metadata_;
};

// Seven 1x1x2 images: predicted class 1 where the second pixel is larger.
data::ImageSet TinySet() {
  data::ImageSet set;
  set.channels = 1;
  set.height = 1;
  set.width = 2;
  // (pixels) -> predicted: 0 0 1 1 0 1 1; labels: 0 1 1 1 0 0 1 -> 5 of 7 right.
  set.pixels = {200, 10, 90, 80, 10, 200, 5, 6, 255, 0, 1, 2, 100, 101};
  set.labels = {0, 1, 1, 1, 0, 0, 1};
  return set;
}

const data::Normalization kIdentity{{0.0f}, {1.0f}};

// The engine's outputs on `set`, row by row: the reference a faithful export must match.
std::vector<float> Logits(PixelEngine& engine, const data::ImageSet& set) {
  data::BatchLoader loader(&set, kIdentity, data::LoaderOptions::InOrder(set.size()));
  std::vector<float> in(static_cast<size_t>(set.size() * 2)), out(in.size());
  std::vector<int64_t> labels(static_cast<size_t>(set.size()));
  const int64_t n = loader.FillBatch(0, 0, in.data(), labels.data());
  EXPECT_TRUE(engine.Run(in.data(), n, out.data()).ok());
  return out;
}

TEST(EvalTest, EvaluateEngineCountsEveryImageInOrder) {
  PixelEngine engine;
  const data::ImageSet set = TinySet();
  auto r = EvaluateEngine(engine, set, kIdentity, 3);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(engine.batches, (std::vector<int64_t>{3, 3, 1}));
  EXPECT_EQ(r->images, 7);
  EXPECT_EQ(r->predictions, (std::vector<int64_t>{0, 0, 1, 1, 0, 1, 1}));
  EXPECT_EQ(r->confusion, (std::vector<std::vector<int64_t>>{{2, 1}, {1, 3}}));
  EXPECT_DOUBLE_EQ(r->accuracy, 5.0 / 7.0);
  EXPECT_EQ(r->per_class_accuracy, (std::vector<double>{2.0 / 3.0, 3.0 / 4.0}));
  EXPECT_EQ(r->loss, 0.0);
}

TEST(EvalTest, EvaluateEngineRefusesAMismatchedModel) {
  PixelEngine engine;
  data::ImageSet set = TinySet();
  set.width = 1;  // 1 pixel per image for an engine that takes 2
  set.pixels.resize(7);
  auto r = EvaluateEngine(engine, set, kIdentity, 3);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(EvaluateEngine(engine, TinySet(), kIdentity, 0).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(EvalTest, ParityAcceptsTheSameLogitsAndReportsDifferences) {
  PixelEngine engine;
  const data::ImageSet set = TinySet();
  const std::vector<float> reference = Logits(engine, set);
  ParityReport report;
  ASSERT_TRUE(CheckParity(reference, 2, engine, set, kIdentity, 1e-6, &report, 3).ok());
  EXPECT_EQ(report.backend, "pixel");
  EXPECT_EQ(report.images, 7);
  EXPECT_EQ(report.max_abs_diff, 0.0);
  EXPECT_EQ(report.top1_mismatches, 0);
  EXPECT_DOUBLE_EQ(report.accuracy, 5.0 / 7.0);

  // A small difference: inside a loose tolerance, outside a tight one.
  std::vector<float> nudged = reference;
  nudged[4] += 0.001f;  // image 2, class 0: still below class 1
  ASSERT_TRUE(CheckParity(nudged, 2, engine, set, kIdentity, 0.01, &report, 3).ok());
  EXPECT_NEAR(report.max_abs_diff, 0.001, 1e-6);
  Status tight = CheckParity(nudged, 2, engine, set, kIdentity, 1e-4, &report, 3);
  EXPECT_EQ(tight.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(tight.message().find("disagrees"), std::string::npos) << tight.message();

  // A reference whose top-1 differs on one image is refused whatever the tolerance.
  std::vector<float> flipped = reference;
  std::swap(flipped[0], flipped[1]);  // image 0 now prefers class 1
  Status s = CheckParity(flipped, 2, engine, set, kIdentity, 1e9, &report, 3);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(report.top1_mismatches, 1);
}

TEST(EvalTest, ParityRefusesAReferenceOfTheWrongSize) {
  PixelEngine engine;
  const data::ImageSet set = TinySet();
  std::vector<float> short_reference(13);
  ParityReport report;
  Status s = CheckParity(short_reference, 2, engine, set, kIdentity, 1, &report);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("do not cover"), std::string::npos) << s.message();
  EXPECT_EQ(CheckParity(Logits(engine, set), 3, engine, set, kIdentity, 1, &report).code(),
            StatusCode::kInvalidArgument);  // 3 classes for a 2-output engine
}

}  // namespace
}  // namespace kiln::eval
