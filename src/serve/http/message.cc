#include "message.h"

#include <algorithm>
#include <cctype>

namespace kiln::serve::rest {

std::string Lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

std::string Request::Header(std::string_view name) const {
  for (const auto& [k, v] : headers) {
    if (k.size() == name.size() &&
        std::equal(k.begin(), k.end(), name.begin(), [](char a, char b) {
          return std::tolower(static_cast<unsigned char>(a)) ==
                 std::tolower(static_cast<unsigned char>(b));
        })) {
      return v;
    }
  }
  return "";
}

void ParseTarget(std::string_view target, Request* req) {
  const size_t q = target.find('?');
  req->path = std::string(target.substr(0, q));
  if (q == std::string_view::npos) return;
  for (const auto& kv : Split(target.substr(q + 1), '&')) {
    if (kv.empty()) continue;
    const size_t eq = kv.find('=');
    req->query[PercentDecode(std::string_view(kv).substr(0, eq))] =
        eq == std::string::npos ? "" : PercentDecode(std::string_view(kv).substr(eq + 1));
  }
}

unsigned HttpCodeFromStatus(const Status& s) {
  switch (s.code()) {
    case StatusCode::kOk:
      return 200;
    case StatusCode::kInvalidArgument:
      return 400;
    case StatusCode::kNotFound:
      return 404;
    case StatusCode::kAlreadyExists:
      return 409;
    case StatusCode::kResourceExhausted:
      return 413;
    case StatusCode::kUnimplemented:
      return 501;
    case StatusCode::kUnavailable:
    case StatusCode::kCancelled:
      return 503;
    case StatusCode::kInternal:
      break;
  }
  return 500;
}

Response Json(const json& j, unsigned code) {
  return {code, "application/json", j.dump(-1, ' ', false, json::error_handler_t::replace), {}};
}
Response Error(unsigned code, const std::string& message) {
  return Json(json{{"error", message}}, code);
}
Response Error(const Status& s) { return Error(HttpCodeFromStatus(s), s.message()); }

std::string PercentDecode(std::string_view s) {
  auto hex = [](char c) {
    return std::isdigit(static_cast<unsigned char>(c)) ? c - '0'
                                                       : std::tolower(static_cast<unsigned char>(c)) - 'a' + 10;
  };
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+') {
      out += ' ';
    } else if (s[i] == '%' && i + 2 < s.size() &&
               std::isxdigit(static_cast<unsigned char>(s[i + 1])) &&
               std::isxdigit(static_cast<unsigned char>(s[i + 2]))) {
      out += static_cast<char>(hex(s[i + 1]) * 16 + hex(s[i + 2]));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

std::vector<std::string> Split(std::string_view s, char sep) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t end = s.find(sep, start);
    parts.emplace_back(s.substr(start, end == std::string_view::npos ? s.size() - start : end - start));
    if (end == std::string_view::npos) break;
    start = end + 1;
  }
  return parts;
}

namespace {
struct TooDeep {};
}  // namespace

Result<json> ParseJson(std::string_view text, const JsonLimits& limits) {
  if (static_cast<int64_t>(text.size()) > limits.max_bytes) {
    return ResourceExhaustedError("JSON body of " + std::to_string(text.size()) +
                                  " bytes is over the limit of " +
                                  std::to_string(limits.max_bytes) + " (--max-json-bytes)");
  }
  const int max_depth = limits.max_depth;
  try {
    json::parser_callback_t cb = [max_depth](int depth, json::parse_event_t, json&) {
      if (depth > max_depth) throw TooDeep{};
      return true;
    };
    return json::parse(text.begin(), text.end(), cb);
  } catch (const TooDeep&) {
    return InvalidArgumentError("JSON nested deeper than " + std::to_string(max_depth) +
                                " levels (--max-json-depth)");
  } catch (const json::exception& e) {
    return InvalidArgumentError(std::string("malformed JSON: ") + e.what());
  }
}

}  // namespace kiln::serve::rest
