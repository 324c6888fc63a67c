#include "kiln/backend/openvino/openvino_backend.h"

#include <algorithm>
#include <cstring>
#include <exception>
#include <filesystem>
#include <sstream>
#include <openvino/openvino.hpp>

namespace kiln::backend {

namespace {

// One ov::Core per process: it loads the device plugins once, and its methods are thread-safe.
ov::Core& SharedCore() {
  static ov::Core core;
  return core;
}

DataType FromOv(const ov::element::Type& t) {
  if (t == ov::element::f32) return DataType::kFloat32;
  if (t == ov::element::f16) return DataType::kFloat16;
  if (t == ov::element::i8) return DataType::kInt8;
  if (t == ov::element::u8) return DataType::kUInt8;
  if (t == ov::element::i32) return DataType::kInt32;
  if (t == ov::element::i64) return DataType::kInt64;
  return DataType::kOther;
}

// A port as Kiln describes tensors: its first name, type and shape (-1 for a dynamic dimension).
// InvalidArgument for a dynamic rank.
Result<TensorInfo> Describe(const ov::Output<const ov::Node>& port) {
  TensorInfo t;
  t.name = port.get_names().empty() ? std::string() : port.get_any_name();
  t.dtype = FromOv(port.get_element_type());
  const ov::PartialShape& shape = port.get_partial_shape();
  if (shape.rank().is_dynamic()) {
    return InvalidArgumentError("tensor '" + t.name + "' has a dynamic rank");
  }
  for (const auto& d : shape) t.shape.push_back(d.is_static() ? d.get_length() : -1);
  return t;
}

// ONNX metadata_props, which OpenVINO's ONNX reader keeps in rt_info["framework"].
std::map<std::string, std::string> FrameworkMetadata(const ov::Model& model) {
  std::map<std::string, std::string> out;
  const auto& rt = model.get_rt_info();
  auto it = rt.find("framework");
  if (it == rt.end() || !it->second.is<ov::AnyMap>()) return out;
  for (const auto& [key, value] : it->second.as<ov::AnyMap>()) {
    if (value.is<std::string>()) out[key] = value.as<std::string>();
  }
  return out;
}

class OpenVinoBackend : public InferenceBackend {
 public:
  static Result<std::unique_ptr<InferenceBackend>> Create(const BackendOptions& o) {
    KILN_RETURN_IF_ERROR(o.Validate());
    std::error_code ec;
    if (!std::filesystem::exists(o.model_path, ec))
      return NotFoundError(o.model_path + ": no such model file");
    auto backend = std::unique_ptr<OpenVinoBackend>(new OpenVinoBackend());
    try {
      ov::Core& core = SharedCore();
      std::shared_ptr<ov::Model> model = core.read_model(o.model_path);
      const std::shared_ptr<const ov::Model> view = model;
      for (const auto& port : view->inputs()) {
        KILN_ASSIGN_OR_RETURN(TensorInfo t, Describe(port));
        backend->inputs_.push_back(std::move(t));
      }
      for (const auto& port : view->outputs()) {
        KILN_ASSIGN_OR_RETURN(TensorInfo t, Describe(port));
        backend->outputs_.push_back(std::move(t));
      }
      backend->metadata_ = FrameworkMetadata(*model);
      KILN_RETURN_IF_ERROR(
          CheckModelSignature(o.model_path, backend->inputs_, backend->outputs_));

      // runtime_defaults: no property at all, so the CPU plugin picks its own threads, streams,
      // pinning and precision (bf16 on CPUs with AVX512-BF16 or AMX), as a user's first
      // compile_model(model, "CPU") does.
      ov::AnyMap config;
      if (!o.runtime_defaults) {
        config = {ov::inference_num_threads(o.intra_op_threads),
                  ov::hint::inference_precision(
                      o.inference_precision == "bf16" ? ov::element::bf16 : ov::element::f32),
                  ov::hint::performance_mode(o.performance_hint == "THROUGHPUT"
                                                 ? ov::hint::PerformanceMode::THROUGHPUT
                                                 : ov::hint::PerformanceMode::LATENCY),
                  ov::hint::enable_cpu_pinning(o.cpu_pinning)};
        if (o.streams > 0) config.emplace(ov::num_streams(ov::streams::Num(o.streams)));
      }
      backend->compiled_ = core.compile_model(model, "CPU", config);
      const ov::CompiledModel& c = backend->compiled_;
      std::ostringstream mode;
      mode << c.get_property(ov::hint::performance_mode);
      backend->settings_ = {
          {"performance_hint", mode.str()},
          {"inference_num_threads", std::to_string(c.get_property(ov::inference_num_threads))},
          {"num_streams", std::to_string(c.get_property(ov::num_streams).num)},
          {"inference_precision", c.get_property(ov::hint::inference_precision).get_type_name()},
          {"enable_cpu_pinning", c.get_property(ov::hint::enable_cpu_pinning) ? "true" : "false"}};
      const int32_t streams = backend->compiled_.get_property(ov::num_streams).num;
      backend->streams_ = std::max(1, static_cast<int>(streams));
      for (int i = 0; i < backend->streams_; ++i) {
        backend->requests_.push_back(backend->compiled_.create_infer_request());
      }
    } catch (const std::exception& e) {
      return InvalidArgumentError(o.model_path + ": OpenVINO cannot load the model: " + e.what());
    }
    return std::unique_ptr<InferenceBackend>(std::move(backend));
  }

