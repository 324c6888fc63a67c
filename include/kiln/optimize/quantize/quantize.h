// INT8 quantization of ONNX graphs, written by Kiln on the graph itself.
//
// Static (post-training, QDQ format): activations get QuantizeLinear -> DequantizeLinear pairs
// with scales from calibration; Conv/Gemm weights are stored as per-channel symmetric INT8 with
// a DequantizeLinear, biases as INT32 (scale = input scale x weight scale). ONNX Runtime fuses
// DQ -> Conv -> Q into QLinearConv, DQ -> Add -> Q into QLinearAdd, DQ -> Gemm into QGemm and
// runs MaxPool on the 8-bit tensor. A Relu right after a Conv/Gemm is dropped: its output
// is quantized with zero point = the type's minimum, so the quantizer's saturation is the ReLU.
//
//   KILN_ASSIGN_OR_RETURN(auto ranges, Calibrate(model, images, n, opts, &std::cerr));
//   KILN_ASSIGN_OR_RETURN(auto q, QuantizeStatic(model, ranges, opts));
//
// Activation type: UINT8 by default. x86 integer kernels (AVX-512 VNNI vpdpbusd, AVX2
// vpmaddubsw) multiply unsigned 8-bit activations by signed 8-bit weights, which is ONNX
// Runtime's fastest CPU path (U8S8); and most activations follow a ReLU, so an unsigned range
// [0, max] uses all 256 levels where a symmetric INT8 range would waste the sign bit.
//
// Dynamic: the reference project's approach. Gemm/MatMul weights become INT8 and the
// activations are quantized at run time (DynamicQuantizeLinear + MatMulInteger); convolutions
// stay FP32 — which is why it gains almost nothing on a CNN, whose time is in its convolutions.
#pragma once

#include <onnx/onnx_pb.h>

#include <iosfwd>
#include <map>
#include <string>
#include <vector>

#include "kiln/core/status.h"

namespace kiln::optimize {

enum class CalibrationMethod { kMinMax, kPercentile, kEntropy };
Result<CalibrationMethod> ParseCalibrationMethod(const std::string& name);  // minmax|percentile|entropy
std::string CalibrationMethodName(CalibrationMethod m);

struct QuantizeOptions {
  CalibrationMethod method = CalibrationMethod::kPercentile;
  double percentile = 99.99;     // kPercentile: share of values kept inside the range, in %
  bool uint8_activations = true;  // false: INT8 activations (symmetric; ReLU outputs [0, max])
  int64_t batch_size = 64;        // calibration batch
  int threads = 2;
  int64_t histogram_bins = 2048;

  Status Validate() const;
};

// Scale and zero point of one tensor: real = scale * (q - zero_point).
struct QuantParams {
  float scale = 1.0f;
  int32_t zero_point = 0;
};

// Activation parameters for the range [min, max] (always widened to include 0, so that zero is
// exact). UINT8: asymmetric, scale = (max - min) / 255, zero point = round(-min / scale).
// INT8: symmetric, scale = max(|min|, |max|) / 127, zero point 0. A degenerate range gives
// scale 1.
QuantParams ActivationParams(float min, float max, bool uint8);

// Parameters of a tensor that follows a ReLU: [0, max] over all 256 levels, zero point at the
// type's minimum (0 for UINT8, -128 for INT8).
QuantParams ReluParams(float max, bool uint8);

// Per-channel symmetric INT8 weight scales: max |w| / 127 of each of `channels` rows of
// `per_channel` values (scale 1 for an all-zero row).
std::vector<float> WeightScales(const float* w, int64_t channels, int64_t per_channel);

struct TensorRange {
  float min = 0.0f;
  float max = 0.0f;
};
using TensorRanges = std::map<std::string, TensorRange>;

// Runs the float model on `count` images (float32, already normalized, `sample_elements` each)
// and returns the range chosen by `options.method` for every float activation tensor.
Result<TensorRanges> Calibrate(const onnx::ModelProto& model, const float* images, int64_t count,
                               int64_t sample_elements, const QuantizeOptions& options,
                               std::ostream* progress);

// The range a calibration method picks from a histogram of `bins` equal bins over [lo, hi]
// (exposed for tests). kMinMax returns [lo, hi]; kPercentile cuts (100 - p)% of the values
// (split between both tails for a signed range); kEntropy minimizes the KL divergence between
// the clipped and the quantized distribution over a histogram of |x| (lo must then be 0).
TensorRange RangeFromHistogram(const std::vector<double>& bins, float lo, float hi,
                               CalibrationMethod method, double percentile, int levels);

struct QuantizeReport {
  int64_t quantized_tensors = 0;  // activation tensors with a Q/DQ pair
  int64_t quantized_weights = 0;  // weight initializers stored as INT8
  int64_t removed_relus = 0;
  std::vector<std::string> float_nodes;  // nodes left without quantized inputs
};

// Static QDQ quantization of a float model (opset >= 13) with calibrated `ranges`.
Result<onnx::ModelProto> QuantizeStatic(const onnx::ModelProto& model, const TensorRanges& ranges,
                                        const QuantizeOptions& options,
                                        QuantizeReport* report = nullptr);

// Dynamic quantization of Gemm/MatMul weights (per output channel, symmetric INT8).
Result<onnx::ModelProto> QuantizeDynamic(const onnx::ModelProto& model,
                                         QuantizeReport* report = nullptr);

}  // namespace kiln::optimize
