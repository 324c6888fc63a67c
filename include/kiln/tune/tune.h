// kiln tune: finds the serving configuration of a model repository that carries the most traffic
// within a latency SLO, by measuring a real `kiln serve` with real test images.
//
// For each variant within the accuracy budget (a kiln optimize manifest's variants, or named
// models of a repository) and each point of a small grid — engine (ONNX Runtime / OpenVINO) x
// max batch size x max queue delay x instance count x threads per instance — it reconfigures one
// `kiln serve` child (explicit model control, the config override of Triton's load request),
// probes the capacity with closed-loop clients, then offers open-loop request rates stepping up
// from half of that (kiln loadgen's method: stable windows, latency from each request's due
// time) and keeps the highest rate whose p99 stays within the SLO and which the server sustains
// (achieved >= 95% of offered, no errors, no refusals). Search: every point of the grid, or
// hill climbing from `kiln repo write`'s default configuration that stops when no neighbour gains
// more than `plateau_percent`. Every finished point is appended to results.jsonl; a run started
// again with the same SLO and windows skips the points found there (resume).
//
//   tune::Options o;
//   o.manifest = "runs/pq/optimized/manifest.json";
//   o.repo = "runs/tune/models";
//   o.data = "data/cifar-10-binary.tar.gz";
//   o.kiln_binary = "/path/to/kiln";
//   o.slo_p99_ms = 20;
//   KILN_ASSIGN_OR_RETURN(tune::Report report, tune::Tune(o));
//
// Writes into `out`: results.jsonl, tune.json, TUNE.md (the table, the winner, the deployment
// figures), throughput-vs-p99.png and winner/ (a repository holding the winning model with its
// config.pbtxt). Not thread-safe (one tune per process: it owns its server child).
#pragma once

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "kiln/core/status.h"

namespace kiln::tune {

// One serving configuration (the dimensions of the search).
struct Config {
  std::string engine = "onnxruntime";  // onnxruntime | openvino (ONNX models)
  int max_batch_size = 32;
  int64_t queue_delay_us = 1000;
  int instances = 1;
  int threads = 2;  // per instance

  std::string Key() const;  // "onnxruntime/b32/d1000/i1/t2"
  bool operator==(const Config& o) const { return Key() == o.Key(); }
};

// `kiln repo write`'s defaults: what a repository gets when nobody tunes it.
Config DefaultConfig();

// One offered rate of a point.
struct Step {
  double offered = 0;   // requests/s (one image each)
  double achieved = 0;  // inferences/s measured
  double p50_ms = 0, p99_ms = 0;
  int64_t errors = 0, refused = 0;
  bool stable = false;
  bool ok = false;  // p99 <= SLO, achieved >= 95% of offered, no errors, no refusals
};

// The measurement of one (model, config).
struct PointResult {
  std::string model;    // the repository's model name
  std::string variant;  // the manifest's variant ("fp32", "int8-static", ...)
  Config config;
  double accuracy = -1;         // test accuracy in [0, 1] (manifest); -1 unknown
  double accuracy_delta = 0;    // points vs FP32 (manifest)
  double probe_throughput = 0;  // inferences/s with closed-loop clients
  double probe_p99_ms = 0;
  double max_rate = 0;  // the highest offered rate that met the SLO; 0: none did
  double p99_ms = 0;    // p99 at max_rate
  std::vector<Step> steps;
  std::string error;  // why it could not be measured (the load failed); empty otherwise
};

struct Options {
  std::filesystem::path manifest;  // a kiln optimize manifest (variants, accuracy); or empty
  // The repository the server serves. With a manifest, a variant's model folder that is missing
  // is written there with `kiln repo write`'s defaults; without one, `models` names its models.
  std::filesystem::path repo;
  std::vector<std::string> models;  // with a manifest: only these variants (empty: all)
  std::filesystem::path data;       // the CIFAR-10 archive: the test images sent
  std::filesystem::path out = "runs/tune";
  std::string kiln_binary;  // the kiln executable started as `kiln serve`
  double slo_p99_ms = 20;
  double min_throughput = 0;     // requests/s the winner must carry at least (0: no minimum)
  double accuracy_budget = 0.5;  // points below FP32 a variant may lose
  std::string search = "grid";   // grid | climb
  std::vector<std::string> engines{"onnxruntime"};
  std::vector<int> max_batch_sizes{1, 8, 32};
  std::vector<int64_t> queue_delays_us{0, 500, 2000};
  std::vector<int> instances{1, 2};
  std::vector<int> threads{1, 2};
  // Points whose instances x threads exceed this are left out (0: no limit).
  int max_cores = 0;
  // Open-loop rates as fractions of the closed-loop probe, tried in order until one fails.
  std::vector<double> rate_fractions{0.5, 0.7, 0.85, 1.0, 1.15};
  int window_ms = 1000;
  int max_windows = 6;         // per rate (the first warms up)
  int images = 256;            // test images sent, in turn
  double plateau_percent = 3;  // climb: stop when the best neighbour gains less than this
  // After the search: this many alternating rounds of the default deployment — the FP32
  // variant (else the winner's model) under kiln repo write's defaults, what an untuned
  // repository serves — and the winner, each measured as a point (0: none).
  int compare_rounds = 0;
  bool apply = false;          // write the winner's config into `repo` (and check that it loads)
  std::string command_line;    // for TUNE.md
  std::FILE* log = stdout;     // progress lines; nullptr: none
  std::function<bool()> stop;  // polled; true ends the run (Cancelled), results.jsonl kept

  Status Validate() const;
};

// Alternating rounds of the default deployment and the winner (same server).
struct Comparison {
  std::string default_model;  // the FP32 variant's model (else the winner's), default config
  std::vector<double> default_rates, winner_rates;  // max rate under the SLO, per round
  double default_median = 0, winner_median = 0;
  double gain_median = 0, gain_min = 0, gain_max = 0;  // winner / default, per round
};

struct Report {
  std::vector<PointResult> points;  // in the order measured (resumed ones first)
  int winner = -1;                  // index into points; -1 when no point met the SLO
  Comparison comparison;            // empty unless compare_rounds > 0
  // From the winner's capacity C (max rate under the SLO, per replica): nginx's limit_req rate
  // (0.8 C) and the autoscaler's target per replica (0.7 C).
  double nginx_rate = 0, hpa_target = 0;
};

// Runs the tune. InvalidArgument for options that cannot work, NotFound for a missing manifest,
// model or archive, Unavailable when the server does not come up, Cancelled when `stop` turned
// true (results.jsonl keeps every finished point); a point whose model fails to load is
// recorded with its error and skipped. No point meeting the SLO is not an error: `winner` is -1.
Result<Report> Tune(const Options& options);

}  // namespace kiln::tune