  const std::string& name() const override { return name_; }
  const std::vector<TensorInfo>& inputs() const override { return inputs_; }
  const std::vector<TensorInfo>& outputs() const override { return outputs_; }
  const std::map<std::string, std::string>& metadata() const override { return metadata_; }
  std::map<std::string, std::string> settings() const override { return settings_; }
  Capabilities capabilities() const override {
    return SignatureCapabilities(inputs_[0], outputs_[0]);
  }

  Status Run(const float* input, int64_t batch, float* output) override {
    KILN_RETURN_IF_ERROR(CheckBatch(batch));
    const int64_t in_per = InputElementsPerSample();
    const int64_t out_per = OutputElementsPerSample();
    // One slice per stream (only a dynamic batch can be split); slices differ by at most one.
    const int64_t slices = capabilities().dynamic_batch ? std::min<int64_t>(streams_, batch) : 1;
    try {
      int64_t begin = 0;
      for (int64_t s = 0; s < slices; ++s) {
        const int64_t n = batch / slices + (s < batch % slices ? 1 : 0);
        ov::Shape shape(inputs_[0].shape.begin(), inputs_[0].shape.end());
        shape[0] = static_cast<size_t>(n);
        // Zero-copy: the request reads the caller's buffer.
        ov::Tensor in(ov::element::f32, shape, const_cast<float*>(input) + begin * in_per);
        ov::InferRequest& r = requests_[static_cast<size_t>(s)];
        r.set_input_tensor(in);
        if (slices == 1) {
          r.infer();
        } else {
          r.start_async();
        }
        begin += n;
      }
      begin = 0;
      for (int64_t s = 0; s < slices; ++s) {
        const int64_t n = batch / slices + (s < batch % slices ? 1 : 0);
        ov::InferRequest& r = requests_[static_cast<size_t>(s)];
        if (slices > 1) r.wait();
        const ov::Tensor out = r.get_output_tensor();
        if (out.get_element_type() != ov::element::f32 ||
            out.get_size() != static_cast<size_t>(n * out_per)) {
          return InternalError("OpenVINO returned " + std::to_string(out.get_size()) +
                               " values for " + std::to_string(n) + " samples of " +
                               std::to_string(out_per));
        }
        std::memcpy(output + begin * out_per, out.data<const float>(),
                    out.get_size() * sizeof(float));
        begin += n;
      }
    } catch (const std::exception& e) {
      // A slice that failed may leave others running: wait for them before the buffers go.
      for (int64_t s = 0; s < slices; ++s) {
        try {
          requests_[static_cast<size_t>(s)].wait();
        } catch (const std::exception&) {
        }
      }
      return InternalError(std::string("OpenVINO inference failed: ") + e.what());
    }
    return Status::Ok();
  }

 private:
  OpenVinoBackend() = default;

  std::string name_ = "openvino";
  ov::CompiledModel compiled_;
  std::vector<ov::InferRequest> requests_;  // one per stream
  int streams_ = 1;
  std::vector<TensorInfo> inputs_;
  std::vector<TensorInfo> outputs_;
  std::map<std::string, std::string> metadata_;
  std::map<std::string, std::string> settings_;  // read back from compiled_
};

}  // namespace

Result<std::unique_ptr<InferenceBackend>> CreateOpenVinoBackend(const BackendOptions& options) {
  return OpenVinoBackend::Create(options);
}

Result<std::string> OpenVinoVersion() {
  try {
    const ov::Version v = ov::get_openvino_version();
    return std::string(v.buildNumber);
  } catch (const std::exception& e) {
    return UnavailableError(std::string("OpenVINO: ") + e.what());
  }
}

}  // namespace kiln::backend
