// The OpenVINO engine against ONNX Runtime on a small trained model, exported by Kiln, in FP32
// and as Kiln's static INT8 (QDQ) graph; its options, metadata and failures.
//
// Tolerances: FP32 logits within 1e-4 of ONNX Runtime's (both run f32 kernels; they differ
// only in summation order; measured max 3e-6 on this model), the same top-1 on every image. INT8:
// the two engines requantize between layers with their own rounding, so the logits differ by a
// few quantization steps of the last layer (measured below 4% of the largest |logit|); top-1 on
// at least 97% of the images.
#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include <openvino/openvino.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "../test_models.h"
#include "../test_util.h"
#include "kiln/backend/factory/factory.h"
#include "kiln/backend/model_metadata.h"
#include "kiln/backend/openvino/openvino_backend.h"
#include "kiln/data/loader.h"
#include "kiln/export/onnx_export.h"
#include "kiln/optimize/quantize/quantize.h"

namespace kiln::backend {
namespace {

namespace fs = std::filesystem;

// A seed-cnn after 60 steps, exported (fp32.onnx) and quantized by Kiln (int8-static.onnx).
class OpenVinoTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    train::Checkpoint ckpt = testing::SmallTrainedModel("seed-cnn", /*seed=*/11, /*steps=*/60);
    norm_ = new data::Normalization(ckpt.meta.normalization);
    KILN_ASSERT_OK(exporter::ExportOnnx(ckpt, {}, Fp32()));
    onnx::ModelProto fp32;
    {
      std::ifstream in(Fp32(), std::ios::binary);
      ASSERT_TRUE(fp32.ParseFromIstream(&in));
    }
    const auto& train = testing::SharedDataset().train;
    const std::vector<float> calib = Normalized(train, 0, 256);
    optimize::QuantizeOptions qo;
    auto ranges = optimize::Calibrate(fp32, calib.data(), 256, train.image_bytes(), qo, nullptr);
    KILN_ASSERT_RESULT_OK(ranges);
    auto int8 = optimize::QuantizeStatic(fp32, *ranges, qo);
    KILN_ASSERT_RESULT_OK(int8);
    std::ofstream out(Int8(), std::ios::binary);
    ASSERT_TRUE(int8->SerializeToOstream(&out));
  }
  static void TearDownTestSuite() {
    delete norm_;
    delete dir_;
  }

  static fs::path Fp32() { return dir_->path() / "fp32.onnx"; }
  static fs::path Int8() { return dir_->path() / "int8-static.onnx"; }

  // Images `first`.. normalized with `norm` (default: the seed-cnn's statistics).
  static std::vector<float> Normalized(const data::ImageSet& set, int64_t first, int64_t count,
                                       const data::Normalization* norm = nullptr) {
    std::vector<float> x(static_cast<size_t>(count * set.image_bytes()));
    for (int64_t i = 0; i < count; ++i) {
      data::NormalizeImage(set.image(first + i), set.channels, set.height * set.width,
                           norm ? *norm : *norm_, x.data() + i * set.image_bytes());
    }
    return x;
  }

  // Logits of `count` test images from `engine`, `batch` at a time.
  static std::vector<float> Logits(const std::string& engine, const fs::path& model,
                                   const std::vector<float>& images, int64_t count, int64_t batch,
                                   BackendOptions bo = {}) {
    bo.model_path = model.string();
    auto e = CreateBackend(engine, bo);
    EXPECT_TRUE(e.ok()) << e.status().ToString();
    if (!e.ok()) return {};
    const int64_t k = (*e)->OutputElementsPerSample();
    std::vector<float> out(static_cast<size_t>(count * k));
    for (int64_t i = 0; i < count; i += batch) {
      const int64_t n = std::min(batch, count - i);
      Status s =
          (*e)->Run(images.data() + i * (*e)->InputElementsPerSample(), n, out.data() + i * k);
      EXPECT_TRUE(s.ok()) << s.ToString();
    }
    return out;
  }

  struct Diff {
    float max_abs = 0;
    float max_logit = 0;
    double top1_agreement = 0;
  };
  static Diff Compare(const std::vector<float>& a, const std::vector<float>& b, int64_t k) {
    Diff d;
    const auto n = static_cast<int64_t>(a.size()) / k;
    int64_t same = 0;
    for (int64_t i = 0; i < n; ++i) {
      const auto* ra = a.data() + i * k;
      const auto* rb = b.data() + i * k;
      same += (std::max_element(ra, ra + k) - ra) == (std::max_element(rb, rb + k) - rb);
      for (int64_t c = 0; c < k; ++c) {
        d.max_abs = std::max(d.max_abs, std::fabs(ra[c] - rb[c]));
        d.max_logit = std::max(d.max_logit, std::fabs(ra[c]));
      }
    }
    d.top1_agreement = static_cast<double>(same) / static_cast<double>(n);
    return d;
  }

