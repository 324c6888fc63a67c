// A served model's configuration: Triton's `config.pbtxt` (protobuf text format of
// inference::ModelConfig, proto/model_config.proto) read, completed from the model file and
// validated when the model loads.
//
//   std::vector<std::string> warnings;
//   KILN_ASSIGN_OR_RETURN(inference::ModelConfig config, ParseModelConfig(text, &warnings));
//   KILN_RETURN_IF_ERROR(CompleteModelConfig(engine_inputs, engine_outputs, {}, &config));
//
// Fields that Triton defines and Kiln does not read are accepted and reported in `warnings`, so
// a Triton configuration loads unchanged. Errors are InvalidArgument with a message that says
// what to change. Thread-safe (pure functions).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "kiln/backend/inference_backend.h"
#include "kiln/core/status.h"
#include "model_config.pb.h"

namespace kiln::serve {

inline constexpr const char* kOnnxPlatform = "onnxruntime_onnx";
inline constexpr const char* kTorchPlatform = "pytorch_libtorch";
// Triton's OpenVINO backend: `backend: "openvino"` and no platform (ONNX with
// default_model_filename: "model.onnx", or OpenVINO IR model.xml, its default).
inline constexpr const char* kOpenVinoBackend = "openvino";

// Parses config.pbtxt. Syntax errors are InvalidArgument naming line and column.
Result<inference::ModelConfig> ParseModelConfig(std::string_view text,
                                                std::vector<std::string>* warnings);

struct CompleteOptions {
  // max_batch_size written into a config that does not give one, for a model whose batch
  // dimension is dynamic (Triton's --backend-config=default-max-batch-size, default 4 there).
  int default_max_batch_size = 32;
  // false = Triton's --disable-auto-complete-config: nothing is filled in from the model (no
  // max_batch_size, tensors, data types, dims or dynamic_batching); a config that leaves one
  // out fails, naming it. Defaults that are not auto-completion (one CPU instance when
  // instance_group is empty) still apply, as in Triton.
  bool auto_complete = true;
  // The TorchScript convention of Triton's PyTorch backend: a config tensor named
  // "<anything>__<i>" (INPUT__0, OUTPUT__0) is the model's i-th input or output.
  bool positional_names = false;
};

// Triton's auto-complete and validation against what the model file says (`inputs`, `outputs`
// from the engine, batch dimension included): fills a missing platform-independent part (inputs,
// outputs, data types, dims, max_batch_size, dynamic_batching for a batching model, one CPU
// instance), then checks the config against the model. Catches the classic mistakes of
// PROTOCOL.md: max_batch_size > 0 with a model exported with a fixed batch, and the batch
// dimension written into `dims`.
Status CompleteModelConfig(const std::vector<backend::TensorInfo>& inputs,
                           const std::vector<backend::TensorInfo>& outputs,
                           const CompleteOptions& options, inference::ModelConfig* config);

// A load's configuration override (Triton's `parameters.config` of a repository load request):
// the JSON form of ModelConfig (protobuf's JSON mapping; field names as in config.pbtxt or in
// lowerCamelCase). Unknown fields, syntax errors and strings that are not UTF-8 are
// InvalidArgument.
Result<inference::ModelConfig> ParseModelConfigJson(std::string_view json);

// The index i of a Triton positional tensor name "<anything>__<i>", or -1.
int PositionalIndex(const std::string& name);

// "TYPE_FP32" <-> KServe's "FP32".
std::string KServeDataType(inference::DataType type);
inference::DataType ConfigDataType(backend::DataType type);

// The model config as JSON (protobuf's JSON mapping with the proto field names, as Triton's
// GET .../config answers).
std::string ModelConfigToJson(const inference::ModelConfig& config);

}  // namespace kiln::serve
