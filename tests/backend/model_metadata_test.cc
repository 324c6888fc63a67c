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

}  // namespace
}  // namespace kiln::backend
