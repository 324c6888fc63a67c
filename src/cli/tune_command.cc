// kiln tune: the command line of tune/tune.h (the serving configuration that carries the most
// traffic within a p99 SLO, measured against a real kiln serve with real test images).
#include <filesystem>
#include <iostream>
#include <memory>

#include "commands.h"
#include "kiln/tune/tune.h"

namespace kiln::cli {

namespace {

int RunTune(tune::Options o) {
  std::error_code ec;
  o.kiln_binary = std::filesystem::read_symlink("/proc/self/exe", ec).string();
  o.command_line = CommandLine();
  o.stop = [] { return StopRequested().load(); };
  if (Status s = o.Validate(); !s.ok()) {
    std::cerr << "kiln tune: " << s.message() << "\n";
    return kExitUsage;
  }
  auto report = tune::Tune(o);
  if (!report.ok()) {
    const Status& s = report.status();
    if (s.code() == StatusCode::kCancelled) {
      std::cerr << "kiln tune: interrupted; the finished points are in "
                << (o.out / "results.jsonl").string() << " (run again to resume)\n";
      return kExitInterrupted;
    }
    std::cerr << "kiln tune: " << s.message() << "\n";
    return s.code() == StatusCode::kInvalidArgument ? kExitUsage : kExitFailure;
  }
  std::cout << "\nwrote " << (o.out / "TUNE.md").string() << ", tune.json, results.jsonl, "
            << "throughput-vs-p99.png\n";
  if (report->winner < 0) {
    std::cerr << "kiln tune: no configuration met p99 <= " << o.slo_p99_ms << " ms"
              << (o.min_throughput > 0 ? " at the minimum throughput" : "") << "\n";
    return kExitFailure;
  }
  const auto& w = report->points[static_cast<size_t>(report->winner)];
  std::cout << "winner: " << w.model << " " << w.config.Key() << ": " << w.max_rate
            << " requests/s at p99 " << w.p99_ms
            << " ms (config: " << (o.out / "winner" / w.model / "config.pbtxt").string() << ")\n"
            << "nginx limit_req rate per replica: " << report->nginx_rate
            << "r/s; autoscaler target per replica: " << report->hpa_target << " requests/s\n";
  if (!report->comparison.winner_rates.empty()) {
    const auto& c = report->comparison;
    std::cout << "side by side (" << c.winner_rates.size() << " rounds): default ("
              << c.default_model << ", kiln repo write's defaults) " << c.default_median
              << ", winner " << c.winner_median << " requests/s (median); gain " << c.gain_median
              << "x (range " << c.gain_min << "x-" << c.gain_max << "x)\n";
  }
  return 0;
}

}  // namespace

void RegisterTuneCommand(CLI::App& app, Runner* run) {
  auto o = std::make_shared<tune::Options>();
  o->data = DefaultDataPath();
  auto* cmd = app.add_subcommand(
      "tune",
      "Find the serving configuration (engine, max batch, queue delay, instances, threads) that "
      "carries the most requests/s within a p99 SLO, against a real kiln serve");
  auto* manifest = cmd->add_option("--manifest", o->manifest,
                                   "kiln optimize manifest: its variants within the accuracy "
                                   "budget are tuned");
  cmd->add_option("--repo", o->repo,
                  "Model repository served (with --manifest, missing variants are written "
                  "there with kiln repo write's defaults)")
      ->required();
  cmd->add_option("--model", o->models,
                  "Without --manifest: a model of --repo to tune; with it: only this variant "
                  "(repeatable)");
  cmd->add_option("--slo-p99-ms", o->slo_p99_ms, "Latency SLO: p99 in milliseconds")->required();
  cmd->add_option("--min-throughput", o->min_throughput,
                  "The winner must carry at least this many requests/s")
      ->capture_default_str();
  cmd->add_option("--accuracy-budget", o->accuracy_budget,
                  "Points of test accuracy below FP32 a variant may lose (manifest)")
      ->capture_default_str()
      ->needs(manifest);
  cmd->add_option("--data", o->data, "CIFAR-10 archive: the test images sent")
      ->capture_default_str();
  cmd->add_option("--out", o->out, "Output folder (results.jsonl: resumes)")->capture_default_str();
  cmd->add_option("--search", o->search,
                  "grid: every point; climb: from kiln repo write's defaults to the best "
                  "neighbour until the gain plateaus")
      ->capture_default_str()
      ->check(CLI::IsMember({"grid", "climb"}));
  cmd->add_option("--engines", o->engines, "Engines of ONNX variants (onnxruntime, openvino)")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--max-batch", o->max_batch_sizes, "max_batch_size values")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--queue-delay-us", o->queue_delays_us, "max_queue_delay_microseconds values")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--instances", o->instances, "instance_group count values")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--threads", o->threads, "Threads per instance values")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--max-cores", o->max_cores,
                  "Leave out points whose instances x threads exceed this (0: no limit)")
      ->capture_default_str();
  cmd->add_option("--window-ms", o->window_ms, "Measurement window")->capture_default_str();
  cmd->add_option("--max-windows", o->max_windows, "Windows per rate at most (first warms up)")
      ->capture_default_str();
  cmd->add_option("--images", o->images, "Test images sent, in turn")->capture_default_str();
  cmd->add_option("--plateau-percent", o->plateau_percent,
                  "climb: stop when the best neighbour gains less than this")
      ->capture_default_str();
  cmd->add_option("--compare-rounds", o->compare_rounds,
                  "Then measure the default deployment (the FP32 variant with kiln repo write's "
                  "defaults) and the winner side by side, in this many alternating rounds each")
      ->capture_default_str();
  cmd->add_flag("--apply", o->apply,
                "Write the winner's config.pbtxt into --repo (and check that it loads)");
  cmd->callback([run, o] { *run = [o] { return RunTune(*o); }; });
}

}  // namespace kiln::cli
