#include "kiln/core/hash.h"

#include <openssl/evp.h>

#include <fstream>
#include <memory>
#include <vector>

namespace kiln {

Result<std::string> FileDigest(const std::filesystem::path& file, DigestKind kind) {
  std::ifstream in(file, std::ios::binary);
  if (!in) return NotFoundError("cannot open " + file.string());
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  const EVP_MD* md = kind == DigestKind::kMd5 ? EVP_md5() : EVP_sha256();
  if (!ctx || EVP_DigestInit_ex(ctx.get(), md, nullptr) != 1) {
    return InternalError("OpenSSL digest init failed");
  }
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    std::streamsize n = in.gcount();
    if (n > 0 && EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(n)) != 1) {
      return InternalError("OpenSSL digest update failed");
    }
  }
  if (in.bad()) return InternalError("read error on " + file.string());
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_DigestFinal_ex(ctx.get(), out, &len) != 1) return InternalError("digest final failed");
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(len * 2);
  for (unsigned int i = 0; i < len; ++i) {
    hex.push_back(kHex[out[i] >> 4]);
    hex.push_back(kHex[out[i] & 15]);
  }
  return hex;
}

}  // namespace kiln
