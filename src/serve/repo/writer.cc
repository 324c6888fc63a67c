// `kiln repo write`: Kiln's models as a Triton model repository whose configs are complete on
// their own (docs/deploy.md, "The model repository").
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "kiln/backend/factory/factory.h"
#include "kiln/backend/model_metadata.h"
#include "kiln/core/file.h"
#include "kiln/core/version.h"
#include "kiln/serve/engine/model_config.h"
#include "kiln/serve/repo/repo.h"

namespace kiln::serve::repo {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr const char* kWarmupFile = "sample";

bool IsTorchScript(const fs::path& file) { return file.extension() == ".pt"; }

// Triton model names are folder names: keep them to characters every file system and URL takes.
bool ValidName(const std::string& name) {
  return !name.empty() && name[0] != '.' && std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
  });
}

std::string DimsText(const std::vector<int64_t>& dims) {
  std::string s = "[ ";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + " ]";
}

std::string Quoted(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

// What the config needs to know about one model file.
struct Opened {
  bool torchscript = false;
  std::vector<int64_t> sample_dims;  // input shape without the batch
  int64_t classes = 0;
  std::string input_name, output_name;  // in the model (ONNX) / Triton's convention (TorchScript)
  std::vector<std::string> labels;
  data::Normalization normalization;
};

Result<Opened> Open(const ModelSource& m) {
  Opened o;
  o.torchscript = IsTorchScript(m.file);
  backend::BackendOptions bo;
  bo.model_path = m.file.string();
  bo.intra_op_threads = 1;
  KILN_ASSIGN_OR_RETURN(auto engine,
                        backend::CreateBackend(o.torchscript ? "libtorch" : "onnxruntime", bo));
  if (engine->inputs().size() != 1 || engine->outputs().size() != 1) {
    return InvalidArgumentError(m.file.string() +
                                ": Kiln writes models with one input and one "
                                "output");
  }
  const auto& in = engine->inputs()[0];
  const auto& out = engine->outputs()[0];
  if (in.shape.size() < 2 || in.shape[0] != -1 || out.shape.size() != 2 || out.shape[0] != -1 ||
      out.shape[1] <= 0) {
    return InvalidArgumentError(m.file.string() +
                                ": the model must take [batch, ...] and return [batch, classes] "
                                "with a dynamic batch (export it with kiln export)");
  }
  o.sample_dims.assign(in.shape.begin() + 1, in.shape.end());
  for (int64_t d : o.sample_dims) {
    if (d <= 0)
      return InvalidArgumentError(m.file.string() + ": the input's sample shape is not fixed");
  }
  o.classes = out.shape[1];
  // Triton's PyTorch backend finds TorchScript tensors by position: <name>__<index>.
  o.input_name = o.torchscript ? "INPUT__0" : in.name;
  o.output_name = o.torchscript ? "OUTPUT__0" : out.name;
  KILN_ASSIGN_OR_RETURN(auto meta, backend::ReadKilnMetadata(engine->metadata(), m.file.string()));
  o.labels = std::move(meta.labels);
  if (!o.labels.empty() && static_cast<int64_t>(o.labels.size()) != o.classes) {
    return InvalidArgumentError(m.file.string() + ": " + std::to_string(o.labels.size()) +
                                " labels for " + std::to_string(o.classes) + " classes");
  }
  if (meta.has_normalization()) {
    o.normalization.mean = std::move(meta.mean);
    o.normalization.std = std::move(meta.stddev);
  } else {
    o.normalization.mean.assign(3, 0.f);
    o.normalization.std.assign(3, 1.f);
  }
  return o;
}

std::vector<int> PreferredSizes(const WriteOptions& o) {
  std::vector<int> sizes;
  if (o.preferred_batch_sizes.empty()) {
    for (int b = 8; b <= o.max_batch_size; b *= 2) sizes.push_back(b);
    if (sizes.empty() || sizes.back() != o.max_batch_size) sizes.push_back(o.max_batch_size);
  } else {
    for (int b : o.preferred_batch_sizes) {
      if (b >= 1 && b <= o.max_batch_size) sizes.push_back(b);
    }
  }
  std::sort(sizes.begin(), sizes.end());
  sizes.erase(std::unique(sizes.begin(), sizes.end()), sizes.end());
  return sizes;
}

std::string ConfigText(const WriteOptions& o, const ModelSource& m, const Opened& model,
                       const EngineChoice& engine) {
  const bool openvino = !model.torchscript && engine.backend == "openvino";
  std::ostringstream c;
  const std::vector<int> preferred = PreferredSizes(o);
  c << "# Written by `kiln repo write` (Kiln " << Version() << ") from " << m.file.string() << " ("
    << m.variant << ").\n"
    << "# Complete on its own: Triton and `kiln serve --disable-auto-complete-config` load it as "
       "it is.\n";
  if (!engine.reason.empty()) c << "# Engine: " << engine.reason << "\n";
  c << "name: " << Quoted(m.name) << "\n";
  if (model.torchscript) {
    c << "platform: \"pytorch_libtorch\"\nbackend: \"pytorch\"\n";
  } else if (openvino) {
    // Triton's OpenVINO backend reads ONNX directly when told the file's name.
    c << "backend: \"openvino\"\ndefault_model_filename: \"model.onnx\"\n";
  } else {
    c << "platform: \"onnxruntime_onnx\"\nbackend: \"onnxruntime\"\n";
  }
  c << "max_batch_size: " << o.max_batch_size << "\n"
    << "version_policy: { latest: { num_versions: 1 } }\n"
    << "input [\n  {\n    name: " << Quoted(model.input_name) << "\n    data_type: TYPE_FP32\n"
    << "    dims: " << DimsText(model.sample_dims) << "\n  }\n]\n"
    << "output [\n  {\n    name: " << Quoted(model.output_name) << "\n    data_type: TYPE_FP32\n"
    << "    dims: [ " << model.classes << " ]\n";
  if (!model.labels.empty()) c << "    label_filename: \"labels.txt\"\n";
  c << "  }\n]\n"
    << "dynamic_batching {\n  preferred_batch_size: [ ";
  for (size_t i = 0; i < preferred.size(); ++i) c << (i ? ", " : "") << preferred[i];
  c << " ]\n  max_queue_delay_microseconds: " << o.max_queue_delay_us << "\n}\n"
    << "instance_group [\n  {\n    count: " << o.instances
    << "\n    kind: " << (o.gpu ? "KIND_GPU" : "KIND_CPU") << "\n  }\n]\n";
  if (!o.gpu) {
    // The threads each instance's engine uses; Triton's ONNX Runtime backend reads the lower-case
    // keys, its PyTorch backend the upper-case ones.
    const std::string threads = std::to_string(o.threads);
    if (openvino) {
      // One request at a time per instance: the LATENCY hint's single stream over the threads.
      c << "parameters { key: \"INFERENCE_NUM_THREADS\" value: { string_value: \"" << threads
        << "\" } }\n"
        << "parameters { key: \"PERFORMANCE_HINT\" value: { string_value: \"LATENCY\" } }\n"
        << "parameters { key: \"NUM_STREAMS\" value: { string_value: \"1\" } }\n";
    } else if (model.torchscript) {
      c << "parameters { key: \"INTRA_OP_THREAD_COUNT\" value: { string_value: \"" << threads
        << "\" } }\n"
        << "parameters { key: \"INTER_OP_THREAD_COUNT\" value: { string_value: \"1\" } }\n"
        << "parameters { key: \"INFERENCE_MODE\" value: { string_value: \"true\" } }\n";
    } else {
      c << "parameters { key: \"intra_op_thread_count\" value: { string_value: \"" << threads
        << "\" } }\n"
        << "parameters { key: \"inter_op_thread_count\" value: { string_value: \"1\" } }\n";
    }
  }
  if (!model.torchscript && !openvino) {
    c << "optimization {\n  # ONNX Runtime's graph optimizations: -1 basic, 0 all, 1 extended\n"
      << "  graph: { level: " << o.graph_level << " }\n";
    if (o.gpu) {
      c << "  execution_accelerators {\n    gpu_execution_accelerator: [\n      {\n"
        << "        name: \"tensorrt\"\n"
        << "        parameters { key: \"precision_mode\" value: \"FP16\" }\n"
        << "        parameters { key: \"max_workspace_size_bytes\" value: \"1073741824\" }\n"
        << "      }\n    ]\n  }\n";
    }
    c << "}\n";
  }
  // One real sample, alone and as a full batch: the first request meets warm kernels and an
  // allocated arena at both ends of the batch range.
  c << "model_warmup [\n";
  const int batches[] = {1, o.max_batch_size};
  for (int i = 0; i < (o.max_batch_size > 1 ? 2 : 1); ++i) {
    c << "  {\n    name: \"sample_batch_" << batches[i] << "\"\n    batch_size: " << batches[i]
      << "\n    inputs {\n      key: " << Quoted(model.input_name) << "\n      value: {\n"
      << "        data_type: TYPE_FP32\n        dims: " << DimsText(model.sample_dims) << "\n"
      << "        input_data_file: \"" << kWarmupFile << "\"\n      }\n    }\n    count: 1\n  }"
      << (i == 0 && o.max_batch_size > 1 ? ",\n" : "\n");
  }
  c << "]\n";
  return c.str();
}

// The warmup sample: the image as the server preprocesses an upload for this model.
Result<std::string> WarmupBytes(const WriteOptions& o, const Opened& model) {
  if (model.sample_dims.size() != 3 || model.sample_dims[0] != 3) {
    return InvalidArgumentError("the model's input " + DimsText(model.sample_dims) +
                                " is not a [3, height, width] image");
  }
  std::vector<float> sample(static_cast<size_t>(3 * model.sample_dims[1] * model.sample_dims[2]));
  KILN_RETURN_IF_ERROR(data::PreprocessImage(o.warmup_image, model.sample_dims[1],
                                             model.sample_dims[2], model.normalization,
                                             sample.data()));
  std::string bytes(sample.size() * sizeof(float), '\0');
  std::memcpy(bytes.data(), sample.data(), bytes.size());
  return bytes;
}

Status WriteModel(const WriteOptions& o, const ModelSource& m, const EngineChoice& engine,
                  const fs::path& dir) {
  KILN_ASSIGN_OR_RETURN(Opened model, Open(m));
  std::error_code ec;
  fs::create_directories(dir / "1", ec);
  fs::create_directories(dir / "warmup", ec);
  if (ec) return InternalError("cannot create " + dir.string() + ": " + ec.message());
  const fs::path file = dir / "1" / (model.torchscript ? "model.pt" : "model.onnx");
  fs::copy_file(m.file, file, fs::copy_options::overwrite_existing, ec);
  if (ec) return InternalError("cannot copy " + m.file.string() + ": " + ec.message());
  if (!model.labels.empty()) {
    std::string labels;
    for (const auto& l : model.labels) labels += l + "\n";
    KILN_RETURN_IF_ERROR(WriteFileAtomic(dir / "labels.txt", labels));
  }
  auto warmup = WarmupBytes(o, model);
  if (!warmup.ok()) {
    return InvalidArgumentError(m.file.string() + ": model_warmup: " + warmup.status().message());
  }
  KILN_RETURN_IF_ERROR(WriteFileAtomic(dir / "warmup" / kWarmupFile, *warmup));
  const std::string config = ConfigText(o, m, model, engine);
  // The writer's own output must parse as the server parses it.
  std::vector<std::string> warnings;
  auto parsed = ParseModelConfig(config, &warnings);
  if (!parsed.ok() || !warnings.empty()) {
    return InternalError("kiln repo write produced a config.pbtxt it cannot read: " +
                         (parsed.ok() ? warnings[0] : parsed.status().message()));
  }
  return WriteFileAtomic(dir / "config.pbtxt", config);
}

}  // namespace

