// kiln loadgen: the command line of the load generator (bench/loadgen/loadgen.h), which measures
// a KServe v2 server the way Triton's perf_analyzer does. CSV columns use perf_analyzer's names.
#include <iostream>
#include <memory>

#include "commands.h"
#include "kiln/bench/loadgen/loadgen.h"

namespace kiln::cli {

namespace {

struct LoadgenArgs {
  std::string url;  // empty: the protocol's default
  std::string protocol = "http";
  std::string model;
  std::string mode = "json";  // json | binary | image
  std::string images;         // image mode: a folder of image files
  int64_t batch_size = 1;
  std::string concurrency = "1:16:x2";
  std::string request_rate;               // requests/s: N or START:END:STEP (open loop)
  std::string distribution = "constant";  // rate mode: constant | poisson
  int max_threads = 64;                   // rate mode: sender threads
  std::string latency_from = "due";       // rate mode: due | send
  int window_ms = 2000;
  int max_windows = 10;
  double stability = 10.0;  // percent
  std::string csv;
};

int RunLoadgen(const LoadgenArgs& a) {
  loadgen::Options o;
  o.protocol = a.protocol;
  if (!a.url.empty()) {
    o.url = a.url;
  } else if (a.protocol == "grpc") {
    o.url = "127.0.0.1:8001";
  }
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
  o.latency_from = a.latency_from;
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
  cmd->add_option("--url", a->url,
                  "Server: a base URL over HTTP (default http://127.0.0.1:8000), host:port over "
                  "gRPC (default 127.0.0.1:8001)");
  cmd->add_option("-i,--protocol", a->protocol,
                  "http or grpc (Triton's GRPCInferenceService; perf_analyzer's -i)")
      ->capture_default_str()
      ->check(CLI::IsMember({"http", "grpc"}));
  cmd->add_option("-m,--model", a->model, "Model name")->required();
  cmd->add_option("--mode", a->mode,
                  "json: typed tensors (HTTP: KServe JSON; gRPC: fp32_contents); binary: raw "
                  "bytes (HTTP: binary tensor extension; gRPC: raw_input_contents); image: upload "
                  "the files of --images to /predict (HTTP only)")
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
  cmd->add_option("--latency-from", a->latency_from,
                  "Rate mode: count a latency from the request's due time (due: a wait for a "
                  "free sender counts) or from when it left (send: perf_analyzer's definition)")
      ->capture_default_str()
      ->check(CLI::IsMember({"due", "send"}));
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
