#include <gtest/gtest.h>

#include "../test_util.h"
#include "kiln/serve/metrics/metrics.h"
#include "kiln/serve/engine/model_config.h"

namespace kiln::serve {
namespace {

using backend::DataType;
using backend::TensorInfo;

const std::vector<TensorInfo> kDynamicIn = {{"input", DataType::kFloat32, {-1, 3, 32, 32}}};
const std::vector<TensorInfo> kDynamicOut = {{"logits", DataType::kFloat32, {-1, 10}}};
const std::vector<TensorInfo> kFixedIn = {{"input", DataType::kFloat32, {1, 3, 32, 32}}};
const std::vector<TensorInfo> kFixedOut = {{"logits", DataType::kFloat32, {1, 10}}};

// A config as Triton users write it, with fields Kiln ignores (warmup, response cache).
constexpr const char* kTritonConfig = R"(
name: "cifar"
platform: "onnxruntime_onnx"
max_batch_size: 16
version_policy: { latest: { num_versions: 2 } }
input [ { name: "input" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 3, 32, 32 ] } ]
output [ { name: "logits" data_type: TYPE_FP32 dims: [ 10 ] label_filename: "labels.txt" } ]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 500
  default_queue_policy { max_queue_size: 64 default_timeout_microseconds: 100000 }
}
instance_group [ { count: 2 kind: KIND_CPU } ]
optimization { graph { level: 1 } execution_accelerators { cpu_execution_accelerator [ { name: "openvino" } ] } }
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
model_warmup [ { name: "zeros" batch_size: 1 inputs { key: "input" value: { data_type: TYPE_FP32 dims: [3, 32, 32] zero_data: true } } } ]
response_cache { enable: false }
some_future_field { anything: 1 }
)";

TEST(ModelConfigTest, ReadsATritonConfigUnchanged) {
  std::vector<std::string> warnings;
  auto c = ParseModelConfig(kTritonConfig, &warnings);
  KILN_ASSERT_RESULT_OK(c);
  EXPECT_EQ(c->name(), "cifar");
  EXPECT_EQ(c->platform(), kOnnxPlatform);
  EXPECT_EQ(c->max_batch_size(), 16);
  EXPECT_EQ(c->version_policy().latest().num_versions(), 2U);
  ASSERT_EQ(c->input_size(), 1);
  EXPECT_EQ(c->input(0).dims_size(), 3);
  EXPECT_EQ(c->output(0).label_filename(), "labels.txt");
  EXPECT_EQ(c->dynamic_batching().preferred_batch_size_size(), 2);
  EXPECT_EQ(c->dynamic_batching().max_queue_delay_microseconds(), 500U);
  EXPECT_EQ(c->dynamic_batching().default_queue_policy().max_queue_size(), 64U);
  EXPECT_EQ(c->instance_group(0).count(), 2);
  EXPECT_EQ(c->optimization().graph().level(), 1);
  EXPECT_EQ(c->parameters().at("intra_op_thread_count").string_value(), "1");
  // The unknown field is accepted and reported.
  ASSERT_EQ(warnings.size(), 1U);
  EXPECT_NE(warnings[0].find("some_future_field"), std::string::npos) << warnings[0];
  KILN_ASSERT_OK(CompleteModelConfig(kDynamicIn, kDynamicOut, {}, &*c));
}

TEST(ModelConfigTest, SyntaxErrorsNameTheLine) {
  auto c = ParseModelConfig("name: \"x\"\nmax_batch_size: [\n", nullptr);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find("line 2"), std::string::npos) << c.status().message();
}

// The text format accepts any bytes in a string; proto3 strings (and the JSON of GET .../config)
// must be UTF-8 (found by tests/fuzz: model_config).
TEST(ModelConfigTest, RejectsInvalidUtf8Strings) {
  for (const char* text : {"platform: \"onnx\\300\"", "name: \"\xc0\xaf\"",
                           "input [ { name: \"in\\355\\240\\200\" } ]",
                           "parameters { key: \"k\" value: { string_value: \"\xff\" } }"}) {
    auto c = ParseModelConfig(text, nullptr);
    ASSERT_FALSE(c.ok()) << text;
    EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(c.status().message().find("not valid UTF-8"), std::string::npos)
        << c.status().message();
  }
  auto ok = ParseModelConfig("name: \"caf\xc3\xa9 \xf0\x9f\x94\xa5\"", nullptr);
  KILN_ASSERT_RESULT_OK(ok);
}

TEST(ModelConfigTest, MissingConfigIsCompletedFromTheModel) {
  inference::ModelConfig c;
  CompleteOptions o;
  o.default_max_batch_size = 8;
  KILN_ASSERT_OK(CompleteModelConfig(kDynamicIn, kDynamicOut, o, &c));
  EXPECT_EQ(c.max_batch_size(), 8);
  EXPECT_TRUE(c.has_dynamic_batching());
  ASSERT_EQ(c.input_size(), 1);
  EXPECT_EQ(c.input(0).name(), "input");
  EXPECT_EQ(c.input(0).data_type(), inference::TYPE_FP32);
  EXPECT_EQ(std::vector<int64_t>(c.input(0).dims().begin(), c.input(0).dims().end()),
            (std::vector<int64_t>{3, 32, 32}));
  EXPECT_EQ(c.output(0).dims(0), 10);
  ASSERT_EQ(c.instance_group_size(), 1);
  EXPECT_EQ(c.instance_group(0).kind(), inference::ModelInstanceGroup::KIND_CPU);

  // A model with a fixed batch of 1 is completed as non-batching, with its full shape.
  inference::ModelConfig fixed;
  KILN_ASSERT_OK(CompleteModelConfig(kFixedIn, kFixedOut, o, &fixed));
  EXPECT_EQ(fixed.max_batch_size(), 0);
  EXPECT_EQ(fixed.input(0).dims_size(), 4);
}

