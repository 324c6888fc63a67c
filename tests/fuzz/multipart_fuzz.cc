// Fuzz target: multipart/form-data parsing (rest::ParseMultipart). The input is the request's
// Content-Type up to the first '\n', then the body. Checks beyond "no crash":
//   - success: every part's body lies inside the request body, in order and without overlap;
//     the parts' fields (name, filename, content type: client bytes) put into JSON through
//     rest::Json give valid JSON;
//   - failure: InvalidArgument, and rest::Error(status) is a valid JSON error answer.
#include <cstdint>
#include <string_view>

#include "../../src/serve/http/message.h"
#include "../../src/serve/http/multipart.h"
#include "fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace rest = kiln::serve::rest;
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const size_t nl = in.find('\n');
  const std::string_view content_type = nl == std::string_view::npos ? in : in.substr(0, nl);
  const std::string_view body = nl == std::string_view::npos ? std::string_view() : in.substr(nl + 1);
  auto parts = rest::ParseMultipart(body, content_type);
  if (!parts.ok()) {
    KILN_FUZZ_CHECK(parts.status().code() == kiln::StatusCode::kInvalidArgument,
                    parts.status().ToString());
    kiln::fuzz::CheckErrorResponse(rest::Error(parts.status()));
    return 0;
  }
  const char* end_of_last = body.data();
  rest::json fields = rest::json::array();
  for (const rest::Part& p : *parts) {
    KILN_FUZZ_CHECK(p.body.empty() || (p.body.data() >= end_of_last &&
                                        p.body.data() + p.body.size() <= body.data() + body.size()),
                    "part body outside the request body or overlapping the previous one");
    if (!p.body.empty()) end_of_last = p.body.data() + p.body.size();
    fields.push_back({{"name", p.name}, {"filename", p.filename},
                      {"content_type", p.content_type}, {"bytes", p.body.size()}});
  }
  kiln::fuzz::MustParseJson(rest::Json(fields).body);
  return 0;
}
