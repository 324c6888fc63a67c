#include "kiln/core/file.h"

#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstring>
#include <functional>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <vector>

#include "../test_util.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

std::string Read(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::vector<std::string> Names(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// Caps the size of any file this process writes (RLIMIT_FSIZE): a write past it fails with
// EFBIG, a real write error that needs no special file system. Restores the limit on exit.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    getrlimit(RLIMIT_FSIZE, &saved_);
    previous_ = std::signal(SIGXFSZ, SIG_IGN);  // else the kernel kills the process
    rlimit limit = saved_;
    limit.rlim_cur = bytes;
    ok_ = setrlimit(RLIMIT_FSIZE, &limit) == 0;
  }
  ~FileSizeLimit() {
    setrlimit(RLIMIT_FSIZE, &saved_);
    std::signal(SIGXFSZ, previous_);
  }
  FileSizeLimit(const FileSizeLimit&) = delete;
  FileSizeLimit& operator=(const FileSizeLimit&) = delete;
  bool ok() const { return ok_; }

 private:
  rlimit saved_{};
  void (*previous_)(int) = SIG_DFL;
  bool ok_ = false;
};

TEST(FileTest, WriteFileAtomicCreatesAndReplaces) {
  testing::TempDir dir;
  const fs::path file = dir.path() / "out.json";
  KILN_ASSERT_OK(WriteFileAtomic(file, "first"));
  EXPECT_EQ(Read(file), "first");
  KILN_ASSERT_OK(WriteFileAtomic(file, std::string(100000, 'x')));
  EXPECT_EQ(Read(file), std::string(100000, 'x'));
  KILN_ASSERT_OK(WriteFileAtomic(file, ""));
  EXPECT_EQ(Read(file), "");
  EXPECT_EQ(Names(dir.path()), std::vector<std::string>{"out.json"});  // no temporary left
}

TEST(FileTest, FailedWriteKeepsTheOldFileAndLeavesNoTemporary) {
  testing::TempDir dir;
  const fs::path file = dir.path() / "resume.ckpt";
  KILN_ASSERT_OK(WriteFileAtomic(file, "old content"));
  Status s;
  {
    FileSizeLimit limit(4096);
    ASSERT_TRUE(limit.ok());
    s = WriteFileAtomic(file, std::string(1 << 20, 'n'));
  }
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << s.ToString();
  EXPECT_NE(s.message().find("while writing " + file.string()), std::string::npos) << s.ToString();
  EXPECT_EQ(Read(file), "old content");
  EXPECT_EQ(Names(dir.path()), std::vector<std::string>{"resume.ckpt"});
}

TEST(FileTest, MissingFolderIsNotFoundAndNamesTheFile) {
  testing::TempDir dir;
  const fs::path file = dir.path() / "no" / "such" / "dir" / "a.txt";
  Status s = WriteFileAtomic(file, "x");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kNotFound) << s.ToString();
  EXPECT_NE(s.message().find(file.string()), std::string::npos) << s.ToString();
  EXPECT_NE(s.message().find("no such file or directory"), std::string::npos) << s.ToString();
}

TEST(FileTest, CommitAtomicallyRenamesWhatTheWriterWrote) {
  testing::TempDir dir;
  const fs::path file = dir.path() / "model.onnx";
  fs::path seen;
  KILN_ASSERT_OK(CommitAtomically(file, [&](const fs::path& tmp) {
    seen = tmp;
    EXPECT_FALSE(fs::exists(tmp));
    EXPECT_EQ(tmp.parent_path(), file.parent_path());  // same directory: rename stays atomic
    EXPECT_EQ(tmp.filename().string().rfind(".model.onnx.tmp.", 0), 0U) << tmp;
    std::ofstream(tmp) << "graph";
    EXPECT_FALSE(fs::exists(file));  // the target appears only when complete
    return Status::Ok();
  }));
  EXPECT_EQ(Read(file), "graph");
  EXPECT_FALSE(fs::exists(seen));
  EXPECT_EQ(Names(dir.path()), std::vector<std::string>{"model.onnx"});
}

TEST(FileTest, CommitAtomicallyKeepsTheOldFileWhenTheWriterFails) {
  struct Case {
    const char* name;
    std::function<Status(const fs::path&)> write;
    const char* message;
  };
  const Case cases[] = {
      {"error after a partial write",
       [](const fs::path& tmp) {
         std::ofstream(tmp) << "half";
         return InternalError("encoder failed");
       },
       "encoder failed"},
      {"exception after a partial write",
       [](const fs::path& tmp) -> Status {
         std::ofstream(tmp) << "half";
         throw std::runtime_error("libtorch threw");
       },
       "libtorch threw"},
      {"no file written", [](const fs::path&) { return Status::Ok(); }, "left no file"},
  };
  for (const auto& c : cases) {
    testing::TempDir dir;
    const fs::path file = dir.path() / "best.ckpt";
    KILN_ASSERT_OK(WriteFileAtomic(file, "previous"));
    Status s = CommitAtomically(file, c.write);
    ASSERT_FALSE(s.ok()) << c.name;
    EXPECT_NE(s.message().find(c.message), std::string::npos) << c.name << ": " << s.ToString();
    EXPECT_EQ(Read(file), "previous") << c.name;
    EXPECT_EQ(Names(dir.path()), std::vector<std::string>{"best.ckpt"}) << c.name;
  }
}

TEST(FileTest, CopyFileAtomic) {
  testing::TempDir dir;
  KILN_ASSERT_OK(WriteFileAtomic(dir.path() / "a", "payload"));
  KILN_ASSERT_OK(WriteFileAtomic(dir.path() / "b", "old"));
  KILN_ASSERT_OK(CopyFileAtomic(dir.path() / "a", dir.path() / "b"));
  EXPECT_EQ(Read(dir.path() / "b"), "payload");
  Status s = CopyFileAtomic(dir.path() / "missing", dir.path() / "b");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(Read(dir.path() / "b"), "payload");
  EXPECT_EQ(Names(dir.path()), (std::vector<std::string>{"a", "b"}));
}

// A full disk: a small tmpfs (needs root to mount).
TEST(FileTest, FullDiskSaysNoSpaceLeftAndKeepsTheOldFile) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to mount a tmpfs";
  testing::TempDir dir;
  const fs::path mnt = dir.path() / "small";
  fs::create_directories(mnt);
  if (mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=64k") != 0) {
    GTEST_SKIP() << "cannot mount a tmpfs: " << std::strerror(errno);
  }
  struct Unmount {
    fs::path dir;
    ~Unmount() { umount2(dir.c_str(), MNT_DETACH); }
  } unmount{mnt};
  const fs::path file = mnt / "metrics.json";
  KILN_ASSERT_OK(WriteFileAtomic(file, std::string(20000, 'a')));
  // Old file and new temporary together do not fit in 64 KiB.
  Status s = WriteFileAtomic(file, std::string(60000, 'b'));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(s.message(), "no space left on device while writing " + file.string());
  EXPECT_EQ(Read(file), std::string(20000, 'a'));
  EXPECT_EQ(Names(mnt), std::vector<std::string>{"metrics.json"});
}

}  // namespace
}  // namespace kiln
