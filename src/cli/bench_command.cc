// kiln bench
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "kiln/bench/bench.h"

namespace kiln::cli {

namespace {

namespace fs = std::filesystem;

struct BenchArgs {
  bench::BenchOptions opt;
  std::string manifest;
  std::vector<std::string> models;
  std::string render;  // a report.json to render again instead of measuring
  std::string out_dir;
  std::string data = DefaultDataPath();
  bool quick = false;
  bool no_peers = false;
};

// --render: REPORT.md and the plots again from a report.json (e.g. after a Kiln upgrade).
int RenderReport(const BenchArgs& a) {
  const fs::path out = a.out_dir.empty() ? fs::path(a.render).parent_path() : fs::path(a.out_dir);
  nlohmann::json report;
  try {
    std::ifstream in(a.render);
    report = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    std::cerr << "kiln bench: " << a.render << ": not a report.json (" << e.what() << ")\n";
    return kExitUsage;
  }
  std::error_code ec;
  fs::create_directories(out, ec);
  if (Status s = bench::WriteReport(report, out); !s.ok()) {
    std::cerr << "kiln bench: " << a.render << ": " << s.ToString() << "\n";
    return kExitFailure;
  }
  std::cout << "wrote " << (out / "REPORT.md").string() << " and the plots from " << a.render
            << "\n";
  return 0;
}

int RunBenchCommand(BenchArgs a) {
  if (!a.render.empty()) return RenderReport(a);
  bench::BenchOptions& o = a.opt;
  if (a.quick) o.ApplyQuick();
  if (a.manifest.empty() == a.models.empty()) {
    std::cerr << "kiln bench: give --manifest (from kiln optimize) or --model files, not both\n";
    return kExitUsage;
  }
  o.manifest = a.manifest;
  o.models.assign(a.models.begin(), a.models.end());
  o.data = a.data;
  // Default report folder: <run>/bench beside <run>/optimized/manifest.json, or <folder of the
  // first model>/bench.
  const fs::path anchor = a.manifest.empty() ? fs::path(a.models[0]) : fs::path(a.manifest);
  o.out_dir = !a.out_dir.empty()   ? fs::path(a.out_dir)
              : a.manifest.empty() ? anchor.parent_path() / "bench"
                                   : anchor.parent_path().parent_path() / "bench";
  o.peers = !a.no_peers;
  o.command_line = CommandLine();
  auto r = bench::RunBench(o, &std::cerr, &StopRequested());
  if (!r.ok()) {
    std::cerr << "kiln bench: " << r.status().ToString() << "\n";
    if (r.status().code() == StatusCode::kCancelled) return kExitInterrupted;
    return r.status().code() == StatusCode::kInvalidArgument ? kExitUsage : kExitFailure;
  }
  std::cout << "wrote " << (o.out_dir / "REPORT.md").string() << ", report.json, throughput.png, "
            << "latency_batch1.png, pareto.png\n";
  return 0;
}

}  // namespace

void RegisterBenchCommand(CLI::App& app, Runner* run) {
  auto a = std::make_shared<BenchArgs>();
  bench::BenchOptions& o = a->opt;
  auto* cmd = app.add_subcommand(
      "bench",
      "Benchmark every variant of a kiln optimize manifest on every engine, batch size and thread "
      "count, with PyTorch peers; writes REPORT.md, report.json and plots");
  cmd->add_option("--manifest", a->manifest, "manifest.json written by kiln optimize")
      ->check(CLI::ExistingFile);
  cmd->add_option("--model", a->models,
                  "Model files to measure instead of a manifest (.onnx, .pt; repeat the flag or "
                  "separate with commas; a .onnx and .pt of one name in one folder are one "
                  "variant). Accuracy and FLOPs are then not known")
      ->delimiter(',')
      ->check(CLI::ExistingFile);
  cmd->add_option("--render", a->render,
                  "Only write REPORT.md and the plots again from this report.json (into its "
                  "folder, or --output); measures nothing")
      ->check(CLI::ExistingFile);
  cmd->add_option("--output,-o", a->out_dir,
                  "Report folder (default: <run>/bench, or <first model's folder>/bench)");
  cmd->add_option("--data,--archive", a->data, "CIFAR-10 archive (test images are the inputs)")
      ->capture_default_str();
  cmd->add_option("--variants", o.variants, "Only these variants (default: every one that passed)")
      ->delimiter(',');
  cmd->add_option("--engines", o.engines,
                  "onnxruntime, openvino, openvino-bf16, libtorch (Kiln's settings; "
                  "openvino-bf16 runs bfloat16, which changes results slightly), "
                  "openvino-throughput, onnxruntime-default, openvino-default (the runtimes' own "
                  "defaults)")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--batch-sizes", o.batch_sizes, "Batch sizes")->delimiter(',')->capture_default_str();
  cmd->add_option("--threads", o.threads, "Thread counts")->delimiter(',')->capture_default_str();
  cmd->add_option("--rounds", o.rounds, "Passes over the whole matrix (spread between passes)")
      ->capture_default_str();
  cmd->add_option("--min-runs", o.min_runs, "Timed runs per cell and round, at least")
      ->capture_default_str();
  cmd->add_option("--min-seconds", o.min_seconds, "Seconds of timed runs per cell, at least")
      ->capture_default_str();
  cmd->add_option("--max-seconds", o.max_seconds, "Give up waiting for a stable median after this")
      ->capture_default_str();
  cmd->add_option("--stable-tolerance", o.stable_tolerance,
                  "Medians of the two halves of the runs must agree within this fraction")
      ->capture_default_str();
  cmd->add_option("--accuracy-images", o.accuracy_images,
                  "Test images every (variant, engine) is checked on, outside the timing (0 = none)")
      ->capture_default_str();
  cmd->add_flag("--quick", a->quick,
                "Smoke run: batch 1 and 64, 2 threads, short windows, accuracy on 1,000 images");
  cmd->add_flag("--no-peers", a->no_peers, "Skip the Python PyTorch peers");
  cmd->add_option("--python", o.python, "Python that runs bench/peers.py")->capture_default_str();
  cmd->add_option("--peers-script", o.peers_script, "Path of peers.py (default: the source tree's)");
  cmd->callback([run, a] { *run = [a] { return RunBenchCommand(*a); }; });
}

}  // namespace kiln::cli
