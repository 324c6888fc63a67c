#include "kiln/backend/model_metadata.h"

#include <gtest/gtest.h>

#include "../test_util.h"

namespace kiln::backend {
namespace {

constexpr const char* kNorm = R"({"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]})";

TEST(KilnMetadataTest, ReadsWhatExportWrites) {
  auto m = ReadKilnMetadata({{"kiln.labels", R"(["cat", "dog"])"}, {"kiln.normalization", kNorm}},
                            "m.onnx");
  KILN_ASSERT_RESULT_OK(m);
  EXPECT_EQ(m->labels, (std::vector<std::string>{"cat", "dog"}));
  EXPECT_EQ(m->mean, (std::vector<float>{0.5f, 0.4f, 0.3f}));
  EXPECT_EQ(m->stddev, (std::vector<float>{0.2f, 0.25f, 0.3f}));
}

TEST(KilnMetadataTest, MissingKeysLeaveFieldsEmpty) {
  auto none = ReadKilnMetadata({{"producer", "someone else"}}, "m.onnx");
  KILN_ASSERT_RESULT_OK(none);
  EXPECT_FALSE(none->has_labels());
  EXPECT_FALSE(none->has_normalization());
  auto labels_only = ReadKilnMetadata({{"kiln.labels", R"(["a"])"}}, "m.onnx");
  KILN_ASSERT_RESULT_OK(labels_only);
  EXPECT_TRUE(labels_only->has_labels());
  EXPECT_FALSE(labels_only->has_normalization());
}

TEST(KilnMetadataTest, MalformedValuesAreInvalidArgumentsNamingTheFile) {
  struct Case {
    const char* key;
    const char* value;
  };
  const Case cases[] = {
      {"kiln.labels", "not json"},
      {"kiln.labels", R"({"a": 1})"},
      {"kiln.labels", "[1, 2]"},
      {"kiln.labels", "[]"},
      {"kiln.normalization", "[0.5]"},
      {"kiln.normalization", R"({"mean": [0.5]})"},
      {"kiln.normalization", R"({"mean": [0.5, 0.5], "std": [0.2]})"},
      {"kiln.normalization", R"({"mean": [], "std": []})"},
      {"kiln.normalization", R"({"mean": [0.5], "std": [0]})"},
      {"kiln.normalization", R"({"mean": [0.5], "std": ["x"]})"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(c.key) + " = " + c.value);
    auto m = ReadKilnMetadata({{c.key, c.value}}, "broken.onnx");
    ASSERT_FALSE(m.ok());
    EXPECT_EQ(m.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(m.status().message().find("broken.onnx"), std::string::npos);
    EXPECT_NE(m.status().message().find(c.key), std::string::npos);
  }
}

TEST(KilnMetadataTest, DriftReferenceRoundTrips) {
  drift::Reference r;
  r.images = 5000;
  r.source = "validation split";
  r.class_share = {0.25, 0.75};
  r.confidence_share.assign(drift::ConfidenceBounds().size(), 0.0);
  r.confidence_share.back() = 1.0;
  r.mean_confidence = 0.97;
  r.channel_mean = {0.1, -0.2, 0.3};
  r.channel_std = {0.5, 0.6, 0.7};
  auto m = ReadKilnMetadata({{kDriftReferenceKey, DriftReferenceJson(r)},
                             {"kiln.labels", R"(["cat", "dog"])"}},
                            "m.onnx");
  KILN_ASSERT_RESULT_OK(m);
  ASSERT_TRUE(m->drift_reference.has_value());
  const drift::Reference& back = *m->drift_reference;
  EXPECT_EQ(back.images, 5000);
  EXPECT_EQ(back.source, "validation split");
  EXPECT_EQ(back.class_share, r.class_share);
  EXPECT_EQ(back.confidence_share, r.confidence_share);
  EXPECT_EQ(back.mean_confidence, 0.97);
  EXPECT_EQ(back.channel_mean, r.channel_mean);
  EXPECT_EQ(back.channel_std, r.channel_std);
  // No key: no reference (the model simply has no drift metrics).
  auto none = ReadKilnMetadata({}, "m.onnx");
  KILN_ASSERT_RESULT_OK(none);
  EXPECT_FALSE(none->drift_reference.has_value());
}

TEST(KilnMetadataTest, MalformedDriftReferencesAreInvalidArguments) {
  const std::string bounds = "[0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,0.95,0.99,1.0]";
  const std::string conf = "[0,0,0,0,0,0,0,0,0,0,1]";
  auto ref = [&](const std::string& images, const std::string& classes, const std::string& b,
                 const std::string& c, const std::string& channels) {
    return R"({"images":)" + images + R"(,"class_share":)" + classes +
           R"(,"confidence_bounds":)" + b + R"(,"confidence_share":)" + c +
           R"(,"mean_confidence":0.9)" + channels + "}";
  };
  const std::string good = ref("10", "[0.5,0.5]", bounds, conf, "");
  ASSERT_TRUE(ReadKilnMetadata({{kDriftReferenceKey, good}}, "m.onnx").ok());
  const std::string cases[] = {
      "not json",
      ref("0", "[0.5,0.5]", bounds, conf, ""),                  // no images
      ref("10", "[0.5,0.6]", bounds, conf, ""),                 // shares do not sum to 1
      ref("10", "[1.5,-0.5]", bounds, conf, ""),                // shares outside [0, 1]
      ref("10", "[0.5,0.5]", "[0.5,1.0]", conf, ""),            // other buckets
      ref("10", "[0.5,0.5]", bounds, "[0,1]", ""),              // wrong bucket count
      ref("10", "[0.5,0.5]", bounds, conf, R"(,"channel_mean":[0],"channel_std":[])"),
      ref("10", "[0.5,0.5]", bounds, conf, R"(,"channel_mean":[0],"channel_std":[-1])"),
      R"({"images": 10})",                                       // fields missing
  };
  for (const std::string& c : cases) {
    SCOPED_TRACE(c);
    auto m = ReadKilnMetadata({{kDriftReferenceKey, c}}, "broken.onnx");
    ASSERT_FALSE(m.ok());
    EXPECT_EQ(m.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(m.status().message().find("broken.onnx"), std::string::npos);
  }
  // Classes that disagree with the labels.
  auto m = ReadKilnMetadata({{kDriftReferenceKey, good}, {"kiln.labels", R"(["a","b","c"])"}},
                            "broken.onnx");
  EXPECT_FALSE(m.ok());
}

}  // namespace
}  // namespace kiln::backend