Status WriteOptions::Validate() const {
  if (out.empty()) return InvalidArgumentError("--out: the repository folder is required");
  if (models.empty()) return InvalidArgumentError("no models to write (--manifest or --model)");
  std::set<std::string> names;
  for (const auto& m : models) {
    if (!ValidName(m.name)) {
      return InvalidArgumentError("model name '" + m.name +
                                  "': use letters, digits, '-', '_' and '.' only");
    }
    if (!names.insert(m.name).second) {
      return InvalidArgumentError("two models are named '" + m.name + "' (give NAME=FILE)");
    }
    const auto ext = m.file.extension();
    if (ext != ".onnx" && ext != ".pt") {
      return InvalidArgumentError(m.file.string() + ": not a .onnx or .pt (TorchScript) file");
    }
  }
  if (max_batch_size < 1 || max_batch_size > 4096) {
    return InvalidArgumentError("--max-batch-size must be in [1, 4096]");
  }
  if (max_queue_delay_us < 0) return InvalidArgumentError("--queue-delay-us must be >= 0");
  if (instances < 1 || instances > 64)
    return InvalidArgumentError("--instances must be in [1, 64]");
  if (threads < 1 || threads > 256) return InvalidArgumentError("--threads must be in [1, 256]");
  if (graph_level < -1 || graph_level > 1) {
    return InvalidArgumentError("--graph-level must be -1, 0 or 1");
  }
  if (onnx_backend != "onnxruntime" && onnx_backend != "openvino" && onnx_backend != "auto") {
    return InvalidArgumentError("--backend must be onnxruntime, openvino or auto");
  }
  if (onnx_backend == "auto" && bench_report.empty()) {
    return InvalidArgumentError(
        "--backend auto chooses from a kiln bench report: give "
        "--bench-report report.json");
  }
  if (gpu && onnx_backend != "onnxruntime") {
    return InvalidArgumentError(
        "--gpu writes ONNX models for ONNX Runtime with TensorRT; Kiln's "
        "OpenVINO engine runs on the CPU");
  }
  if (warmup_image.pixels.empty()) {
    return InvalidArgumentError("a warmup image is required (--warmup-image, or --data)");
  }
  return Status::Ok();
}

