#include "kiln/optimize/quantize/quantize.h"

#include <onnx/shape_inference/implementation.h>

#include <algorithm>
#include <functional>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <ostream>
#include <set>

#include "kiln/backend/onnxruntime/onnxruntime_backend.h"
#include "kiln/core/progress.h"
#include "kiln/optimize/quantize/onnx_graph.h"

namespace kiln::optimize {

namespace {

const onnx::TensorProto* FindInitializer(const onnx::GraphProto& g, const std::string& name) {
  for (const auto& init : g.initializer()) {
    if (init.name() == name) return &init;
  }
  return nullptr;
}

std::optional<std::vector<float>> FloatData(const onnx::TensorProto& t) {
  if (t.data_type() != onnx::TensorProto::FLOAT) return std::nullopt;
  int64_t n = 1;
  for (int64_t d : t.dims()) n *= d;
  std::vector<float> out(static_cast<size_t>(n));
  if (t.has_raw_data()) {
    if (t.raw_data().size() != out.size() * sizeof(float)) return std::nullopt;
    std::memcpy(out.data(), t.raw_data().data(), t.raw_data().size());
  } else {
    if (t.float_data_size() != n) return std::nullopt;
    std::copy(t.float_data().begin(), t.float_data().end(), out.begin());
  }
  return out;
}

template <typename T>
void AddInitializer(onnx::GraphProto* g, const std::string& name, int data_type,
                    const std::vector<int64_t>& dims, const std::vector<T>& values) {
  onnx::TensorProto* t = g->add_initializer();
  t->set_name(name);
  t->set_data_type(data_type);
  for (int64_t d : dims) t->add_dims(d);
  t->set_raw_data(std::string(reinterpret_cast<const char*>(values.data()),
                              values.size() * sizeof(T)));
}

onnx::NodeProto MakeNode(const std::string& op, const std::vector<std::string>& inputs,
                         const std::vector<std::string>& outputs, const std::string& name,
                         const std::string& domain = "") {
  onnx::NodeProto n;
  n.set_op_type(op);
  n.set_name(name);
  if (!domain.empty()) n.set_domain(domain);
  for (const auto& i : inputs) n.add_input(i);
  for (const auto& o : outputs) n.add_output(o);
  return n;
}

void SetIntAttr(onnx::NodeProto* n, const std::string& name, int64_t v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INT);
  a->set_i(v);
}

int64_t IntAttr(const onnx::NodeProto& n, const std::string& name, int64_t fallback) {
  for (const auto& a : n.attribute()) {
    if (a.name() == name) return a.i();
  }
  return fallback;
}

float FloatAttr(const onnx::NodeProto& n, const std::string& name, float fallback) {
  for (const auto& a : n.attribute()) {
    if (a.name() == name) return a.f();
  }
  return fallback;
}

// Per-channel symmetric INT8 quantization of `w` (dims `dims`) along `axis` (-1: per tensor).
struct QuantizedWeight {
  std::vector<int8_t> values;
  std::vector<float> scales;
};
QuantizedWeight QuantizeWeight(const std::vector<float>& w, const std::vector<int64_t>& dims,
                               int axis) {
  int64_t channels = 1;
  int64_t inner = 1;
  if (axis >= 0) {
    channels = dims[static_cast<size_t>(axis)];
    for (size_t d = static_cast<size_t>(axis) + 1; d < dims.size(); ++d) inner *= dims[d];
  }
  auto channel_of = [&](size_t i) {
    return axis < 0 ? 0 : static_cast<size_t>((static_cast<int64_t>(i) / inner) % channels);
  };
  std::vector<float> amax(static_cast<size_t>(channels), 0.0f);
  for (size_t i = 0; i < w.size(); ++i) amax[channel_of(i)] = std::max(amax[channel_of(i)], std::fabs(w[i]));
  QuantizedWeight q;
  for (float a : amax) q.scales.push_back(a > 0 ? a / 127.0f : 1.0f);
  q.values.resize(w.size());
  for (size_t i = 0; i < w.size(); ++i) {
    const float v = std::nearbyint(w[i] / q.scales[channel_of(i)]);
    q.values[i] = static_cast<int8_t>(std::clamp(v, -127.0f, 127.0f));
  }
  return q;
}

std::vector<int64_t> DimsOf(const onnx::TensorProto& t) {
  return std::vector<int64_t>(t.dims().begin(), t.dims().end());
}

// Makes `nodes` the graph's nodes, drops the float originals of quantized weights (`replaced`)
// that nothing reads any more, and clears value_info (shapes of renamed values are stale).
void ReplaceNodes(onnx::GraphProto* g, std::vector<onnx::NodeProto> nodes,
                  const std::set<std::string>& replaced) {
  g->clear_node();
  for (auto& n : nodes) *g->add_node() = std::move(n);
  std::set<std::string> used;
  for (const auto& n : g->node()) {
    for (const auto& in : n.input()) used.insert(in);
  }
  auto* list = g->mutable_initializer();
  list->erase(std::remove_if(list->begin(), list->end(),
                             [&](const onnx::TensorProto& t) {
                               return replaced.count(t.name()) && !used.count(t.name());
                             }),
              list->end());
  g->clear_value_info();
}

const std::set<std::string> kComputeOps = {"Conv", "Gemm", "MatMul", "Add", "Relu"};
const std::set<std::string> kPassThroughOps = {"MaxPool",   "GlobalMaxPool", "Flatten", "Reshape",
                                               "Transpose", "Squeeze",       "Unsqueeze"};

}  // namespace

