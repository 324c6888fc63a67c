#include <onnxruntime_cxx_api.h>
#include <onnxruntime_session_options_config_keys.h>

#include <filesystem>
#include <mutex>

#include "kiln/backend/onnxruntime/onnxruntime_backend.h"

namespace kiln::backend {

namespace {

// One Ort::Env per process, created on first use (ORT requires it to outlive sessions).
Ort::Env& SharedEnv() {
  static Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "kiln");
  return env;
}

DataType FromOrt(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT:
      return DataType::kFloat32;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16:
      return DataType::kFloat16;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8:
      return DataType::kInt8;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8:
      return DataType::kUInt8;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32:
      return DataType::kInt32;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64:
      return DataType::kInt64;
    default:
      return DataType::kOther;
  }
}

// Kiln's session settings (see BackendOptions).
void ConfigureSession(const BackendOptions& o, Ort::SessionOptions& so) {
  so.SetIntraOpNumThreads(o.intra_op_threads);
  so.SetInterOpNumThreads(o.inter_op_threads);
  so.SetExecutionMode(o.parallel_execution ? ORT_PARALLEL : ORT_SEQUENTIAL);
  GraphOptimizationLevel level = ORT_ENABLE_ALL;
  if (o.graph_optimization == "disable") level = ORT_DISABLE_ALL;
  if (o.graph_optimization == "basic") level = ORT_ENABLE_BASIC;
  if (o.graph_optimization == "extended") level = ORT_ENABLE_EXTENDED;
  so.SetGraphOptimizationLevel(level);
  if (!o.memory_arena) so.DisableCpuMemArena();
  if (!o.memory_pattern) so.DisableMemPattern();
  so.AddConfigEntry(kOrtSessionOptionsConfigAllowIntraOpSpinning, o.allow_spinning ? "1" : "0");
  so.AddConfigEntry(kOrtSessionOptionsConfigAllowInterOpSpinning, o.allow_spinning ? "1" : "0");
  if (!o.optimized_model_path.empty()) {
    so.SetOptimizedModelFilePath(o.optimized_model_path.c_str());
    // Saving at level "all" warns that the file is specific to this CPU; callers that do
    // it (to inspect the graph ONNX Runtime runs) know.
    if (level == ORT_ENABLE_ALL) so.SetLogSeverityLevel(ORT_LOGGING_LEVEL_ERROR);
  }
}

class OrtBackend : public InferenceBackend {
 public:
  static Result<std::unique_ptr<InferenceBackend>> Create(const BackendOptions& o) {
    KILN_RETURN_IF_ERROR(o.Validate());
    if (!std::filesystem::exists(o.model_path))
      return NotFoundError(o.model_path + ": no such model file");
    auto backend = std::unique_ptr<OrtBackend>(new OrtBackend());
    try {
      Ort::SessionOptions so;
      if (!o.runtime_defaults) ConfigureSession(o, so);
      backend->session_ = std::make_unique<Ort::Session>(SharedEnv(), o.model_path.c_str(), so);
      Ort::AllocatorWithDefaultOptions alloc;
      for (size_t i = 0; i < backend->session_->GetInputCount(); ++i) {
        Ort::TypeInfo type = backend->session_->GetInputTypeInfo(i);  // owns what `info` views
        auto info = type.GetTensorTypeAndShapeInfo();
        backend->inputs_.push_back({backend->session_->GetInputNameAllocated(i, alloc).get(),
                                    FromOrt(info.GetElementType()), info.GetShape()});
      }
      Ort::ModelMetadata meta = backend->session_->GetModelMetadata();
      for (const auto& key : meta.GetCustomMetadataMapKeysAllocated(alloc)) {
        auto value = meta.LookupCustomMetadataMapAllocated(key.get(), alloc);
        if (value) backend->metadata_[key.get()] = value.get();
      }
      for (size_t i = 0; i < backend->session_->GetOutputCount(); ++i) {
        Ort::TypeInfo type = backend->session_->GetOutputTypeInfo(i);
        auto info = type.GetTensorTypeAndShapeInfo();
        backend->outputs_.push_back({backend->session_->GetOutputNameAllocated(i, alloc).get(),
                                     FromOrt(info.GetElementType()), info.GetShape()});
      }
    } catch (const Ort::Exception& e) {
      return InvalidArgumentError(o.model_path +
                                  ": ONNX Runtime cannot load the model: " + e.what());
    }
    KILN_RETURN_IF_ERROR(
        CheckModelSignature(o.model_path, backend->inputs_, backend->outputs_));
    return std::unique_ptr<InferenceBackend>(std::move(backend));
  }

