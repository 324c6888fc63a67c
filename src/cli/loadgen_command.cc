// kiln loadgen: the command line of the load generator (bench/loadgen/loadgen.h), which measures
// a KServe v2 server the way Triton's perf_analyzer does. CSV columns use perf_analyzer's names.
#include <iostream>
#include <memory>

#include "commands.h"
#include "kiln/bench/loadgen/loadgen.h"

namespace kiln::cli {

namespace {

struct LoadgenArgs {
  std::string url = "http://127.0.0.1:8000";
  std::string model;
  std::string mode = "json";  // json | binary | image
  std::string images;         // image mode: a folder of image files
  int64_t batch_size = 1;
  std::string concurrency = "1:16:x2";
  std::string request_rate;               // requests/s: N or START:END:STEP (open loop)
  std::string distribution = "constant";  // rate mode: constant | poisson
  int max_threads = 64;                   // rate mode: sender threads
  int window_ms = 2000;
  int max_windows = 10;
  double stability = 10.0;  // percent
  std::string csv;
};

int RunLoadgen(const LoadgenArgs& a) {
  loadgen::Options o;
  o.url = a.url;
  o.model = a.model;
  o.mode = a.mode;
  o.images = a.images;
  o.batch_size = a.batch_size;
  o.rate_mode = !a.request_rate.empty();
  auto levels = o.rate_mode ? loadgen::ParseLevels("--request-rate", a.request_rate)
                            : loadgen::ParseLevels("--concurrency", a.concurrency);
  if (!levels.ok()) {
    std::cerr << "kiln loadgen: " << levels.status().message() << "\n";
    return kExitUsage;
  }
  o.levels = *levels;
  o.distribution = a.distribution;
  o.max_threads = a.max_threads;
  o.window_ms = a.window_ms;
  o.max_windows = a.max_windows;
  o.stability = a.stability;
  o.csv = a.csv;
  o.stop = [] { return StopRequested().load(); };
  const Status s = loadgen::Run(o);
  if (s.ok()) return 0;
  if (s.code() == StatusCode::kCancelled) return kExitInterrupted;
  std::cerr << "kiln loadgen: " << s.message() << "\n";
  return s.code() == StatusCode::kInvalidArgument ? kExitUsage : kExitFailure;
}

}  // namespace

void RegisterLoadgenCommand(CLI::App& app, Runner* run) {
  auto a = std::make_shared<LoadgenArgs>();
  auto* cmd = app.add_subcommand(
      "loadgen", "Measure a KServe v2 server like perf_analyzer (concurrency sweep, percentiles)");
  cmd->add_option("--url", a->url, "Server base URL")->capture_default_str();
  cmd->add_option("-m,--model", a->model, "Model name")->required();
  cmd->add_option("--mode", a->mode,
                  "json: KServe JSON tensors; binary: binary tensor extension; image: upload "
                  "the files of --images to /predict")
      ->capture_default_str()
      ->check(CLI::IsMember({"json", "binary", "image"}));
  cmd->add_option("--images", a->images, "image mode: folder of image files (sent as image/png)");
  cmd->add_option("-b,--batch-size", a->batch_size, "Batch per request (json/binary)")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  auto* concurrency = cmd->add_option("--concurrency", a->concurrency,
                                      "Concurrent clients: N, START:END:STEP or START:END:xFACTOR")
                          ->capture_default_str();
  cmd->add_option("--request-rate", a->request_rate,
                  "Open loop instead of --concurrency: requests/s, N or START:END:STEP (like "
                  "perf_analyzer's --request-rate-range); latency counts from each request's due "
                  "time")
      ->excludes(concurrency);
  cmd->add_option("--request-distribution", a->distribution,
                  "Rate mode: constant intervals or poisson arrivals")
      ->capture_default_str()
      ->check(CLI::IsMember({"constant", "poisson"}));
  cmd->add_option("--max-threads", a->max_threads,
                  "Rate mode: sender threads (requests in flight at most)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  cmd->add_option("--window-ms", a->window_ms, "Measurement window")
      ->capture_default_str()
      ->check(CLI::Range(100, 600000));
  cmd->add_option("--max-windows", a->max_windows, "Windows per level at most (first is warm-up)")
      ->capture_default_str()
      ->check(CLI::Range(4, 1000));
  cmd->add_option("--stability", a->stability,
                  "Stable when the last 3 windows' throughput and p99 are within this percent")
      ->capture_default_str();
  cmd->add_option("--csv", a->csv, "Write a CSV with perf_analyzer's column names (us)");
  cmd->callback([run, a] { *run = [a] { return RunLoadgen(*a); }; });
}

}  // namespace kiln::cli
