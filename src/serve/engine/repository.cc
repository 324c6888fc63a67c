#include "repository.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <cstring>
#include <iostream>
#include <random>
#include <set>
#include <sstream>

#include "kiln/backend/factory/factory.h"
#include "kiln/backend/model_metadata.h"

namespace kiln::serve {

namespace {

namespace fs = std::filesystem;

std::string ReadFile(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The first `n` bytes of a file (fewer when it is shorter), without reading the rest.
std::string ReadHead(const fs::path& p, size_t n) {
  std::ifstream in(p, std::ios::binary);
  std::string head(n, '\0');
  in.read(head.data(), static_cast<std::streamsize>(n));
  head.resize(static_cast<size_t>(std::max<std::streamsize>(0, in.gcount())));
  return head;
}

std::vector<std::string> ReadLines(const fs::path& p) {
  std::vector<std::string> lines;
  std::ifstream in(p);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(line);
  }
  while (!lines.empty() && lines.back().empty()) lines.pop_back();
  return lines;
}

// A version folder's files, for poll mode's change detection.
std::string Fingerprint(const fs::path& dir) {
  std::string fp;
  std::error_code ec;
  std::vector<std::string> entries;
  for (auto it = fs::recursive_directory_iterator(dir, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (!it->is_regular_file(ec)) continue;
    auto t = fs::last_write_time(it->path(), ec).time_since_epoch().count();
    entries.push_back(it->path().string() + ":" + std::to_string(it->file_size(ec)) + ":" +
                      std::to_string(t));
  }
  std::sort(entries.begin(), entries.end());
  for (auto& e : entries) fp += e + "\n";
  return fp;
}


// Runs the config's model_warmup samples (Triton's semantics) through every instance before
// the version is READY: `batch_size` copies of one sample (zeros, random values, or the raw
// FP32 bytes of warmup/<input_data_file>), `count` times (at least once). A sample that does
// not fit the model, or a run that fails, fails the load.
Status Warmup(const ModelInfo& info, const fs::path& model_dir,
              std::vector<std::unique_ptr<backend::InferenceBackend>>& backends) {
  std::mt19937 rng(0x6b696c6e);
  for (const auto& w : info.config.model_warmup()) {
    const std::string what = "model_warmup '" + w.name() + "'";
    const int64_t batch = std::max<int64_t>(1, w.batch_size());
    if (batch > std::max<int64_t>(1, info.max_batch_size)) {
      return InvalidArgumentError(what + ": batch_size " + std::to_string(batch) +
                                  " is over max_batch_size " +
                                  std::to_string(info.max_batch_size));
    }
    if (w.inputs_size() != 1 || w.inputs().count(info.input_name) == 0) {
      return InvalidArgumentError(what + ": give exactly one input, '" + info.input_name + "'");
    }
    const auto& in = w.inputs().at(info.input_name);
    if (in.data_type() != inference::TYPE_FP32) {
      return InvalidArgumentError(what + ": the input's data_type must be TYPE_FP32");
    }
    if (!std::equal(in.dims().begin(), in.dims().end(), info.input_dims.begin(),
                    info.input_dims.end())) {
      return InvalidArgumentError(what + ": dims must be the input's dims " +
                                  ShapeString(info.input_dims) + " (without the batch)");
    }
    std::vector<float> sample(static_cast<size_t>(info.input_elements), 0.f);
    if (in.input_data_type_case() == inference::ModelWarmup::Input::kRandomData) {
      std::uniform_real_distribution<float> uniform(0.f, 1.f);
      for (float& v : sample) v = uniform(rng);
    } else if (in.input_data_type_case() == inference::ModelWarmup::Input::kInputDataFile) {
      const std::string& file = in.input_data_file();
      if (file.empty() || file.find("..") != std::string::npos || file[0] == '/') {
        return InvalidArgumentError(what + ": input_data_file '" + file +
                                    "' must name a file in the model's warmup/ folder");
      }
      const fs::path path = model_dir / "warmup" / file;
      const std::string bytes = ReadFile(path);
      if (bytes.size() != sample.size() * sizeof(float)) {
        return InvalidArgumentError(what + ": " + path.string() + " holds " +
                                    std::to_string(bytes.size()) + " bytes; one sample of " +
                                    ShapeString(info.input_dims) + " FP32 is " +
                                    std::to_string(sample.size() * sizeof(float)));
      }
      std::memcpy(sample.data(), bytes.data(), bytes.size());
    }
    std::vector<float> input;
    input.reserve(sample.size() * static_cast<size_t>(batch));
    for (int64_t b = 0; b < batch; ++b) input.insert(input.end(), sample.begin(), sample.end());
    std::vector<float> output(static_cast<size_t>(info.output_elements * batch));
    const auto start = std::chrono::steady_clock::now();
    for (auto& backend : backends) {
      for (uint32_t i = 0; i < std::max<uint32_t>(1, w.count()); ++i) {
        Status s = backend->Run(input.data(), batch, output.data());
        if (!s.ok()) return Status(s.code(), what + " failed: " + s.message());
      }
    }
    std::cerr << "kiln serve: model '" << info.name << "' version " << info.version << ": "
              << what << " (batch " << batch << ") ran in "
              << std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() -
                                                           start).count()
              << " ms\n";
  }
  return Status::Ok();
}

// Triton's OpenVINO backend parameters that Kiln's engine has: PERFORMANCE_HINT (LATENCY |
// THROUGHPUT), NUM_STREAMS (a number, or AUTO = the hint's choice), HINT_BF16 (YES: bfloat16
// inference precision, faster on CPUs with AVX512-BF16 or AMX and changing results slightly; NO
// or absent: Kiln's f32) and INFERENCE_NUM_THREADS (read with the thread keys above). Its other parameters (RESHAPE_IO_LAYERS, ENABLE_BATCH_PADDING,
// SKIP_OV_DYNAMIC_BATCHSIZE, ...) are about shapes Kiln's engine handles itself: ignored.
Status ApplyOpenVinoParameters(const inference::ModelConfig& config, backend::BackendOptions* bo) {
  auto value = [&](const char* key) -> std::string {
    auto it = config.parameters().find(key);
    return it == config.parameters().end() ? std::string() : it->second.string_value();
  };
  std::string hint = value("PERFORMANCE_HINT");
  std::transform(hint.begin(), hint.end(), hint.begin(), ::toupper);
  if (!hint.empty()) {
    if (hint != "LATENCY" && hint != "THROUGHPUT") {
      return InvalidArgumentError(
          "parameters PERFORMANCE_HINT must be LATENCY or THROUGHPUT, not '" + hint + "'");
    }
    bo->performance_hint = hint;
  }
  std::string bf16 = value("HINT_BF16");
  std::transform(bf16.begin(), bf16.end(), bf16.begin(), ::toupper);
  if (!bf16.empty()) {
    if (bf16 != "YES" && bf16 != "NO") {
      return InvalidArgumentError("parameters HINT_BF16 must be YES or NO, not '" + bf16 + "'");
    }
    bo->inference_precision = bf16 == "YES" ? "bf16" : "f32";
  }
  std::string streams = value("NUM_STREAMS");
  std::transform(streams.begin(), streams.end(), streams.begin(), ::toupper);
  if (!streams.empty() && streams != "AUTO") {
    try {
      bo->streams = std::stoi(streams);
    } catch (const std::exception&) {
      return InvalidArgumentError("parameters NUM_STREAMS: not a number or AUTO");
    }
    if (bo->streams < 1 || bo->streams > 256) {
      return InvalidArgumentError("parameters NUM_STREAMS must be in [1, 256]");
    }
  }
  return Status::Ok();
}

}  // namespace

ModelRepository::ModelRepository(const EngineOptions& options, metrics::Registry* registry)
    : options_(options),
      registry_(registry),
      backend_factory_(options.backend_factory ? options.backend_factory
                                                : BackendFactory(backend::CreateBackend)) {}

ModelRepository::~ModelRepository() { Shutdown(); }

Status ModelRepository::Start() {
  std::error_code ec;
  if (!fs::is_directory(options_.repository, ec)) {
    return NotFoundError("model repository '" + options_.repository + "' is not a folder");
  }
  // A model that fails is logged and listed UNAVAILABLE with its reason; the server starts.
  if (options_.control_mode == ModelControlMode::kExplicit) {
    for (const auto& m : options_.startup_models) {
      if (m == "*") {
        for (const auto& name : ScanNames()) (void)LoadModel(name);
      } else {
        (void)LoadModel(m);
      }
    }
  } else {
    for (const auto& name : ScanNames()) (void)LoadModel(name);
  }
  if (options_.control_mode == ModelControlMode::kPoll) {
    poller_ = std::thread([this] { Poll(); });
  }
  return Status::Ok();
}


Result<std::vector<std::shared_ptr<Batcher>>> ModelRepository::Ready(const std::string& name) {
  std::lock_guard l(mu_);
  std::vector<std::shared_ptr<Batcher>> out;
  for (const auto& [n, e] : models_) {
    if (!name.empty() && n != name) continue;
    for (const auto& [v, s] : e.versions) {
      if (s.model) out.push_back(s.model);
    }
  }
  if (!name.empty() && out.empty()) {
    if (models_.count(name) == 0) return NotFoundError("unknown model '" + name + "'");
    return UnavailableError("model '" + name + "' is not ready");
  }
  return out;
}

void ModelRepository::Shutdown() {
  {
    std::lock_guard l(mu_);
    if (shut_down_) return;
    shut_down_ = true;
  }
  poll_cv_.notify_all();
  if (poller_.joinable()) poller_.join();
  auto all = Ready("");
  for (auto& m : *all) m->Stop();
}

std::vector<ModelIndexEntry> ModelRepository::Index() {
  // The folder is listed before taking the lock that every request takes.
  const std::vector<std::string> scanned = ScanNames();
  std::lock_guard l(mu_);
  std::vector<ModelIndexEntry> out;
  std::set<std::string> names(scanned.begin(), scanned.end());
  for (const auto& [n, e] : models_) names.insert(n);
  for (const auto& name : names) {
    auto it = models_.find(name);
    if (it == models_.end() || (it->second.versions.empty())) {
      out.push_back({name, "", "UNAVAILABLE",
                     it == models_.end() ? "not loaded" : it->second.reason});
      continue;
    }
    for (const auto& [v, s] : it->second.versions) {
      out.push_back({name, std::to_string(v), s.state, s.reason});
    }
  }
  return out;
}


Status ModelRepository::Load(const std::string& name,
                             const std::optional<std::string>& config_json) {
  if (options_.control_mode != ModelControlMode::kExplicit) {
    return InvalidArgumentError("explicit model load / unload is not allowed unless the server "
                                "runs with --model-control-mode explicit");
  }
  std::error_code ec;
  if (name.empty() || name.find('/') != std::string::npos || name == "." || name == ".." ||
      !fs::is_directory(fs::path(options_.repository) / name, ec)) {
    return NotFoundError("no model '" + name + "' in the repository");
  }
  std::optional<inference::ModelConfig> override_config;
  if (config_json) {
    auto c = ParseModelConfigJson(*config_json);
    if (!c.ok()) {
      return InvalidArgumentError("load of '" + name + "': parameter 'config': " +
                                  c.status().message());
    }
    if (!c->name().empty() && c->name() != name) {
      return InvalidArgumentError("load of '" + name + "': parameter 'config' names model '" +
                                  c->name() + "'");
    }
    override_config = std::move(c).value();
  }
  return LoadModel(name, override_config ? &*override_config : nullptr);
}


Status ModelRepository::Unload(const std::string& name) {
  if (options_.control_mode != ModelControlMode::kExplicit) {
    return InvalidArgumentError("explicit model load / unload is not allowed unless the server "
                                "runs with --model-control-mode explicit");
  }
  UnloadModel(name, "unloaded");
  return Status::Ok();
}


std::vector<std::string> ModelRepository::ScanNames() const {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(options_.repository, ec)) {
    if (e.is_directory(ec) && e.path().filename().string()[0] != '.') {
      names.push_back(e.path().filename().string());
    }
  }
  std::sort(names.begin(), names.end());
  return names;
}