// The classic mistakes of PROTOCOL.md and other wrong configs: each is refused with a message
// that says what to change.
TEST(ModelConfigTest, MistakesAreCaughtWithAFix) {
  struct Case {
    const char* config;
    const std::vector<TensorInfo>* in;
    const char* expected;
  };
  const std::vector<Case> cases = {
      {"max_batch_size: 8 input [{ name: \"input\" data_type: TYPE_FP32 dims: [3,32,32] }] "
       "output [{ name: \"logits\" data_type: TYPE_FP32 dims: [10] }]",
       &kFixedIn, "exported with a fixed batch"},
      {"max_batch_size: 8 input [{ name: \"input\" data_type: TYPE_FP32 dims: [-1,3,32,32] }] "
       "output [{ name: \"logits\" data_type: TYPE_FP32 dims: [10] }]",
       &kDynamicIn, "include the batch dimension"},
      {"max_batch_size: 8 input [{ name: \"images\" data_type: TYPE_FP32 dims: [3,32,32] }] "
       "output [{ name: \"logits\" data_type: TYPE_FP32 dims: [10] }]",
       &kDynamicIn, "must equal the model's"},
      {"max_batch_size: 8 input [{ name: \"input\" data_type: TYPE_INT8 dims: [3,32,32] }] "
       "output [{ name: \"logits\" data_type: TYPE_FP32 dims: [10] }]",
       &kDynamicIn, "TYPE_INT8 but the model has TYPE_FP32"},
      {"max_batch_size: 8 input [{ name: \"input\" data_type: TYPE_FP32 dims: [3,64,64] }] "
       "output [{ name: \"logits\" data_type: TYPE_FP32 dims: [10] }]",
       &kDynamicIn, "but the model's shape is"},
      {"max_batch_size: 8 instance_group [{ kind: KIND_GPU }]", &kDynamicIn, "KIND_CPU"},
      {"max_batch_size: 4 dynamic_batching { preferred_batch_size: [8] }", &kDynamicIn,
       "preferred_batch_size 8"},
  };
  for (const auto& c : cases) {
    auto parsed = ParseModelConfig(c.config, nullptr);
    KILN_ASSERT_RESULT_OK(parsed);
    Status s = CompleteModelConfig(*c.in, kDynamicOut, {}, &*parsed);
    ASSERT_FALSE(s.ok()) << c.config;
    EXPECT_NE(s.message().find(c.expected), std::string::npos) << s.message();
  }
}

TEST(ModelConfigTest, ConfigAsJsonUsesTritonFieldNames) {
  auto c = ParseModelConfig(kTritonConfig, nullptr);
  KILN_ASSERT_RESULT_OK(c);
  const std::string j = ModelConfigToJson(*c);
  EXPECT_NE(j.find("\"max_batch_size\":16"), std::string::npos) << j;
  EXPECT_NE(j.find("\"preferred_batch_size\":[4,8]"), std::string::npos) << j;
  EXPECT_EQ(KServeDataType(inference::TYPE_FP32), "FP32");
  EXPECT_EQ(KServeDataType(inference::TYPE_STRING), "BYTES");
}

TEST(MetricsTest, RendersPrometheusText) {
  metrics::Registry r;
  auto* c = r.Counter("requests_total", "Requests", {{"model", "a\"b"}});
  c->Add(2);
  c->Add(1);
  auto* h = r.Histogram("latency_seconds", "Latency", {{"model", "m"}}, {0.1, 1});
  h->Observe(0.05);
  h->Observe(0.5);
  h->Observe(5);
  // The same name and labels give the same series.
  EXPECT_EQ(r.Counter("requests_total", "Requests", {{"model", "a\"b"}}), c);
  const std::string text = r.Render();
  EXPECT_NE(text.find("# TYPE requests_total counter\n"), std::string::npos) << text;
  EXPECT_NE(text.find("requests_total{model=\"a\\\"b\"} 3\n"), std::string::npos) << text;
  EXPECT_NE(text.find("latency_seconds_bucket{model=\"m\",le=\"0.1\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("latency_seconds_bucket{model=\"m\",le=\"1\"} 2\n"), std::string::npos);
  EXPECT_NE(text.find("latency_seconds_bucket{model=\"m\",le=\"+Inf\"} 3\n"), std::string::npos);
  EXPECT_NE(text.find("latency_seconds_sum{model=\"m\"} 5.55\n"), std::string::npos) << text;
  EXPECT_NE(text.find("latency_seconds_count{model=\"m\"} 3\n"), std::string::npos);
}

}  // namespace
}  // namespace kiln::serve
