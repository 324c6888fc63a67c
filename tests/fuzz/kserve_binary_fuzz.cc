// Fuzz target: the KServe binary tensor extension (rest::ParseInferRequest with an
// Inference-Header-Content-Length). The model is [3,2,2] -> [10] (48 bytes per batch element),
// so the fuzzer can reach exact binary sizes. The first 3 bytes of the input choose the header
// value, the rest is the body (JSON header + binary tail):
//   byte 0 % 4 == 0: the decimal of bytes 1-2 (little endian), the JSON header's length;
//              == 1: the body size minus that number (bytes 1-2 give the binary tail's length);
//              == 2: absent ("");
//              == 3: byte 1 % 24 bytes of raw text after the 3 selector bytes (garbage, "0",
//                    numbers past 2^64).
// Checks: as kserve_json (kserve_check.h).
#include <cstdint>
#include <string>
#include <string_view>

#include "kserve_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const kiln::serve::ModelInfo model = kiln::fuzz::MakeModelInfo(2, 2);
  if (size < 3) return 0;
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const size_t n = static_cast<size_t>(data[1]) | static_cast<size_t>(data[2]) << 8;
  std::string_view body = in.substr(3);
  std::string header;
  switch (data[0] % 4) {
    case 0:
      header = std::to_string(n);
      break;
    case 1:
      header = std::to_string(body.size() >= n ? body.size() - n : n);
      break;
    case 2:
      break;
    default: {
      const size_t len = std::min<size_t>(data[1] % 24, body.size());
      header = std::string(body.substr(0, len));
      body = body.substr(len);
    }
  }
  kiln::fuzz::CheckInfer(model, body, header);
  return 0;
}
