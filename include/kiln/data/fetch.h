// Downloading the official CIFAR-10 archive for users with internet access.
//
//   KILN_ASSIGN_OR_RETURN(auto path, kiln::data::FetchArchive({.out_dir = "data"}, &std::cerr));
//
// Downloads to a temporary file beside the destination, checks the MD5 published with the data
// set, then renames into place durably (core/file.h CommitAtomically); an existing file whose MD5 matches is reused. Offline, or on any network
// error, returns Unavailable with a message that points to `--data/--archive` for a copy
// obtained by hand. A checksum mismatch is InvalidArgument and the partial file is removed.
#pragma once

#include <filesystem>
#include <iosfwd>
#include <string>

#include "kiln/core/status.h"
#include "kiln/data/cifar10.h"

namespace kiln::data {

struct FetchOptions {
  std::filesystem::path out_dir = "data";  // created if missing
  std::string url = kCifarUrl;             // any libcurl URL (https://, file://, ...)
  std::string md5 = kCifarMd5;             // expected lower-case hex MD5 of the archive
  long connect_timeout_s = 20;             // fail fast when offline
  bool force = false;                      // download even if a verified copy exists
};

// Returns the path of the verified archive. `progress` (may be null) gets a progress bar.
Result<std::filesystem::path> FetchArchive(const FetchOptions& options, std::ostream* progress);

}  // namespace kiln::data