Result<CalibrationMethod> ParseCalibrationMethod(const std::string& name) {
  if (name == "minmax") return CalibrationMethod::kMinMax;
  if (name == "percentile") return CalibrationMethod::kPercentile;
  if (name == "entropy") return CalibrationMethod::kEntropy;
  return InvalidArgumentError("unknown calibration method '" + name +
                              "' (minmax, percentile, entropy)");
}

std::string CalibrationMethodName(CalibrationMethod m) {
  switch (m) {
    case CalibrationMethod::kMinMax:
      return "minmax";
    case CalibrationMethod::kPercentile:
      return "percentile";
    case CalibrationMethod::kEntropy:
      return "entropy";
  }
  return "?";
}

Status QuantizeOptions::Validate() const {
  if (!(percentile > 50.0 && percentile <= 100.0)) {
    return InvalidArgumentError("percentile must be in (50, 100]");
  }
  if (batch_size < 1) return InvalidArgumentError("calibration batch size must be positive");
  if (threads < 1) return InvalidArgumentError("threads must be positive");
  if (histogram_bins < 256 || histogram_bins > (1 << 16)) {
    return InvalidArgumentError("histogram bins must be in [256, 65536]");
  }
  return Status::Ok();
}

QuantParams ActivationParams(float min, float max, bool uint8) {
  min = std::min(min, 0.0f);
  max = std::max(max, 0.0f);
  QuantParams p;
  if (uint8) {
    if (max - min <= 0) return p;
    p.scale = (max - min) / 255.0f;
    p.zero_point = static_cast<int32_t>(std::clamp(std::nearbyint(-min / p.scale), 0.0f, 255.0f));
  } else {
    const float a = std::max(-min, max);
    if (a <= 0) return p;
    p.scale = a / 127.0f;
    p.zero_point = 0;
  }
  return p;
}

QuantParams ReluParams(float max, bool uint8) {
  QuantParams p;
  if (max > 0) p.scale = max / 255.0f;
  p.zero_point = uint8 ? 0 : -128;
  return p;
}

std::vector<float> WeightScales(const float* w, int64_t channels, int64_t per_channel) {
  std::vector<float> v(w, w + channels * per_channel);
  return QuantizeWeight(v, {channels, per_channel}, 0).scales;
}

