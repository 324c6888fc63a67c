// File digests (OpenSSL EVP). Used to verify downloads and to fingerprint data and models.
// Thread-safe; fails with NotFound/Internal Status naming the file.
#pragma once

#include <filesystem>
#include <string>

#include "kiln/core/status.h"

namespace kiln {

enum class DigestKind { kMd5, kSha256 };

// Lower-case hex digest of a whole file, read in chunks.
Result<std::string> FileDigest(const std::filesystem::path& file, DigestKind kind);

}  // namespace kiln
