#include "multipart.h"

#include "message.h"

namespace kiln::serve::rest {

Result<std::vector<Part>> ParseMultipart(std::string_view body, std::string_view content_type) {
  const size_t b = content_type.find("boundary=");
  if (b == std::string_view::npos) {
    return InvalidArgumentError("multipart/form-data without a boundary");
  }
  std::string boundary(content_type.substr(b + 9));
  const size_t semi = boundary.find(';');
  if (semi != std::string::npos) boundary = boundary.substr(0, semi);
  if (boundary.size() >= 2 && boundary.front() == '"' && boundary.back() == '"') {
    boundary = boundary.substr(1, boundary.size() - 2);
  }
  if (boundary.empty()) return InvalidArgumentError("multipart/form-data with an empty boundary");
  const std::string delim = "--" + boundary;
  const std::string next_delim = "\r\n" + delim;
  std::vector<Part> parts;
  size_t pos = body.find(delim);
  if (pos == std::string_view::npos) {
    return InvalidArgumentError("multipart body without its boundary");
  }
  for (;;) {
    pos += delim.size();
    if (body.substr(pos, 2) == "--") break;  // closing delimiter
    if (body.substr(pos, 2) != "\r\n") return InvalidArgumentError("malformed multipart body");
    pos += 2;
    const size_t headers_end = body.find("\r\n\r\n", pos);
    if (headers_end == std::string_view::npos) {
      return InvalidArgumentError("malformed multipart part headers");
    }
    Part part;
    for (const auto& line : Split(body.substr(pos, headers_end - pos), '\n')) {
      std::string l = line;
      if (!l.empty() && l.back() == '\r') l.pop_back();
      const std::string lower = Lower(l);
      if (lower.rfind("content-disposition:", 0) == 0) {
        auto value = [&](const std::string& key) -> std::string {
          const size_t k = lower.find(key + "=\"");
          if (k == std::string::npos) return "";
          const size_t s = k + key.size() + 2;
          const size_t e = l.find('"', s);
          return e == std::string::npos ? "" : l.substr(s, e - s);
        };
        part.name = value(" name");
        if (part.name.empty()) part.name = value(";name");
        part.filename = value("filename");
      } else if (lower.rfind("content-type:", 0) == 0) {
        part.content_type = l.substr(13);
      }
    }
    const size_t data_start = headers_end + 4;
    const size_t next = body.find(next_delim, data_start);
    if (next == std::string_view::npos) {
      return InvalidArgumentError("multipart part is not terminated");
    }
    part.body = body.substr(data_start, next - data_start);
    parts.push_back(std::move(part));
    pos = next + 2;
  }
  return parts;
}

}  // namespace kiln::serve::rest