Result<std::shared_ptr<Batcher>> ModelRepository::Find(const std::string& name,
                                                        const std::string& version) {
  std::lock_guard l(mu_);
  auto it = models_.find(name);
  if (it == models_.end() || !it->second.loaded) {
    if (it != models_.end() && !it->second.reason.empty()) {
      return UnavailableError("model '" + name + "' is not ready: " + it->second.reason);
    }
    return NotFoundError("unknown model '" + name + "'");
  }
  const auto& versions = it->second.versions;
  if (version.empty()) {
    for (auto v = versions.rbegin(); v != versions.rend(); ++v) {
      if (v->second.model) return v->second.model;
    }
    std::string reason = it->second.reason;
    for (const auto& [n, s] : versions) reason += (reason.empty() ? "" : "; ") + s.reason;
    return UnavailableError("model '" + name + "' has no ready version" +
                            (reason.empty() ? "" : ": " + reason));
  }
  int64_t v = 0;
  try {
    size_t used = 0;
    v = std::stoll(version, &used);
    if (used != version.size()) throw std::invalid_argument("version");
  } catch (const std::exception&) {
    return InvalidArgumentError("model version '" + version + "' is not a number");
  }
  auto vit = versions.find(v);
  if (vit == versions.end()) {
    return NotFoundError("model '" + name + "' has no version " + version);
  }
  if (!vit->second.model) {
    return UnavailableError("model '" + name + "' version " + version +
                            " is not ready: " + vit->second.reason);
  }
  return vit->second.model;
}


