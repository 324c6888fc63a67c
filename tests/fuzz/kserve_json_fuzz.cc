// Fuzz target: the KServe v2 JSON inference request (rest::ParseInferRequest without the binary
// extension) for a [3,32,32] -> [10] classifier with max_batch_size 8, then FormatInferResponse
// on success with a fake result. Checks (kserve_check.h):
//   - success: 1 <= batch <= max_batch_size, input.size() == batch * input_elements, and the
//     formatted answer is valid JSON with one output of the requested batch (and the binary
//     part's size in binary_data_size when binary output was asked for);
//   - failure: InvalidArgument or ResourceExhausted, and rest::Error(status) is valid JSON.
#include <cstdint>
#include <string_view>

#include "kserve_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const kiln::serve::ModelInfo model = kiln::fuzz::MakeModelInfo(32, 32);
  kiln::fuzz::CheckInfer(model, std::string_view(reinterpret_cast<const char*>(data), size), "");
  return 0;
}