TensorRange RangeFromHistogram(const std::vector<double>& bins, float lo, float hi,
                               CalibrationMethod method, double percentile, int levels) {
  const auto n = static_cast<int64_t>(bins.size());
  if (method == CalibrationMethod::kMinMax || n == 0 || hi <= lo) return {lo, hi};
  const double width = (static_cast<double>(hi) - lo) / static_cast<double>(n);
  double total = 0;
  for (double b : bins) total += b;
  if (total <= 0) return {lo, hi};
  if (method == CalibrationMethod::kPercentile) {
    const bool signed_range = lo < 0;
    const double cut = total * (100.0 - percentile) / 100.0 / (signed_range ? 2.0 : 1.0);
    int64_t top = n - 1;
    double above = 0;
    while (top > 0 && above + bins[static_cast<size_t>(top)] <= cut) above += bins[static_cast<size_t>(top--)];
    int64_t bottom = 0;
    if (signed_range) {
      double below = 0;
      while (bottom < top && below + bins[static_cast<size_t>(bottom)] <= cut) below += bins[static_cast<size_t>(bottom++)];
    }
    return {signed_range ? static_cast<float>(lo + static_cast<double>(bottom) * width) : lo,
            static_cast<float>(lo + static_cast<double>(top + 1) * width)};
  }
  // Entropy (KL divergence), TensorRT-style, on a histogram of |x| over [0, hi].
  if (n <= levels) return {lo, hi};
  double best_kl = std::numeric_limits<double>::infinity();
  int64_t best_i = n;
  std::vector<double> p;
  std::vector<double> q;
  for (int64_t i = levels; i <= n; ++i) {
    p.assign(bins.begin(), bins.begin() + i);
    double outliers = 0;
    for (int64_t k = i; k < n; ++k) outliers += bins[static_cast<size_t>(k)];
    p[static_cast<size_t>(i - 1)] += outliers;
    // Q: the first i bins merged into `levels` chunks, each chunk's mass spread over its
    // non-empty bins.
    q.assign(static_cast<size_t>(i), 0.0);
    for (int64_t c = 0; c < levels; ++c) {
      const int64_t begin = c * i / levels;
      const int64_t end = (c + 1) * i / levels;
      double mass = 0;
      int64_t nonzero = 0;
      for (int64_t k = begin; k < end; ++k) {
        mass += bins[static_cast<size_t>(k)];
        nonzero += bins[static_cast<size_t>(k)] > 0 ? 1 : 0;
      }
      for (int64_t k = begin; k < end; ++k) {
        if (bins[static_cast<size_t>(k)] > 0) q[static_cast<size_t>(k)] = mass / static_cast<double>(nonzero);
      }
    }
    double p_sum = 0;
    double q_sum = 0;
    for (int64_t k = 0; k < i; ++k) {
      p_sum += p[static_cast<size_t>(k)];
      q_sum += q[static_cast<size_t>(k)];
    }
    double kl = 0;
    for (int64_t k = 0; k < i; ++k) {
      const double pk = p[static_cast<size_t>(k)] / p_sum;
      if (pk <= 0) continue;
      const double qk = q_sum > 0 ? q[static_cast<size_t>(k)] / q_sum : 0;
      kl += pk * std::log(pk / std::max(qk, 1e-12));
    }
    if (kl < best_kl) {
      best_kl = kl;
      best_i = i;
    }
  }
  return {lo, static_cast<float>(lo + static_cast<double>(best_i) * width)};
}

