// Child processes, started from an argument vector: never through a shell, so no argument is
// re-parsed, globbed or in need of quoting (a path with a space or a quote passes as it is).
//
//   KILN_ASSIGN_OR_RETURN(int code, kiln::RunProcess({"python3", "bench/peers.py", "--out", p}));
//
// Thread-safe.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

#include "kiln/core/status.h"

namespace kiln {

struct ProcessOptions {
  // The child's standard output goes to this process's standard error (for a child whose
  // chatter must not mix into a report this process writes to standard output).
  bool stdout_to_stderr = false;
};

// Starts argv[0] (searched in PATH when it holds no '/', as execvp does) with `argv`, waits for
// it and returns its exit status, or 128 + the signal's number when a signal ended it. NotFound
// when the program cannot be started; InvalidArgument for an empty argv.
Result<int> RunProcess(const std::vector<std::string>& argv, const ProcessOptions& options = {});

// A child that runs beside this process (a server a command drives, for example): started from
// an argument vector like RunProcess, not waited for. Stop() ends it with SIGTERM, then SIGKILL
// after `grace`; the destructor kills (SIGKILL) and reaps a child that still runs. Movable, not
// copyable; one owner at a time, not thread-safe.
//
//   KILN_ASSIGN_OR_RETURN(ChildProcess server, ChildProcess::Start({"kiln", "serve", ...}, log));
//   ...
//   KILN_ASSIGN_OR_RETURN(int code, server.Stop(std::chrono::seconds(30)));
class ChildProcess {
 public:
  ChildProcess() = default;
  ~ChildProcess();
  ChildProcess(ChildProcess&& other) noexcept;
  ChildProcess& operator=(ChildProcess&& other) noexcept;
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  // Starts `argv` with its standard output and error appended to `log` (empty: inherited).
  // NotFound when the program cannot be started, Internal when `log` cannot be opened,
  // InvalidArgument for an empty argv.
  static Result<ChildProcess> Start(const std::vector<std::string>& argv,
                                    const std::filesystem::path& log = {});

  pid_t pid() const { return pid_; }  // -1 when none (moved from, or reaped)
  // Whether it still runs; reaps it (and remembers its exit status) when it has ended.
  bool Running();
  // SIGTERM, then SIGKILL when it has not ended after `grace`; its exit status (128 + the
  // signal's number when a signal ended it); the status again when it had ended before.
  // Internal when there never was a child.
  Result<int> Stop(std::chrono::milliseconds grace);

 private:
  pid_t pid_ = -1;
  int exit_status_ = -1;  // once reaped
};

// `argv` as one would type it into a shell, for logs and messages: an argument is single-quoted
// when it holds anything but letters, digits and -_./=:,+@%.
std::string CommandLineForDisplay(const std::vector<std::string>& argv);

}  // namespace kiln
