#include "test_util.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <random>

namespace kiln::testing {

namespace fs = std::filesystem;

fs::path DataArchive() {
  const char* env = std::getenv("KILN_TEST_DATA");
  return env != nullptr ? fs::path(env) : fs::path(KILN_TEST_DATA_DEFAULT);
}

const data::Dataset& SharedDataset() {
  static const std::unique_ptr<data::Dataset> kData = [] {
    auto ds = data::LoadCifar10(DataArchive());
    if (!ds.ok()) {
      ADD_FAILURE() << "cannot load the test data set: " << ds.status().ToString();
      return std::unique_ptr<data::Dataset>();
    }
    return std::make_unique<data::Dataset>(std::move(ds).value());
  }();
  if (!kData) {
    std::fprintf(stderr, "test data set unavailable at %s\n", DataArchive().c_str());
    std::abort();
  }
  return *kData;
}

TempDir::TempDir() {
  std::random_device rd;
  path_ = fs::temp_directory_path() / ("kiln-test-" + std::to_string(rd()) + std::to_string(rd()));
  fs::create_directories(path_);
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

std::string KilnBinary() {
  const char* env = std::getenv("KILN_BINARY");
  return env != nullptr ? env : KILN_BINARY_DEFAULT;
}

CommandResult RunKiln(const std::string& args, bool merge_stderr) {
  // Appended piecewise: GCC 12 at -O3 warns falsely (-Wrestrict) on a chain of `+`.
  std::string cmd = "'";
  cmd.append(KilnBinary()).append("' ").append(args);
  if (merge_stderr) cmd.append(" 2>&1");
  CommandResult r;
  FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr) return r;
  std::array<char, 4096> buf{};
  size_t n = 0;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) r.output.append(buf.data(), n);
  int status = pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  const std::string report = SanitizerReport(r.output);
  EXPECT_TRUE(report.empty()) << "sanitizer report from `kiln " << args << "`:\n" << report;
  return r;
}

std::string SanitizerReport(const std::string& output) {
  // The first line of each kind of report; UBSan's is "<file>:<line>:<col>: runtime error: ...".
  static constexpr std::array<const char*, 4> kMarkers = {
      "ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "WARNING: ThreadSanitizer",
      ": runtime error: "};
  size_t first = std::string::npos;
  for (const char* m : kMarkers) first = std::min(first, output.find(m));
  if (first == std::string::npos) return "";
  const size_t line = output.rfind('\n', first);
  return output.substr(line == std::string::npos ? 0 : line + 1);
}

}  // namespace kiln::testing
