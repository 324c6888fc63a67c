// The load generator behind `kiln loadgen`: measures a KServe v2 server (Kiln, Triton, ...) the
// way Triton's perf_analyzer does, over HTTP (libcurl) or gRPC (Triton's GRPCInferenceService).
// Closed-loop clients at each concurrency level, or an open loop at a fixed request rate (constant
// or Poisson arrivals); each sender thread has a connection of its own; measurement windows until
// throughput and p99 are stable; latency percentiles by kiln::Quantile (core/statistics.h); the
// server's queue/compute split from its statistics (HTTP /stats or gRPC ModelStatistics). One
// table row per level goes to `out`; the CSV (perf_analyzer's column names, microseconds) is
// rewritten atomically after every level.
//
//   loadgen::Options o;
//   o.url = "http://127.0.0.1:8000";
//   o.model = "cifar";
//   KILN_ASSIGN_OR_RETURN(o.levels, loadgen::ParseLevels("--concurrency", "1:16:x2"));
//   KILN_RETURN_IF_ERROR(loadgen::Run(o));
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "kiln/core/status.h"

namespace kiln::loadgen {

struct Options {
  // http: a base URL ("http://127.0.0.1:8000"); grpc: host:port ("127.0.0.1:8001").
  std::string url = "http://127.0.0.1:8000";
  std::string protocol = "http";  // http | grpc
  std::string model;
  // json: typed values (HTTP: KServe JSON tensors; gRPC: fp32_contents); binary: raw bytes (HTTP:
  // the binary tensor extension; gRPC: raw_input_contents, as Triton's client and perf_analyzer
  // send); image: the files of `images` uploaded to /predict (HTTP only).
  std::string mode = "json";
  std::string images;         // image mode: a folder of image files, sent as image/png
  int64_t batch_size = 1;     // json/binary: batch per request
  // json/binary: the samples to send, each one sample's FP32 tensor (the model's input shape
  // without the batch dimension, e.g. normalized test images); requests take `batch_size` of
  // them in turn. Empty: one request of seeded standard-normal values, sent again and again.
  std::vector<std::vector<float>> inputs;
  // Concurrency levels (closed loop), or request rates in requests/s when rate_mode is set.
  std::vector<double> levels;
  bool rate_mode = false;
  std::string distribution = "constant";  // rate mode: constant | poisson
  int max_threads = 64;                   // rate mode: sender threads
  // Rate mode: a latency runs from the request's due time ("due": waits for a sender count, no
  // coordinated omission) or from when it was sent ("send": perf_analyzer's definition).
  std::string latency_from = "due";
  int window_ms = 2000;
  int max_windows = 10;        // per level; the first is a warm-up
  double stability = 10.0;     // percent
  // Empty: no CSV. Its last two columns split the average request time as perf_analyzer's
  // --verbose-csv does: "request/response" (HTTP: the upload, reading the answer) and "response
  // wait" (HTTP: request sent to first byte back). Over gRPC the synchronous call cannot be
  // seen into: the whole call is "response wait" and "request/response" is what lies outside it.
  std::string csv;
  std::FILE* out = stdout;     // the table; nullptr: print nothing
  std::function<bool()> stop;  // polled; true ends the sweep (Cancelled)
};

// "1:64:x2" -> 1 2 4 ... 64; "1:8:2" -> 1 3 5 7; "8" -> 8; rates may be fractional ("0.5").
// InvalidArgument naming `flag` otherwise.
Result<std::vector<double>> ParseLevels(const std::string& flag, const std::string& spec);

// One level's measurement: the mean of its last (up to) three windows.
struct LevelResult {
  double level = 0;       // concurrency, or the offered request rate (requests/s)
  double throughput = 0;  // inferences/s (requests/s x batch per request)
  double p50_ms = 0, p90_ms = 0, p95_ms = 0, p99_ms = 0, avg_ms = 0;
  double queue_ms = 0, compute_ms = 0;  // the server's split, per request
  int64_t sent = 0, errors = 0, refused = 0, late = 0;
  bool stable = false;  // the last three windows agreed within `stability`
};

// Runs the sweep and returns each level's numbers (the table and the CSV as Run's). Errors as
// Run's.
Result<std::vector<LevelResult>> Measure(const Options& options);

// Runs the sweep (Measure, keeping only its Status). InvalidArgument for options that cannot work
// (no levels, an empty image folder, image mode over gRPC, a URL where gRPC wants host:port),
// Unavailable when the model's metadata cannot be read, Unimplemented for a model without exactly
// one FP32 input, the write's Status when the CSV cannot be written, Cancelled when `stop` turned
// true.
Status Run(const Options& options);

}  // namespace kiln::loadgen
