// Quantization parameters checked by hand, and a tiny graph quantized end to end.
#include "kiln/optimize/quantize/quantize.h"

#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include <cmath>
#include <cstring>
#include <fstream>

#include "../onnx_value_info.h"
#include "../test_models.h"
#include "kiln/data/loader.h"
#include "kiln/export/onnx_export.h"
#include "kiln/backend/factory/factory.h"
#include "kiln/backend/inference_backend.h"
#include "kiln/optimize/quantize/onnx_graph.h"
#include "../test_util.h"

namespace kiln::optimize {
namespace {

TEST(QuantParamsTest, Uint8AsymmetricByHand) {
  // [-1, 3]: 4 / 255 per level; zero sits at 1 / (4 / 255) = 63.75 -> 64.
  QuantParams p = ActivationParams(-1.0f, 3.0f, /*uint8=*/true);
  EXPECT_FLOAT_EQ(p.scale, 4.0f / 255.0f);
  EXPECT_EQ(p.zero_point, 64);
  // A range that excludes zero is widened to include it: [0.5, 2] -> [0, 2].
  p = ActivationParams(0.5f, 2.0f, true);
  EXPECT_FLOAT_EQ(p.scale, 2.0f / 255.0f);
  EXPECT_EQ(p.zero_point, 0);
  p = ActivationParams(-3.0f, -1.0f, true);
  EXPECT_FLOAT_EQ(p.scale, 3.0f / 255.0f);
  EXPECT_EQ(p.zero_point, 255);
  // Degenerate range: scale 1 (no division by zero).
  p = ActivationParams(0.0f, 0.0f, true);
  EXPECT_FLOAT_EQ(p.scale, 1.0f);
}

TEST(QuantParamsTest, Int8SymmetricAndReluByHand) {
  QuantParams p = ActivationParams(-2.0f, 1.0f, /*uint8=*/false);
  EXPECT_FLOAT_EQ(p.scale, 2.0f / 127.0f);
  EXPECT_EQ(p.zero_point, 0);
  p = ReluParams(5.1f, true);
  EXPECT_FLOAT_EQ(p.scale, 0.02f);
  EXPECT_EQ(p.zero_point, 0);
  p = ReluParams(5.1f, false);
  EXPECT_FLOAT_EQ(p.scale, 0.02f);
  EXPECT_EQ(p.zero_point, -128);
}

TEST(QuantParamsTest, PerChannelWeightScales) {
  const float w[] = {1.0f, -2.0f, 0.5f, 0.0f, 0.0f, 0.0f, 0.25f, 0.1f, -0.2f};
  std::vector<float> s = WeightScales(w, 3, 3);
  ASSERT_EQ(s.size(), 3u);
  EXPECT_FLOAT_EQ(s[0], 2.0f / 127.0f);
  EXPECT_FLOAT_EQ(s[1], 1.0f);  // all-zero row
  EXPECT_FLOAT_EQ(s[2], 0.25f / 127.0f);
}

TEST(QuantParamsTest, CalibrationRangesFromHistograms) {
  // 1,000 values in bin 0..9 of 100 bins over [0, 100], one outlier in the last bin.
  std::vector<double> bins(100, 0.0);
  for (int i = 0; i < 10; ++i) bins[static_cast<size_t>(i)] = 100;
  bins[99] = 1;
  TensorRange mm = RangeFromHistogram(bins, 0, 100, CalibrationMethod::kMinMax, 99.99, 255);
  EXPECT_FLOAT_EQ(mm.max, 100.0f);
  // 99.9% keeps everything but the outlier (1 of 1001 values is 0.0999%).
  TensorRange pct = RangeFromHistogram(bins, 0, 100, CalibrationMethod::kPercentile, 99.9, 255);
  EXPECT_FLOAT_EQ(pct.min, 0.0f);
  EXPECT_FLOAT_EQ(pct.max, 10.0f);
  // Signed range: the cut is split between both tails.
  std::vector<double> sbins(100, 1.0);
  TensorRange s = RangeFromHistogram(sbins, -50, 50, CalibrationMethod::kPercentile, 98.0, 128);
  EXPECT_FLOAT_EQ(s.min, -49.0f);
  EXPECT_FLOAT_EQ(s.max, 49.0f);
  // Entropy: a histogram that 16 levels reproduce exactly (empty bins do not count) keeps its
  // full range; a long exponential tail is clipped, but not into the bulk.
  TensorRange exact = RangeFromHistogram(bins, 0, 100, CalibrationMethod::kEntropy, 0, 16);
  EXPECT_FLOAT_EQ(exact.max, 100.0f);
  std::vector<double> tail(100);
  for (size_t k = 0; k < tail.size(); ++k) tail[k] = std::floor(1e6 * std::exp(-0.1 * k));
  TensorRange kl = RangeFromHistogram(tail, 0, 100, CalibrationMethod::kEntropy, 0, 16);
  EXPECT_LT(kl.max, 100.0f);
  EXPECT_GT(kl.max, 16.0f);
}

// A float initializer from a vector.
void AddFloat(onnx::GraphProto* g, const std::string& name, const std::vector<int64_t>& dims,
              const std::vector<float>& v) {
  auto* t = g->add_initializer();
  t->set_name(name);
  t->set_data_type(onnx::TensorProto::FLOAT);
  for (int64_t d : dims) t->add_dims(d);
  t->set_raw_data(std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float)));
}