Result<TensorRanges> Calibrate(const onnx::ModelProto& model, const float* images, int64_t count,
                               int64_t sample_elements, const QuantizeOptions& options,
                               std::ostream* progress) {
  KILN_RETURN_IF_ERROR(options.Validate());
  if (count < 1) return InvalidArgumentError("calibration needs at least one image");
  if (model.graph().input_size() < 1) return InvalidArgumentError("model has no input");
  // Every float intermediate tensor becomes a graph output of a "tap" copy of the model.
  onnx::ModelProto tap = model;
  std::map<std::string, int> elem_type;
  try {
    onnx::ModelProto inferred = model;
    onnx::shape_inference::InferShapes(inferred);
    for (const auto& v : inferred.graph().value_info()) {
      elem_type[v.name()] = v.type().tensor_type().elem_type();
    }
  } catch (const std::exception& e) {
    return InvalidArgumentError(std::string("shape inference failed: ") + e.what());
  }
  std::set<std::string> outputs;
  for (const auto& o : tap.graph().output()) outputs.insert(o.name());
  for (const auto& node : model.graph().node()) {
    for (const auto& out : node.output()) {
      if (out.empty() || outputs.count(out)) continue;
      auto it = elem_type.find(out);
      if (it != elem_type.end() && it->second != onnx::TensorProto::FLOAT) continue;
      auto* v = tap.mutable_graph()->add_output();
      v->set_name(out);
      v->mutable_type()->mutable_tensor_type()->set_elem_type(onnx::TensorProto::FLOAT);
      outputs.insert(out);
    }
  }
  std::string bytes;
  if (!tap.SerializeToString(&bytes)) return InternalError("cannot serialize the calibration model");
  KILN_ASSIGN_OR_RETURN(auto session, backend::OnnxTapSession::Create(bytes, options.threads));
  const std::string input_name = model.graph().input(0).name();
  std::vector<std::string> names = session->output_names();
  const size_t input_slot = names.size();
  names.push_back(input_name);

  std::vector<int64_t> shape;
  for (const auto& d : model.graph().input(0).type().tensor_type().shape().dim()) {
    shape.push_back(d.has_dim_value() ? d.dim_value() : -1);
  }
  if (shape.empty()) return InvalidArgumentError("model input has no shape");
  int64_t per_sample = 1;
  for (size_t d = 1; d < shape.size(); ++d) per_sample *= shape[d];
  if (per_sample != sample_elements) {
    return InvalidArgumentError("calibration images have " + std::to_string(sample_elements) +
                                " values, the model takes " + std::to_string(per_sample));
  }
  const bool fixed_batch = shape[0] > 0;
  const int64_t batch = fixed_batch ? shape[0] : options.batch_size;
  const int64_t batches = fixed_batch ? count / batch : (count + batch - 1) / batch;
  if (batches < 1) return InvalidArgumentError("fewer calibration images than the model's batch");

  const bool histograms = options.method != CalibrationMethod::kMinMax;
  const int passes = histograms ? 2 : 1;
  std::vector<float> mins(names.size(), std::numeric_limits<float>::infinity());
  std::vector<float> maxs(names.size(), -std::numeric_limits<float>::infinity());
  std::vector<std::vector<double>> hist(names.size());
  std::vector<float> hist_lo(names.size()), hist_hi(names.size());
  const bool entropy = options.method == CalibrationMethod::kEntropy;

  auto observe = [&](int pass, size_t slot, const float* data, size_t n) {
    if (pass == 0) {
      auto [lo, hi] = std::minmax_element(data, data + n);
      mins[slot] = std::min(mins[slot], *lo);
      maxs[slot] = std::max(maxs[slot], *hi);
      return;
    }
    std::vector<double>& h = hist[slot];
    const double lo = hist_lo[slot];
    const double span = static_cast<double>(hist_hi[slot]) - lo;
    if (span <= 0) return;
    const double k = static_cast<double>(h.size()) / span;
    const auto last = static_cast<int64_t>(h.size()) - 1;
    for (size_t i = 0; i < n; ++i) {
      const double v = entropy ? std::fabs(data[i]) : data[i];
      const auto b = std::clamp(static_cast<int64_t>((v - lo) * k), int64_t{0}, last);
      h[static_cast<size_t>(b)] += 1;
    }
  };

  for (int pass = 0; pass < passes; ++pass) {
    if (pass == 1) {
      for (size_t s = 0; s < names.size(); ++s) {
        hist[s].assign(static_cast<size_t>(options.histogram_bins), 0.0);
        hist_lo[s] = entropy ? 0.0f : mins[s];
        hist_hi[s] = entropy ? std::max(std::fabs(mins[s]), std::fabs(maxs[s])) : maxs[s];
      }
    }
    std::unique_ptr<ProgressBar> bar;
    if (progress) {
      bar = std::make_unique<ProgressBar>(
          "calibrate " + std::string(pass == 0 ? "ranges" : "histograms"), batches * batch,
          *progress, "img/s");
    }
    for (int64_t b = 0; b < batches; ++b) {
      const int64_t n = std::min(batch, count - b * batch);
      std::vector<int64_t> in_shape = shape;
      in_shape[0] = n;
      const float* in = images + b * batch * sample_elements;
      KILN_RETURN_IF_ERROR(session->Run(in, in_shape, [&](size_t slot, const float* d, size_t c) {
        observe(pass, slot, d, c);
      }));
      observe(pass, input_slot, in, static_cast<size_t>(n * sample_elements));
      if (bar) bar->Update(b * batch + n);
    }
    if (bar) bar->Finish();
  }

  TensorRanges ranges;
  for (size_t s = 0; s < names.size(); ++s) {
    if (!std::isfinite(mins[s]) || !std::isfinite(maxs[s])) continue;
    TensorRange r{mins[s], maxs[s]};
    if (histograms) {
      const bool nonnegative = mins[s] >= 0;
      const int levels = nonnegative && options.uint8_activations ? 255 : 128;
      TensorRange h = RangeFromHistogram(hist[s], hist_lo[s], hist_hi[s], options.method,
                                         options.percentile, levels);
      if (entropy) {
        r = {std::max(mins[s], -h.max), std::min(maxs[s], h.max)};
      } else {
        r = {std::max(mins[s], h.min), std::min(maxs[s], h.max)};
      }
    }
    ranges[names[s]] = r;
  }
  return ranges;
}