// The version's drift window (null when tracking is off). Input statistics need a CHW input
// whose channel count matches the reference's.
std::shared_ptr<DriftTracker> ModelRepository::MakeDriftTracker(const ModelInfo& info) {
  if (options_.drift_window_size <= 0) return nullptr;
  std::vector<int64_t> dims = info.input_dims;
  if (info.max_batch_size == 0 && dims.size() == 4 && dims[0] == 1) dims.erase(dims.begin());
  int64_t channels = 0, pixels = 0;
  if (dims.size() == 3 && info.drift_reference && dims[0] == info.drift_reference->channels()) {
    channels = dims[0];
    pixels = dims[1] * dims[2];
  }
  auto t = std::make_shared<DriftTracker>(info, info.drift_reference, channels, pixels,
                                          options_.drift_window_size,
                                          std::chrono::seconds(options_.drift_window_seconds),
                                          registry_);
  if (t->has_reference()) {
    registry_->OnRender(std::weak_ptr<void>(t), [w = std::weak_ptr<DriftTracker>(t)] {
      if (auto alive = w.lock()) alive->Publish();
    });
  }
  return t;
}


// kiln_model_ready for each version of `entry` (1 READY, 0 not), and none left for versions
// `old` had that `entry` has not (a model-level failure is version "").
void ModelRepository::PublishReady(const std::string& name, const ModelEntry& old,
                                   const ModelEntry& entry) {
  const char* help = "1 when the model version is READY, 0 when it failed to load";
  auto labels = [&](const std::string& v) { return metrics::Labels{{"model", name}, {"version", v}}; };
  // A version that is gone takes every series of its own with it (counters, histograms,
  // drift, readiness); its handles stay valid for the requests it still finishes.
  for (const auto& [v, s] : old.versions) {
    if (entry.versions.count(v) == 0) registry_->RemoveMatching(labels(std::to_string(v)));
  }
  const bool model_failed = entry.loaded && entry.versions.empty();
  if (!model_failed) registry_->Remove("kiln_model_ready", labels(""));
  if (model_failed) registry_->Gauge("kiln_model_ready", help, labels(""))->Set(0);
  for (const auto& [v, s] : entry.versions) {
    registry_->Gauge("kiln_model_ready", help, labels(std::to_string(v)))->Set(s.model ? 1 : 0);
  }
}