// x [N,1,2,2] -> Conv 1x1 (w = {0.5, -1}, b = {0.1, 0.2}) -> Relu -> MaxPool 2x2 -> Flatten
// -> Gemm (2x2 identity) -> y [N,2].
onnx::ModelProto TinyModel() {
  onnx::ModelProto m;
  m.set_ir_version(8);
  auto* op = m.add_opset_import();
  op->set_domain("");
  op->set_version(17);
  auto* g = m.mutable_graph();
  g->set_name("tiny");
  ::kiln::testing::SetFloatTensorType(g->add_input(), "x", {-1, 1, 2, 2});
  ::kiln::testing::SetFloatTensorType(g->add_output(), "y", {-1, 2});
  AddFloat(g, "w", {2, 1, 1, 1}, {0.5f, -1.0f});
  AddFloat(g, "b", {2}, {0.1f, 0.2f});
  AddFloat(g, "fc", {2, 2}, {1, 0, 0, 1});
  auto node = [&](const std::string& type, std::vector<std::string> in, const std::string& out) {
    auto* n = g->add_node();
    n->set_op_type(type);
    n->set_name(out + "/" + type);
    for (auto& i : in) n->add_input(i);
    n->add_output(out);
    return n;
  };
  node("Conv", {"x", "w", "b"}, "conv");
  node("Relu", {"conv"}, "relu");
  auto* pool = node("MaxPool", {"relu"}, "pool");
  for (const char* name : {"kernel_shape", "strides"}) {
    auto* a = pool->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::INTS);
    a->add_ints(2);
    a->add_ints(2);
  }
  node("Flatten", {"pool"}, "flat");
  auto* gemm = node("Gemm", {"flat", "fc"}, "y");
  auto* a = gemm->add_attribute();
  a->set_name("transB");
  a->set_type(onnx::AttributeProto::INT);
  a->set_i(1);
  return m;
}

const onnx::TensorProto* Init(const onnx::ModelProto& m, const std::string& name) {
  for (const auto& t : m.graph().initializer()) {
    if (t.name() == name) return &t;
  }
  return nullptr;
}

template <typename T>
std::vector<T> Values(const onnx::TensorProto* t) {
  std::vector<T> v(t->raw_data().size() / sizeof(T));
  std::memcpy(v.data(), t->raw_data().data(), t->raw_data().size());
  return v;
}

