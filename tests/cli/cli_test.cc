// The real `kiln` binary, run the way a user runs it.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "../test_util.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using testing::RunKiln;

bool Contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

TEST(CliTest, EveryCommandHasHelp) {
  for (const char* cmd :
       {"", "data", "data verify", "data fetch", "train", "eval", "export", "version"}) {
    auto r = RunKiln(std::string(cmd) + " --help");
    EXPECT_EQ(r.exit_code, 0) << cmd << "\n" << r.output;
    EXPECT_TRUE(Contains(r.output, "Usage")) << cmd << "\n" << r.output;
  }
}

TEST(CliTest, WrongArgumentsExitNonZeroWithAHelpfulMessage) {
  struct Case {
    const char* args;
    int code;
    const char* message;
  };
  const Case cases[] = {
      {"", 2, "A subcommand is required"},
      {"frobnicate", 2, "frobnicate"},
      {"train --arch vgg", 2, "vgg"},
      {"train --epochs 0", 2, "--epochs must be positive"},
      {"train --optimizer rmsprop", 2, "rmsprop"},
      {"train --precision fp16", 2, "fp16"},
      {"train --epochs many", 2, "--epochs"},
      {"eval", 2, "--checkpoint is required"},
      {"data", 2, "A subcommand is required"},
      {"data verify --data /nonexistent/cifar.tar.gz", 1,
       "/nonexistent/cifar.tar.gz: no such file"},
      {"eval --checkpoint /nonexistent.ckpt", 1, "no such checkpoint"},
  };
  for (const auto& c : cases) {
    auto r = RunKiln(c.args);
    EXPECT_EQ(r.exit_code, c.code) << c.args << "\n" << r.output;
    EXPECT_TRUE(Contains(r.output, c.message)) << c.args << "\n" << r.output;
  }
}

TEST(CliTest, DataVerifyPrintsASummary) {
  auto r = RunKiln("data verify --json --data '" + testing::DataArchive().string() + "'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto j = nlohmann::json::parse(r.output);
  EXPECT_EQ(j.at("train_images").get<int>(), 50000);
  EXPECT_EQ(j.at("classes").at(3).at("name"), "cat");
  EXPECT_EQ(j.at("classes").at(3).at("test").get<int>(), 1000);
  auto text = RunKiln("data verify --data '" + testing::DataArchive().string() + "'");
  EXPECT_EQ(text.exit_code, 0);
  EXPECT_TRUE(Contains(text.output, "airplane        5000    1000")) << text.output;
}

TEST(CliTest, VersionReportsTheEngines) {
  auto r = RunKiln("version");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(Contains(r.output, "libtorch 1.")) << r.output;
  EXPECT_TRUE(Contains(r.output, "onnxruntime 1.")) << r.output;
}

// train -> eval -> export end to end on a tiny subset; eval reproduces the accuracy train reported.
TEST(CliTest, TrainEvalExport) {
  testing::TempDir dir;
  const std::string data = "--data '" + testing::DataArchive().string() + "'";
  auto t = RunKiln("train " + data +
                   " --arch seed-cnn --epochs 1 --train-limit 1000 --validation-size 500 --out '" +
                   dir.path().string() + "'");
  ASSERT_EQ(t.exit_code, 0) << t.output;
  EXPECT_TRUE(Contains(t.output, "test accuracy")) << t.output;
  EXPECT_TRUE(Contains(t.output, "epoch 1/1")) << t.output;
  auto summary = nlohmann::json::parse(std::ifstream(dir.path() / "summary.json"));

  auto e = RunKiln("eval --json " + data + " --checkpoint '" + (dir.path() / "best.ckpt").string() +
                   "'");
  ASSERT_EQ(e.exit_code, 0) << e.output;
  auto j = nlohmann::json::parse(e.output);
  EXPECT_DOUBLE_EQ(j.at("accuracy").get<double>(), summary.at("test_accuracy").get<double>());
  EXPECT_EQ(j.at("images").get<int>(), 10000);
  int64_t total = 0;
  for (const auto& row : j.at("confusion")) {
    for (const auto& v : row) total += v.get<int64_t>();
  }
  EXPECT_EQ(total, 10000);

  auto text =
      RunKiln("eval " + data + " --checkpoint '" + (dir.path() / "best.ckpt").string() + "'");
  EXPECT_EQ(text.exit_code, 0);
  EXPECT_TRUE(Contains(text.output, "confusion matrix")) << text.output;
}

// Ctrl-C saves a resumable checkpoint and exits cleanly; --resume finishes the run.
TEST(CliTest, SigintSavesAndResumeFinishes) {
  testing::TempDir dir;
  const std::string args =
      "train --data '" + testing::DataArchive().string() +
      "' --arch seed-cnn --epochs 4 --train-limit 2000 --validation-size 500 --out '" +
      dir.path().string() + "'";
  const std::string bin = testing::KilnBinary();
  const fs::path log = dir.path() / "log";
  // Start in the background, interrupt as soon as epoch 2 starts, report the exit status.
  const fs::path script = dir.path() / "interrupt.sh";
  std::ofstream(script) << "'" << bin << "' " << args << " > '" << log.string() << "' 2>&1 &\n"
                        << "pid=$!\n"
                        << "for i in $(seq 1 600); do grep -q 'epoch 2/' '" << log.string()
                        << "' && break; sleep 0.05; done\n"
                        << "kill -INT $pid\nwait $pid\necho rc=$?\n";
  FILE* p = popen(("bash '" + script.string() + "'").c_str(), "r");
  ASSERT_NE(p, nullptr);
  char buf[256] = {};
  std::string out;
  while (fgets(buf, sizeof buf, p) != nullptr) out += buf;
  pclose(p);
  std::ifstream log_in(log);
  std::string text((std::istreambuf_iterator<char>(log_in)), std::istreambuf_iterator<char>());
  EXPECT_TRUE(Contains(out, "rc=130")) << out << text;
  EXPECT_TRUE(Contains(text, "interrupted at epoch 2")) << text;
  EXPECT_TRUE(Contains(text, "continue with --resume")) << text;
  ASSERT_TRUE(fs::exists(dir.path() / "resume.ckpt")) << text;
  EXPECT_FALSE(fs::exists(dir.path() / "summary.json"));

  auto r = RunKiln(args + " --resume");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(Contains(r.output, "resumed at epoch 2")) << r.output;
  EXPECT_TRUE(fs::exists(dir.path() / "summary.json"));
  std::ifstream csv(dir.path() / "metrics.csv");
  std::string line;
  int rows = 0;
  while (std::getline(csv, line)) ++rows;
  EXPECT_EQ(rows, 5);  // header + 4 epochs: the one before the interruption is kept
}

}  // namespace
}  // namespace kiln