// Loads one version folder into a ready Batcher.
Result<std::shared_ptr<Batcher>> ModelRepository::LoadVersion(
    const std::string& name, int64_t version, const inference::ModelConfig& base,
    const std::vector<std::string>& warnings) {
  const auto start = std::chrono::steady_clock::now();
  const fs::path model_dir = fs::path(options_.repository) / name;
  const fs::path vdir = model_dir / std::to_string(version);
  inference::ModelConfig config = base;
  std::string platform = config.platform();
  // Triton's OpenVINO backend is named by `backend` alone (no platform); it reads OpenVINO IR
  // (model.xml, its default file) or, with default_model_filename, ONNX.
  const bool openvino = platform.empty() && config.backend() == "openvino";
  if (openvino) platform = kOpenVinoBackend;
  if (platform.empty()) {
    if (config.backend() == "onnxruntime") platform = kOnnxPlatform;
    if (config.backend() == "pytorch") platform = kTorchPlatform;
  }
  std::error_code ec;
  if (platform.empty() && !options_.auto_complete_config) {
    return InvalidArgumentError("the config names no platform or backend (auto-completion is off: "
                                "--disable-auto-complete-config)");
  }
  if (platform.empty()) {
    if (fs::exists(vdir / "model.onnx", ec)) platform = kOnnxPlatform;
    else if (fs::exists(vdir / "model.pt", ec)) platform = kTorchPlatform;
    else
      return NotFoundError("version " + std::to_string(version) +
                           ": no model.onnx or model.pt, and the config names no platform");
  }
  if (platform != kOnnxPlatform && platform != kTorchPlatform && !openvino) {
    return UnimplementedError("platform '" + platform + "' is not served by Kiln (" +
                              kOnnxPlatform + ", " + kTorchPlatform + ", backend " +
                              kOpenVinoBackend + ")");
  }
  if (!openvino) config.set_platform(platform);
  if (config.name().empty()) config.set_name(name);
  if (config.name() != name) {
    return InvalidArgumentError("config name '" + config.name() + "' differs from the folder '" +
                                name + "'");
  }
  const bool onnx = platform == kOnnxPlatform;
  const std::string file = config.default_model_filename().empty()
                               ? (openvino ? "model.xml"
                                  : onnx   ? "model.onnx"
                                           : "model.pt")
                               : config.default_model_filename();
  const fs::path model_path = vdir / file;
  if (!fs::exists(model_path, ec)) {
    return NotFoundError("version " + std::to_string(version) + ": no " + file +
                         (openvino && fs::exists(vdir / "model.onnx", ec)
                              ? " (for the ONNX model, add default_model_filename: \"model.onnx\")"
                              : ""));
  }
  if (!onnx && !openvino) {
    // The classic libtorch failure: a torch.save() pickle instead of a TorchScript archive.
    const std::string head = ReadHead(model_path, 4);  // not the whole model
    if (head.rfind("PK", 0) != 0) {
      return InvalidArgumentError(
          file + " is not a TorchScript archive (a zip): it was probably written with "
          "torch.save(). Save it with torch.jit.script(model).save() or torch.jit.trace, or "
          "export it with kiln export; for INT8 prefer static quantization on the ONNX side");
    }
  }
  int instances = 0;
  for (const auto& g : config.instance_group()) instances += std::max(1, g.count());
  instances = std::max(1, instances);
  int threads = std::max(1, options_.threads / instances);
  for (const char* key :
       {"intra_op_thread_count", "INTRA_OP_THREAD_COUNT", "INFERENCE_NUM_THREADS"}) {
    auto it = config.parameters().find(key);
    if (it != config.parameters().end()) {
      try {
        threads = std::stoi(it->second.string_value());
      } catch (const std::exception&) {
        return InvalidArgumentError(std::string("parameters ") + key + ": not a number");
      }
      if (threads < 1 || threads > 256)
        return InvalidArgumentError(std::string("parameters ") + key + " must be in [1, 256]");
    }
  }
  backend::BackendOptions bo;
  bo.model_path = model_path.string();
  bo.intra_op_threads = threads;
  if (config.has_optimization() && config.optimization().has_graph()) {
    const int level = config.optimization().graph().level();
    bo.graph_optimization = level < 0 ? "basic" : level == 1 ? "extended" : "all";
  }
  if (openvino) KILN_RETURN_IF_ERROR(ApplyOpenVinoParameters(config, &bo));
  std::vector<std::unique_ptr<backend::InferenceBackend>> backends;
  for (int i = 0; i < instances; ++i) {
    auto b = backend_factory_(openvino ? "openvino" : onnx ? "onnxruntime" : "libtorch", bo);
    if (!b.ok()) {
      std::string msg = b.status().message();
      if (!onnx && msg.find("version") != std::string::npos) {
        msg += " (a TorchScript file saved by a newer PyTorch than this libtorch can read: "
               "save it with the same or an older PyTorch, or export with kiln export)";
      }
      return Status(b.status().code(), msg);
    }
    backends.push_back(std::move(b).value());
  }
  auto& first = *backends[0];
  CompleteOptions co;
  co.default_max_batch_size = options_.default_max_batch_size;
  co.auto_complete = options_.auto_complete_config;
  co.positional_names = !onnx && !openvino;
  auto inputs = first.inputs();
  auto outputs = first.outputs();
  KILN_RETURN_IF_ERROR(CompleteModelConfig(inputs, outputs, co, &config));
  auto info = std::make_shared<ModelInfo>();
  info->name = name;
  info->version = version;
  info->platform = platform;
  info->max_batch_size = config.max_batch_size();
  info->input_name = config.input(0).name();
  info->output_name = config.output(0).name();
  info->input_dims.assign(config.input(0).dims().begin(), config.input(0).dims().end());
  info->output_dims.assign(config.output(0).dims().begin(), config.output(0).dims().end());
  info->input_elements = 1;
  for (int64_t d : info->input_dims) info->input_elements *= d;
  info->output_elements = 1;
  for (int64_t d : info->output_dims) info->output_elements *= d;
  info->warnings = warnings;
  if (info->max_batch_size == 0) {
    // The engine runs the config shape as one call; its first dim must be the batch (1).
    if (info->input_dims.empty() || info->input_dims[0] != 1) {
      return UnimplementedError("with max_batch_size: 0 Kiln serves shapes whose first "
                                "dimension is 1");
    }
  }
  // Labels: the output's label_filename, else Kiln metadata, else labels.txt.
  KILN_ASSIGN_OR_RETURN(backend::KilnModelMetadata kiln_meta,
                        backend::ReadKilnMetadata(first.metadata(), model_path.string()));
  if (!config.output(0).label_filename().empty()) {
    const fs::path lf = model_dir / config.output(0).label_filename();
    if (!fs::exists(lf, ec)) {
      return NotFoundError("label_filename '" + config.output(0).label_filename() +
                           "' not found in " + model_dir.string());
    }
    info->labels = ReadLines(lf);
  } else if (kiln_meta.has_labels()) {
    info->labels = std::move(kiln_meta.labels);
  } else if (fs::exists(model_dir / "labels.txt", ec)) {
    info->labels = ReadLines(model_dir / "labels.txt");
  }
  info->has_kiln_normalization = kiln_meta.has_normalization();
  if (info->has_kiln_normalization) {
    info->normalization.mean = std::move(kiln_meta.mean);
    info->normalization.std = std::move(kiln_meta.stddev);
  } else {
    info->normalization.mean.assign(3, 0.f);
    info->normalization.std.assign(3, 1.f);
  }
  if (kiln_meta.drift_reference) {
    if (kiln_meta.drift_reference->classes() == info->output_elements) {
      info->drift_reference = std::move(kiln_meta.drift_reference);
    } else {
      info->warnings.push_back("drift reference ignored: it has " +
                               std::to_string(kiln_meta.drift_reference->classes()) +
                               " classes, the output " + std::to_string(info->output_elements));
    }
  }
  info->config = config;
  KILN_RETURN_IF_ERROR(Warmup(*info, model_dir, backends));
  int64_t max_queue = options_.max_queue_size;
  auto timeout = std::chrono::duration_cast<Clock::duration>(
      std::chrono::milliseconds(options_.request_timeout_ms));
  if (config.has_dynamic_batching() && config.dynamic_batching().has_default_queue_policy()) {
    const auto& q = config.dynamic_batching().default_queue_policy();
    if (q.max_queue_size() > 0) max_queue = q.max_queue_size();
    if (q.default_timeout_microseconds() > 0) {
      timeout = std::chrono::duration_cast<Clock::duration>(
          std::chrono::microseconds(q.default_timeout_microseconds()));
    }
  }
  auto handles = ResolveMetricHandles(*info, registry_);
  handles.load_secs->Set(
    std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  registry_
      ->Gauge("kiln_queue_capacity", "Requests the model version's queue holds at most",
              {{"model", info->name}, {"version", std::to_string(info->version)}})
      ->Set(static_cast<double>(max_queue));
  BatcherOptions bopts;
  bopts.max_queue = max_queue;
  bopts.timeout = timeout;
  bopts.clock = options_.clock;
  return std::make_shared<Batcher>(info, std::move(backends), bopts, std::move(handles),
                                   MakeDriftTracker(*info));
}


// (Re)loads a model: reads its config and versions, loads them all, then swaps them in.
Status ModelRepository::LoadModel(const std::string& name,
                                  const inference::ModelConfig* override_config) {
  std::lock_guard load_lock(load_mu_);  // one load at a time
  const fs::path dir = fs::path(options_.repository) / name;
  ModelEntry entry;
  entry.loaded = true;
  entry.fingerprint = Fingerprint(dir);
  inference::ModelConfig config;
  std::vector<std::string> warnings;
  std::error_code ec;
  Status failure;
  if (override_config != nullptr) {
    config = *override_config;
    std::cerr << "kiln serve: model '" << name
              << "': loading with the configuration given in the load request\n";
  } else if (!options_.auto_complete_config && !fs::exists(dir / "config.pbtxt", ec)) {
    failure = NotFoundError("no config.pbtxt, and auto-completion is off "
                            "(--disable-auto-complete-config)");
  } else if (fs::exists(dir / "config.pbtxt", ec)) {
    auto c = ParseModelConfig(ReadFile(dir / "config.pbtxt"), &warnings);
    if (c.ok()) {
      config = std::move(c).value();
    } else {
      failure = c.status();
    }
  }
  for (const auto& w : warnings) std::cerr << "kiln serve: model '" << name << "': " << w << "\n";
  std::optional<RoutingPolicy> routing;
  if (failure.ok()) {
    auto it = config.parameters().find(kRoutingParameter);
    if (it != config.parameters().end()) {
      auto policy = ParseRoutingPolicy(it->second.string_value());
      if (policy.ok()) {
        routing = std::move(policy).value();
      } else {
        failure = InvalidArgumentError(std::string("parameters ") + kRoutingParameter + ": " +
                                       policy.status().message());
      }
    }
  }
  std::vector<int64_t> found;
  if (failure.ok()) {
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      const std::string n = e.path().filename().string();
      if (!e.is_directory(ec) || n.empty() ||
          !std::all_of(n.begin(), n.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
          n.size() > 18) {
        continue;
      }
      found.push_back(std::stoll(n));
    }
    std::sort(found.begin(), found.end());
    std::vector<int64_t> chosen;
    const auto& policy = config.version_policy();
    if (policy.has_all()) {
      chosen = found;
    } else if (policy.has_specific()) {
      for (int64_t v : policy.specific().versions()) {
        if (std::find(found.begin(), found.end(), v) != found.end()) {
          chosen.push_back(v);
        } else {
          entry.versions[v].reason = "version folder " + std::to_string(v) + " not found";
        }
      }
    } else {
      const size_t keep = std::max<uint32_t>(1, policy.latest().num_versions());
      for (size_t i = found.size() > keep ? found.size() - keep : 0; i < found.size(); ++i) {
        chosen.push_back(found[i]);
      }
    }
    if (found.empty()) failure = NotFoundError("no numeric version folder (e.g. " + name + "/1/)");
    for (int64_t v : chosen) {
      auto m = LoadVersion(name, v, config, warnings);
      VersionState& s = entry.versions[v];
      if (m.ok()) {
        s.model = std::move(m).value();
        s.state = "READY";
        s.reason.clear();
      } else {
        s.reason = m.status().message();
        std::cerr << "kiln serve: model '" << name << "' version " << v
                  << " UNAVAILABLE: " << s.reason << "\n";
      }
    }
  }
  if (!failure.ok()) {
    entry.reason = failure.message();
    std::cerr << "kiln serve: model '" << name << "' UNAVAILABLE: " << entry.reason << "\n";
  }
  for (const auto& [v, s] : entry.versions) {
    if (s.model) std::cerr << "kiln serve: model '" << name << "' version " << v << " READY\n";
  }
  if (routing) {
    for (int64_t v : routing->Versions()) {
      auto it = entry.versions.find(v);
      if (it == entry.versions.end() || !it->second.model) {
        std::cerr << "kiln serve: model '" << name << "': the routing policy names version " << v
                  << ", which is not READY (its requests go to the fallback version)\n";
      }
    }
    entry.traffic = std::make_shared<Traffic>(name, *routing, registry_);
    std::cerr << "kiln serve: model '" << name << "': routing " << RoutingPolicyJson(*routing)
              << "\n";
  }
  // This load's outcome: some version of the new state is READY, or why none is.
  const bool any_ready = std::any_of(entry.versions.begin(), entry.versions.end(),
                                     [](const auto& v) { return v.second.model != nullptr; });
  Status outcome;
  if (!any_ready) {
    std::string reason = entry.reason;
    for (const auto& [v, s] : entry.versions) reason += (reason.empty() ? "" : "; ") + s.reason;
    outcome = InvalidArgumentError("failed to load '" + name + "': " + reason);
  }
  ModelEntry old;
  {
    std::lock_guard l(mu_);
    auto& slot = models_[name];
    old = std::move(slot);
    // As Triton does on a failed reload: when nothing of the new state loads, the versions
    // that were serving go on serving (and the failed ones say why they are UNAVAILABLE).
    if (!any_ready) {
      for (auto& [v, state] : old.versions) {
        if (!state.model) continue;  // (a version whose own reload failed is kept too)
        std::cerr << "kiln serve: model '" << name << "' version " << v
                  << " keeps serving: the new state of the model failed to load\n";
        entry.versions[v] = std::move(state);
      }
      if (!entry.traffic) entry.traffic = old.traffic;
    }
    slot = std::move(entry);
    PublishReady(name, old, slot);
  }
  Retire(old);
  return outcome;
}


void ModelRepository::UnloadModel(const std::string& name, const std::string& reason) {
  std::lock_guard load_lock(load_mu_);
  ModelEntry old;
  {
    std::lock_guard l(mu_);
    auto it = models_.find(name);
    if (it == models_.end()) return;
    old = std::move(it->second);
    it->second = ModelEntry{};
    it->second.reason = reason;
    PublishReady(name, old, it->second);
  }
  Retire(old);
}


std::shared_ptr<Traffic> ModelRepository::TrafficOf(const std::string& name) {
  std::lock_guard l(mu_);
  auto it = models_.find(name);
  return it == models_.end() ? nullptr : it->second.traffic;
}

Result<std::string> ModelRepository::Routing(const std::string& name) {
  std::lock_guard l(mu_);
  auto it = models_.find(name);
  if (it == models_.end() || !it->second.loaded) return NotFoundError("unknown model '" + name + "'");
  if (it->second.traffic) return it->second.traffic->StateJson();
  return Traffic(name, {}, registry_).StateJson();
}

Result<std::string> ModelRepository::SetRouting(const std::string& name,
                                                const std::string& policy_json) {
  KILN_ASSIGN_OR_RETURN(RoutingPolicy policy, ParseRoutingPolicy(policy_json));
  std::lock_guard load_lock(load_mu_);  // not while the model (re)loads
  std::lock_guard l(mu_);
  auto it = models_.find(name);
  if (it == models_.end() || !it->second.loaded) return NotFoundError("unknown model '" + name + "'");
  const ModelEntry& e = it->second;
  const ModelInfo* first = nullptr;
  for (int64_t v : policy.Versions()) {
    auto vit = e.versions.find(v);
    if (vit == e.versions.end() || !vit->second.model) {
      return InvalidArgumentError("routing: version " + std::to_string(v) + " of '" + name +
                                  "' is not READY (a policy may name only loaded versions; "
                                  "version_policy decides which load)");
    }
    const ModelInfo& info = *vit->second.model->info();
    if (first == nullptr) first = &info;
    if (info.input_dims != first->input_dims || info.output_dims != first->output_dims ||
        info.max_batch_size != first->max_batch_size) {
      return InvalidArgumentError("routing: versions " + std::to_string(first->version) + " and " +
                                  std::to_string(v) + " take or give different shapes");
    }
  }
  const bool empty = policy.weights.empty() && policy.shadow_version == 0 && !policy.rollout;
  it->second.traffic = empty ? nullptr : std::make_shared<Traffic>(name, policy, registry_);
  std::cerr << "kiln serve: model '" << name << "': routing set to "
            << RoutingPolicyJson(policy) << "\n";
  return it->second.traffic ? it->second.traffic->StateJson()
                            : Traffic(name, {}, registry_).StateJson();
}

// Old versions finish their queued requests (new ones go to the successor), then stop.
void ModelRepository::Retire(ModelEntry& old) {
  for (auto& [v, s] : old.versions) {
    if (s.model) s.model->Stop();
  }
}


void ModelRepository::Poll() {
  std::unique_lock l(mu_);
  while (!shut_down_) {
    poll_cv_.wait_for(l, std::chrono::seconds(options_.poll_seconds));
    if (shut_down_) return;
    std::map<std::string, std::string> seen;
    l.unlock();
    for (const auto& n : ScanNames()) seen[n] = Fingerprint(fs::path(options_.repository) / n);
    l.lock();
    std::vector<std::string> load, unload;
    for (const auto& [n, fp] : seen) {
      auto it = models_.find(n);
      if (it == models_.end() || it->second.fingerprint != fp) load.push_back(n);
    }
    for (const auto& [n, e] : models_) {
      if (seen.count(n) == 0 && e.loaded) unload.push_back(n);
    }
    l.unlock();
    for (const auto& n : load) (void)LoadModel(n);  // a failure is logged and in the index
    for (const auto& n : unload) UnloadModel(n, "removed from the repository");
    l.lock();
  }
}

}  // namespace kiln::serve