TEST(QuantizeStaticTest, TinyGraphHasHandComputedParameters) {
  const onnx::ModelProto model = TinyModel();
  KILN_ASSERT_OK(CheckOnnx(model));
  // Two calibration images spanning exactly [-1, 3].
  const std::vector<float> images = {-1.0f, 0.0f, 1.0f, 3.0f, 0.5f, 2.0f, -0.5f, 1.5f};
  QuantizeOptions opt;
  opt.method = CalibrationMethod::kMinMax;
  auto ranges = Calibrate(model, images.data(), 2, 4, opt, nullptr);
  KILN_ASSERT_OK(ranges.status());
  EXPECT_FLOAT_EQ(ranges->at("x").min, -1.0f);
  EXPECT_FLOAT_EQ(ranges->at("x").max, 3.0f);
  // relu = max(0, 0.5 x + 0.1 | -x + 0.2): largest 0.5 * 3 + 0.1 = 1.6.
  EXPECT_NEAR(ranges->at("relu").max, 1.6f, 1e-6);

  QuantizeReport rep;
  auto q = QuantizeStatic(model, *ranges, opt, &rep);
  KILN_ASSERT_OK(q.status());
  KILN_ASSERT_OK(CheckOnnx(*q));
  EXPECT_EQ(rep.removed_relus, 1);
  EXPECT_EQ(rep.quantized_weights, 2);  // conv and gemm weights
  EXPECT_TRUE(rep.float_nodes.empty());

  // Input: [-1, 3] -> scale 4/255, zero point 64.
  ASSERT_NE(Init(*q, "x_scale"), nullptr);
  EXPECT_FLOAT_EQ(Values<float>(Init(*q, "x_scale"))[0], 4.0f / 255.0f);
  EXPECT_EQ(Values<uint8_t>(Init(*q, "x_zero_point"))[0], 64);
  // ReLU folded: its output [0, 1.6] -> scale 1.6/255, zero point 0.
  EXPECT_NEAR(Values<float>(Init(*q, "relu_scale"))[0], 1.6f / 255.0f, 1e-8);
  EXPECT_EQ(Values<uint8_t>(Init(*q, "relu_zero_point"))[0], 0);
  // MaxPool and Flatten keep the ReLU's grid.
  EXPECT_FLOAT_EQ(Values<float>(Init(*q, "pool_scale"))[0], Values<float>(Init(*q, "relu_scale"))[0]);
  // Conv weights per channel: scales 0.5/127 and 1/127, values +127 and -127.
  const auto ws = Values<float>(Init(*q, "w_scale"));
  ASSERT_EQ(ws.size(), 2u);
  EXPECT_FLOAT_EQ(ws[0], 0.5f / 127.0f);
  EXPECT_FLOAT_EQ(ws[1], 1.0f / 127.0f);
  EXPECT_EQ(Values<int8_t>(Init(*q, "w_quantized")), (std::vector<int8_t>{127, -127}));
  // Bias INT32 with scale x_scale * w_scale: 0.1 / (4/255 * 0.5/127) = 1619.3 -> 1619.
  const auto bq = Values<int32_t>(Init(*q, "b_quantized"));
  ASSERT_EQ(bq.size(), 2u);
  EXPECT_EQ(bq[0], static_cast<int32_t>(std::nearbyint(0.1 / ((4.0 / 255.0) * (0.5 / 127.0)))));
  EXPECT_EQ(bq[1], static_cast<int32_t>(std::nearbyint(0.2 / ((4.0 / 255.0) * (1.0 / 127.0)))));
  // The float weights are gone; no Relu node is left.
  EXPECT_EQ(Init(*q, "w"), nullptr);
  EXPECT_EQ(CountOperators(*q).count("Relu"), 0u);

  // ONNX Runtime loads it and computes what the float model computes, within quantization error.
  testing::TempDir dir;
  KILN_ASSERT_OK(SaveOnnx(model, dir.path() / "f.onnx"));
  KILN_ASSERT_OK(SaveOnnx(*q, dir.path() / "q.onnx"));
  backend::BackendOptions bo;
  bo.model_path = (dir.path() / "f.onnx").string();
  auto f = backend::CreateBackend("onnxruntime", bo);
  KILN_ASSERT_OK(f.status());
  bo.model_path = (dir.path() / "q.onnx").string();
  auto i8 = backend::CreateBackend("onnxruntime", bo);
  KILN_ASSERT_OK(i8.status());
  std::vector<float> yf(4), yq(4);
  KILN_ASSERT_OK((*f)->Run(images.data(), 2, yf.data()));
  KILN_ASSERT_OK((*i8)->Run(images.data(), 2, yq.data()));
  for (size_t k = 0; k < 4; ++k) EXPECT_NEAR(yq[k], yf[k], 2 * 1.6 / 255) << k;
}

TEST(QuantizeDynamicTest, ReplacesGemmWeightsOnly) {
  const onnx::ModelProto model = TinyModel();
  QuantizeReport rep;
  auto q = QuantizeDynamic(model, &rep);
  KILN_ASSERT_OK(q.status());
  KILN_ASSERT_OK(CheckOnnx(*q));
  EXPECT_EQ(rep.quantized_weights, 1);
  auto ops = CountOperators(*q);
  EXPECT_EQ(ops["MatMulInteger"], 1);
  EXPECT_EQ(ops["DynamicQuantizeLinear"], 1);
  EXPECT_EQ(ops["Conv"], 1);  // convolutions stay float: why dynamic INT8 gains little on a CNN
  EXPECT_EQ(ops.count("Gemm"), 0u);
}

TEST(QuantizeStaticTest, RejectsOldOpsets) {
  onnx::ModelProto model = TinyModel();
  model.mutable_opset_import(0)->set_version(11);
  auto q = QuantizeStatic(model, {}, QuantizeOptions{});
  EXPECT_FALSE(q.ok());
  EXPECT_NE(q.status().message().find("opset"), std::string::npos);
}