  static testing::TempDir* dir_;
  static data::Normalization* norm_;
};
testing::TempDir* OpenVinoTest::dir_ = nullptr;
data::Normalization* OpenVinoTest::norm_ = nullptr;

TEST_F(OpenVinoTest, Fp32MatchesOnnxRuntime) {
  const int64_t n = 500;
  const auto images = Normalized(testing::SharedDataset().test, 0, n);
  const auto ort = Logits("onnxruntime", Fp32(), images, n, 100);
  const auto ov = Logits("openvino", Fp32(), images, n, 100);
  ASSERT_EQ(ort.size(), ov.size());
  const Diff d = Compare(ort, ov, 10);
  EXPECT_LE(d.max_abs, 1e-4f);
  EXPECT_EQ(d.top1_agreement, 1.0);
  std::cout << "FP32 OpenVINO vs ONNX Runtime on " << n << " test images: max |diff| " << d.max_abs
            << " (max |logit| " << d.max_logit << ")\n";
}

// airbench94 (reduced width, flip TTA in the graph): conv -> max-pool -> batch-norm shift ->
// GELU. OpenVINO's CPU plugin fuses an activation into the convolution across a max-pool, which
// changes a GELU's result (GELU is not monotonic); Kiln's export adds the shift after the pool,
// which keeps the fusion away. Before that, 2.3 points of a trained model's accuracy differed.
TEST_F(OpenVinoTest, Fp32AirbenchMatchesOnnxRuntime) {
  train::Checkpoint ckpt = testing::SmallTrainedModel("airbench94", /*seed=*/11, /*steps=*/60);
  const fs::path model = dir_->path() / "airbench94.onnx";
  KILN_ASSERT_OK(exporter::ExportOnnx(ckpt, {}, model));
  const int64_t n = 200;
  const auto images = Normalized(testing::SharedDataset().test, 0, n, &ckpt.meta.normalization);
  const auto ort = Logits("onnxruntime", model, images, n, 50);
  const auto ov = Logits("openvino", model, images, n, 50);
  ASSERT_EQ(ort.size(), ov.size());
  const Diff d = Compare(ort, ov, 10);
  EXPECT_LE(d.max_abs, 1e-4f * std::max(1.0f, d.max_logit));
  EXPECT_EQ(d.top1_agreement, 1.0);
  std::cout << "airbench94 FP32 OpenVINO vs ONNX Runtime on " << n << " test images: max |diff| "
            << d.max_abs << " (max |logit| " << d.max_logit << ")\n";
}

TEST_F(OpenVinoTest, Int8QdqMatchesOnnxRuntimeWithinQuantizationSteps) {
  const int64_t n = 500;
  const auto images = Normalized(testing::SharedDataset().test, 0, n);
  const auto ort = Logits("onnxruntime", Int8(), images, n, 100);
  const auto ov = Logits("openvino", Int8(), images, n, 100);
  ASSERT_EQ(ort.size(), ov.size());
  const Diff d = Compare(ort, ov, 10);
  EXPECT_LE(d.max_abs, 0.04f * d.max_logit);
  EXPECT_GE(d.top1_agreement, 0.97);
  std::cout << "INT8 OpenVINO vs ONNX Runtime on " << n << " test images: max |diff| " << d.max_abs
            << " (max |logit| " << d.max_logit << "), top-1 agreement " << d.top1_agreement << "\n";
}

// Every batch size from one compiled model (the batch dimension stays dynamic), and the same
// answers however the work is split: threads, the THROUGHPUT hint, explicit streams (a batch
// split between streams).
TEST_F(OpenVinoTest, BatchSizesThreadsHintsAndStreamsGiveTheSameLogits) {
  const int64_t n = 37;  // not a multiple of the streams
  const auto images = Normalized(testing::SharedDataset().test, 100, n);
  const auto base = Logits("openvino", Fp32(), images, n, n);
  for (int64_t batch : {1, 5, 16}) {
    EXPECT_LE(Compare(base, Logits("openvino", Fp32(), images, n, batch), 10).max_abs, 1e-5f)
        << "batch " << batch;
  }
  BackendOptions one;
  one.intra_op_threads = 1;
  EXPECT_LE(Compare(base, Logits("openvino", Fp32(), images, n, n, one), 10).max_abs, 1e-5f);
  BackendOptions throughput;
  throughput.performance_hint = "THROUGHPUT";
  EXPECT_LE(Compare(base, Logits("openvino", Fp32(), images, n, n, throughput), 10).max_abs, 1e-5f);
  BackendOptions streams;
  streams.streams = 3;
  EXPECT_LE(Compare(base, Logits("openvino", Fp32(), images, n, n, streams), 10).max_abs, 1e-5f);
}

