#include "kiln/core/process.h"

#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

namespace kiln {
namespace {

TEST(ProcessTest, ReturnsTheExitStatus) {
  EXPECT_EQ(*RunProcess({"sh", "-c", "exit 3"}), 3);
  EXPECT_EQ(*RunProcess({"true"}), 0);
}

TEST(ProcessTest, ArgumentsArriveExactlyAsGivenWithNoShellInBetween) {
  // $1 must be the one argument, spaces, quotes, $ and ; included: nothing re-parses it.
  const std::string tricky = "a b'c\"d $HOME; `x` *";
  EXPECT_EQ(*RunProcess({"sh", "-c",
                         "test \"$1\" = '" + std::string("a b'\\''c\"d $HOME; `x` *") +
                             "' && test $# -eq 1",
                         "sh", tricky}),
            0);
}

TEST(ProcessTest, ASignalIs128PlusItsNumber) {
  EXPECT_EQ(*RunProcess({"sh", "-c", "kill -9 $$"}), 128 + 9);
}

TEST(ProcessTest, AProgramThatCannotStartIsNotFound) {
  auto r = RunProcess({"/nonexistent/kiln-no-such-program", "x"});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_NE(r.status().message().find("kiln-no-such-program"), std::string::npos);
  EXPECT_EQ(RunProcess({}).status().code(), StatusCode::kInvalidArgument);
}

TEST(ProcessTest, StdoutCanGoToStderr) {
  testing::internal::CaptureStderr();
  testing::internal::CaptureStdout();
  ASSERT_TRUE(RunProcess({"sh", "-c", "echo to-stdout"}, {.stdout_to_stderr = true}).ok());
  const std::string out = testing::internal::GetCapturedStdout();
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_EQ(out, "");
  EXPECT_EQ(err, "to-stdout\n");
}

TEST(ProcessTest, DisplayQuotesOnlyWhatAShellWouldNeed) {
  EXPECT_EQ(CommandLineForDisplay({"python3", "bench/peers.py", "--images", "64"}),
            "python3 bench/peers.py --images 64");
  EXPECT_EQ(CommandLineForDisplay({"a b", "it's", ""}), "'a b' 'it'\\''s' ''");
}

// A child that ignores nothing: SIGTERM ends it, its status says so, and the log got its output.
TEST(ChildProcessTest, StopsARunningChildWithSigtermAndKeepsItsLog) {
  const auto log =
      std::filesystem::temp_directory_path() / ("kiln-child-" + std::to_string(getpid()) + ".log");
  std::filesystem::remove(log);
  auto child = ChildProcess::Start({"sh", "-c", "echo started; echo oops >&2; exec sleep 60"}, log);
  ASSERT_TRUE(child.ok()) << child.status().ToString();
  EXPECT_GT(child->pid(), 0);
  EXPECT_TRUE(child->Running());
  // Wait for the output rather than for a fixed time.
  std::string text;
  for (int i = 0; i < 200 && text.find("oops") == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    std::ifstream in(log);
    std::stringstream ss;
    ss << in.rdbuf();
    text = ss.str();
  }
  EXPECT_NE(text.find("started\n"), std::string::npos) << text;
  EXPECT_NE(text.find("oops\n"), std::string::npos) << text;
  auto code = child->Stop(std::chrono::seconds(10));
  ASSERT_TRUE(code.ok()) << code.status().ToString();
  EXPECT_EQ(*code, 128 + SIGTERM);
  EXPECT_FALSE(child->Running());
  EXPECT_EQ(child->pid(), -1);
  EXPECT_EQ(*child->Stop(std::chrono::seconds(1)), 128 + SIGTERM);  // asked again: the same
  std::filesystem::remove(log);
}

// A child that ignores SIGTERM is killed once the grace period is over.
TEST(ChildProcessTest, KillsAChildThatIgnoresSigterm) {
  auto child = ChildProcess::Start({"sh", "-c", "trap '' TERM; while :; do sleep 0.05; done"});
  ASSERT_TRUE(child.ok()) << child.status().ToString();
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // let the trap be set
  auto code = child->Stop(std::chrono::milliseconds(300));
  ASSERT_TRUE(code.ok()) << code.status().ToString();
  EXPECT_EQ(*code, 128 + SIGKILL);
}

// An exit of its own is seen by Running(); the destructor kills a child still running.
TEST(ChildProcessTest, SeesItsOwnExitAndTheDestructorReapsTheRest) {
  auto done = ChildProcess::Start({"sh", "-c", "exit 7"});
  ASSERT_TRUE(done.ok());
  for (int i = 0; i < 500 && done->Running(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_FALSE(done->Running());
  EXPECT_EQ(*done->Stop(std::chrono::seconds(1)), 7);
  pid_t pid = -1;
  {
    auto sleeper = ChildProcess::Start({"sleep", "60"});
    ASSERT_TRUE(sleeper.ok());
    pid = sleeper->pid();
    ChildProcess moved = std::move(*sleeper);  // ownership moves; the moved-from has none
    EXPECT_EQ(sleeper->pid(), -1);
    EXPECT_EQ(moved.pid(), pid);
  }
  EXPECT_NE(kill(pid, 0), 0);  // gone, and reaped (no zombie answers the signal)
  EXPECT_EQ(ChildProcess::Start({"/nonexistent/kiln-no-such-program"}).status().code(),
            StatusCode::kNotFound);
  EXPECT_EQ(ChildProcess::Start({}).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kiln
