// Shared by the fuzz targets: a check that aborts (so libFuzzer and the replay driver report the
// input) and the JSON checks every HTTP-facing target makes.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

// Not assert(): it must hold in every build type, the replay driver's Release build included.
#define KILN_FUZZ_CHECK(cond, what)                                                    \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      std::fprintf(stderr, "%s:%d: fuzz check failed: %s (%s)\n", __FILE__, __LINE__, \
                   #cond, std::string(what).c_str());                                 \
      std::abort();                                                                    \
    }                                                                                  \
  } while (0)

namespace kiln::fuzz {

// `text` parses as JSON (and prints again without throwing: no invalid UTF-8 inside).
inline nlohmann::json MustParseJson(std::string_view text) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text.begin(), text.end());
    (void)j.dump();  // throws type_error 316 on invalid UTF-8
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz check failed: not valid JSON (%s): %.*s\n", e.what(),
                 static_cast<int>(std::min<size_t>(text.size(), 400)), text.data());
    std::abort();
  }
  return j;
}

// An HTTP error answer: a 4xx/5xx status and a JSON body {"error": "<non-empty string>"}.
template <class Response>
void CheckErrorResponse(const Response& r) {
  KILN_FUZZ_CHECK(r.status >= 400 && r.status <= 599, std::to_string(r.status));
  KILN_FUZZ_CHECK(r.content_type == "application/json", r.content_type);
  const nlohmann::json j = MustParseJson(r.body);
  KILN_FUZZ_CHECK(j.is_object() && j.contains("error") && j["error"].is_string() &&
                      !j["error"].get<std::string>().empty(),
                  r.body);
}

}  // namespace kiln::fuzz