Result<onnx::ModelProto> QuantizeStatic(const onnx::ModelProto& model, const TensorRanges& ranges,
                                        const QuantizeOptions& options, QuantizeReport* report) {
  KILN_RETURN_IF_ERROR(options.Validate());
  if (OnnxOpset(model) < 13) {
    return InvalidArgumentError("static quantization needs opset >= 13 (per-channel "
                                "DequantizeLinear); re-export with --opset 13 or later");
  }
  QuantizeReport local;
  QuantizeReport& rep = report ? *report : local;
  rep = QuantizeReport{};
  const bool u8 = options.uint8_activations;
  const int act_type = u8 ? onnx::TensorProto::UINT8 : onnx::TensorProto::INT8;

  onnx::ModelProto out = model;
  onnx::GraphProto* g = out.mutable_graph();
  std::set<std::string> inits;
  for (const auto& i : g->initializer()) inits.insert(i.name());
  std::set<std::string> graph_outputs;
  for (const auto& o : g->output()) graph_outputs.insert(o.name());

  std::vector<onnx::NodeProto> nodes(g->node().begin(), g->node().end());
  std::map<std::string, size_t> producer;
  std::map<std::string, std::vector<size_t>> consumers;
  for (size_t i = 0; i < nodes.size(); ++i) {
    for (const auto& o : nodes[i].output()) producer[o] = i;
    for (const auto& in : nodes[i].input()) consumers[in].push_back(i);
  }

  // 1. A Relu that is the only consumer of a Conv/Gemm output is folded into the quantizer.
  std::vector<bool> removed(nodes.size(), false);
  std::set<std::string> relu_outputs;
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (nodes[i].op_type() != "Relu") continue;
    const std::string& t = nodes[i].input(0);
    auto p = producer.find(t);
    if (p == producer.end() || graph_outputs.count(t) || consumers[t].size() != 1) continue;
    const std::string& pop = nodes[p->second].op_type();
    if (pop != "Conv" && pop != "Gemm") continue;
    const std::string& y = nodes[i].output(0);
    if (graph_outputs.count(y) || !ranges.count(y)) continue;
    // Only when the ReLU's output gets a quantizer (some consumer is quantized).
    bool quantized_consumer = false;
    for (size_t c : consumers[y]) {
      const std::string& cop = nodes[c].op_type();
      quantized_consumer |= kComputeOps.count(cop) > 0 || kPassThroughOps.count(cop) > 0;
    }
    if (!quantized_consumer) continue;
    nodes[p->second].set_output(0, y);
    producer[y] = p->second;
    removed[i] = true;
    relu_outputs.insert(y);
    ++rep.removed_relus;
  }
  consumers.clear();
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (removed[i]) continue;
    for (const auto& in : nodes[i].input()) consumers[in].push_back(i);
  }
  // An Add of an activation and a constant (a GELU's 1 + erf) is left in float: only an Add of
  // two activations (a residual connection) is quantized.
  auto compute = [&](size_t i) {
    const onnx::NodeProto& n = nodes[i];
    if (n.op_type() == "Add") {
      for (const auto& in : n.input()) {
        if (inits.count(in)) return false;
      }
    }
    return kComputeOps.count(n.op_type()) > 0;
  };
  auto supported = [&](size_t i) {
    return compute(i) || kPassThroughOps.count(nodes[i].op_type()) > 0;
  };
  // A tensor is quantized when a quantized op reads it, directly or through pass-through ops
  // (max-pool, reshape, ...) whose outputs are.
  std::map<std::string, bool> wanted;
  std::function<bool(const std::string&)> wants_quantization = [&](const std::string& t) {
    if (graph_outputs.count(t)) return false;
    if (auto it = wanted.find(t); it != wanted.end()) return it->second;
    bool w = false;
    for (size_t c : consumers[t]) {
      if (compute(c) || (kPassThroughOps.count(nodes[c].op_type()) &&
                         nodes[c].output_size() > 0 && wants_quantization(nodes[c].output(0)))) {
        w = true;
        break;
      }
    }
    wanted[t] = w;
    return w;
  };

  // 2. Parameters of every quantized activation, in graph order.
  std::map<std::string, QuantParams> params;
  std::string graph_input;
  for (const auto& in : g->input()) {
    if (inits.count(in.name())) continue;
    auto r = ranges.find(in.name());
    if (r != ranges.end() && wants_quantization(in.name())) {
      params[in.name()] = ActivationParams(r->second.min, r->second.max, u8);
      graph_input = in.name();
    }
  }
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (removed[i] || nodes[i].output_size() == 0) continue;
    const std::string& op = nodes[i].op_type();
    const std::string& y = nodes[i].output(0);
    if (graph_outputs.count(y)) continue;
    if (kPassThroughOps.count(op)) {
      // max/reshape keep the quantization grid: quantizing their output loses nothing.
      if (params.count(nodes[i].input(0))) params[y] = params[nodes[i].input(0)];
      continue;
    }
    // A convolution's output is always quantized (ONNX Runtime runs a QDQ Conv as an integer
    // convolution only when its output is), even when a float op such as GELU reads it; any
    // other op's output when a quantized op reads it.
    if (!wants_quantization(y) && op != "Conv") continue;
    auto r = ranges.find(y);
    if (r == ranges.end()) continue;
    params[y] = relu_outputs.count(y) || op == "Relu"
                    ? ReluParams(r->second.max, u8)
                    : ActivationParams(r->second.min, r->second.max, u8);
  }

  // 3. Emit: Q/DQ after every quantized tensor; weights and biases as integer initializers.
  std::vector<onnx::NodeProto> emitted;
  std::map<std::string, std::string> dequantized;  // float tensor -> its DQ output
  std::set<std::string> replaced_weights;
  auto emit_qdq = [&](const std::string& t) {
    const QuantParams& p = params.at(t);
    AddInitializer<float>(g, t + "_scale", onnx::TensorProto::FLOAT, {}, {p.scale});
    if (u8) {
      AddInitializer<uint8_t>(g, t + "_zero_point", act_type, {},
                              {static_cast<uint8_t>(p.zero_point)});
    } else {
      AddInitializer<int8_t>(g, t + "_zero_point", act_type, {},
                             {static_cast<int8_t>(p.zero_point)});
    }
    emitted.push_back(MakeNode("QuantizeLinear", {t, t + "_scale", t + "_zero_point"},
                               {t + "_quantized"}, t + "/QuantizeLinear"));
    emitted.push_back(MakeNode("DequantizeLinear",
                               {t + "_quantized", t + "_scale", t + "_zero_point"},
                               {t + "_dequantized"}, t + "/DequantizeLinear"));
    dequantized[t] = t + "_dequantized";
    ++rep.quantized_tensors;
  };
  // Weight `w` as INT8 along `axis` (-1 per tensor) + DequantizeLinear; returns the scales.
  auto emit_weight = [&](const std::string& w, int axis) -> std::optional<std::vector<float>> {
    const onnx::TensorProto* t = FindInitializer(*g, w);
    if (t == nullptr) return std::nullopt;
    auto data = FloatData(*t);
    if (!data) return std::nullopt;
    const std::vector<int64_t> dims = DimsOf(*t);
    if (axis >= static_cast<int>(dims.size())) return std::nullopt;
    QuantizedWeight q = QuantizeWeight(*data, dims, axis);
    const std::vector<int64_t> sdims =
        axis < 0 ? std::vector<int64_t>{} : std::vector<int64_t>{static_cast<int64_t>(q.scales.size())};
    AddInitializer<int8_t>(g, w + "_quantized", onnx::TensorProto::INT8, dims, q.values);
    AddInitializer<float>(g, w + "_scale", onnx::TensorProto::FLOAT, sdims, q.scales);
    AddInitializer<int8_t>(g, w + "_zero_point", onnx::TensorProto::INT8, sdims,
                           std::vector<int8_t>(q.scales.size(), 0));
    onnx::NodeProto dq = MakeNode("DequantizeLinear", {w + "_quantized", w + "_scale", w + "_zero_point"},
                                  {w + "_dequantized"}, w + "/DequantizeLinear");
    if (axis >= 0) SetIntAttr(&dq, "axis", axis);
    emitted.push_back(dq);
    replaced_weights.insert(w);
    ++rep.quantized_weights;
    return q.scales;
  };
  // Bias `b` as INT32 with scale input_scale * weight_scale[channel].
  auto emit_bias = [&](const std::string& b, float input_scale, const std::vector<float>& wscales) {
    const onnx::TensorProto* t = FindInitializer(*g, b);
    if (t == nullptr) return false;
    auto data = FloatData(*t);
    if (!data || t->dims_size() != 1 ||
        (wscales.size() != 1 && wscales.size() != data->size())) {
      return false;
    }
    std::vector<float> scales(data->size());
    std::vector<int32_t> values(data->size());
    for (size_t c = 0; c < data->size(); ++c) {
      scales[c] = input_scale * wscales[wscales.size() == 1 ? 0 : c];
      const double v = std::nearbyint(static_cast<double>((*data)[c]) / scales[c]);
      values[c] = static_cast<int32_t>(std::clamp(v, -2147483647.0, 2147483647.0));
    }
    const std::vector<int64_t> dims = {static_cast<int64_t>(data->size())};
    AddInitializer<int32_t>(g, b + "_quantized", onnx::TensorProto::INT32, dims, values);
    AddInitializer<float>(g, b + "_scale", onnx::TensorProto::FLOAT, dims, scales);
    AddInitializer<int32_t>(g, b + "_zero_point", onnx::TensorProto::INT32, dims,
                            std::vector<int32_t>(data->size(), 0));
    onnx::NodeProto dq = MakeNode("DequantizeLinear", {b + "_quantized", b + "_scale", b + "_zero_point"},
                                  {b + "_dequantized"}, b + "/DequantizeLinear");
    SetIntAttr(&dq, "axis", 0);
    emitted.push_back(dq);
    replaced_weights.insert(b);
    return true;
  };

  if (!graph_input.empty()) emit_qdq(graph_input);
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (removed[i]) continue;
    onnx::NodeProto n = nodes[i];
    const std::string& op = n.op_type();
    const bool weighted = op == "Conv" || op == "Gemm" || op == "MatMul";
    const bool input_quantized = n.input_size() > 0 && params.count(n.input(0));
    if (weighted && input_quantized && n.input_size() >= 2 && inits.count(n.input(1)) &&
        !(op == "Gemm" && (IntAttr(n, "transA", 0) != 0 || FloatAttr(n, "alpha", 1.f) != 1.f ||
                           FloatAttr(n, "beta", 1.f) != 1.f))) {
      int axis = -1;
      if (op == "Conv") axis = 0;
      if (op == "Gemm") axis = IntAttr(n, "transB", 0) != 0 ? 0 : 1;
      const std::string w = n.input(1);
      if (auto scales = emit_weight(w, axis)) {
        n.set_input(1, w + "_dequantized");
        if (n.input_size() >= 3 && inits.count(n.input(2))) {
          const std::string b = n.input(2);
          if (emit_bias(b, params.at(n.input(0)).scale, *scales)) n.set_input(2, b + "_dequantized");
        }
      }
    }
    bool any_float_input = false;
    for (int j = 0; j < n.input_size(); ++j) {
      auto it = dequantized.find(n.input(j));
      if (it != dequantized.end()) {
        n.set_input(j, it->second);
      } else if (!inits.count(n.input(j)) && !n.input(j).empty() &&
                 !replaced_weights.count(n.input(j).substr(0, n.input(j).rfind("_dequantized")))) {
        any_float_input = true;
      }
    }
    if (any_float_input && supported(i)) rep.float_nodes.push_back(n.name());
    emitted.push_back(n);
    for (const auto& y : n.output()) {
      if (params.count(y)) emit_qdq(y);
    }
  }
  ReplaceNodes(g, std::move(emitted), replaced_weights);
  return out;
}

