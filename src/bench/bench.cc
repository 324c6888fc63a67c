#include "kiln/bench/bench.h"

#include <sys/utsname.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <sstream>
#include <thread>
#include <tuple>

#include "kiln/backend/factory/factory.h"
#include "kiln/backend/inference_backend.h"
#include "kiln/backend/libtorch/libtorch_backend.h"
#include "kiln/backend/model_metadata.h"
#include "kiln/backend/onnxruntime/onnxruntime_backend.h"
#include "kiln/bench/roof.h"
#include "kiln/core/file.h"
#include "kiln/core/process.h"
#include "kiln/core/statistics.h"
#include "kiln/core/version.h"
#include "kiln/data/cifar10.h"
#include "kiln/data/loader.h"

#ifndef KILN_SOURCE_DIR
#define KILN_SOURCE_DIR "."
#endif

namespace kiln::bench {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

std::string ReadFile(const fs::path& file) {
  std::ifstream in(file);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// "model name", MemTotal and the SIMD flags that matter for inference.
json MachineInfo() {
  json m;
  const std::string cpuinfo = ReadFile("/proc/cpuinfo");
  std::istringstream lines(cpuinfo);
  std::string line;
  std::string flags;
  while (std::getline(lines, line)) {
    auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = line.substr(0, line.find_last_not_of(" \t", colon - 1) + 1);
    std::string value = colon + 2 <= line.size() ? line.substr(colon + 2) : "";
    if (key == "model name" && !m.contains("cpu")) m["cpu"] = value;
    if (key == "flags" && flags.empty()) flags = " " + value + " ";
  }
  json f = json::array();
  for (const char* want :
       {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16"}) {
    if (flags.find(std::string(" ") + want + " ") != std::string::npos) f.push_back(want);
  }
  m["flags"] = f;
  m["logical_cpus"] = std::thread::hardware_concurrency();
  std::istringstream mem(ReadFile("/proc/meminfo"));
  while (std::getline(mem, line)) {
    if (line.rfind("MemTotal:", 0) == 0) {
      m["memory_bytes"] = std::stoll(line.substr(9)) * 1024;
      break;
    }
  }
  utsname u{};
  if (uname(&u) == 0) m["kernel"] = std::string(u.sysname) + " " + u.release;
  return m;
}

// Peak resident set of this process since the last ResetPeakRss() (Linux VmHWM).
void ResetPeakRss() {
  std::ofstream clear("/proc/self/clear_refs");
  clear << "5";
}
int64_t PeakRssBytes() {
  std::istringstream s(ReadFile("/proc/self/status"));
  std::string line;
  while (std::getline(s, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  }
  return 0;
}

struct Timing {
  std::vector<double> ms;
  bool stable = false;
};

// Warm-up, then timed runs until the stability rule holds (see bench.h).
Result<Timing> Measure(backend::InferenceBackend& engine, const float* input, int64_t batch,
                       std::vector<float>& output, const BenchOptions& o) {
  output.resize(static_cast<size_t>(batch * engine.OutputElementsPerSample()));
  const auto w0 = Clock::now();
  for (int r = 0; r < o.warmup_runs ||
                  std::chrono::duration<double>(Clock::now() - w0).count() < o.warmup_seconds;
       ++r) {
    KILN_RETURN_IF_ERROR(engine.Run(input, batch, output.data()));
  }
  Timing t;
  const auto start = Clock::now();
  for (;;) {
    const auto t0 = Clock::now();
    KILN_RETURN_IF_ERROR(engine.Run(input, batch, output.data()));
    t.ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    if (static_cast<int>(t.ms.size()) >= o.min_runs && elapsed >= o.min_seconds) {
      const size_t half = t.ms.size() / 2;
      const double a = Quantile(std::vector<double>(t.ms.begin(), t.ms.begin() + half), 0.50);
      const double b = Quantile(std::vector<double>(t.ms.begin() + half, t.ms.end()), 0.50);
      if (std::fabs(a - b) <= o.stable_tolerance * std::max(a, b)) {
        t.stable = true;
        break;
      }
    }
    if (elapsed >= o.max_seconds && static_cast<int>(t.ms.size()) >= 3) break;
  }
  return t;
}

json Stats(const Timing& t, int64_t batch) {
  std::vector<double> sorted = t.ms;
  std::sort(sorted.begin(), sorted.end());
  const double median = QuantileOfSorted(sorted, 0.50);
  return {{"runs", t.ms.size()},
          {"stable", t.stable},
          {"median_ms", median},
          {"p90_ms", QuantileOfSorted(sorted, 0.90)},
          {"p99_ms", QuantileOfSorted(sorted, 0.99)},
          {"min_ms", sorted.front()},
          {"max_ms", sorted.back()},
          {"images_per_second", median > 0 ? 1000.0 * static_cast<double>(batch) / median : 0.0}};
}

std::string Join(const std::vector<int64_t>& v) {
  std::string s;
  for (int64_t x : v) s += (s.empty() ? "" : ",") + std::to_string(x);
  return s;
}

// Runs one round of bench/peers.py in a fresh Python process; returns its JSON (every timed
// run in "runs_ms") or {"available": false, "reason": ...}.
json RunPeers(const BenchOptions& o, const json& fp32, const fs::path& manifest_dir,
              const fs::path& inputs, int64_t images, const json& shape, int round,
              std::ostream* progress) {
  json unavailable = {{"available", false}};
  if (!fp32.contains("torchscript_file")) {
    unavailable["reason"] = "the FP32 variant has no TorchScript file to load in Python";
    return unavailable;
  }
  const fs::path script =
      o.peers_script.empty() ? fs::path(KILN_SOURCE_DIR) / "bench" / "peers.py" : o.peers_script;
  if (!fs::exists(script)) {
    unavailable["reason"] = "peer script " + script.string() + " not found";
    return unavailable;
  }
  const fs::path out = o.out_dir / ("peers-round-" + std::to_string(round + 1) + ".json");
  std::error_code ec;
  fs::remove(out, ec);
  std::vector<int64_t> threads(o.threads.begin(), o.threads.end());
  auto text = [](auto v) {
    std::ostringstream ss;
    ss << v;
    return ss.str();
  };
  const std::vector<std::string> argv = {
      o.python,
      script.string(),
      "--torchscript",
      (manifest_dir / fp32["torchscript_file"].get<std::string>()).string(),
      "--inputs",
      inputs.string(),
      "--images",
      std::to_string(images),
      "--shape",
      text(shape[1]) + "," + text(shape[2]) + "," + text(shape[3]),
      "--batch-sizes",
      Join(o.batch_sizes),
      "--threads",
      Join(threads),
      "--warmup-runs",
      text(o.warmup_runs),
      "--warmup-seconds",
      text(o.warmup_seconds),
      "--min-runs",
      text(o.min_runs),
      "--min-seconds",
      text(o.min_seconds),
      "--max-seconds",
      text(o.max_seconds),
      "--stable-tolerance",
      text(o.stable_tolerance),
      "--rounds",
      "1",
      "--output",
      out.string(),
      "--variant",
      fp32.value("name", "fp32")};
  if (progress) *progress << "[bench] peers: " << CommandLineForDisplay(argv) << "\n" << std::flush;
  // The script's chatter goes to stderr: stdout may carry Kiln's own report.
  const Result<int> rc = RunProcess(argv, {.stdout_to_stderr = true});
  if (!rc.ok()) {
    unavailable["reason"] =
        rc.status().message() + "; is python3-torch installed for " + o.python + "?";
    return unavailable;
  }
  if (!fs::exists(out)) {
    unavailable["reason"] = "peer script failed (exit " + std::to_string(*rc) +
                            "); is python3-torch installed for " + o.python + "?";
    return unavailable;
  }
  try {
    return json::parse(ReadFile(out));
  } catch (const json::exception& e) {
    unavailable["reason"] = std::string("peer output is not JSON: ") + e.what();
    return unavailable;
  }
}

}  // namespace

void AddConfidenceIntervals(json* results) {
  for (json& cell : *results) {
    if (!cell.contains("round_medians_ms")) continue;
    auto ci = MeanConfidenceInterval(cell["round_medians_ms"].get<std::vector<double>>(), 0.95);
    if (ci) cell["ci95_ms"] = {ci->first, ci->second};
  }
}

void AddRatios(const json& reference_cells, const std::string& reference_variant, json* cells) {
  for (json& cell : *cells) {
    if (!cell.contains("round_medians_ms")) continue;
    const std::string engine = cell["threads"].is_string() ? "onnxruntime-default" : "onnxruntime";
    const json* ref = nullptr;
    for (const json& r : reference_cells) {
      if (r.value("variant", "") == reference_variant && r.value("engine", "") == engine &&
          r["threads"] == cell["threads"] && r["batch"] == cell["batch"] &&
          r.contains("round_medians_ms")) {
        ref = &r;
      }
    }
    if (!ref) continue;
    const auto mine = cell["round_medians_ms"].get<std::vector<double>>();
    const auto theirs = (*ref)["round_medians_ms"].get<std::vector<double>>();
    if (mine.empty() || mine.size() != theirs.size()) continue;
    std::vector<double> ratios;
    for (size_t i = 0; i < mine.size(); ++i) {
      if (mine[i] > 0) ratios.push_back(theirs[i] / mine[i]);
    }
    if (ratios.size() != mine.size()) continue;
    json ratio = {{"reference", reference_variant + " / " + engine},
                  {"rounds", ratios},
                  {"median", Quantile(ratios, 0.50)},
                  {"min", *std::min_element(ratios.begin(), ratios.end())},
                  {"max", *std::max_element(ratios.begin(), ratios.end())}};
    if (auto ci = MeanConfidenceInterval(ratios, 0.95)) ratio["ci95"] = {ci->first, ci->second};
    cell["ratio"] = ratio;
  }
}

void BenchOptions::ApplyQuick() {
  rounds = 1;
  batch_sizes = {1, 64};
  threads = {2};
  warmup_runs = 2;
  warmup_seconds = 0.05;
  min_runs = 5;
  min_seconds = 0.2;
  max_seconds = 0.6;
}

Status BenchOptions::Validate() const {
  if (manifest.empty() == models.empty()) {
    return InvalidArgumentError(
        "give a manifest.json from kiln optimize (--manifest) or model "
        "files (--model), not both");
  }
  if (batch_sizes.empty() || threads.empty()) {
    return InvalidArgumentError("batch sizes and thread counts must not be empty");
  }
  for (int64_t b : batch_sizes) {
    if (b < 1 || b > 4096) return InvalidArgumentError("batch sizes must be in [1, 4096]");
  }
  for (int t : threads) {
    if (t < 1 || t > 256) return InvalidArgumentError("thread counts must be in [1, 256]");
  }
  for (const auto& e : engines) {
    if (e != "onnxruntime" && e != "libtorch" && e != "onnxruntime-default") {
      return InvalidArgumentError("unknown engine '" + e +
                                  "' (onnxruntime, libtorch, onnxruntime-default)");
    }
  }
  if (rounds < 1 || rounds > 20) return InvalidArgumentError("rounds must be in [1, 20]");
  if (min_runs < 3 || min_seconds < 0 || max_seconds < min_seconds || stable_tolerance <= 0) {
    return InvalidArgumentError("need min_runs >= 3 and 0 <= min_seconds <= max_seconds");
  }
  return Status::Ok();
}

Result<json> ManifestFromModels(const std::vector<fs::path>& models) {
  json variants = json::array();
  std::map<fs::path, size_t> index;  // folder/stem -> variant
  json manifest = {{"normalization_source", "none"}};
  std::vector<float> mean, stddev;
  std::string first_model;
  for (const fs::path& given : models) {
    std::error_code ec;
    if (!fs::is_regular_file(given, ec)) return NotFoundError(given.string() + ": no such file");
    const fs::path file = fs::absolute(given, ec);
    const std::string ext = file.extension().string();
    if (ext != ".onnx" && ext != ".pt") {
      return InvalidArgumentError(given.string() + ": not a model file (.onnx or .pt)");
    }
    const fs::path key = file.parent_path() / file.stem();
    auto [it, inserted] = index.emplace(key, variants.size());
    if (inserted) {
      std::string name = file.stem().string();
      if (name == "model" && file.parent_path().has_filename()) {
        name = file.parent_path().filename().string();
      }
      for (const json& v : variants) {
        if (v["name"] == name) name += "-" + std::to_string(variants.size() + 1);
      }
      variants.push_back({{"name", name}, {"status", "ok"}, {"size_bytes", 0}});
    }
    json& v = variants[it->second];
    const char* field = ext == ".onnx" ? "file" : "torchscript_file";
    if (v.contains(field)) return InvalidArgumentError(given.string() + ": given twice");
    v[field] = file.string();
    // The ONNX file's size is the variant's size (as in a kiln optimize manifest).
    if (ext == ".onnx" || !v.contains("file")) {
      v["size_bytes"] = static_cast<int64_t>(fs::file_size(file, ec));
    }
    backend::BackendOptions bo;
    bo.model_path = file.string();
    bo.intra_op_threads = 1;
    KILN_ASSIGN_OR_RETURN(auto engine,
                          backend::CreateBackend(ext == ".onnx" ? "onnxruntime" : "libtorch", bo));
    KILN_ASSIGN_OR_RETURN(backend::KilnModelMetadata meta,
                          backend::ReadKilnMetadata(engine->metadata(), file.string()));
    if (first_model.empty()) {
      first_model = given.string();
      mean = meta.has_normalization() ? meta.mean : std::vector<float>(3, 0.f);
      stddev = meta.has_normalization() ? meta.stddev : std::vector<float>(3, 1.f);
      if (meta.has_normalization()) manifest["normalization_source"] = "kiln metadata";
      manifest["labels"] = meta.labels;
      const auto& m = engine->metadata();
      manifest["arch"] = m.count("kiln.arch") ? m.at("kiln.arch") : file.filename().string();
    } else if (meta.has_normalization() ? (meta.mean != mean || meta.stddev != stddev)
                                        : manifest["normalization_source"] != "none") {
      return InvalidArgumentError(given.string() + " and " + first_model +
                                  " expect different input normalization: benchmark them "
                                  "separately");
    }
  }
  manifest["normalization"] = {{"mean", mean}, {"std", stddev}};
  manifest["variants"] = variants;
  return manifest;
}

Result<json> RunBench(const BenchOptions& o, std::ostream* progress,
                      const std::atomic<bool>* stop) {
  KILN_RETURN_IF_ERROR(o.Validate());
  auto say = [&](const std::string& s) {
    if (progress) *progress << "[bench] " << s << "\n" << std::flush;
  };
  json manifest;
  if (!o.models.empty()) {
    KILN_ASSIGN_OR_RETURN(manifest, ManifestFromModels(o.models));
  } else {
    if (!fs::exists(o.manifest)) return NotFoundError(o.manifest.string() + ": no such manifest");
    try {
      manifest = json::parse(ReadFile(o.manifest));
      (void)manifest.at("variants").size();
    } catch (const json::exception& e) {
      return InvalidArgumentError(o.manifest.string() + ": not a kiln optimize manifest (" +
                                  e.what() + ")");
    }
  }
  // Model paths in a manifest are relative to it; ManifestFromModels writes absolute ones.
  const fs::path dir = o.models.empty() ? o.manifest.parent_path() : fs::path();
  std::error_code ec;
  fs::create_directories(o.out_dir, ec);
  if (ec) return InvalidArgumentError("cannot create " + o.out_dir.string() + ": " + ec.message());

  // Inputs: the first max(batch) test images, normalized with the model's statistics.
  const int64_t n_inputs = *std::max_element(o.batch_sizes.begin(), o.batch_sizes.end());
  data::Normalization norm;
  json shape;
  std::vector<float> inputs;
  {
    say("loading test images from " + o.data.string());
    KILN_ASSIGN_OR_RETURN(data::Dataset ds, data::LoadCifar10(o.data));
    try {
      norm.mean = manifest.at("normalization").at("mean").get<std::vector<float>>();
      norm.std = manifest.at("normalization").at("std").get<std::vector<float>>();
    } catch (const json::exception& e) {
      return InvalidArgumentError(o.manifest.string() + ": no normalization");
    }
    const data::ImageSet& test = ds.test;
    if (static_cast<int64_t>(norm.mean.size()) != test.channels) {
      return InvalidArgumentError("the model's normalization does not match the data's channels");
    }
    shape = {n_inputs, test.channels, test.height, test.width};
    inputs.resize(static_cast<size_t>(n_inputs * test.image_bytes()));
    for (int64_t i = 0; i < n_inputs; ++i) {
      data::NormalizeImage(test.image(i % test.size()), test.channels, test.height * test.width,
                           norm, inputs.data() + i * test.image_bytes());
    }
  }  // the data set is freed before anything is measured
  const fs::path inputs_file = o.out_dir / "inputs.f32";
  KILN_RETURN_IF_ERROR(WriteFileAtomic(
      inputs_file, {reinterpret_cast<const char*>(inputs.data()), inputs.size() * sizeof(float)}));

  say("measuring this machine's roof (FP32 FMA, INT8 dot products)");
  const Roof roof = MeasureRoof(o.threads);
  json roof_json = {{"isa", roof.isa}, {"points", json::array()}};
  for (const RoofPoint& p : roof.points) {
    roof_json["points"].push_back(
        {{"threads", p.threads}, {"fp32_gflops", p.fp32_gflops}, {"int8_gops", p.int8_gops}});
    char line[160];
    std::snprintf(line, sizeof line, "roof at %d thread%s: FP32 %.1f GFLOP/s, INT8 %.1f GOP/s (%s)",
                  p.threads, p.threads == 1 ? "" : "s", p.fp32_gflops, p.int8_gops,
                  roof.isa.c_str());
    say(line);
  }

  // What to measure: one job per variant x engine x thread count.
  struct Job {
    json variant;
    std::string label;    // engine as reported
    std::string backend;  // CreateBackend name
    fs::path file;
    bool defaults = false;
    int threads = 1;  // 0 = ONNX Runtime's default
  };
  json variants = json::array();
  json fp32_entry;
  std::vector<Job> jobs;
  auto wants = [&](const std::string& e) {
    return std::find(o.engines.begin(), o.engines.end(), e) != o.engines.end();
  };
  for (const json& v : manifest["variants"]) {
    const std::string name = v.value("name", "");
    if (v.value("status", "") != "ok") continue;
    if (!o.variants.empty() &&
        std::find(o.variants.begin(), o.variants.end(), name) == o.variants.end()) {
      continue;
    }
    // The peers run the FP32 model: "fp32" in a manifest, else the first with a TorchScript file.
    if (name == "fp32" ||
        (fp32_entry.is_null() && !o.models.empty() && v.contains("torchscript_file"))) {
      fp32_entry = v;
    }
    variants.push_back(v);
    const bool has_onnx = v.contains("file");
    const fs::path onnx = has_onnx ? dir / v["file"].get<std::string>() : fs::path();
    for (int t : o.threads) {
      if (wants("onnxruntime") && has_onnx) {
        jobs.push_back({v, "onnxruntime", "onnxruntime", onnx, false, t});
      }
      if (wants("libtorch") && v.contains("torchscript_file")) {
        jobs.push_back(
            {v, "libtorch", "libtorch", dir / v["torchscript_file"].get<std::string>(), false, t});
      }
    }
    // ONNX Runtime's defaults choose their own thread count: measured once.
    if (wants("onnxruntime-default") && has_onnx && (name == "fp32" || !o.models.empty())) {
      jobs.push_back({v, "onnxruntime-default", "onnxruntime", onnx, true, 0});
    }
  }
  if (variants.empty()) return InvalidArgumentError("no variant of the manifest to benchmark");

  // Rounds: the whole matrix is measured `rounds` times, one pass after the other, so slow
  // drift of the machine (other tenants, clock changes) shows up as spread between rounds.
  struct Samples {
    std::vector<double> ms;
    std::vector<double> round_medians;
    bool stable = true;
    int64_t peak_rss = 0;
  };
  std::map<std::pair<size_t, int64_t>, Samples> samples;  // (job, batch) -> samples
  std::vector<int64_t> reference_top1;  // ONNX Runtime FP32 top-1 on the inputs (peer check)
  json peers = {{"available", false}, {"reason", "disabled (--no-peers)"}};
  if (o.peers && fp32_entry.is_null()) peers["reason"] = "no fp32 variant selected";
  bool run_peers = o.peers && !fp32_entry.is_null();
  struct PeerCell {
    std::vector<double> ms, round_medians;
    bool stable = true;
    std::string variant;
  };
  std::map<std::tuple<std::string, int, int64_t>, PeerCell> peer_cells;  // engine, threads, batch
  json peer_info;  // the first round's output (versions, top-1, eager-vs-script check)
  for (int round = 0; round < o.rounds; ++round) {
    for (size_t j = 0; j < jobs.size(); ++j) {
      const Job& job = jobs[j];
      const std::string name = job.variant.value("name", "");
      backend::BackendOptions bo;
      bo.model_path = job.file.string();
      bo.intra_op_threads = std::max(job.threads, 1);
      bo.runtime_defaults = job.defaults;
      ResetPeakRss();
      KILN_ASSIGN_OR_RETURN(auto engine, backend::CreateBackend(job.backend, bo));
      if (engine->InputElementsPerSample() * n_inputs != static_cast<int64_t>(inputs.size())) {
        return InvalidArgumentError(job.file.string() + " does not take the test images' shape");
      }
      std::vector<float> out;
      for (int64_t batch : o.batch_sizes) {
        if (stop && stop->load()) return CancelledError("bench interrupted");
        KILN_ASSIGN_OR_RETURN(Timing t, Measure(*engine, inputs.data(), batch, out, o));
        Samples& s = samples[{j, batch}];
        s.ms.insert(s.ms.end(), t.ms.begin(), t.ms.end());
        s.round_medians.push_back(Quantile(t.ms, 0.50));
        s.stable = s.stable && t.stable;
        s.peak_rss = std::max(s.peak_rss, PeakRssBytes());
        if (fp32_entry.is_object() && name == fp32_entry.value("name", "") &&
            job.backend == "onnxruntime" && batch == n_inputs && reference_top1.empty()) {
          const int64_t k = engine->OutputElementsPerSample();
          for (int64_t i = 0; i < batch; ++i) {
            const float* row = out.data() + i * k;
            reference_top1.push_back(std::max_element(row, row + k) - row);
          }
        }
        char line[220];
        std::snprintf(line, sizeof line,
                      "round %d/%d %-16s %-20s threads %-7s batch %4lld: median %8.3f ms, %9.1f "
                      "img/s%s",
                      round + 1, o.rounds, name.c_str(), job.label.c_str(),
                      job.threads == 0 ? "default" : std::to_string(job.threads).c_str(),
                      static_cast<long long>(batch), s.round_medians.back(),
                      1000.0 * static_cast<double>(batch) / s.round_medians.back(),
                      t.stable ? "" : " (unstable)");
        say(line);
      }
    }
    // The peers' round: a fresh Python process right after Kiln's pass, so that drift of the
    // machine and per-process effects reach the peers' spread as they reach Kiln's.
    if (run_peers) {
      json r = RunPeers(o, fp32_entry, dir, inputs_file, n_inputs, shape, round, progress);
      if (!r.value("available", false)) {
        peers = r;
        run_peers = false;
        peer_cells.clear();
      } else {
        if (peer_info.is_null()) peer_info = r;
        try {
          for (const json& c : r.at("results")) {
            PeerCell& pc = peer_cells[{c.at("engine").get<std::string>(),
                                       c.at("threads").get<int>(), c.at("batch").get<int64_t>()}];
            const auto ms = c.at("runs_ms").get<std::vector<double>>();
            pc.ms.insert(pc.ms.end(), ms.begin(), ms.end());
            pc.round_medians.push_back(Quantile(ms, 0.50));
            pc.stable = pc.stable && c.value("stable", false);
            pc.variant = c.value("variant", "");
          }
        } catch (const json::exception& e) {
          peers = {{"available", false},
                   {"reason", std::string("peer output is incomplete: ") + e.what()}};
          run_peers = false;
          peer_cells.clear();
        }
      }
    }
  }
  json results = json::array();
  for (size_t j = 0; j < jobs.size(); ++j) {
    const Job& job = jobs[j];
    const bool integer = job.variant.value("precision", "") == "int8";
    const auto flops = job.variant.value("flops_per_image", int64_t{0});
    for (int64_t batch : o.batch_sizes) {
      const Samples& s = samples[{j, batch}];
      Timing pooled{s.ms, s.stable};
      json cell = Stats(pooled, batch);
      cell["variant"] = job.variant.value("name", "");
      cell["engine"] = job.label;
      cell["threads"] = job.threads == 0 ? json("default") : json(job.threads);
      cell["batch"] = batch;
      cell["round_medians_ms"] = s.round_medians;
      cell["peak_rss_bytes"] = s.peak_rss;
      if (flops > 0) {  // unknown for plain model files (only kiln optimize counts them)
        const double achieved =
            static_cast<double>(flops) * cell["images_per_second"].get<double>();
        cell["achieved_gflops"] = achieved / 1e9;
        // ONNX Runtime's default may use every core: compare with the largest thread count.
        const RoofPoint* rp = roof.At(
            job.threads > 0 ? job.threads : *std::max_element(o.threads.begin(), o.threads.end()));
        const double peak = rp ? (integer ? rp->int8_gops : rp->fp32_gflops) : 0.0;
        if (peak > 0) cell["roof_fraction"] = achieved / 1e9 / peak;
      }
      results.push_back(cell);
    }
  }

  AddConfidenceIntervals(&results);
  if (!peer_info.is_null() && !peer_cells.empty()) {
    peers = peer_info;
    peers["rounds"] = o.rounds;
    json peer_results = json::array();
    for (const auto& [key, pc] : peer_cells) {
      const auto& [engine, threads, batch] = key;
      json cell = Stats(Timing{pc.ms, pc.stable}, batch);
      cell["variant"] = pc.variant;
      cell["engine"] = engine;
      cell["threads"] = threads;
      cell["batch"] = batch;
      cell["round_medians_ms"] = pc.round_medians;
      peer_results.push_back(cell);
    }
    peers["results"] = peer_results;
    // The peers must run the same weights: compare their top-1 with ONNX Runtime's.
    if (peers.contains("top1") && !reference_top1.empty()) {
      const auto top1 = peers["top1"].get<std::vector<int64_t>>();
      int64_t same = 0;
      for (size_t i = 0; i < top1.size() && i < reference_top1.size(); ++i) {
        same += top1[i] == reference_top1[i] ? 1 : 0;
      }
      peers["top1_agreement_with_onnxruntime"] =
          static_cast<double>(same) / static_cast<double>(reference_top1.size());
    }
  }
  if (!peers.value("available", false)) say("peers unavailable: " + peers.value("reason", "?"));
  if (peers.contains("results")) AddConfidenceIntervals(&peers["results"]);
  // Ratios to FP32 on ONNX Runtime (the first variant when there is no "fp32"), cell by cell.
  const std::string reference_variant =
      fp32_entry.is_object() ? fp32_entry.value("name", "") : variants.front().value("name", "");
  if (peers.contains("results")) AddRatios(results, reference_variant, &peers["results"]);
  AddRatios(json(results), reference_variant, &results);

  std::time_t now = std::time(nullptr);
  char date[32];
  std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  auto ort = backend::OnnxRuntimeVersion();
  json report = {
      {"format", "kiln-bench-1"},
      {"created", date},
      {"command", o.command_line},
      {"manifest", o.models.empty() ? o.manifest.string() : std::string("(model files)")},
      {"machine", MachineInfo()},
      {"versions",
       {{"kiln", Version()},
        {"onnxruntime", ort.ok() ? *ort : "unavailable"},
        {"libtorch", backend::LibtorchVersion()},
        {"python_torch", peers.value("torch_version", "unavailable")}}},
      {"method",
       {{"inputs", std::to_string(n_inputs) +
                       " CIFAR-10 test images (the first ones), normalized "
                       "with the model's statistics; the same buffer for every engine" +
                       (manifest.value("normalization_source", "") == "none"
                            ? std::string(" (the model files carry no Kiln normalization: "
                                          "pixels scaled to [0, 1] only)")
                            : std::string())},
        {"warmup_runs", o.warmup_runs},
        {"warmup_seconds", o.warmup_seconds},
        {"min_runs", o.min_runs},
        {"min_seconds", o.min_seconds},
        {"max_seconds", o.max_seconds},
        {"stable_tolerance", o.stable_tolerance},
        {"rounds", o.rounds},
        {"stability_rule",
         "the whole matrix is measured `rounds` times, one pass after another; in each pass a "
         "cell's timed runs continue until at least min_runs runs and min_seconds have passed and "
         "the medians of the first and second half of the runs differ by at most "
         "stable_tolerance (after max_seconds the cell is marked not stable); statistics pool "
         "every run of every round, and round_medians_ms shows the drift between rounds"},
        {"spread",
         "ci95_ms: a 95% confidence interval of the median latency from the rounds' medians "
         "(mean +- t(0.975, rounds-1) x sd / sqrt(rounds)); it widens with drift between rounds. "
         "Two runs of this benchmark agree on a cell when their intervals overlap "
         "(bench/compare_reports.py checks two report.json files)"},
        {"ratio",
         "each cell's speed against the reference cell (the FP32 variant on ONNX Runtime at the "
         "same threads and batch) measured in the same rounds: per round, the reference's median "
         "latency over the cell's (images/s over the reference's images/s); the report gives the "
         "median of the rounds' ratios with their min-max, and ratio.ci95 the 95% interval of "
         "their mean like ci95_ms. Drift of the whole machine between rounds and between runs "
         "moves both cells of a ratio, so ratios hold from one run to the next where absolute "
         "images/s do not (bench/compare_reports.py judges both)"},
        {"peers",
         "bench/peers.py (PyTorch eager and TorchScript in Python) runs in a fresh Python process "
         "once per round, right after Kiln's pass of that round, with the same warm-up and "
         "stability rule; its rounds are pooled like Kiln's"},
        {"images_per_second", "batch / median latency"},
        {"peak_memory",
         "peak resident set of the benchmark process (VmHWM) during the cell, "
         "libraries and model included"},
        {"roof_fraction",
         "flops_per_image x images/s over the measured FP32 (or INT8) roof at the "
         "same thread count"}}},
      {"roof", roof_json},
      {"model",
       {{"arch", manifest.value("arch", "")}, {"labels", manifest.value("labels", json::array())}}},
      {"variants", variants},
      {"results", results},
      {"peers", peers}};
  KILN_RETURN_IF_ERROR(WriteReport(report, o.out_dir));
  return report;
}

}  // namespace kiln::bench