  const std::string& name() const override { return name_; }
  const std::vector<TensorInfo>& inputs() const override { return inputs_; }
  const std::vector<TensorInfo>& outputs() const override { return outputs_; }
  const std::map<std::string, std::string>& metadata() const override { return metadata_; }
  Capabilities capabilities() const override {
    return SignatureCapabilities(inputs_[0], outputs_[0]);
  }

  Status Run(const float* input, int64_t batch, float* output) override {
    KILN_RETURN_IF_ERROR(CheckBatch(batch));
    try {
      std::vector<int64_t> in_shape = inputs_[0].shape;
      in_shape[0] = batch;
      std::vector<int64_t> out_shape = outputs_[0].shape;
      out_shape[0] = batch;
      auto mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
      // Zero-copy: ORT reads the caller's input and writes into the caller's output buffer.
      Ort::Value in = Ort::Value::CreateTensor<float>(
          mem, const_cast<float*>(input), static_cast<size_t>(batch * InputElementsPerSample()),
          in_shape.data(), in_shape.size());
      Ort::Value out = Ort::Value::CreateTensor<float>(
          mem, output, static_cast<size_t>(batch * OutputElementsPerSample()), out_shape.data(),
          out_shape.size());
      const char* in_name = inputs_[0].name.c_str();
      const char* out_name = outputs_[0].name.c_str();
      session_->Run(Ort::RunOptions{nullptr}, &in_name, &in, 1, &out_name, &out, 1);
    } catch (const Ort::Exception& e) {
      return InternalError(std::string("ONNX Runtime inference failed: ") + e.what());
    }
    return Status::Ok();
  }

 private:
  OrtBackend() = default;
  std::string name_ = "onnxruntime";
  std::unique_ptr<Ort::Session> session_;
  std::vector<TensorInfo> inputs_;
  std::vector<TensorInfo> outputs_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace

Result<std::unique_ptr<InferenceBackend>> CreateOnnxRuntimeBackend(const BackendOptions& options) {
  return OrtBackend::Create(options);
}

struct OnnxTapSession::Impl {
  std::unique_ptr<Ort::Session> session;
  std::string input_name;
  std::vector<std::string> output_names;
};

OnnxTapSession::OnnxTapSession(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
OnnxTapSession::~OnnxTapSession() = default;

const std::vector<std::string>& OnnxTapSession::output_names() const {
  return impl_->output_names;
}

Result<std::unique_ptr<OnnxTapSession>> OnnxTapSession::Create(const std::string& model_bytes,
                                                               int threads) {
  auto impl = std::make_unique<Impl>();
  try {
    Ort::SessionOptions so;
    so.SetIntraOpNumThreads(threads);
    so.SetInterOpNumThreads(1);
    so.AddConfigEntry(kOrtSessionOptionsConfigAllowIntraOpSpinning, "0");
    so.AddConfigEntry(kOrtSessionOptionsConfigAllowInterOpSpinning, "0");
    impl->session = std::make_unique<Ort::Session>(SharedEnv(), model_bytes.data(),
                                                   model_bytes.size(), so);
    Ort::AllocatorWithDefaultOptions alloc;
    if (impl->session->GetInputCount() != 1) {
      return InvalidArgumentError("calibration needs a model with exactly one input");
    }
    impl->input_name = impl->session->GetInputNameAllocated(0, alloc).get();
    for (size_t i = 0; i < impl->session->GetOutputCount(); ++i) {
      impl->output_names.push_back(impl->session->GetOutputNameAllocated(i, alloc).get());
    }
  } catch (const Ort::Exception& e) {
    return InvalidArgumentError(std::string("ONNX Runtime cannot load the model: ") + e.what());
  }
  return std::unique_ptr<OnnxTapSession>(new OnnxTapSession(std::move(impl)));
}

Status OnnxTapSession::Run(const float* input, const std::vector<int64_t>& shape,
                           const Sink& sink) {
  try {
    size_t count = 1;
    for (int64_t d : shape) count *= static_cast<size_t>(d);
    auto mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    Ort::Value in = Ort::Value::CreateTensor<float>(mem, const_cast<float*>(input), count,
                                                    shape.data(), shape.size());
    const char* in_name = impl_->input_name.c_str();
    std::vector<const char*> out_names;
    for (const auto& n : impl_->output_names) out_names.push_back(n.c_str());
    std::vector<Ort::Value> outs = impl_->session->Run(Ort::RunOptions{nullptr}, &in_name, &in, 1,
                                                       out_names.data(), out_names.size());
    for (size_t i = 0; i < outs.size(); ++i) {
      auto info = outs[i].GetTensorTypeAndShapeInfo();
      if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) continue;
      sink(i, outs[i].GetTensorData<float>(), info.GetElementCount());
    }
  } catch (const Ort::Exception& e) {
    return InternalError(std::string("ONNX Runtime run failed: ") + e.what());
  }
  return Status::Ok();
}

}  // namespace kiln::backend