Result<onnx::ModelProto> QuantizeDynamic(const onnx::ModelProto& model, QuantizeReport* report) {
  if (OnnxOpset(model) < 11) {
    return InvalidArgumentError("dynamic quantization needs opset >= 11 (DynamicQuantizeLinear)");
  }
  QuantizeReport local;
  QuantizeReport& rep = report ? *report : local;
  rep = QuantizeReport{};
  onnx::ModelProto out = model;
  onnx::GraphProto* g = out.mutable_graph();
  std::vector<onnx::NodeProto> emitted;
  std::set<std::string> replaced;
  for (const onnx::NodeProto& n : model.graph().node()) {
    const std::string& op = n.op_type();
    const bool gemm = op == "Gemm";
    const onnx::TensorProto* w =
        (gemm || op == "MatMul") && n.input_size() >= 2 ? FindInitializer(*g, n.input(1)) : nullptr;
    auto data = w ? FloatData(*w) : std::nullopt;
    if (!data || w->dims_size() != 2 ||
        (gemm && (IntAttr(n, "transA", 0) != 0 || FloatAttr(n, "alpha", 1.f) != 1.f ||
                  FloatAttr(n, "beta", 1.f) != 1.f))) {
      emitted.push_back(n);
      continue;
    }
    // MatMulInteger wants B as [K, N]; Gemm with transB stores [N, K].
    std::vector<int64_t> dims = DimsOf(*w);
    std::vector<float> b = *data;
    if (gemm && IntAttr(n, "transB", 0) != 0) {
      const int64_t rows = dims[0];
      const int64_t cols = dims[1];
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < cols; ++c) {
          b[static_cast<size_t>(c * rows + r)] = (*data)[static_cast<size_t>(r * cols + c)];
        }
      }
      dims = {cols, rows};
    }
    QuantizedWeight q = QuantizeWeight(b, dims, 1);  // per output column
    const std::string base = n.input(1);
    const std::string x = n.input(0);
    const std::string& y = n.output(0);
    const std::vector<int64_t> ndims = {dims[1]};
    AddInitializer<int8_t>(g, base + "_quantized", onnx::TensorProto::INT8, dims, q.values);
    AddInitializer<float>(g, base + "_scale", onnx::TensorProto::FLOAT, ndims, q.scales);
    AddInitializer<int8_t>(g, base + "_zero_point", onnx::TensorProto::INT8, ndims,
                           std::vector<int8_t>(q.scales.size(), 0));
    const std::string p = n.name().empty() ? y : n.name();
    emitted.push_back(MakeNode("DynamicQuantizeLinear", {x},
                               {x + "_quantized", x + "_scale", x + "_zero_point"},
                               p + "/DynamicQuantizeLinear"));
    emitted.push_back(MakeNode(
        "MatMulInteger",
        {x + "_quantized", base + "_quantized", x + "_zero_point", base + "_zero_point"},
        {y + "_int32"}, p + "/MatMulInteger"));
    onnx::NodeProto cast = MakeNode("Cast", {y + "_int32"}, {y + "_float"}, p + "/Cast");
    SetIntAttr(&cast, "to", onnx::TensorProto::FLOAT);
    emitted.push_back(cast);
    emitted.push_back(
        MakeNode("Mul", {x + "_scale", base + "_scale"}, {y + "_rescale"}, p + "/ScaleProduct"));
    const bool bias = gemm && n.input_size() >= 3 && !n.input(2).empty();
    emitted.push_back(MakeNode("Mul", {y + "_float", y + "_rescale"},
                               {bias ? y + "_nobias" : y}, p + "/Rescale"));
    if (bias) emitted.push_back(MakeNode("Add", {y + "_nobias", n.input(2)}, {y}, p + "/Bias"));
    replaced.insert(base);
    ++rep.quantized_weights;
  }
  ReplaceNodes(g, std::move(emitted), replaced);
  return out;
}

}  // namespace kiln::optimize
