// kiln: train, export, optimize, benchmark and serve an image classifier.
#include <malloc.h>

#include <csignal>
#include <iostream>
#include <string>

#include "commands.h"
#include "kiln/core/version.h"

namespace kiln::cli {

namespace {
std::atomic<bool> g_stop{false};

void OnSignal(int) {
  if (g_stop.exchange(true)) {
    std::signal(SIGINT, SIG_DFL);  // a second Ctrl-C kills at once
    std::raise(SIGINT);
  }
}
}  // namespace

const std::atomic<bool>& StopRequested() { return g_stop; }

std::string g_command_line;
const std::string& CommandLine() { return g_command_line; }
const char* DefaultDataPath() { return "data/cifar-10-binary.tar.gz"; }

}  // namespace kiln::cli

int main(int argc, char** argv) {
  // glibc would otherwise unmap and re-map large activation buffers on every training step
  // (measured up to +70% step time on a wide net): keep freed memory in the heap instead. Not
  // for the long-running server and load generators: they must give memory back after a burst.
  const std::string command = argc > 1 ? argv[1] : "";
  if (command != "serve" && command != "loadgen" && command != "tune") {
    mallopt(M_MMAP_MAX, 0);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
  }

  CLI::App app{"Kiln: train, export, optimize, benchmark and serve an image classifier."};
  app.require_subcommand(1);
  app.set_version_flag("--version", [] { return std::string("kiln ") + kiln::Version(); });
  kiln::cli::Runner run;
#ifndef KILN_SERVE_ONLY  // the sanitizer builds' serving-only binary (CMake KILN_SERVE_ONLY)
  kiln::cli::RegisterDataCommand(app, &run);
  kiln::cli::RegisterTrainCommand(app, &run);
  kiln::cli::RegisterEvalCommand(app, &run);
  kiln::cli::RegisterExportCommand(app, &run);
  kiln::cli::RegisterPredictCommand(app, &run);
  kiln::cli::RegisterOptimizeCommand(app, &run);
  kiln::cli::RegisterBenchCommand(app, &run);
  kiln::cli::RegisterPipelineCommand(app, &run);
  kiln::cli::RegisterVersionCommand(app, &run);
  kiln::cli::RegisterDriftCommand(app, &run);
  kiln::cli::RegisterTuneCommand(app, &run);
#endif
  kiln::cli::RegisterServeCommand(app, &run);
  kiln::cli::RegisterLoadgenCommand(app, &run);
  kiln::cli::RegisterRepoCommand(app, &run);
  for (int i = 0; i < argc; ++i) {
    kiln::cli::g_command_line += (i ? " " : "") + std::string(i ? argv[i] : "kiln");
  }
  if (argc > 1 && argv[1][0] != '-') {  // name the unknown command instead of CLI11's generic text
    std::string names;
    bool known = false;
    for (const CLI::App* sub : app.get_subcommands({})) {
      known |= sub->get_name() == argv[1];
      names += (names.empty() ? "" : ", ") + sub->get_name();
    }
    if (!known) {
      std::cerr << "kiln: unknown command '" << argv[1] << "' (commands: " << names
                << "). Run 'kiln --help' for usage.\n";
      return kiln::cli::kExitUsage;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    std::cerr << "Run 'kiln --help' or 'kiln <command> --help' for usage.\n";
    return kiln::cli::kExitUsage;
  }
  std::signal(SIGINT, kiln::cli::OnSignal);
  std::signal(SIGTERM, kiln::cli::OnSignal);
  if (!run) {
    std::cerr << app.help();
    return kiln::cli::kExitUsage;
  }
  return run();
}
