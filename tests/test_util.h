// Shared helpers for Kiln's tests: where the shared CIFAR-10 archive is, a cached load of it,
// temporary folders and running the real `kiln` binary.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <memory>
#include <string>

#include "kiln/core/status.h"
#include "kiln/data/cifar10.h"

namespace kiln::testing {

// Path of the CIFAR-10 archive (env KILN_TEST_DATA, set by CMake to ../shared/data/...).
std::filesystem::path DataArchive();

// The archive, loaded once per test binary. Fails the test (fatal) if it cannot be read.
const data::Dataset& SharedDataset();

// A fresh empty folder under the system temp dir, removed when the object dies.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

struct CommandResult {
  int exit_code = -1;
  std::string output;
};

// Path of the kiln binary under test (env KILN_BINARY, set by CMake).
std::string KilnBinary();

// Runs `kiln <args>` through the shell and captures its output: stdout and stderr together, or
// stdout alone when `merge_stderr` is false (stderr then goes to the test's own stderr). A
// sanitizer report in the captured output fails the calling test (see SanitizerReport).
CommandResult RunKiln(const std::string& args, bool merge_stderr = true);

// The first sanitizer report (ASan, UBSan, LSan or TSan) in a child process's output, from its
// first line on; empty when there is none. A child's report must fail the test that started it
// even when its exit code is what the test expected (TSan reports and carries on; ASan's exit
// code 1 is also an ordinary error exit of `kiln`).
std::string SanitizerReport(const std::string& output);

}  // namespace kiln::testing

#define KILN_ASSERT_OK(expr)                         \
  do {                                               \
    const auto& kiln_s_ = (expr);                    \
    ASSERT_TRUE(kiln_s_.ok()) << kiln_s_.ToString(); \
  } while (false)

// For Result<T>: asserts ok and prints the status otherwise.
#define KILN_ASSERT_RESULT_OK(result) ASSERT_TRUE((result).ok()) << (result).status().ToString()

#define KILN_EXPECT_OK(expr)                         \
  do {                                               \
    const auto& kiln_s_ = (expr);                    \
    EXPECT_TRUE(kiln_s_.ok()) << kiln_s_.ToString(); \
  } while (false)
