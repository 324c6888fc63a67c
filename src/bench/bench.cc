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
#include <set>
#include <sstream>
#include <thread>
#include <tuple>

#include "kiln/backend/factory/factory.h"
#include "kiln/backend/inference_backend.h"
#include "kiln/backend/libtorch/libtorch_backend.h"
#include "kiln/backend/model_metadata.h"
#include "kiln/backend/onnxruntime/onnxruntime_backend.h"
#include "kiln/backend/openvino/openvino_backend.h"
#include "kiln/bench/roof.h"
#include "kiln/core/file.h"
#include "kiln/core/process.h"
#include "kiln/core/statistics.h"
#include "kiln/core/version.h"
#include "kiln/data/cifar10.h"
#include "kiln/data/loader.h"
#include "kiln/eval/evaluate.h"

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
  for (const char* want : {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8",
                           "amx_bf16"}) {
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

// Resident memory of this process now (Linux VmRSS).
int64_t ResidentBytes() {
  std::istringstream s(ReadFile("/proc/self/status"));
  std::string line;
  while (std::getline(s, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  }
  return 0;
}

// The engines `kiln bench` knows. Kiln's engines run with Kiln's settings at each thread count;
// "-default" engines are the runtimes as their users get them out of the box (every option at
// the runtime's own default, its own thread count): the peers Kiln's settings are judged by.
struct EngineSpec {
  std::string label;    // as reported and given to --engines
  std::string backend;  // CreateBackend name
  bool defaults = false;
  std::string hint = "LATENCY";  // OpenVINO performance hint
  std::string what;              // for the report's method
  std::string precision = "f32";  // OpenVINO inference precision
};
const std::vector<EngineSpec>& EngineCatalog() {
  static const std::vector<EngineSpec> catalog = {
      {"onnxruntime", "onnxruntime", false, "LATENCY",
       "ONNX Runtime with Kiln's session (graph level all, intra-op threads = the thread count, "
       "sequential, spinning off)"},
      {"openvino", "openvino", false, "LATENCY",
       "OpenVINO's CPU plugin with Kiln's settings (LATENCY hint: one stream of the thread count, "
       "f32 inference precision, no pinning)"},
      {"openvino-throughput", "openvino", false, "THROUGHPUT",
       "OpenVINO with the THROUGHPUT hint (the plugin's streams; a batch is split between them)"},
      {"openvino-bf16", "openvino", false, "LATENCY",
       "OpenVINO with Kiln's settings but bfloat16 inference precision (HINT_BF16 in a "
       "config.pbtxt; on CPUs with AVX512-BF16 or AMX; results change slightly: see its "
       "accuracy)",
       "bf16"},
      {"libtorch", "libtorch", false, "LATENCY",
       "libtorch running the TorchScript export (frozen, channels-last, inference mode)"},
      {"onnxruntime-default", "onnxruntime", true, "LATENCY",
       "ONNX Runtime's defaults (its own thread count and spinning): the peer"},
      {"openvino-default", "openvino", true, "LATENCY",
       "OpenVINO's defaults (no property set: its own threads, streams, pinning and inference "
       "precision, which is bf16 on CPUs with AVX512-BF16 or AMX): the peer"},
  };
  return catalog;
}
std::string EngineNames() {
  std::string s;
  for (const EngineSpec& e : EngineCatalog()) s += (s.empty() ? "" : ", ") + e.label;
  return s;
}
json EnginesMethod() {
  json m = json::object();
  for (const EngineSpec& e : EngineCatalog()) m[e.label] = e.what;
  return m;
}

struct Job {
  json variant;
  std::string name;  // the variant's name
  EngineSpec engine;
  fs::path file;
  int threads = 1;  // 0 = the engine's own default
};

struct Samples {
  std::vector<double> ms;
  std::vector<double> round_medians;
  std::vector<double> round_ratios;  // the reference's median / this cell's, per round
  bool stable = true;
};

struct PeerCell {
  std::vector<double> ms, round_medians, round_ratios;
  bool stable = true;
  std::string variant;
};

// {"reference", "value" (mean of the rounds' ratios), "round_ratios", "ci95" (with two rounds or
// more), "interleaved"}.
json RatioJson(const std::vector<double>& ratios, const std::string& reference, bool interleaved) {
  double sum = 0;
  for (double r : ratios) sum += r;
  json j = {{"reference", reference},
            {"value", sum / static_cast<double>(ratios.size())},
            {"round_ratios", ratios},
            {"interleaved", interleaved}};
  if (auto ci = MeanConfidenceInterval(ratios, 0.95)) j["ci95"] = {ci->first, ci->second};
  return j;
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
  const fs::path script = o.peers_script.empty()
                              ? fs::path(KILN_SOURCE_DIR) / "bench" / "peers.py"
                              : o.peers_script;
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
      o.python, script.string(), "--torchscript",
      (manifest_dir / fp32["torchscript_file"].get<std::string>()).string(), "--inputs",
      inputs.string(), "--images", std::to_string(images), "--shape",
      text(shape[1]) + "," + text(shape[2]) + "," + text(shape[3]), "--batch-sizes",
      Join(o.batch_sizes), "--threads", Join(threads), "--warmup-runs", text(o.warmup_runs),
      "--warmup-seconds", text(o.warmup_seconds), "--min-runs", text(o.min_runs),
      "--min-seconds", text(o.min_seconds), "--max-seconds", text(o.max_seconds),
      "--stable-tolerance", text(o.stable_tolerance), "--rounds", "1", "--output", out.string(),
      "--variant", fp32.value("name", "fp32")};
  if (progress) *progress << "[bench] peers: " << CommandLineForDisplay(argv) << "\n" << std::flush;
  // The script's chatter goes to stderr: stdout may carry Kiln's own report.
  const Result<int> rc = RunProcess(argv, {.stdout_to_stderr = true});
  if (!rc.ok()) {
    unavailable["reason"] = rc.status().message() + "; is python3-torch installed for " +
                            o.python + "?";
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

void BenchOptions::ApplyQuick() {
  rounds = 1;
  batch_sizes = {1, 64};
  threads = {2};
  warmup_runs = 2;
  warmup_seconds = 0.05;
  min_runs = 5;
  min_seconds = 0.2;
  max_seconds = 0.6;
  accuracy_images = 1000;
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
    const auto& c = EngineCatalog();
    if (std::none_of(c.begin(), c.end(), [&](const EngineSpec& s) { return s.label == e; })) {
      return InvalidArgumentError("unknown engine '" + e + "' (" + EngineNames() + ")");
    }
  }
  if (accuracy_images < 0) return InvalidArgumentError("accuracy images must be >= 0");
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

  // Inputs: the first max(batch) test images, normalized with the model's statistics; and, for
  // the accuracy check of every engine, the first accuracy_images test images.
  const int64_t n_inputs = *std::max_element(o.batch_sizes.begin(), o.batch_sizes.end());
  data::Normalization norm;
  json shape;
  std::vector<float> inputs;
  data::ImageSet accuracy_set;
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
    if (o.accuracy_images > 0) {
      std::vector<int64_t> first(static_cast<size_t>(std::min(o.accuracy_images, test.size())));
      for (size_t i = 0; i < first.size(); ++i) first[i] = static_cast<int64_t>(i);
      accuracy_set = test.Subset(first);
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

  // What to measure: one job per variant x engine x thread count (engines at their own
  // defaults: once, with the thread count they choose).
  const int max_threads = *std::max_element(o.threads.begin(), o.threads.end());
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
    for (const EngineSpec& e : EngineCatalog()) {
      if (!wants(e.label)) continue;
      const bool torchscript = e.backend == "libtorch";
      if (torchscript ? !v.contains("torchscript_file") : !has_onnx) continue;
      const fs::path file =
          torchscript ? dir / v["torchscript_file"].get<std::string>() : onnx;
      if (e.defaults) {
        jobs.push_back({v, name, e, file, 0});
      } else {
        for (int t : o.threads) jobs.push_back({v, name, e, file, t});
      }
    }
  }
  if (variants.empty()) return InvalidArgumentError("no variant of the manifest to benchmark");
  // The reference: FP32 (else the first variant) on ONNX Runtime with Kiln's session, at the same
  // thread count and batch as the cell it is compared with.
  const std::string reference_variant =
      fp32_entry.is_object() ? fp32_entry.value("name", "") : variants[0].value("name", "");
  auto reference_of = [&](int threads) -> int {
    for (size_t j = 0; j < jobs.size(); ++j) {
      if (jobs[j].name == reference_variant && jobs[j].engine.label == "onnxruntime" &&
          jobs[j].threads == threads) {
        return static_cast<int>(j);
      }
    }
    return -1;
  };
  auto options_of = [&](const Job& job) {
    backend::BackendOptions bo;
    bo.model_path = job.file.string();
    bo.intra_op_threads = std::max(job.threads, 1);
    bo.runtime_defaults = job.engine.defaults;
    bo.performance_hint = job.engine.hint;
    bo.inference_precision = job.engine.precision;
    return bo;
  };

  // Accuracy of every (variant, engine) on the test images, and top-1 agreement with ONNX
  // Runtime on the same variant: an engine that reads a graph differently shows here.
  json accuracy = json::array();
  std::map<std::string, std::vector<int64_t>> ort_predictions;  // variant -> ONNX Runtime top-1
  if (o.accuracy_images > 0) {
    std::vector<const Job*> checks;
    std::set<std::pair<std::string, std::string>> seen;
    for (int pass = 0; pass < 2; ++pass) {  // ONNX Runtime first: the others are compared with it
      for (const Job& job : jobs) {
        if ((job.engine.label == "onnxruntime") != (pass == 0)) continue;
        if (job.threads != 0 && job.threads != max_threads) continue;
        if (seen.insert({job.name, job.engine.label}).second) checks.push_back(&job);
      }
    }
    for (const Job* job : checks) {
      if (stop && stop->load()) return CancelledError("bench interrupted");
      json row = {{"variant", job->name}, {"engine", job->engine.label},
                  {"images", accuracy_set.size()}};
      auto engine = backend::CreateBackend(job->engine.backend, options_of(*job));
      Result<EvalResult> r = engine.ok()
                                 ? eval::EvaluateEngine(**engine, accuracy_set, norm, 250)
                                 : Result<EvalResult>(engine.status());
      if (!r.ok()) {
        row["error"] = r.status().ToString();
        say("accuracy of " + job->name + " / " + job->engine.label + ": " + row["error"].get<std::string>());
        accuracy.push_back(row);
        continue;
      }
      row["accuracy"] = r->accuracy;
      if (job->engine.label == "onnxruntime") ort_predictions[job->name] = r->predictions;
      auto ort = ort_predictions.find(job->name);
      if (ort != ort_predictions.end() && ort->second.size() == r->predictions.size()) {
        int64_t same = 0;
        for (size_t i = 0; i < r->predictions.size(); ++i) same += r->predictions[i] == ort->second[i];
        row["agreement_with_onnxruntime"] =
            static_cast<double>(same) / static_cast<double>(r->predictions.size());
      }
      char line[200];
      std::snprintf(line, sizeof line, "accuracy of %s / %s on %lld test images: %.2f%%",
                    job->name.c_str(), job->engine.label.c_str(),
                    static_cast<long long>(accuracy_set.size()), 100 * r->accuracy);
      say(line);
      accuracy.push_back(row);
    }
  }
  accuracy_set = data::ImageSet();

  // Rounds: the whole matrix is measured `rounds` times, one pass after the other. Inside a
  // pass, for each thread count the engines are loaded together and measured column by column
  // (one batch size at a time): the reference cell first, every other cell of the column (in an
  // order rotated each round), the reference again. Each cell's ratio to the reference of its
  // column in the same round is then free of the machine's drift over minutes.
  std::map<std::pair<size_t, int64_t>, Samples> samples;  // (job, batch) -> samples
  std::map<size_t, int64_t> memory;                       // job -> RSS its loading added
  std::map<size_t, std::map<std::string, std::string>> settings;  // job -> engine's own account
  std::map<size_t, std::string> failed;                   // job -> why it could not run
  // (threads, batch) -> the reference's median in each round, and its start/end difference.
  std::map<std::pair<int, int64_t>, std::vector<double>> reference_medians;
  std::vector<double> bracket_gaps;
  std::vector<int64_t> reference_top1;  // ONNX Runtime FP32 top-1 on the inputs (peer check)
  json peers = {{"available", false}, {"reason", "disabled (--no-peers)"}};
  if (o.peers && fp32_entry.is_null()) peers["reason"] = "no fp32 variant selected";
  bool run_peers = o.peers && !fp32_entry.is_null();
  std::map<std::tuple<std::string, int, int64_t>, PeerCell> peer_cells;  // engine, threads, batch
  json peer_info;  // the first round's output (versions, top-1, eager-vs-script check)
  for (int round = 0; round < o.rounds; ++round) {
    for (int t : o.threads) {
      std::vector<size_t> group;
      for (size_t j = 0; j < jobs.size(); ++j) {
        if (failed.count(j)) continue;
        if (jobs[j].threads == t || (jobs[j].threads == 0 && t == max_threads)) group.push_back(j);
      }
      std::map<size_t, std::unique_ptr<backend::InferenceBackend>> engines;
      for (size_t j : group) {
        const int64_t before = ResidentBytes();
        auto engine = backend::CreateBackend(jobs[j].engine.backend, options_of(jobs[j]));
        if (engine.ok() && (*engine)->InputElementsPerSample() * n_inputs !=
                               static_cast<int64_t>(inputs.size())) {
          engine = InvalidArgumentError(jobs[j].file.string() + " does not take the test images' shape");
        }
        if (!engine.ok()) {
          const int ref = reference_of(t);
          if (ref >= 0 && static_cast<size_t>(ref) == j) return engine.status();
          failed[j] = engine.status().ToString();
          say(jobs[j].name + " / " + jobs[j].engine.label + " cannot run: " + failed[j]);
          continue;
        }
        if (round == 0) {  // what the engine holds after one run at every batch size
          std::vector<float> out;
          for (int64_t batch : o.batch_sizes) {
            out.resize(static_cast<size_t>(batch * (*engine)->OutputElementsPerSample()));
            KILN_RETURN_IF_ERROR((*engine)->Run(inputs.data(), batch, out.data()));
          }
          memory[j] = std::max<int64_t>(0, ResidentBytes() - before);
          settings[j] = (*engine)->settings();
          if (!settings[j].empty()) {
            std::string line;
            for (const auto& [key, value] : settings[j]) line += " " + key + "=" + value;
            say(jobs[j].name + " / " + jobs[j].engine.label + " runs with" + line);
          }
        }
        engines[j] = std::move(engine).value();
      }
      const int ref = reference_of(t);
      const bool has_ref = ref >= 0 && engines.count(static_cast<size_t>(ref));
      std::vector<size_t> others;
      for (const auto& [j, e] : engines) {
        if (!has_ref || j != static_cast<size_t>(ref)) others.push_back(j);
      }
      if (!others.empty()) {
        std::rotate(others.begin(), others.begin() + round % static_cast<int>(others.size()),
                    others.end());
      }
      std::vector<float> out;
      for (int64_t batch : o.batch_sizes) {
        auto measure = [&](size_t j) -> Result<Timing> {
          if (stop && stop->load()) return CancelledError("bench interrupted");
          KILN_ASSIGN_OR_RETURN(Timing tm, Measure(*engines[j], inputs.data(), batch, out, o));
          const Job& job = jobs[j];
          if (fp32_entry.is_object() && job.name == fp32_entry.value("name", "") &&
              job.engine.label == "onnxruntime" && batch == n_inputs && reference_top1.empty()) {
            const int64_t k = engines[j]->OutputElementsPerSample();
            for (int64_t i = 0; i < batch; ++i) {
              const float* row = out.data() + i * k;
              reference_top1.push_back(std::max_element(row, row + k) - row);
            }
          }
          return tm;
        };
        Timing ref_start, ref_end;
        if (has_ref) {
          KILN_ASSIGN_OR_RETURN(ref_start, measure(static_cast<size_t>(ref)));
        }
        std::map<size_t, Timing> timed;
        for (size_t j : others) {
          KILN_ASSIGN_OR_RETURN(timed[j], measure(j));
        }
        double ref_median = 0;
        if (has_ref) {
          KILN_ASSIGN_OR_RETURN(ref_end, measure(static_cast<size_t>(ref)));
          const double a = Quantile(ref_start.ms, 0.50);
          const double b = Quantile(ref_end.ms, 0.50);
          bracket_gaps.push_back(std::fabs(a - b) / (0.5 * (a + b)));
          Timing both = ref_start;
          both.ms.insert(both.ms.end(), ref_end.ms.begin(), ref_end.ms.end());
          both.stable = ref_start.stable && ref_end.stable;
          timed[static_cast<size_t>(ref)] = both;
          ref_median = Quantile(both.ms, 0.50);
          reference_medians[{t, batch}].push_back(ref_median);
        }
        for (const auto& [j, tm] : timed) {
          Samples& s = samples[{j, batch}];
          s.ms.insert(s.ms.end(), tm.ms.begin(), tm.ms.end());
          const double median = Quantile(tm.ms, 0.50);
          s.round_medians.push_back(median);
          if (ref_median > 0) s.round_ratios.push_back(ref_median / median);
          s.stable = s.stable && tm.stable;
          const Job& job = jobs[j];
          char line[240];
          std::snprintf(line, sizeof line,
                        "round %d/%d %-16s %-20s threads %-7s batch %4lld: median %8.3f ms, %9.1f "
                        "img/s, %6.3fx the reference%s",
                        round + 1, o.rounds, job.name.c_str(), job.engine.label.c_str(),
                        job.threads == 0 ? "default" : std::to_string(job.threads).c_str(),
                        static_cast<long long>(batch), median,
                        1000.0 * static_cast<double>(batch) / median,
                        ref_median > 0 ? ref_median / median : 0.0, tm.stable ? "" : " (unstable)");
          say(line);
        }
      }
    }
    // The peers' round: a fresh Python process right after Kiln's pass, so that drift of the
    // machine and per-process effects reach the peers' spread as they reach Kiln's. Their
    // ratios use the reference of the same round, measured up to minutes earlier.
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
            const int threads = c.at("threads").get<int>();
            const int64_t batch = c.at("batch").get<int64_t>();
            PeerCell& pc = peer_cells[{c.at("engine").get<std::string>(), threads, batch}];
            const auto ms = c.at("runs_ms").get<std::vector<double>>();
            pc.ms.insert(pc.ms.end(), ms.begin(), ms.end());
            pc.round_medians.push_back(Quantile(ms, 0.50));
            const auto& refs = reference_medians[{threads, batch}];
            if (refs.size() == static_cast<size_t>(round + 1)) {
              pc.round_ratios.push_back(refs.back() / pc.round_medians.back());
            }
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
  const std::string reference_label = reference_variant + " / onnxruntime";
  json results = json::array();
  for (size_t j = 0; j < jobs.size(); ++j) {
    const Job& job = jobs[j];
    if (failed.count(j)) continue;
    const bool integer = job.variant.value("precision", "") == "int8";
    const auto flops = job.variant.value("flops_per_image", int64_t{0});
    for (int64_t batch : o.batch_sizes) {
      const Samples& s = samples[{j, batch}];
      if (s.ms.empty()) continue;
      Timing pooled{s.ms, s.stable};
      json cell = Stats(pooled, batch);
      cell["variant"] = job.name;
      cell["engine"] = job.engine.label;
      cell["threads"] = job.threads == 0 ? json("default") : json(job.threads);
      cell["batch"] = batch;
      cell["round_medians_ms"] = s.round_medians;
      if (memory.count(j)) cell["memory_bytes"] = memory[j];
      if (settings.count(j) && !settings[j].empty()) cell["engine_settings"] = settings[j];
      if (!s.round_ratios.empty()) {
        cell["speedup"] = RatioJson(s.round_ratios, reference_label, true);
      }
      if (flops > 0) {  // unknown for plain model files (only kiln optimize counts them)
        const double achieved =
            static_cast<double>(flops) * cell["images_per_second"].get<double>();
        cell["achieved_gflops"] = achieved / 1e9;
        // An engine at its own defaults may use every core: compare with the largest count.
        const RoofPoint* rp = roof.At(job.threads > 0 ? job.threads : max_threads);
        const double peak = rp ? (integer ? rp->int8_gops : rp->fp32_gflops) : 0.0;
        if (peak > 0) cell["roof_fraction"] = achieved / 1e9 / peak;
      }
      results.push_back(cell);
    }
  }
  json unavailable = json::array();
  for (const auto& [j, why] : failed) {
    unavailable.push_back({{"variant", jobs[j].name},
                           {"engine", jobs[j].engine.label},
                           {"threads", jobs[j].threads == 0 ? json("default") : json(jobs[j].threads)},
                           {"error", why}});
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
      if (!pc.round_ratios.empty()) {
        cell["speedup"] = RatioJson(pc.round_ratios, reference_label, false);
      }
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

  // How much the machine moved during this run, seen through the reference alone.
  json drift = {{"reference", reference_label}};
  {
    std::vector<double> between;
    for (const auto& [key, medians] : reference_medians) {
      if (medians.size() < 2) continue;
      const auto [lo, hi] = std::minmax_element(medians.begin(), medians.end());
      between.push_back(*hi / *lo - 1.0);
    }
    auto summary = [](std::vector<double> v) -> json {
      if (v.empty()) return nullptr;
      std::sort(v.begin(), v.end());
      return {{"median", QuantileOfSorted(v, 0.5)}, {"max", v.back()}, {"count", v.size()}};
    };
    drift["between_rounds"] = summary(between);
    drift["within_column"] = summary(bracket_gaps);
  }

  std::time_t now = std::time(nullptr);
  char date[32];
  std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  auto ort = backend::OnnxRuntimeVersion();
  auto ov = backend::OpenVinoVersion();
  json report = {
      {"format", "kiln-bench-2"},
      {"created", date},
      {"command", o.command_line},
      {"manifest", o.models.empty() ? o.manifest.string() : std::string("(model files)")},
      {"machine", MachineInfo()},
      {"versions",
       {{"kiln", Version()},
        {"onnxruntime", ort.ok() ? *ort : "unavailable"},
        {"openvino", ov.ok() ? *ov : "unavailable"},
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
        {"engines", EnginesMethod()},
        {"order",
         "the whole matrix is measured `rounds` times, one pass after another; inside a pass, "
         "per thread count, every engine is loaded and the cells are measured one batch size (a "
         "column) at a time: the reference cell (" + reference_label + " at the same threads and "
         "batch) first, then every other cell of the column in an order rotated by one each "
         "round, then the reference again"},
        {"stability_rule",
         "in each pass a cell's timed runs continue until at least min_runs runs and min_seconds "
         "have passed and the medians of the first and second half of the runs differ by at most "
         "stable_tolerance (after max_seconds the cell is marked not stable); statistics pool "
         "every run of every round, and round_medians_ms shows the drift between rounds"},
        {"speedup",
         "per round, the reference's median latency (its runs before and after the column "
         "pooled) over the cell's median latency: images/s relative to the reference measured "
         "interleaved with the cell; the reported value is the mean of the rounds' ratios with a "
         "95% confidence interval (mean +- t(0.975, rounds-1) x sd / sqrt(rounds)). Ratios are "
         "what carries from one run to the next; absolute images/s move with the machine"},
        {"spread",
         "ci95_ms: a 95% confidence interval of the median latency from the rounds' medians "
         "(mean +- t(0.975, rounds-1) x sd / sqrt(rounds)); it widens with drift between rounds "
         "but cannot see drift between runs. Two runs of this benchmark agree on a cell when "
         "their intervals overlap; bench/compare_reports.py judges two report.json files on the "
         "speedups' ci95 and shows the latency intervals and the drift between the runs beside)"},
        {"accuracy",
         "every (variant, engine) pair runs the first " + std::to_string(o.accuracy_images) +
             " test images once, outside the timing; agreement is top-1 agreement with ONNX "
             "Runtime (Kiln's session) on the same variant"},
        {"peers",
         "bench/peers.py (PyTorch eager and TorchScript in Python) runs in a fresh Python process "
         "once per round, right after Kiln's pass of that round, with the same warm-up and "
         "stability rule; its rounds are pooled like Kiln's, and its ratios use the reference "
         "of the same round (not interleaved: measured up to minutes apart)"},
        {"images_per_second", "batch / median latency"},
        {"memory",
         "memory_bytes: resident memory the engine added while loading and running every batch "
         "size once (first round; memory freed by engines of an earlier thread count can be "
         "reused, so it is a lower bound)"},
        {"roof_fraction",
         "flops_per_image x images/s over the measured FP32 (or INT8) roof at the "
         "same thread count"}}},
      {"roof", roof_json},
      {"model",
       {{"arch", manifest.value("arch", "")}, {"labels", manifest.value("labels", json::array())}}},
      {"reference", {{"variant", reference_variant}, {"engine", "onnxruntime"}}},
      {"drift", drift},
      {"variants", variants},
      {"accuracy", accuracy},
      {"results", results},
      {"unavailable", unavailable},
      {"peers", peers}};
  KILN_RETURN_IF_ERROR(WriteReport(report, o.out_dir));
  return report;
}

}  // namespace kiln::bench