// Kiln's settings are the ones the plugin compiled with; with runtime_defaults no property is
// set (the options' threads are ignored) and the plugin's own defaults hold, as OpenVINO's Core
// reports them for the CPU device.
TEST_F(OpenVinoTest, SettingsAreKilnsUnlessTheRuntimeDefaultsAreAsked) {
  BackendOptions kiln;
  kiln.model_path = Fp32();
  kiln.intra_op_threads = 1;
  auto engine = CreateBackend("openvino", kiln);
  KILN_ASSERT_OK(engine.status());
  auto s = (*engine)->settings();
  EXPECT_EQ(s["inference_num_threads"], "1");
  EXPECT_EQ(s["inference_precision"], "f32");
  EXPECT_EQ(s["enable_cpu_pinning"], "false");
  EXPECT_EQ(s["performance_hint"], "LATENCY");
  EXPECT_EQ(s["num_streams"], "1");

  BackendOptions defaults = kiln;
  defaults.runtime_defaults = true;
  auto peer = CreateBackend("openvino", defaults);
  KILN_ASSERT_OK(peer.status());
  s = (*peer)->settings();
  ov::Core core;
  std::ostringstream hint;
  hint << core.get_property("CPU", ov::hint::performance_mode);
  EXPECT_EQ(s["performance_hint"], hint.str());
  EXPECT_EQ(s["inference_precision"],
            core.get_property("CPU", ov::hint::inference_precision).get_type_name());
  EXPECT_EQ(s["enable_cpu_pinning"],
            core.get_property("CPU", ov::hint::enable_cpu_pinning) ? "true" : "false");
  // The device's default thread count is 0, "the plugin decides when it compiles".
  const int32_t threads = core.get_property("CPU", ov::inference_num_threads);
  if (threads > 0) {
    EXPECT_EQ(s["inference_num_threads"], std::to_string(threads));
  } else {
    EXPECT_GE(std::stoi(s["inference_num_threads"]), 1);
  }
}

TEST_F(OpenVinoTest, ShapesAndKilnMetadataComeFromTheOnnxFile) {
  BackendOptions bo;
  bo.model_path = Fp32().string();
  auto e = CreateBackend("openvino", bo);
  KILN_ASSERT_RESULT_OK(e);
  EXPECT_EQ((*e)->name(), "openvino");
  ASSERT_EQ((*e)->inputs().size(), 1u);
  EXPECT_EQ((*e)->inputs()[0].name, "input");
  EXPECT_EQ((*e)->inputs()[0].shape, (std::vector<int64_t>{-1, 3, 32, 32}));
  EXPECT_EQ((*e)->outputs()[0].name, "logits");
  EXPECT_EQ((*e)->outputs()[0].shape, (std::vector<int64_t>{-1, 10}));
  EXPECT_TRUE((*e)->capabilities().dynamic_batch);
  // The same metadata ONNX Runtime reports, read by the one reader of Kiln's keys.
  bo.model_path = Int8().string();
  auto ort = CreateBackend("onnxruntime", bo);
  auto ov = CreateBackend("openvino", bo);
  KILN_ASSERT_RESULT_OK(ort);
  KILN_ASSERT_RESULT_OK(ov);
  EXPECT_EQ((*ov)->metadata(), (*ort)->metadata());
  auto meta = ReadKilnMetadata((*ov)->metadata(), bo.model_path);
  KILN_ASSERT_RESULT_OK(meta);
  EXPECT_EQ(meta->labels.size(), 10u);
  EXPECT_EQ(meta->mean, norm_->mean);
  auto version = OpenVinoVersion();
  KILN_ASSERT_RESULT_OK(version);
  EXPECT_EQ(version->rfind("2026.", 0), 0u) << *version;
}

TEST_F(OpenVinoTest, FailuresAreStatusesNotExceptions) {
  BackendOptions bo;
  bo.model_path = (dir_->path() / "missing.onnx").string();
  auto missing = CreateBackend("openvino", bo);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  const fs::path junk = dir_->path() / "junk.onnx";
  std::ofstream(junk) << "not a model";
  bo.model_path = junk.string();
  auto bad = CreateBackend("openvino", bo);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("OpenVINO cannot load the model"), std::string::npos)
      << bad.status().ToString();
  bo.model_path = Fp32().string();
  bo.performance_hint = "FASTEST";
  EXPECT_EQ(CreateBackend("openvino", bo).status().code(), StatusCode::kInvalidArgument);
  bo.performance_hint = "LATENCY";
  bo.inference_precision = "int4";
  EXPECT_EQ(CreateBackend("openvino", bo).status().code(), StatusCode::kInvalidArgument);
  bo.inference_precision = "f32";
  auto e = CreateBackend("openvino", bo);
  KILN_ASSERT_RESULT_OK(e);
  std::vector<float> in(3 * 32 * 32), out(10);
  EXPECT_EQ((*e)->Run(in.data(), 0, out.data()).code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kiln::backend