TEST(OnnxGraphTest, FlopsAndParametersOfTinyGraph) {
  const onnx::ModelProto model = TinyModel();
  auto flops = FlopsPerSample(model);
  KILN_ASSERT_OK(flops.status());
  // Conv: 2 x (2 channels x 2 x 2 outputs) x (1 x 1 x 1); Gemm: 2 x 2 outputs x 2 inputs.
  EXPECT_EQ(*flops, 2 * 8 * 1 + 2 * 2 * 2);
  EXPECT_EQ(CountParameters(model), 2 + 2 + 4);
}

TEST(OnnxGraphTest, LoadRejectsGarbage) {
  testing::TempDir dir;
  const auto file = dir.path() / "bad.onnx";
  std::ofstream(file) << "this is not a protobuf";
  auto m = LoadOnnx(file);
  EXPECT_FALSE(m.ok());
  EXPECT_EQ(LoadOnnx(dir.path() / "missing.onnx").status().code(), StatusCode::kNotFound);
}

// airbench94 (reduced width, flip test-time augmentation in the graph): every convolution and
// the head get INT8 weights and quantized inputs, while the GELUs and the views stay float; ONNX
// Runtime runs the result and it agrees with the float model.
TEST(QuantizeStaticTest, AirbenchQuantizesEveryConvolution) {
  train::Checkpoint ckpt = testing::SmallTrainedModel("airbench94", /*seed=*/11, /*steps=*/60);
  auto bytes = exporter::BuildOnnxModel(ckpt, {});
  KILN_ASSERT_RESULT_OK(bytes);
  onnx::ModelProto fp32;
  ASSERT_TRUE(fp32.ParseFromString(*bytes));
  const auto normalized = [&](const data::ImageSet& set, int64_t n) {
    std::vector<float> x(static_cast<size_t>(n * set.image_bytes()));
    for (int64_t i = 0; i < n; ++i) {
      data::NormalizeImage(set.image(i), set.channels, set.height * set.width,
                           ckpt.meta.normalization, x.data() + i * set.image_bytes());
    }
    return x;
  };
  const std::vector<float> calib = normalized(testing::SharedDataset().train, 256);
  QuantizeOptions qo;
  auto ranges = Calibrate(fp32, calib.data(), 256, 3072, qo, nullptr);
  KILN_ASSERT_RESULT_OK(ranges);
  QuantizeReport rep;
  auto int8 = QuantizeStatic(fp32, *ranges, qo, &rep);
  KILN_ASSERT_RESULT_OK(int8);
  EXPECT_EQ(rep.quantized_weights, 8);  // whiten, six block convolutions, the head
  for (const std::string& n : rep.float_nodes) EXPECT_EQ(n.find("Conv"), std::string::npos) << n;
  int erf = 0;
  for (const auto& n : int8->graph().node()) erf += n.op_type() == "Erf" ? 1 : 0;
  EXPECT_EQ(erf, 7);  // the GELUs are still there, in float

  testing::TempDir dir;
  std::vector<std::vector<float>> logits;
  const int64_t n = 500;
  const std::vector<float> images = normalized(testing::SharedDataset().test, n);
  for (const onnx::ModelProto* m : {&fp32, &*int8}) {
    const std::string file = (dir.path() / (m == &fp32 ? "fp32.onnx" : "int8.onnx")).string();
    KILN_ASSERT_OK(SaveOnnx(*m, file));
    backend::BackendOptions bo;
    bo.model_path = file;
    auto engine = backend::CreateBackend("onnxruntime", bo);
    KILN_ASSERT_RESULT_OK(engine);
    std::vector<float> y(static_cast<size_t>(n * 10));
    KILN_ASSERT_OK((*engine)->Run(images.data(), n, y.data()));
    logits.push_back(std::move(y));
  }
  int64_t same = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float* a = logits[0].data() + i * 10;
    const float* b = logits[1].data() + i * 10;
    same += (std::max_element(a, a + 10) - a) == (std::max_element(b, b + 10) - b) ? 1 : 0;
  }
  const double agreement = static_cast<double>(same) / static_cast<double>(n);
  std::cout << "airbench94 INT8 vs FP32 top-1 agreement on " << n << " test images: " << agreement
            << "\n";
  EXPECT_GE(agreement, 0.95);
}

}  // namespace
}  // namespace kiln::optimize
