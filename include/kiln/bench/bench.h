// `kiln bench`: every variant of a `kiln optimize` manifest x every engine that runs it x batch
// sizes x thread counts, measured the same way on the same real test images, plus the peers a
// user compares against (PyTorch eager and TorchScript in Python, ONNX Runtime's default
// settings), written as report.json, REPORT.md and PNG plots.
//
// Method (also written into every report):
//   * inputs: the first max(batch) test images, normalized with the model's own statistics;
//     the same buffer for every engine;
//   * `rounds` passes over the whole matrix, one after another (so that drift of a shared
//     machine over minutes shows as spread between the rounds' medians); the Python peers run
//     once per round, in a fresh process, right after Kiln's pass;
//   * per cell and round: warm-up of at least `warmup_runs` runs and `warmup_seconds`, then
//     timed runs until at least `min_runs` runs and `min_seconds` have passed AND the medians of
//     the first and second half of the runs differ by at most `stable_tolerance` (stable); a
//     cell that is not stable after `max_seconds` is reported with "stable": false;
//   * latency statistics over all timed runs of all rounds; images/s = batch / median latency;
//   * latency percentiles by kiln::Quantile (core/statistics.h: linear between closest ranks);
//   * spread of the median: a 95% confidence interval of the mean of the rounds' medians
//     (kiln::MeanConfidenceInterval: mean +- t(0.975, rounds-1) * sd / sqrt(rounds), Student's t
//     from Boost.Math), so that drift of the machine between rounds widens it; two runs of the
//     same benchmark agree when their intervals overlap;
//   * peak memory: the process's peak resident set (VmHWM), reset before each cell.
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
  std::filesystem::path data;         // CIFAR-10 (test images as inputs)
  std::filesystem::path out_dir;      // report.json, REPORT.md, *.png
  std::vector<std::string> variants;  // empty = every variant with status "ok"
  std::vector<std::string> engines = {"onnxruntime", "libtorch", "onnxruntime-default"};
  std::vector<int64_t> batch_sizes = {1, 8, 32, 64, 256};
  std::vector<int> threads = {1, 2};
  int rounds = 3;  // passes over the whole matrix (drift between passes = spread)
  int warmup_runs = 3;
  double warmup_seconds = 0.2;
  int min_runs = 5;          // per cell and round
  double min_seconds = 0.4;  // per cell and round
  double max_seconds = 2.0;  // per cell and round
  double stable_tolerance = 0.03;
  bool peers = true;                        // run bench/peers.py (Python PyTorch)
  std::string python = "/usr/bin/python3";  // Debian's Python, which sees python3-torch
  std::filesystem::path peers_script;       // default: the source tree's bench/peers.py
  std::string command_line;                 // recorded in the report

  // A smoke profile: one round, batch 1 and 64, 2 threads, short windows (under 2 minutes).
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

// Speed relative to a reference measured in the same rounds: adds "ratio" to every cell of
// `cells` (engine cells or the peers') that has a reference cell in `reference_cells` (variant
// `reference_variant`, engine "onnxruntime" -- "onnxruntime-default" for cells at ONNX Runtime's
// default thread count --, same threads, same batch) with as many round medians:
//   {"reference": "fp32 / onnxruntime", "rounds": [reference_ms_i / cell_ms_i, ...],
//    "median": ..., "min": ..., "max": ..., "ci95": [lo, hi] (two or more rounds)}
// A ratio above 1 is faster than the reference (images/s over the reference's images/s). Each
// round's ratio pairs two cells measured minutes apart in one pass, so drift of the whole machine
// between rounds or runs cancels out of it; the reference cell's ratio is 1 in every round.
void AddRatios(const nlohmann::json& reference_cells, const std::string& reference_variant,
               nlohmann::json* cells);

// Runs the benchmark and writes report.json, REPORT.md and the plots into out_dir.
Result<nlohmann::json> RunBench(const BenchOptions& options, std::ostream* progress,
                                const std::atomic<bool>* stop);

// Writes REPORT.md and the PNG plots for a report.json object (kept separate so a report can
// be re-rendered).
Status WriteReport(const nlohmann::json& report, const std::filesystem::path& out_dir);

}  // namespace kiln::bench