Result<std::vector<WrittenModel>> WriteRepository(const WriteOptions& o) {
  KILN_RETURN_IF_ERROR(o.Validate());
  std::error_code ec;
  fs::create_directories(o.out, ec);
  if (ec) return InternalError("cannot create " + o.out.string() + ": " + ec.message());
  for (const auto& m : o.models) {
    if (fs::exists(o.out / m.name, ec) && !o.force) {
      return AlreadyExistsError((o.out / m.name).string() +
                                " exists (--force replaces the models written again)");
    }
  }
  std::map<std::string, EngineChoice> engines;
  if (o.onnx_backend == "auto") {
    KILN_ASSIGN_OR_RETURN(engines,
                          ChooseEngines(o.bench_report, o.models, o.threads, o.max_batch_size));
  }
  std::vector<WrittenModel> written;
  const std::string tag = "." + std::to_string(getpid());
  for (const auto& m : o.models) {
    if (o.gpu && m.integer) continue;
    EngineChoice engine{o.onnx_backend == "auto" ? "onnxruntime" : o.onnx_backend, ""};
    if (auto it = engines.find(m.name); it != engines.end()) engine = it->second;
    // Built beside its final place, then renamed in: a reader (a polling server) sees the old
    // model or the new one, never half of one.
    const fs::path final_dir = o.out / m.name;
    const fs::path tmp = o.out / ("." + m.name + tag + ".tmp");
    fs::remove_all(tmp, ec);
    Status s = WriteModel(o, m, engine, tmp);
    if (s.ok()) {
      const fs::path old = o.out / ("." + m.name + tag + ".old");
      if (fs::exists(final_dir, ec)) fs::rename(final_dir, old, ec);
      if (!ec) fs::rename(tmp, final_dir, ec);
      fs::remove_all(old, ec);
      if (ec) s = InternalError("cannot move " + tmp.string() + " into place: " + ec.message());
    }
    if (!s.ok()) {
      fs::remove_all(tmp, ec);
      return s;
    }
    const bool torchscript = IsTorchScript(m.file);
    written.push_back({m.name,
                       torchscript                          ? kTorchPlatform
                       : engine.backend == kOpenVinoBackend ? kOpenVinoBackend
                                                            : kOnnxPlatform,
                       torchscript ? std::string() : engine.reason, final_dir});
  }
  return written;
}

