#include "kiln/data/fetch.h"

#include <curl/curl.h>

#include <cstdio>
#include <memory>
#include <optional>

#include "kiln/core/file.h"
#include "kiln/core/hash.h"
#include "kiln/core/progress.h"

namespace kiln::data {

namespace fs = std::filesystem;

namespace {

struct Transfer {
  std::FILE* file = nullptr;
  std::ostream* progress_out = nullptr;
  std::optional<ProgressBar> bar;
};

size_t WriteChunk(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  return std::fwrite(data, size, n, t->file) * size;
}

int OnProgress(void* user, curl_off_t total, curl_off_t now, curl_off_t, curl_off_t) {
  auto* t = static_cast<Transfer*>(user);
  if (t->progress_out == nullptr || total <= 0) return 0;
  if (!t->bar) t->bar.emplace("download", static_cast<int64_t>(total), *t->progress_out, "B/s");
  t->bar->Update(static_cast<int64_t>(now));
  return 0;
}

std::string FileNameFromUrl(const std::string& url) {
  auto slash = url.find_last_of('/');
  std::string name = slash == std::string::npos ? url : url.substr(slash + 1);
  return name.empty() ? std::string(kCifarArchiveName) : name;
}

// `shown_as` names the file in the message (the download's destination, not its temporary name).
Status CheckMd5(const fs::path& file, const std::string& want, const fs::path& shown_as) {
  KILN_ASSIGN_OR_RETURN(std::string got, FileDigest(file, DigestKind::kMd5));
  if (got != want) {
    return InvalidArgumentError(shown_as.string() + ": MD5 " + got + " does not match the published " +
                                want + " (corrupt or different download)");
  }
  return Status::Ok();
}

}  // namespace

Result<fs::path> FetchArchive(const FetchOptions& options, std::ostream* progress) {
  std::error_code ec;
  fs::create_directories(options.out_dir, ec);
  if (ec)
    return InvalidArgumentError("cannot create " + options.out_dir.string() + ": " + ec.message());
  const fs::path dest = options.out_dir / FileNameFromUrl(options.url);
  if (!options.force && fs::exists(dest) && CheckMd5(dest, options.md5, dest).ok()) {
    return dest;  // already downloaded and verified
  }
  static const CURLcode kInit = curl_global_init(CURL_GLOBAL_DEFAULT);
  if (kInit != CURLE_OK) return InternalError("libcurl initialisation failed");
  std::unique_ptr<CURL, decltype(&curl_easy_cleanup)> curl(curl_easy_init(), curl_easy_cleanup);
  if (!curl) return InternalError("libcurl easy handle failed");

  // Downloaded beside `dest` under a temporary name, checked, then renamed into place.
  KILN_RETURN_IF_ERROR(CommitAtomically(dest, [&](const fs::path& part) -> Status {
    Transfer t;
    t.file = std::fopen(part.c_str(), "wb");
    if (t.file == nullptr) return InvalidArgumentError("cannot write " + dest.string());
    t.progress_out = progress;
    char error[CURL_ERROR_SIZE] = {0};
    curl_easy_setopt(curl.get(), CURLOPT_URL, options.url.c_str());
    curl_easy_setopt(curl.get(), CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(curl.get(), CURLOPT_FAILONERROR, 1L);
    curl_easy_setopt(curl.get(), CURLOPT_CONNECTTIMEOUT, options.connect_timeout_s);
    curl_easy_setopt(curl.get(), CURLOPT_WRITEFUNCTION, WriteChunk);
    curl_easy_setopt(curl.get(), CURLOPT_WRITEDATA, &t);
    curl_easy_setopt(curl.get(), CURLOPT_XFERINFOFUNCTION, OnProgress);
    curl_easy_setopt(curl.get(), CURLOPT_XFERINFODATA, &t);
    curl_easy_setopt(curl.get(), CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(curl.get(), CURLOPT_ERRORBUFFER, error);
    CURLcode rc = curl_easy_perform(curl.get());
    const bool closed = std::fclose(t.file) == 0;
    if (rc != CURLE_OK) {
      std::string why = error[0] != 0 ? error : curl_easy_strerror(rc);
      return UnavailableError("could not download " + options.url + ": " + why +
                              ". Without internet access, copy " + kCifarArchiveName +
                              " here by hand and pass it with --data/--archive PATH.");
    }
    if (!closed) return InternalError("write error on " + dest.string());
    if (t.bar) t.bar->Finish();
    return CheckMd5(part, options.md5, dest);
  }));
  return dest;
}

}  // namespace kiln::data
