// InferenceBackend: one interface over the engines that run an exported model.
//
//   kiln::backend::BackendOptions opt;
//   opt.model_path = "model.onnx";
//   // CreateBackend: kiln/backend/factory/factory.h
//   KILN_ASSIGN_OR_RETURN(auto engine, kiln::backend::CreateBackend("onnxruntime", opt));
//   const auto& in = engine->inputs()[0];            // name, dtype, shape (-1 = dynamic)
//   std::vector<float> logits(batch * engine->OutputElementsPerSample());
//   KILN_RETURN_IF_ERROR(engine->Run(images.data(), batch, logits.data()));
//
// Calls are batch-first and write into buffers the caller owns: `input` holds `batch` samples of
// InputElementsPerSample() floats, `output` has room for `batch` * OutputElementsPerSample().
// A backend discovers its input/output names, shapes and types from the model file. Run() is
// not guaranteed thread-safe: use one backend per thread (the server runs one per instance).
// Engine exceptions never escape: every failure is a Status (a missing file is NotFound, a bad
// model or a wrong batch InvalidArgument, an engine failure Internal).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kiln/core/status.h"

namespace kiln::backend {

// Extra file of a TorchScript archive holding Kiln's metadata (a JSON object of strings).
inline constexpr const char* kTorchScriptMetadataFile = "kiln_metadata.json";

enum class DataType { kFloat32, kFloat16, kInt8, kUInt8, kInt32, kInt64, kOther };
std::string_view DataTypeName(DataType t);  // "FP32", ... (KServe v2 names)

struct TensorInfo {
  std::string name;
  DataType dtype = DataType::kFloat32;
  std::vector<int64_t> shape;  // -1 for a dynamic dimension
};

struct Capabilities {
  bool dynamic_batch = false;  // first dimension of input and output is dynamic
  int64_t max_batch = 0;       // 0 = no limit of the backend's own
  std::string device = "cpu";
};

struct BackendOptions {
  std::string model_path;
  int intra_op_threads = 2;
  int inter_op_threads = 1;
  // onnxruntime: graph optimization "disable" | "basic" | "extended" | "all".
  std::string graph_optimization = "all";
  bool parallel_execution = false;  // onnxruntime: ORT_PARALLEL instead of ORT_SEQUENTIAL
  bool memory_arena = true;         // onnxruntime: CPU memory arena
  bool memory_pattern = true;       // onnxruntime: memory pattern planning
  // onnxruntime: let idle pool threads spin. Off by default: spinning threads fight libtorch's
  // OpenMP threads for 2 cores (seen: a 58 s epoch became 700 s).
  bool allow_spinning = false;
  std::string optimized_model_path;  // onnxruntime: save the optimized graph here if set
  // onnxruntime, openvino: leave every session option / property at the runtime's own default
  // (threads, spinning, arena, level; OpenVINO's threads, streams, pinning, precision): the
  // "runtime defaults" peers of `kiln bench`.
  bool runtime_defaults = false;
  bool channels_last = true;  // libtorch: feed NHWC (channels-last) tensors
  bool freeze = true;         // libtorch: torch::jit::freeze + optimize_for_inference
  // libtorch: input shape [C, H, W] per sample. TorchScript files carry no input shape: Kiln's
  // own archives record it (kiln.input_shape in kTorchScriptMetadataFile); others need it here.
  std::vector<int64_t> sample_shape;
  // openvino: "LATENCY" (one stream using intra_op_threads; what one request at a time wants)
  // or "THROUGHPUT" (the plugin chooses several streams, each with a share of the threads).
  std::string performance_hint = "LATENCY";
  int streams = 0;  // openvino: NUM_STREAMS; 0 = what the performance hint chooses
  // openvino: "f32", or "bf16" (OpenVINO's own default on CPUs with AVX512-BF16 or AMX, which
  // changes results; Kiln asks for f32 unless told otherwise).
  std::string inference_precision = "f32";
  // openvino: pin inference threads to cores. Off: on a shared machine a pinned thread cannot
  // move away from a core another process is using.
  bool cpu_pinning = false;

  Status Validate() const;
};

class InferenceBackend {
 public:
  virtual ~InferenceBackend() = default;

  virtual const std::string& name() const = 0;  // "onnxruntime", "libtorch", "openvino"
  virtual const std::vector<TensorInfo>& inputs() const = 0;
  virtual const std::vector<TensorInfo>& outputs() const = 0;
  virtual Capabilities capabilities() const = 0;
  // Key/value metadata stored in the model file (ONNX metadata_props; for TorchScript the JSON
  // object in the extra file kTorchScriptMetadataFile). Empty when the file has none.
  virtual const std::map<std::string, std::string>& metadata() const = 0;

  // The settings the engine actually runs the model with, read back from it where it can tell
  // (OpenVINO: hint, threads, streams, inference precision, pinning), for reports. Empty for an
  // engine that cannot tell.
  virtual std::map<std::string, std::string> settings() const { return {}; }

  // Floats per sample of the first input / first output (product of non-batch dimensions).
  int64_t InputElementsPerSample() const;
  int64_t OutputElementsPerSample() const;

  // OK when a request tensor of `shape` (batch first) fits the model's first input; otherwise
  // InvalidArgument naming both shapes. Callers holding shaped requests check before Run().
  Status ValidateInputShape(const std::vector<int64_t>& shape) const;

  // OK when Run() can take `batch` samples: positive, and equal to the model's fixed batch when
  // it has one (capabilities()); otherwise InvalidArgument. Engines call it first in Run().
  Status CheckBatch(int64_t batch) const;

  // Runs the model on `batch` samples of the first input, writing the first output.
  virtual Status Run(const float* input, int64_t batch, float* output) = 0;
};

// What every engine that reads a model file's signature requires of it (ONNX Runtime and
// OpenVINO): exactly one input and at least one output; the first input and output FP32, not
// scalars, with only the first (batch) dimension dynamic. InvalidArgument naming `model_path`.
Status CheckModelSignature(const std::string& model_path, const std::vector<TensorInfo>& inputs,
                           const std::vector<TensorInfo>& outputs);

// The batch capabilities a signature implies: a dynamic batch when the first dimension of both
// the input and the output is dynamic, else the input's fixed batch.
Capabilities SignatureCapabilities(const TensorInfo& input, const TensorInfo& output);

}  // namespace kiln::backend
