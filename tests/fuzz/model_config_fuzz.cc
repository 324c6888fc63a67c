// Fuzz target: config.pbtxt (serve::ParseModelConfig), then, on success, ModelConfigToJson and
// CompleteModelConfig against a [-1,3,32,32] -> [-1,10] model (and ModelConfigToJson again).
// Checks beyond "no crash":
//   - ParseModelConfig fails only with InvalidArgument, and its message (and every warning)
//     makes a valid JSON error answer through rest::Error;
//   - ModelConfigToJson is valid JSON, before and after completion;
//   - CompleteModelConfig fails only with InvalidArgument; when it succeeds the config has
//     exactly one input and one output and max_batch_size >= 0.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "../../src/serve/http/message.h"
#include "fuzz_check.h"
#include "kiln/serve/engine/model_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace serve = kiln::serve;
  using kiln::backend::DataType;
  using kiln::backend::TensorInfo;
  static const std::vector<TensorInfo> inputs = {{"input", DataType::kFloat32, {-1, 3, 32, 32}}};
  static const std::vector<TensorInfo> outputs = {{"logits", DataType::kFloat32, {-1, 10}}};
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> warnings;
  auto config = serve::ParseModelConfig(text, &warnings);
  for (const auto& w : warnings) kiln::fuzz::CheckErrorResponse(serve::rest::Error(400, w));
  if (!config.ok()) {
    KILN_FUZZ_CHECK(config.status().code() == kiln::StatusCode::kInvalidArgument,
                    config.status().ToString());
    kiln::fuzz::CheckErrorResponse(serve::rest::Error(config.status()));
    return 0;
  }
  kiln::fuzz::MustParseJson(serve::ModelConfigToJson(*config));
  const kiln::Status s = serve::CompleteModelConfig(inputs, outputs, {}, &*config);
  if (!s.ok()) {
    KILN_FUZZ_CHECK(s.code() == kiln::StatusCode::kInvalidArgument, s.ToString());
    kiln::fuzz::CheckErrorResponse(serve::rest::Error(s));
    return 0;
  }
  KILN_FUZZ_CHECK(config->input_size() == 1 && config->output_size() == 1, config->DebugString());
  KILN_FUZZ_CHECK(config->max_batch_size() >= 0, config->DebugString());
  kiln::fuzz::MustParseJson(serve::ModelConfigToJson(*config));
  return 0;
}
