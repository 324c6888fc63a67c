// Child processes, started from an argument vector: never through a shell, so no argument is
// re-parsed, globbed or in need of quoting (a path with a space or a quote passes as it is).
//
//   KILN_ASSIGN_OR_RETURN(int code, kiln::RunProcess({"python3", "bench/peers.py", "--out", p}));
//
// Thread-safe.
#pragma once

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

// `argv` as one would type it into a shell, for logs and messages: an argument is single-quoted
// when it holds anything but letters, digits and -_./=:,+@%.
std::string CommandLineForDisplay(const std::vector<std::string>& argv);

}  // namespace kiln
