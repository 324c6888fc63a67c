// kiln pipeline: train -> export -> optimize -> bench, each stage run as `kiln <stage>` in a
// child process (the same code and output as running the commands by hand; memory is returned
// between stages, and libtorch's and ONNX Runtime's thread pools never share a process).
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "commands.h"
#include "kiln/core/file.h"
#include "kiln/core/progress.h"

namespace kiln::cli {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct PipelineArgs {
  std::string data = DefaultDataPath();
  std::string out = "runs/pipeline";
  std::string arch = "kiln-resnet";
  int64_t epochs = 0;  // 0 = the architecture's default
  bool quick = false;
  bool force = false;
  bool no_peers = false;
  bool full_bench = false;
  std::vector<std::string> skip;
  std::vector<std::string> redo;
};

const std::vector<std::string> kStages = {"train", "export", "optimize", "bench"};

// Runs `kiln args...` (this executable) and waits; returns its exit code.
int RunChild(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  static std::string self = fs::read_symlink("/proc/self/exe").string();
  argv.push_back(self.data());
  std::vector<std::string> copy = args;
  for (auto& a : copy) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::cerr << "[pipeline] $ kiln";
  for (const auto& a : args) std::cerr << " " << a;
  std::cerr << "\n" << std::flush;
  const pid_t pid = fork();
  if (pid < 0) return kExitFailure;
  if (pid == 0) {
    execv(self.c_str(), argv.data());
    _exit(127);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return kExitFailure;
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return WIFSIGNALED(status) && (WTERMSIG(status) == SIGINT || WTERMSIG(status) == SIGTERM)
             ? kExitInterrupted
             : kExitFailure;
}

bool Contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

int RunPipeline(const PipelineArgs& a) {
  const fs::path out = a.out;
  const fs::path marks = out / ".stages";
  std::error_code ec;
  fs::create_directories(marks, ec);
  if (ec) {
    std::cerr << "kiln pipeline: cannot create " << marks << ": " << ec.message() << "\n";
    return kExitFailure;
  }
  for (const auto& s : a.skip) {
    if (!Contains(kStages, s)) {
      std::cerr << "kiln pipeline: unknown stage '" << s << "' (train, export, optimize, bench)\n";
      return kExitUsage;
    }
  }
  const fs::path run = out / "train";
  const std::string data = a.data;
  // Each stage: its command line and the file that proves it finished.
  struct Stage {
    std::string name;
    std::vector<std::string> args;
    fs::path product;
  };
  std::vector<std::string> train = {"train", "--data", data, "--arch", a.arch, "--out", run.string()};
  if (a.epochs > 0) train.insert(train.end(), {"--epochs", std::to_string(a.epochs)});
  std::vector<std::string> optimize = {"optimize", "--model", (run / "export" / "model.onnx").string(),
                                       "--checkpoint", (run / "best.ckpt").string(), "--output",
                                       (out / "optimized").string(), "--data", data};
  std::vector<std::string> bench = {"bench", "--manifest", (out / "optimized" / "manifest.json").string(),
                                    "--output", (out / "bench").string(), "--data", data};
  if (a.quick) {
    // A smoke profile: a small model trained briefly, short fine-tuning, a small matrix.
    if (a.epochs == 0) train.insert(train.end(), {"--epochs", "2"});
    train.insert(train.end(), {"--train-limit", "10000"});
    optimize.insert(optimize.end(), {"--finetune-epochs", "1", "--finetune-limit", "5000",
                                     "--test-limit", "2000", "--calibration-images", "256",
                                     "--int8-budget", "100", "--prune-budget", "100"});
    bench.push_back("--quick");
  } else if (!a.full_bench) {
    // Every variant on every engine, at batch 1 and a large batch, on all the machine's cores: the
    // comparisons the report leads with, in minutes. kiln bench's own default matrix (batch 1 to
    // 256, 1 and 2 threads) took over an hour on 2 cores (docs/decisions.md, "The pipeline's
    // benchmark").
    const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    bench.insert(bench.end(), {"--batch-sizes", "1,64", "--threads", std::to_string(cores)});
  }
  if (a.no_peers) bench.push_back("--no-peers");
  if (fs::exists(run / "resume.ckpt") && !fs::exists(marks / "train.done") && !a.force) {
    train.push_back("--resume");  // an interrupted training run continues where it stopped
  } else if (a.force || Contains(a.redo, "train")) {
    train.push_back("--restart");  // redo means from scratch, not "continue the saved run"
  }
  const std::vector<Stage> stages = {
      {"train", train, run / "best.ckpt"},
      {"export", {"export", "--checkpoint", (run / "best.ckpt").string(), "--data", data},
       run / "export" / "model.onnx"},
      {"optimize", optimize, out / "optimized" / "manifest.json"},
      {"bench", bench, out / "bench" / "report.json"}};

  const auto start = std::chrono::steady_clock::now();
  for (size_t i = 0; i < stages.size(); ++i) {
    const Stage& s = stages[i];
    const fs::path mark = marks / (s.name + ".done");
    std::cerr << "\n[pipeline] stage " << i + 1 << "/" << stages.size() << ": " << s.name << "\n";
    if (Contains(a.skip, s.name)) {
      std::cerr << "[pipeline] skipped (--skip)\n";
      continue;
    }
    if (!a.force && !Contains(a.redo, s.name) && fs::exists(mark) && fs::exists(s.product)) {
      std::cerr << "[pipeline] already done (" << s.product.string()
                << "); --redo " << s.name << " or --force to run it again\n";
      continue;
    }
    fs::remove(mark, ec);
    const auto t0 = std::chrono::steady_clock::now();
    const int rc = RunChild(s.args);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    // `optimize` exits 1 when a variant misses its accuracy budget: the manifest is complete
    // and says which; the pipeline benchmarks the variants that passed.
    const bool gate_only = s.name == "optimize" && rc == kExitFailure && fs::exists(s.product);
    if (rc != 0 && !gate_only) {
      std::cerr << "kiln pipeline: stage '" << s.name << "' "
                << (rc == kExitInterrupted ? "was interrupted" : "failed (exit " + std::to_string(rc) + ")")
                << "; fix the cause and run the same command again: finished stages are reused"
                << (s.name == "train" ? ", and training resumes where it stopped" : "") << "\n";
      return rc == kExitInterrupted ? kExitInterrupted : kExitFailure;
    }
    if (gate_only) {
      std::cerr << "[pipeline] some variants missed their accuracy budget (see the manifest); "
                   "benchmarking the others\n";
    }
    if (Status w = WriteFileAtomic(mark, json{{"seconds", seconds}}.dump() + "\n"); !w.ok()) {
      std::cerr << "kiln pipeline: " << w.ToString() << "\n";
      return kExitFailure;
    }
    std::cerr << "[pipeline] " << s.name << " done in " << ProgressBar::FormatDuration(seconds) << "\n";
  }

  // Final summary from the report.
  const fs::path report_file = out / "bench" / "report.json";
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("\nKiln pipeline finished in %s. Outputs in %s\n", ProgressBar::FormatDuration(total).c_str(),
              out.c_str());
  if (!fs::exists(report_file)) return 0;
  json report;
  try {
    std::ifstream in(report_file);
    report = json::parse(in);
  } catch (const json::exception& e) {
    std::cerr << "kiln pipeline: cannot read " << report_file << ": " << e.what() << "\n";
    return kExitFailure;
  }
  std::map<std::string, json> variants;
  for (const json& v : report["variants"]) variants[v["name"]] = v;
  // Best: the most images/s (any batch, most threads) within 0.5 points of FP32 accuracy.
  const json* best = nullptr;
  for (const json& r : report["results"]) {
    if (!r["threads"].is_number()) continue;
    const json& v = variants[r["variant"]];
    if (v.value("accuracy_delta_points", 0.0) < -0.5) continue;
    if (!best || r["images_per_second"].get<double>() > (*best)["images_per_second"].get<double>()) best = &r;
  }
  if (best) {
    const json& v = variants[(*best)["variant"]];
    std::printf("best model within 0.5 points of FP32: %s on %s: test accuracy %.2f%%, %.0f images/s at batch %lld "
                "(%d threads)\n  file: %s\n",
                (*best)["variant"].get<std::string>().c_str(), (*best)["engine"].get<std::string>().c_str(),
                100 * v.value("test_accuracy", 0.0), (*best)["images_per_second"].get<double>(),
                static_cast<long long>((*best)["batch"].get<int64_t>()), (*best)["threads"].get<int>(),
                (out / "optimized" / v.value("file", "")).c_str());
  }
  std::printf("report: %s (plots and report.json beside it)\n", (out / "bench" / "REPORT.md").c_str());
  return 0;
}

}  // namespace

void RegisterPipelineCommand(CLI::App& app, Runner* run) {
  auto a = std::make_shared<PipelineArgs>();
  auto* cmd = app.add_subcommand(
      "pipeline",
      "Kiln's main job: train -> export -> optimize -> bench into one folder, reusing finished "
      "stages; prints the best model and where the report is");
  cmd->add_option("--data,--archive", a->data, "CIFAR-10 archive or folder")->capture_default_str();
  cmd->add_option("--out,-o", a->out, "Output folder")->capture_default_str();
  cmd->add_option("--arch", a->arch, "Architecture to train")->capture_default_str();
  cmd->add_option("--epochs", a->epochs, "Training epochs (default: the architecture's)");
  cmd->add_flag("--quick", a->quick,
                "Smoke profile: 2 epochs on 10,000 images, short fine-tuning, small benchmark "
                "matrix (a few minutes; accuracy budgets not enforced)");
  cmd->add_option("--skip", a->skip, "Stages to skip: train, export, optimize, bench")->delimiter(',');
  cmd->add_option("--redo", a->redo, "Stages to run again even if finished")->delimiter(',');
  cmd->add_flag("--force", a->force, "Run every stage again");
  cmd->add_flag("--no-peers", a->no_peers, "Benchmark without the Python PyTorch peers");
  cmd->add_flag("--full-bench", a->full_bench,
                "Benchmark kiln bench's whole default matrix (batch 1 to 256, 1 and 2 threads; "
                "over an hour on 2 cores) instead of batch 1 and 64 on all cores")
      ->excludes("--quick");
  cmd->callback([run, a] { *run = [a] { return RunPipeline(*a); }; });
}

}  // namespace kiln::cli