Result<std::map<std::string, EngineChoice>> ChooseEngines(const fs::path& bench_report,
                                                          const std::vector<ModelSource>& models,
                                                          int threads, int max_batch_size) {
  std::ifstream in(bench_report);
  if (!in) return NotFoundError(bench_report.string() + ": cannot read the bench report");
  json report = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!report.is_object() || !report.contains("results") || !report["results"].is_array()) {
    return InvalidArgumentError(bench_report.string() + ": not a kiln bench report.json");
  }
  // The thread count to compare at: the repository's, else the report's largest.
  std::set<int> counts;
  for (const json& r : report["results"]) {
    if (r.is_object() && r.contains("threads") && r["threads"].is_number_integer())
      counts.insert(r["threads"].get<int>());
  }
  const int at = counts.count(threads) || counts.empty() ? threads : *counts.rbegin();
  std::map<std::string, EngineChoice> out;
  for (const ModelSource& m : models) {
    if (IsTorchScript(m.file)) continue;
    // Geometric mean of each engine's speedups (else images/s) over the batch sizes served.
    std::map<std::string, std::pair<double, int>> score;  // engine -> (sum of logs, count)
    std::map<std::string, std::map<int64_t, double>> cells;
    for (const json& r : report["results"]) {
      if (!r.is_object() || r.value("variant", std::string()) != m.variant ||
          !r.contains("threads") || !r["threads"].is_number_integer() ||
          r["threads"].get<int>() != at || r.value("batch", int64_t{0}) > max_batch_size) {
        continue;
      }
      const std::string e = r.value("engine", std::string());
      if (e != "onnxruntime" && e != "openvino") continue;
      const double v = r.contains("speedup") && r["speedup"].is_object()
                           ? r["speedup"].value("value", 0.0)
                           : r.value("images_per_second", 0.0);
      if (v > 0) cells[e][r.value("batch", int64_t{0})] = v;
    }
    EngineChoice choice{"onnxruntime", ""};
    if (cells["onnxruntime"].empty() || cells["openvino"].empty()) {
      choice.reason = "onnxruntime (--backend auto: " + bench_report.string() + " has no cell of " +
                      m.variant + " on both onnxruntime and openvino)";
      out[m.name] = choice;
      continue;
    }
    std::string batches;
    for (const auto& [b, v] : cells["onnxruntime"]) {
      if (!cells["openvino"].count(b)) continue;
      for (const char* e : {"onnxruntime", "openvino"}) {
        score[e].first += std::log(cells[e][b]);
        score[e].second += 1;
      }
      batches += (batches.empty() ? "" : ", ") + std::to_string(b);
    }
    const double ort =
        std::exp(score["onnxruntime"].first / std::max(1, score["onnxruntime"].second));
    const double ov = std::exp(score["openvino"].first / std::max(1, score["openvino"].second));
    choice.backend = ov > ort ? "openvino" : "onnxruntime";
    char line[400];
    std::snprintf(line, sizeof line,
                  "%s, chosen by kiln repo write --backend auto from %s: geometric mean speedup "
                  "over batch %s at %d threads, openvino %.3f vs onnxruntime %.3f",
                  choice.backend.c_str(), bench_report.string().c_str(), batches.c_str(), at, ov,
                  ort);
    choice.reason = line;
    out[m.name] = choice;
  }
  return out;
}

