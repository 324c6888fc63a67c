#include "kiln/core/process.h"

#include <gtest/gtest.h>

namespace kiln {
namespace {

TEST(ProcessTest, ReturnsTheExitStatus) {
  EXPECT_EQ(*RunProcess({"sh", "-c", "exit 3"}), 3);
  EXPECT_EQ(*RunProcess({"true"}), 0);
}

TEST(ProcessTest, ArgumentsArriveExactlyAsGivenWithNoShellInBetween) {
  // $1 must be the one argument, spaces, quotes, $ and ; included: nothing re-parses it.
  const std::string tricky = "a b'c\"d $HOME; `x` *";
  EXPECT_EQ(*RunProcess({"sh", "-c", "test \"$1\" = '" + std::string("a b'\\''c\"d $HOME; `x` *") +
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

}  // namespace
}  // namespace kiln
