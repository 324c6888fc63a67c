// The HTTP frontend's own request and response types (no Boost.Beast in them, so the router,
// the codecs and their fuzz targets run without a socket), the one Status -> HTTP code mapping,
// JSON error bodies and bounded JSON parsing.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kiln/core/status.h"

namespace kiln::serve::rest {

using json = nlohmann::json;

struct Response {
  unsigned status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
};
// Called exactly once per request, from any thread.
using Reply = std::function<void(Response)>;

struct Request {
  std::string method;                        // "GET", "POST", ...
  std::string path;                          // the target without its query
  std::map<std::string, std::string> query;  // percent-decoded
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  // The first header of that name (case-insensitive), or "".
  std::string Header(std::string_view name) const;
};

// Sticky routing between a model's versions: requests with the same key reach the same version.
inline constexpr const char* kRoutingKeyHeader = "X-Kiln-Routing-Key";

// Splits "path?a=1&b=2" into req->path and req->query.
void ParseTarget(std::string_view target, Request* req);

// The one place that maps a Status to an HTTP status code.
unsigned HttpCodeFromStatus(const Status& s);
// {"error": message}; valid JSON whatever bytes `message` holds (invalid UTF-8 is replaced).
Response Error(unsigned code, const std::string& message);
Response Error(const Status& s);
Response Json(const json& j, unsigned code = 200);

std::string PercentDecode(std::string_view s);
std::vector<std::string> Split(std::string_view s, char sep);
std::string Lower(std::string_view s);

struct JsonLimits {
  int64_t max_bytes = 16 << 20;
  int max_depth = 32;
};
// ResourceExhausted over max_bytes, InvalidArgument for malformed or too deeply nested JSON.
Result<json> ParseJson(std::string_view text, const JsonLimits& limits);

}  // namespace kiln::serve::rest
