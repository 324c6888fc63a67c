// multipart/form-data bodies (RFC 7578), as browsers and curl -F send them: each part's name,
// file name, content type and bytes. The parts point into the body (no copies).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "kiln/core/status.h"

namespace kiln::serve::rest {

struct Part {
  std::string name, filename, content_type;
  std::string_view body;
};

// `content_type` is the request's Content-Type (its boundary parameter delimits the parts).
// InvalidArgument for a missing boundary or a malformed body.
Result<std::vector<Part>> ParseMultipart(std::string_view body, std::string_view content_type);

}  // namespace kiln::serve::rest
