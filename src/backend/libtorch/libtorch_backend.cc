#include "kiln/backend/libtorch/libtorch_backend.h"

#include <ATen/Parallel.h>
#include <torch/script.h>
#include <torch/version.h>

#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

namespace kiln::backend {

namespace {

class LibtorchBackend : public InferenceBackend {
 public:
  static Result<std::unique_ptr<InferenceBackend>> Create(const BackendOptions& o) {
    KILN_RETURN_IF_ERROR(o.Validate());
    if (!std::filesystem::exists(o.model_path))
      return NotFoundError(o.model_path + ": no such model file");
    auto b = std::unique_ptr<LibtorchBackend>(new LibtorchBackend());
    b->channels_last_ = o.channels_last;
    std::vector<int64_t> sample = o.sample_shape;
    try {
      at::set_num_threads(o.intra_op_threads);
      torch::jit::ExtraFilesMap extra{{kTorchScriptMetadataFile, ""}};
      b->module_ = torch::jit::load(o.model_path, torch::kCPU, extra);
      b->module_.eval();
      auto info = nlohmann::json::parse(extra[kTorchScriptMetadataFile], nullptr, false);
      if (info.is_object()) {
        for (const auto& [key, value] : info.items()) {
          if (value.is_string()) b->metadata_[key] = value.get<std::string>();
        }
      }
      if (sample.empty() && b->metadata_.count("kiln.input_shape") > 0) {
        auto shape = nlohmann::json::parse(b->metadata_["kiln.input_shape"], nullptr, false);
        if (shape.is_array() && shape.size() >= 2) {
          for (size_t d = 1; d < shape.size(); ++d) sample.push_back(shape[d].get<int64_t>());
        }
      }
      if (sample.empty()) {
        return InvalidArgumentError(
            o.model_path + ": TorchScript file has no Kiln metadata; give the input shape");
      }
      if (o.freeze) b->module_ = torch::jit::optimize_for_inference(b->module_);
      // Discover the output width with one sample.
      c10::InferenceMode guard;
      std::vector<int64_t> shape = {1};
      shape.insert(shape.end(), sample.begin(), sample.end());
      torch::Tensor probe = b->Forward(torch::zeros(shape));
      if (probe.dim() != 2 || probe.size(0) != 1) {
        return InvalidArgumentError(o.model_path +
                                    ": forward() must return [batch, classes], got " +
                                    c10::str(probe.sizes()));
      }
      b->inputs_.push_back({"input", DataType::kFloat32, shape});
      b->inputs_[0].shape[0] = -1;
      b->outputs_.push_back({"output", DataType::kFloat32, {-1, probe.size(1)}});
    } catch (const std::exception& e) {
      return InvalidArgumentError(o.model_path + ": libtorch cannot load the model: " +
                                  std::string(e.what()).substr(0, 400));
    }
    return std::unique_ptr<InferenceBackend>(std::move(b));
  }

  const std::string& name() const override { return name_; }
  const std::vector<TensorInfo>& inputs() const override { return inputs_; }
  const std::vector<TensorInfo>& outputs() const override { return outputs_; }
  const std::map<std::string, std::string>& metadata() const override { return metadata_; }
  Capabilities capabilities() const override {
    Capabilities c;
    c.dynamic_batch = true;
    return c;
  }

  Status Run(const float* input, int64_t batch, float* output) override {
    KILN_RETURN_IF_ERROR(CheckBatch(batch));
    try {
      c10::InferenceMode guard;
      std::vector<int64_t> shape = inputs_[0].shape;
      shape[0] = batch;
      torch::Tensor x = torch::from_blob(const_cast<float*>(input), shape);
      torch::Tensor y = Forward(x).contiguous();
      if (y.numel() != batch * OutputElementsPerSample()) {
        return InternalError("model returned " + c10::str(y.sizes()) + " for a batch of " +
                             std::to_string(batch));
      }
      std::memcpy(output, y.data_ptr<float>(), static_cast<size_t>(y.numel()) * sizeof(float));
    } catch (const std::exception& e) {
      return InternalError("libtorch inference failed: " + std::string(e.what()).substr(0, 400));
    }
    return Status::Ok();
  }

 private:
  LibtorchBackend() = default;
  torch::Tensor Forward(torch::Tensor x) {
    if (channels_last_) x = x.contiguous(torch::MemoryFormat::ChannelsLast);
    return module_.forward({x}).toTensor().to(torch::kFloat);
  }

  std::string name_ = "libtorch";
  torch::jit::Module module_;
  bool channels_last_ = true;
  std::vector<TensorInfo> inputs_;
  std::vector<TensorInfo> outputs_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace

Result<std::unique_ptr<InferenceBackend>> CreateLibtorchBackend(const BackendOptions& options) {
  return LibtorchBackend::Create(options);
}

std::string LibtorchVersion() { return "libtorch " TORCH_VERSION; }

}  // namespace kiln::backend
