#include "kiln/core/file.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <exception>
#include <string>

namespace kiln {

namespace fs = std::filesystem;

namespace {

// "<reason> while <doing> <file>", the reason in the system's words ("no space left on device").
Status ErrnoStatus(int err, const std::string& doing, const fs::path& file) {
  std::string reason = std::strerror(err);
  if (!reason.empty()) reason[0] = static_cast<char>(std::tolower(reason[0]));
  std::string message = reason + " while " + doing + " " + file.string();
  switch (err) {
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
      return ResourceExhaustedError(std::move(message));
    case ENOENT:
    case ENOTDIR:
      return NotFoundError(std::move(message));
    case EACCES:
    case EPERM:
    case EROFS:
    case EISDIR:
      return InvalidArgumentError(std::move(message));
    default:
      return InternalError(std::move(message));
  }
}

// ".<name>.tmp.<pid>.<n>" beside `file`.
fs::path TemporaryPathFor(const fs::path& file) {
  static std::atomic<uint64_t> counter{0};
  const std::string name = "." + file.filename().string() + ".tmp." +
                           std::to_string(::getpid()) + "." + std::to_string(counter++);
  return file.parent_path() / name;
}

Status FsyncPath(const fs::path& path, int flags, const fs::path& file, const char* doing) {
  int fd = -1;
  do {
    fd = ::open(path.c_str(), flags | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return ErrnoStatus(errno, doing, file);
  int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  // Some file systems cannot fsync a directory; the rename itself has happened.
  if (rc != 0 && !((flags & O_DIRECTORY) && (err == EINVAL || err == ENOTSUP))) {
    return ErrnoStatus(err, doing, file);
  }
  return Status::Ok();
}

// fsyncs `tmp`, renames it over `file`, fsyncs the directory. Removes `tmp` on failure.
Status Commit(const fs::path& tmp, const fs::path& file) {
  Status s = FsyncPath(tmp, O_RDONLY, file, "writing");
  if (s.ok() && ::rename(tmp.c_str(), file.c_str()) != 0) {
    s = ErrnoStatus(errno, "renaming " + tmp.string() + " over", file);
  }
  if (!s.ok()) {
    ::unlink(tmp.c_str());
    return s;
  }
  const fs::path dir = file.parent_path().empty() ? fs::path(".") : file.parent_path();
  return FsyncPath(dir, O_RDONLY | O_DIRECTORY, file, "syncing the directory of");
}

Status WriteAll(int fd, std::string_view bytes, const fs::path& file) {
  const char* p = bytes.data();
  size_t left = bytes.size();
  while (left > 0) {
    const ssize_t n = ::write(fd, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, "writing", file);
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  return Status::Ok();
}

}  // namespace

Status WriteFileAtomic(const fs::path& file, std::string_view bytes) {
  return CommitAtomically(file, [&](const fs::path& tmp) {
    int fd = -1;
    do {
      fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) return ErrnoStatus(errno, "creating a temporary file to write", file);
    Status s = WriteAll(fd, bytes, file);
    if (s.ok() && ::fsync(fd) != 0) s = ErrnoStatus(errno, "writing", file);
    // close() reports delayed write errors on some file systems (NFS).
    if (::close(fd) != 0 && s.ok()) s = ErrnoStatus(errno, "writing", file);
    return s;
  });
}

Status CommitAtomically(const fs::path& file,
                        const std::function<Status(const fs::path& tmp)>& write) {
  const fs::path tmp = TemporaryPathFor(file);
  Status s;
  try {
    s = write(tmp);
  } catch (const std::exception& e) {
    s = InternalError("cannot write " + file.string() + ": " + e.what());
  }
  if (s.ok() && !fs::is_regular_file(tmp)) {
    s = InternalError("cannot write " + file.string() + ": the writer left no file");
  }
  if (!s.ok()) {
    std::error_code ec;
    fs::remove(tmp, ec);
    return s;
  }
  return Commit(tmp, file);
}

Status CopyFileAtomic(const fs::path& from, const fs::path& to) {
  return CommitAtomically(to, [&](const fs::path& tmp) {
    std::error_code ec;
    fs::copy_file(from, tmp, ec);
    if (ec) return ErrnoStatus(ec.value(), "copying " + from.string() + " to", to);
    return Status::Ok();
  });
}

}  // namespace kiln
