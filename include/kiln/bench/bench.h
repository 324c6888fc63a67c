// `kiln bench`: every variant of a `kiln optimize` manifest x every engine that runs it x batch
// sizes x thread counts, measured the same way on the same real test images, plus the peers a
// user compares against (ONNX Runtime's and OpenVINO's default settings, PyTorch eager and
// TorchScript in Python), written as report.json, REPORT.md and PNG plots.
//
// Method (also written into every report):
//   * inputs: the first max(batch) test images, normalized with the model's own statistics;
//     the same buffer for every engine;
//   * accuracy: every (variant, engine) pair runs the first `accuracy_images` test images once,
//     outside the timing (an engine that reads a quantized graph differently shows there);
//   * `rounds` passes over the whole matrix, one after another. Inside a pass, per thread count,
//     every engine is loaded and the matrix is measured one batch size (a column) at a time:
//     the reference cell (FP32 on ONNX Runtime with Kiln's session, same threads and batch)
//     first, the column's other cells in an order rotated each round, the reference again. The
//     Python peers run once per round, in a fresh process, right after Kiln's pass;
//   * per cell and round: warm-up of at least `warmup_runs` runs and `warmup_seconds`, then
//     timed runs until at least `min_runs` runs and `min_seconds` have passed AND the medians of
//     the first and second half of the runs differ by at most `stable_tolerance` (stable); a
//     cell that is not stable after `max_seconds` is reported with "stable": false;
//   * speedup (what the report leads with): per round, the reference's median latency over the
//     cell's, i.e. images/s relative to the reference measured interleaved with it; the mean of
//     the rounds' ratios with a 95% confidence interval. Drift of the machine over minutes (seen:
//     ~10% between two runs 50 minutes apart) moves both alike and cancels;
//   * latency statistics over all timed runs of all rounds; images/s = batch / median latency;
//   * latency percentiles by kiln::Quantile (core/statistics.h: linear between closest ranks);
//   * spread of the median: a 95% confidence interval of the mean of the rounds' medians
//     (kiln::MeanConfidenceInterval: mean +- t(0.975, rounds-1) * sd / sqrt(rounds), Student's t
//     from Boost.Math), so that drift of the machine between rounds widens it;
//   * drift: the reference's change between rounds and between its two measurements around a
//     column, stated in the report;
//   * memory: resident memory each engine added while loading and running every batch size once.
#pragma once

#include <atomic>
#include <filesystem>
#include <iosfwd>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "kiln/core/status.h"

namespace kiln::bench {

struct BenchOptions {
  std::filesystem::path manifest;  // from kiln optimize; or else:
  // Model files to measure instead of a manifest (.onnx, .pt). A .onnx and a .pt with the same
  // name in the same folder are one variant (named after the file, or after its folder when the
  // file is called "model"). Normalization comes from the files' Kiln metadata; accuracy and
  // FLOPs are unknown (a manifest from kiln optimize has them).
  std::vector<std::filesystem::path> models;
  std::filesystem::path data;                // CIFAR-10 (test images as inputs)
  std::filesystem::path out_dir;             // report.json, REPORT.md, *.png
  std::vector<std::string> variants;         // empty = every variant with status "ok"
  // onnxruntime, openvino, openvino-bf16, libtorch (Kiln's settings at each thread count),
  // openvino-throughput (THROUGHPUT hint), onnxruntime-default and openvino-default (the
  // runtimes' own defaults).
  std::vector<std::string> engines = {"onnxruntime",         "openvino",        "openvino-bf16",
                                      "libtorch",            "onnxruntime-default",
                                      "openvino-default"};
  std::vector<int64_t> batch_sizes = {1, 8, 32, 64, 256};
  std::vector<int> threads = {1, 2};
  int rounds = 3;  // passes over the whole matrix (drift between passes = spread)
  int64_t accuracy_images = 10000;  // test images each (variant, engine) is checked on; 0 = none
  int warmup_runs = 3;
  double warmup_seconds = 0.2;
  int min_runs = 5;           // per cell and round
  double min_seconds = 0.4;   // per cell and round
  double max_seconds = 2.0;   // per cell and round
  double stable_tolerance = 0.03;
  bool peers = true;                        // run bench/peers.py (Python PyTorch)
  std::string python = "/usr/bin/python3";  // Debian's Python, which sees python3-torch
  std::filesystem::path peers_script;       // default: the source tree's bench/peers.py
  std::string command_line;                 // recorded in the report

  // A smoke profile: one round, batch 1 and 64, 2 threads, short windows, accuracy on 1,000
  // images (a few minutes).
  void ApplyQuick();
  Status Validate() const;
};

// The manifest RunBench uses for `models`: one variant per model (see BenchOptions::models),
// with "file" (ONNX) and/or "torchscript_file" (absolute paths), size_bytes, status "ok", and the
// normalization, labels and architecture read from the first file's Kiln metadata. Files
// without Kiln normalization get mean 0 / std 1 ("normalization_source": "none").
// InvalidArgument for an unknown extension or models that disagree on normalization; NotFound
// for a missing file.
Result<nlohmann::json> ManifestFromModels(const std::vector<std::filesystem::path>& models);

// Adds "ci95_ms": [lo, hi] to every cell of `results` (engine cells or the peers') that has two
// or more "round_medians_ms".
void AddConfidenceIntervals(nlohmann::json* results);

// Runs the benchmark and writes report.json, REPORT.md and the plots into out_dir.
Result<nlohmann::json> RunBench(const BenchOptions& options, std::ostream* progress,
                                const std::atomic<bool>* stop);

// Writes REPORT.md and the PNG plots for a report.json object (kept separate so a report can
// be re-rendered).
Status WriteReport(const nlohmann::json& report, const std::filesystem::path& out_dir);

}  // namespace kiln::bench