Result<std::string> ModelConfigJson(const WriteOptions& options, const ModelSource& m) {
  WriteOptions o = options;  // validated as a repository of this one model
  if (o.out.empty()) o.out = ".";
  o.models = {m};
  KILN_RETURN_IF_ERROR(o.Validate());
  if (o.onnx_backend == "auto") {
    return InvalidArgumentError("ModelConfigJson: name the engine (onnxruntime or openvino)");
  }
  KILN_ASSIGN_OR_RETURN(Opened model, Open(m));
  std::vector<std::string> warnings;
  KILN_ASSIGN_OR_RETURN(auto config,
                        ParseModelConfig(ConfigText(o, m, model, {o.onnx_backend, ""}), &warnings));
  return ModelConfigToJson(config);
}

Result<data::Normalization> ModelNormalization(const ModelSource& m) {
  KILN_ASSIGN_OR_RETURN(Opened model, Open(m));
  return model.normalization;
}

Result<std::vector<ModelSource>> SourcesFromManifest(const fs::path& manifest,
                                                     const std::string& prefix,
                                                     std::vector<std::string>* skipped) {
  std::ifstream in(manifest);
  if (!in) return NotFoundError(manifest.string() + ": cannot read the manifest");
  json m = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!m.is_object() || !m.contains("variants") || !m["variants"].is_array()) {
    return InvalidArgumentError(manifest.string() +
                                ": not a kiln optimize manifest (no \"variants\" list)");
  }
  std::string base = prefix;
  if (base.empty()) base = m.value("arch", std::string("model"));
  if (base.empty()) base = "model";
  const fs::path dir = manifest.parent_path();
  std::vector<ModelSource> out;
  for (const auto& v : m["variants"]) {
    if (!v.is_object() || !v.contains("name") || !v["name"].is_string()) {
      return InvalidArgumentError(manifest.string() + ": a variant without a name");
    }
    const std::string name = v["name"].get<std::string>();
    auto skip = [&](const std::string& why) {
      if (skipped != nullptr) skipped->push_back(name + ": " + why);
    };
    if (v.value("status", std::string()) != "ok") {
      skip("failed its accuracy gate or did not build (" + v.value("error", std::string("?")) +
           ")");
      continue;
    }
    if (v.contains("peer")) {
      skip("a peer quantizer's model (" + v["peer"].value("tool", std::string("?")) +
           "), measured beside Kiln's int8-static, not deployed");
      continue;
    }
    if (name == "fp32-opt") {
      skip(
          "ONNX Runtime's saved optimized graph is tied to the ONNX Runtime version and CPU "
          "that wrote it; the FP32 model gets the same optimizations when it loads");
      continue;
    }
    if (!v.contains("file") || !v["file"].is_string()) {
      return InvalidArgumentError(manifest.string() + ": variant " + name + " has no file");
    }
    // "int8" (static QDQ) and "mixed" (dynamic INT8) both run integer kernels.
    const bool integer = v.value("precision", std::string("fp32")) != "fp32";
    out.push_back({base + "-" + name, dir / v["file"].get<std::string>(), name, integer});
    if (v.contains("torchscript_file") && v["torchscript_file"].is_string()) {
      // The FP32 export is "<prefix>-torchscript"; another variant's,
      // "<prefix>-<name>-torchscript".
      out.push_back({base + (name == "fp32" ? "" : "-" + name) + "-torchscript",
                     dir / v["torchscript_file"].get<std::string>(), "torchscript (" + name + ")",
                     integer});
    }
  }
  if (out.empty()) return InvalidArgumentError(manifest.string() + ": no variant passed its gate");
  return out;
}

}  // namespace kiln::serve::repo
