#include "kiln/optimize/optimizer.h"

#include <algorithm>
#include <chrono>
#include <ctime>
#include <fstream>
#include <iostream>
#include <random>

#include "kiln/backend/factory/factory.h"
#include "kiln/backend/inference_backend.h"
#include "kiln/backend/model_metadata.h"
#include "kiln/core/file.h"
#include "kiln/core/hash.h"
#include "kiln/core/process.h"
#include "kiln/core/version.h"
#include "kiln/data/cifar10.h"
#include "kiln/eval/evaluate.h"
#include "kiln/data/loader.h"
#include "kiln/export/onnx_export.h"
#include "kiln/export/torchscript_export.h"
#include "kiln/optimize/quantize/onnx_graph.h"
#include "kiln/train/checkpoint.h"
#include "kiln/train/trainer.h"

#ifndef KILN_SOURCE_DIR
#define KILN_SOURCE_DIR "."
#endif

namespace kiln::optimize {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

double Since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

std::string UtcNow() {
  std::time_t now = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  return buf;
}

// The session settings Kiln recommends for every variant on a CPU (see docs/optimize.md).
json RecommendedSession(int threads) {
  return {{"graph_optimization_level", "all"},
          {"intra_op_threads", threads},
          {"inter_op_threads", 1},
          {"execution_mode", "sequential"},
          {"allow_spinning", false}};
}

// A hidden file beside `file` for intermediate results that are read back and deleted (ONNX
// Runtime writes its optimized graph only to a path). Never an output: a process killed while it
// exists leaves it behind, and the next run overwrites it.
fs::path ScratchPath(const fs::path& file) {
  return file.parent_path() / ("." + file.filename().string() + ".scratch");
}

// Operator counts of the graph ONNX Runtime actually runs (level "all"), to show which nodes
// became integer kernels.
Result<std::map<std::string, int64_t>> RuntimeOperators(const fs::path& model, int threads) {
  const fs::path tmp = ScratchPath(model);
  backend::BackendOptions bo;
  bo.model_path = model.string();
  bo.intra_op_threads = threads;
  bo.optimized_model_path = tmp.string();
  auto engine = backend::CreateBackend("onnxruntime", bo);
  if (!engine.ok()) return engine.status();
  auto graph = LoadOnnx(tmp);
  std::error_code ec;
  fs::remove(tmp, ec);
  if (!graph.ok()) return graph.status();
  return CountOperators(*graph);
}

class Optimizer {
 public:
  Optimizer(const OptimizeOptions& o, std::ostream* progress, const std::atomic<bool>* stop)
      : o_(o), progress_(progress), stop_(stop) {}

  Result<OptimizeResult> Run() {
    const auto start = std::chrono::steady_clock::now();
    std::error_code ec;
    fs::create_directories(o_.out_dir, ec);
    if (ec) return InvalidArgumentError("cannot create " + o_.out_dir.string() + ": " + ec.message());
    KILN_ASSIGN_OR_RETURN(source_, LoadOnnx(o_.model));
    KILN_RETURN_IF_ERROR(ReadMetadata());
    Say("loading " + o_.data.string());
    KILN_ASSIGN_OR_RETURN(dataset_, data::LoadCifar10(o_.data));
    test_ = dataset_.test;
    if (o_.test_limit > 0 && o_.test_limit < test_.size()) {
      std::vector<int64_t> first(static_cast<size_t>(o_.test_limit));
      for (int64_t i = 0; i < o_.test_limit; ++i) first[static_cast<size_t>(i)] = i;
      test_ = test_.Subset(first);
    }

    // The FP32 source, copied so the folder is self-contained.
    const fs::path fp32 = o_.out_dir / "fp32.onnx";
    KILN_RETURN_IF_ERROR(CopyFileAtomic(o_.model, fp32));
    std::string fp32_ts;
    const fs::path pt = fs::path(o_.model).replace_extension(".pt");
    if (fs::exists(pt) && CopyFileAtomic(pt, o_.out_dir / "fp32.pt").ok()) fp32_ts = "fp32.pt";
    KILN_RETURN_IF_ERROR(LoadProgress());
    KILN_ASSIGN_OR_RETURN(EvalResult base, Evaluate(fp32));
    baseline_accuracy_ = base.accuracy;
    baseline_predictions_ = base.predictions;
    KILN_RETURN_IF_ERROR(AddEntry("fp32", fp32, fp32_ts, "fp32", json::object(), 0.0, 0.0, false));

    for (const std::string& v : o_.variants) {
      if (stop_ && stop_->load()) return CancelledError("optimize interrupted");
      if (ReuseVariant(v)) continue;
      const auto t0 = std::chrono::steady_clock::now();
      Status s = RunVariant(v, t0);
      if (s.ok()) KILN_RETURN_IF_ERROR(SaveProgress(v));
      if (!s.ok() && stop_ && stop_->load()) return CancelledError("optimize interrupted");
      if (!s.ok()) {
        const std::string name = DisplayName(v);
        entries_.push_back({{"name", name}, {"status", "failed"}, {"error", s.message()},
                            {"optimize_seconds", Since(t0)}});
        failures_.push_back(name + ": " + s.message());
        Say(name + " FAILED: " + s.message());
      }
    }

    if (!o_.peer_quantizers.empty()) {
      if (stop_ && stop_->load()) return CancelledError("optimize interrupted");
      KILN_RETURN_IF_ERROR(RunPeers());
    }

    OptimizeResult r;
    r.manifest = {{"format", "kiln-optimize-1"},
                  {"kiln_version", Version()},
                  {"created", UtcNow()},
                  {"source", {{"model", o_.model.string()}, {"checkpoint", o_.checkpoint.string()}}},
                  {"arch", arch_},
                  {"labels", labels_},
                  {"normalization", {{"mean", norm_.mean}, {"std", norm_.std}}},
                  {"test_images", test_.size()},
                  {"calibration",
                   {{"images", o_.calibration_images},
                    {"split", "train"},
                    {"seed", o_.seed},
                    {"method", CalibrationMethodName(o_.quantize.method)},
                    {"percentile", o_.quantize.percentile},
                    {"activation_type", o_.quantize.uint8_activations ? "uint8" : "int8"}}},
                  {"budgets_points", {{"int8", o_.int8_budget}, {"pruned", o_.prune_budget}}},
                  {"recommended_session", RecommendedSession(o_.threads)},
                  {"variants", entries_},
                  {"seconds", Since(start)}};
    r.failures = failures_;
    r.gate_failed = !failures_.empty();
    KILN_RETURN_IF_ERROR(WriteFileAtomic(o_.out_dir / "manifest.json", r.manifest.dump(2) + "\n"));
    return r;
  }

 private:
  std::string PrunedName() const {
    return "pruned-" + std::to_string(static_cast<int>(std::lround(o_.prune.ratio * 100)));
  }
  std::string DisplayName(const std::string& v) const {
    if (v == "pruned") return PrunedName();
    if (v == "pruned-int8") return PrunedName() + "-int8";
    const auto peers = PeerQuantizerNames();
    if (std::find(peers.begin(), peers.end(), v) != peers.end()) return PeerVariantName(v);
    return v;
  }
  void Say(const std::string& line) {
    if (progress_) *progress_ << "[optimize] " << line << "\n" << std::flush;
  }

  Status ReadMetadata() {
    try {
      const json n = json::parse(GetMetadata(source_, "kiln.normalization"));
      norm_.mean = n.at("mean").get<std::vector<float>>();
      norm_.std = n.at("std").get<std::vector<float>>();
      labels_ = json::parse(GetMetadata(source_, "kiln.labels")).get<std::vector<std::string>>();
    } catch (const std::exception& e) {
      return InvalidArgumentError(o_.model.string() +
                                  ": no usable Kiln metadata (kiln.normalization, kiln.labels); "
                                  "export it with `kiln export`");
    }
    arch_ = GetMetadata(source_, "kiln.arch");
    return Status::Ok();
  }

  // Resuming after a crash or kill -9: out_dir/.kiln-optimize-progress.json records, for the
  // inputs and options of this run (`fingerprint`), each finished variant's manifest entry and
  // the SHA-256 of its files. A rerun with the same fingerprint reuses every variant whose files
  // are still intact and builds the rest; any other run starts the record afresh.
  fs::path ProgressFile() const { return o_.out_dir / ".kiln-optimize-progress.json"; }

  Result<json> Fingerprint() const {
    KILN_ASSIGN_OR_RETURN(std::string model, FileDigest(o_.model, DigestKind::kSha256));
    std::string checkpoint;
    if (!o_.checkpoint.empty() && fs::exists(o_.checkpoint)) {
      KILN_ASSIGN_OR_RETURN(checkpoint, FileDigest(o_.checkpoint, DigestKind::kSha256));
    }
    return json{{"kiln_version", Version()},
                {"model_sha256", model},
                {"checkpoint_sha256", checkpoint},
                {"data", o_.data.string()},
                {"calibration_method", CalibrationMethodName(o_.quantize.method)},
                {"percentile", o_.quantize.percentile},
                {"uint8_activations", o_.quantize.uint8_activations},
                {"calibration_batch", o_.quantize.batch_size},
                {"histogram_bins", o_.quantize.histogram_bins},
                {"calibration_images", o_.calibration_images},
                {"seed", o_.seed},
                {"prune", {{"ratio", o_.prune.ratio}, {"norm", o_.prune.norm},
                           {"scope", o_.prune.scope}, {"multiple", o_.prune.multiple}}},
                {"finetune_epochs", o_.finetune_epochs},
                {"finetune_lr_scale", o_.finetune_lr_scale},
                {"finetune_train_limit", o_.finetune_train_limit},
                {"int8_budget", o_.int8_budget},
                {"prune_budget", o_.prune_budget},
                {"threads", o_.threads},
                {"test_limit", o_.test_limit},
                {"peer_quantizers", o_.peer_quantizers}};
  }

  Status LoadProgress() {
    KILN_ASSIGN_OR_RETURN(json fingerprint, Fingerprint());
    std::ifstream in(ProgressFile());
    json saved = in ? json::parse(in, nullptr, false) : json();
    resuming_ = saved.is_object() && saved.value("fingerprint", json()) == fingerprint &&
                saved.value("variants", json()).is_object();
    if (resuming_) {
      record_ = std::move(saved);
      return Status::Ok();
    }
    // A manifest left by another configuration would describe files this run replaces.
    std::error_code ec;
    fs::remove(o_.out_dir / "manifest.json", ec);
    record_ = {{"fingerprint", fingerprint}, {"variants", json::object()}};
    return WriteFileAtomic(ProgressFile(), record_.dump(1) + "\n");
  }

  // Adds the recorded entry of `v` if an earlier run of this configuration finished it and its
  // files are unchanged.
  bool ReuseVariant(const std::string& v) {
    const std::string name = DisplayName(v);
    const json& variants = record_["variants"];
    if (!resuming_ || !variants.contains(name)) return false;
    const json& record = variants[name];
    if (!record.contains("entry") || !record.value("files", json()).is_object()) return false;
    for (const auto& [file, digest] : record["files"].items()) {
      auto got = FileDigest(o_.out_dir / file, DigestKind::kSha256);
      if (!got.ok() || !digest.is_string() || *got != digest.get<std::string>()) return false;
    }
    json e = record["entry"];
    if (e.value("status", "") == "failed") failures_.push_back(name + ": " + e.value("error", ""));
    Say("reusing " + name + ", finished by an earlier run of this command (files verified)");
    entries_.push_back(std::move(e));
    return true;
  }

  // Records the entry RunVariant just added for `v`, with the digests of its files.
  Status SaveProgress(const std::string& v) { return SaveProgressAs(DisplayName(v)); }
  Status SaveProgressAs(const std::string& name) {
    const json& e = entries_.back();
    json files = json::object();
    for (const char* key : {"file", "torchscript_file"}) {
      if (!e.contains(key)) continue;
      const std::string file = e[key].get<std::string>();
      KILN_ASSIGN_OR_RETURN(files[file], FileDigest(o_.out_dir / file, DigestKind::kSha256));
    }
    record_["variants"][name] = {{"entry", e}, {"files", files}};
    return WriteFileAtomic(ProgressFile(), record_.dump(1) + "\n");
  }

  Result<EvalResult> Evaluate(const fs::path& model) {
    backend::BackendOptions bo;
    bo.model_path = model.string();
    bo.intra_op_threads = o_.threads;
    KILN_ASSIGN_OR_RETURN(auto engine, backend::CreateBackend("onnxruntime", bo));
    return eval::EvaluateEngine(*engine, test_, norm_, 250);
  }

  // Normalized calibration images: a seeded random sample of the training split.
  const std::vector<float>& CalibrationImages() {
    if (!calibration_.empty()) return calibration_;
    const data::ImageSet& train = dataset_.train;
    std::vector<int64_t> order(static_cast<size_t>(train.size()));
    for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
    std::mt19937_64 rng(o_.seed);
    std::shuffle(order.begin(), order.end(), rng);
    const int64_t n = std::min<int64_t>(o_.calibration_images, train.size());
    const int64_t hw = train.height * train.width;
    calibration_.resize(static_cast<size_t>(n * train.image_bytes()));
    for (int64_t i = 0; i < n; ++i) {
      data::NormalizeImage(train.image(order[static_cast<size_t>(i)]), train.channels, hw, norm_,
                           calibration_.data() + i * train.image_bytes());
    }
    return calibration_;
  }

  Status QuantizeStaticTo(const fs::path& in, const fs::path& out, json* settings) {
    KILN_ASSIGN_OR_RETURN(onnx::ModelProto model, LoadOnnx(in));
    const std::vector<float>& images = CalibrationImages();
    const int64_t per = dataset_.train.image_bytes();
    QuantizeOptions qo = o_.quantize;
    qo.threads = o_.threads;
    KILN_ASSIGN_OR_RETURN(TensorRanges ranges,
                          Calibrate(model, images.data(), static_cast<int64_t>(images.size()) / per,
                                    per, qo, progress_));
    QuantizeReport rep;
    KILN_ASSIGN_OR_RETURN(onnx::ModelProto q, QuantizeStatic(model, ranges, qo, &rep));
    *settings = {{"format", "QDQ"},
                 {"weights", "int8 symmetric per-channel"},
                 {"activations", qo.uint8_activations ? "uint8 asymmetric" : "int8 symmetric"},
                 {"calibration_method", CalibrationMethodName(qo.method)},
                 {"calibration_images", static_cast<int64_t>(images.size()) / per},
                 {"quantized_tensors", rep.quantized_tensors},
                 {"quantized_weights", rep.quantized_weights},
                 {"relus_folded", rep.removed_relus},
                 {"float_nodes", rep.float_nodes}};
    if (qo.method == CalibrationMethod::kPercentile) (*settings)["percentile"] = qo.percentile;
    SetMetadata(&q, "kiln.quantization", settings->dump());
    KILN_RETURN_IF_ERROR(CheckOnnx(q));
    return SaveOnnx(q, out);
  }

  // Prunes the checkpoint, fine-tunes and exports `<name>.onnx` and `<name>.pt`.
  Status Prune(const fs::path& onnx_out, const fs::path& ts_out, json* settings) {
    if (o_.checkpoint.empty()) {
      return InvalidArgumentError("pruning needs the checkpoint the model was exported from "
                                  "(--checkpoint)");
    }
    KILN_ASSIGN_OR_RETURN(train::Checkpoint ckpt, train::LoadCheckpoint(o_.checkpoint));
    if (!arch_.empty() && ckpt.meta.arch != arch_) {
      return InvalidArgumentError(o_.checkpoint.string() + " is a " + ckpt.meta.arch + ", but " +
                                  o_.model.string() + " was exported from a " + arch_);
    }
    KILN_ASSIGN_OR_RETURN(PruneResult pruned, PruneCheckpoint(ckpt, o_.prune));
    const fs::path dir = o_.out_dir / PrunedName();
    std::error_code ec;
    fs::create_directories(dir, ec);
    const fs::path pruned_file = dir / "pruned.ckpt";
    KILN_RETURN_IF_ERROR(
        train::SaveCheckpoint(pruned_file, pruned.checkpoint.meta, *pruned.checkpoint.model, nullptr));
    json groups = json::array();
    for (const PrunedGroup& g : pruned.groups) {
      groups.push_back({{"layer", g.name}, {"producers", g.producers}, {"channels_before", g.before},
                        {"channels_after", g.kept.size()}});
    }
    *settings = {{"ratio", o_.prune.ratio},
                 {"norm", o_.prune.norm},
                 {"scope", o_.prune.scope},
                 {"channel_multiple", o_.prune.multiple},
                 {"layers", groups},
                 {"finetune_epochs", o_.finetune_epochs}};
    train::Checkpoint final_ckpt = pruned.checkpoint;
    if (o_.finetune_epochs > 0) {
      json saved = json::parse(ckpt.meta.train_options_json.empty() ? "{}" : ckpt.meta.train_options_json);
      train::TrainOptions t = train::TrainOptions::ForArch(ckpt.meta.arch);
      t.seed = saved.value("seed", t.seed);
      t.validation_size = saved.value("validation_size", t.validation_size);
      t.batch_size = saved.value("batch_size", t.batch_size);
      t.precision = saved.value("precision", t.precision);
      t.tta = saved.value("tta", t.tta);  // the fine-tuned model carries the original's
      t.epochs = o_.finetune_epochs;
      t.lr *= o_.finetune_lr_scale;
      t.warmup_fraction = 0.2;
      t.threads = o_.threads;
      t.train_limit = o_.finetune_train_limit;
      t.out_dir = dir / "finetune";
      t.init_from = pruned_file;
      // A fine-tuning of this configuration killed part way continues from its last epoch.
      t.resume = resuming_ && train::CanResume(t);
      Say("fine-tuning " + PrunedName() + " for " + std::to_string(t.epochs) + " epochs (peak LR " +
          std::to_string(t.lr) + ")");
      KILN_ASSIGN_OR_RETURN(train::TrainSummary summary, train::Train(dataset_, t, progress_, stop_));
      (*settings)["finetune_lr"] = t.lr;
      (*settings)["finetune_seconds"] = summary.train_seconds;
      (*settings)["finetune_best_val_accuracy"] = summary.best_val_accuracy;
      KILN_ASSIGN_OR_RETURN(final_ckpt, train::LoadCheckpoint(t.out_dir / "best.ckpt"));
    }
    exporter::OnnxExportOptions eo;
    eo.opset = std::clamp<int64_t>(OnnxOpset(source_), 13, 17);
    eo.input_name = source_.graph().input(0).name();
    eo.output_name = source_.graph().output(0).name();
    // Every variant keeps the FP32 model's drift reference (the pruned model agrees with it on
    // ~99% of images; the served traffic is compared with what the original model saw).
    if (std::string r = GetMetadata(source_, backend::kDriftReferenceKey); !r.empty()) {
      eo.extra_metadata[backend::kDriftReferenceKey] = r;
    }
    // Built in memory and written once, with its pruning metadata.
    KILN_ASSIGN_OR_RETURN(std::string bytes, exporter::BuildOnnxModel(final_ckpt, eo));
    onnx::ModelProto m;
    if (!m.ParseFromString(bytes)) return InternalError("cannot parse the exported pruned model");
    SetMetadata(&m, "kiln.pruning", settings->dump());
    KILN_RETURN_IF_ERROR(SaveOnnx(m, onnx_out));
    return exporter::ExportTorchScript(final_ckpt, ts_out, "", eo.extra_metadata);
  }

  Status RunVariant(const std::string& v, std::chrono::steady_clock::time_point t0) {
    json settings = json::object();
    const std::string name = DisplayName(v);
    Say("building " + name);
    if (v == "fp32-opt") {
      const fs::path out = o_.out_dir / "fp32-opt.onnx";
      backend::BackendOptions bo;
      bo.model_path = (o_.out_dir / "fp32.onnx").string();
      bo.intra_op_threads = o_.threads;
      // "extended": fusions every x86 CPU runs (Conv+activation, Gemm+activation, constant
      // folding). "all" would also bake in NCHWc layouts chosen for this CPU's vector width.
      bo.graph_optimization = "extended";
      const fs::path scratch = ScratchPath(out);
      bo.optimized_model_path = scratch.string();
      KILN_RETURN_IF_ERROR(backend::CreateBackend("onnxruntime", bo).status());
      auto loaded = LoadOnnx(scratch);
      std::error_code ec;
      fs::remove(scratch, ec);
      KILN_ASSIGN_OR_RETURN(onnx::ModelProto m, std::move(loaded));
      for (const auto& e : source_.metadata_props()) {
        if (GetMetadata(m, e.key()).empty()) SetMetadata(&m, e.key(), e.value());
      }
      settings = {{"saved_level", "extended"}, {"runtime_level", "all"}};
      SetMetadata(&m, "kiln.optimization", settings.dump());
      KILN_RETURN_IF_ERROR(SaveOnnx(m, out));
      return AddEntry(name, out, "", "fp32", settings, Since(t0), o_.int8_budget, false,
                      o_.out_dir / "fp32.onnx");
    }
    if (v == "int8-static") {
      const fs::path out = o_.out_dir / "int8-static.onnx";
      KILN_RETURN_IF_ERROR(QuantizeStaticTo(o_.out_dir / "fp32.onnx", out, &settings));
      return AddEntry(name, out, "", "int8", settings, Since(t0), o_.int8_budget, true);
    }
    if (v == "int8-dynamic") {
      const fs::path out = o_.out_dir / "int8-dynamic.onnx";
      QuantizeReport rep;
      KILN_ASSIGN_OR_RETURN(onnx::ModelProto q, QuantizeDynamic(source_, &rep));
      settings = {{"format", "dynamic (DynamicQuantizeLinear + MatMulInteger)"},
                  {"weights", "int8 symmetric per output channel, fully connected layers only"},
                  {"activations", "uint8, scale computed per batch at run time"},
                  {"quantized_weights", rep.quantized_weights}};
      SetMetadata(&q, "kiln.quantization", settings.dump());
      KILN_RETURN_IF_ERROR(CheckOnnx(q));
      KILN_RETURN_IF_ERROR(SaveOnnx(q, out));
      // Convolutions stay FP32: "mixed" (benchmarks compare it with the FP32 roof).
      return AddEntry(name, out, "", "mixed", settings, Since(t0), o_.int8_budget, true);
    }
    if (v == "pruned") {
      const fs::path out = o_.out_dir / (name + ".onnx");
      KILN_RETURN_IF_ERROR(Prune(out, o_.out_dir / (name + ".pt"), &settings));
      return AddEntry(name, out, name + ".pt", "fp32", settings, Since(t0), o_.prune_budget, false);
    }
    if (v == "pruned-int8") {
      const fs::path pruned = o_.out_dir / (PrunedName() + ".onnx");
      if (!fs::exists(pruned)) {
        return InvalidArgumentError("needs the " + PrunedName() +
                                       " variant (list 'pruned' before 'pruned-int8')");
      }
      const fs::path out = o_.out_dir / (name + ".onnx");
      KILN_RETURN_IF_ERROR(QuantizeStaticTo(pruned, out, &settings));
      return AddEntry(name, out, "", "int8", settings, Since(t0),
                      o_.prune_budget + o_.int8_budget, true);
    }
    return InvalidArgumentError("unknown variant '" + v + "'");
  }

  // The peer quantizers (bench/peer_quantizers.py in the project's .venv) on fp32.onnx, fed the
  // exact calibration tensors Kiln's own quantizer used (written to a scratch file).
  Status RunPeers() {
    std::vector<std::string> todo;
    for (const std::string& q : o_.peer_quantizers) {
      if (!ReuseVariant(q)) todo.push_back(q);
    }
    if (todo.empty()) return Status::Ok();
    const auto t0 = std::chrono::steady_clock::now();
    const fs::path source_dir(KILN_SOURCE_DIR);
    const std::string python =
        o_.python.empty() ? (source_dir / ".venv" / "bin" / "python").string() : o_.python;
    const fs::path script =
        o_.peers_script.empty() ? source_dir / "bench" / "peer_quantizers.py" : o_.peers_script;
    const fs::path work = o_.out_dir / ".peers";
    std::error_code ec;
    fs::remove_all(work, ec);
    fs::create_directories(work, ec);
    auto unavailable = [&](const std::string& why) {
      for (const std::string& q : todo) {
        entries_.push_back({{"name", PeerVariantName(q)}, {"status", "unavailable"},
                            {"peer", {{"quantizer", q}}}, {"error", why}});
        Say(PeerVariantName(q) + " unavailable: " + why);
      }
      fs::remove_all(work, ec);
      return Status::Ok();
    };
    const std::vector<float>& images = CalibrationImages();
    const data::ImageSet& train = dataset_.train;
    KILN_RETURN_IF_ERROR(WriteFileAtomic(
        work / "calibration.f32",
        {reinterpret_cast<const char*>(images.data()), images.size() * sizeof(float)}));
    std::string quantizers;
    for (const std::string& q : todo) quantizers += (quantizers.empty() ? "" : ",") + q;
    const std::vector<std::string> argv = {
        python, script.string(), "--model", (o_.out_dir / "fp32.onnx").string(),
        "--calibration", (work / "calibration.f32").string(), "--shape",
        std::to_string(train.channels) + "," + std::to_string(train.height) + "," +
            std::to_string(train.width),
        "--out-dir", work.string(), "--quantizers", quantizers, "--json",
        (work / "summary.json").string()};
    Say("peer quantizers: " + CommandLineForDisplay(argv));
    const Result<int> rc = RunProcess(argv, {.stdout_to_stderr = true});
    if (!rc.ok()) return unavailable(rc.status().message() + " (run scripts/setup.sh for .venv)");
    std::ifstream in(work / "summary.json");
    const json summary = in ? json::parse(in, nullptr, false) : json();
    if (*rc != 0 || !summary.is_object()) {
      return unavailable(script.string() + " failed (exit " + std::to_string(*rc) + ")");
    }
    const double seconds = Since(t0);
    for (const std::string& q : todo) {
      const std::string name = PeerVariantName(q);
      const json result = summary.value("results", json::object()).value(q, json::object());
      if (!result.contains("file")) {
        const std::string why = result.value("error", summary.value("error", std::string("no output")));
        entries_.push_back({{"name", name}, {"status", "unavailable"},
                            {"peer", {{"quantizer", q}}}, {"error", why}});
        Say(name + " unavailable: " + why);
        continue;
      }
      const std::string module = q == "nncf" ? "nncf" : "onnxruntime";
      json peer = {{"quantizer", q},
                   {"tool", q == "nncf" ? "NNCF nncf.quantize"
                                        : std::string("ONNX Runtime quantize_static (") +
                                              (q == "ort-minmax" ? "MinMax" : "Entropy") + ")"},
                   {"version", summary.value("versions", json::object()).value(module, "?")},
                   {"settings", result.value("settings", json::object())},
                   {"quantize_seconds", result.value("seconds", 0.0)}};
      // The peer's graph with the FP32 model's Kiln metadata (labels, normalization, drift
      // reference), which the serving side and kiln bench read.
      const fs::path out = o_.out_dir / (name + ".onnx");
      KILN_ASSIGN_OR_RETURN(onnx::ModelProto m, LoadOnnx(result["file"].get<std::string>()));
      for (const auto& e : source_.metadata_props()) {
        if (GetMetadata(m, e.key()).empty()) SetMetadata(&m, e.key(), e.value());
      }
      SetMetadata(&m, "kiln.quantization", json{{"peer", peer}}.dump());
      KILN_RETURN_IF_ERROR(SaveOnnx(m, out));
      Status s = AddEntry(name, out, "", "int8", peer["settings"], seconds, o_.int8_budget, true,
                          o_.out_dir / "fp32.onnx", peer);
      if (s.ok()) {
        KILN_RETURN_IF_ERROR(SaveProgressAs(name));
      } else {
        entries_.push_back({{"name", name}, {"status", "unavailable"}, {"peer", peer},
                            {"error", s.message()}});
        Say(name + " unavailable: " + s.message());
      }
    }
    fs::remove_all(work, ec);
    return Status::Ok();
  }

  Status AddEntry(const std::string& name, const fs::path& file, const std::string& torchscript,
                  const std::string& precision, const json& settings, double seconds,
                  double budget, bool integer, const fs::path& flops_from = {},
                  const json& peer = nullptr) {
    KILN_ASSIGN_OR_RETURN(onnx::ModelProto m, LoadOnnx(file));
    // ONNX shape inference does not know ONNX Runtime's fused operators; an optimized graph
    // computes what its source computes.
    int64_t flops = 0;
    if (flops_from.empty()) {
      KILN_ASSIGN_OR_RETURN(flops, FlopsPerSample(m));
    } else {
      KILN_ASSIGN_OR_RETURN(onnx::ModelProto src, LoadOnnx(flops_from));
      KILN_ASSIGN_OR_RETURN(flops, FlopsPerSample(src));
    }
    Say("evaluating " + name + " on " + std::to_string(test_.size()) + " test images");
    KILN_ASSIGN_OR_RETURN(EvalResult r, Evaluate(file));
    int64_t agree = 0;
    for (size_t i = 0; i < r.predictions.size() && i < baseline_predictions_.size(); ++i) {
      agree += r.predictions[i] == baseline_predictions_[i] ? 1 : 0;
    }
    const double delta = 100.0 * (r.accuracy - baseline_accuracy_);
    json e = {{"name", name},
              {"file", file.filename().string()},
              {"format", "onnx"},
              {"precision", precision},
              {"size_bytes", static_cast<int64_t>(fs::file_size(file))},
              {"parameters", CountParameters(m)},
              {"flops_per_image", flops},
              {"test_images", r.images},
              {"test_accuracy", r.accuracy},
              {"accuracy_delta_points", delta},
              {"agreement_with_fp32",
               r.images > 0 ? static_cast<double>(agree) / static_cast<double>(r.images) : 0.0},
              {"budget_points", budget},
              {"settings", settings},
              {"optimize_seconds", seconds},
              {"status", "ok"}};
    if (!torchscript.empty()) e["torchscript_file"] = torchscript;
    if (!peer.is_null()) {
      // Not Kiln's model: compared with, never gated (its status stays "ok").
      e["peer"] = peer;
      e["within_budget"] = -delta <= budget;
    }
    if (integer) {
      KILN_ASSIGN_OR_RETURN(auto ops, RuntimeOperators(file, o_.threads));
      e["runtime_operators"] = ops;
    }
    if (name != "fp32" && peer.is_null() && -delta > budget) {
      char msg[200];
      std::snprintf(msg, sizeof msg,
                    "accuracy %.2f%% is %.2f points below FP32 (%.2f%%), over the budget of %.2f "
                    "points",
                    100 * r.accuracy, -delta, 100 * baseline_accuracy_, budget);
      e["status"] = "failed";
      e["error"] = msg;
      failures_.push_back(name + ": " + msg);
    }
    char line[200];
    std::snprintf(line, sizeof line, "%s: accuracy %.2f%% (%+.2f points), agreement %.2f%%, %lld bytes",
                  name.c_str(), 100 * r.accuracy, delta,
                  100 * e["agreement_with_fp32"].get<double>(),
                  static_cast<long long>(e["size_bytes"].get<int64_t>()));
    Say(line);
    entries_.push_back(std::move(e));
    return Status::Ok();
  }

  const OptimizeOptions& o_;
  std::ostream* progress_;
  const std::atomic<bool>* stop_;
  onnx::ModelProto source_;
  data::Normalization norm_;
  std::vector<std::string> labels_;
  std::string arch_;
  data::Dataset dataset_;
  data::ImageSet test_;
  std::vector<float> calibration_;
  double baseline_accuracy_ = 0.0;
  std::vector<int64_t> baseline_predictions_;
  std::vector<json> entries_;
  std::vector<std::string> failures_;
  json record_;            // what ProgressFile() holds
  bool resuming_ = false;  // it was written by a run of this configuration
};

}  // namespace

std::vector<std::string> VariantNames() {
  return {"fp32-opt", "int8-static", "int8-dynamic", "pruned", "pruned-int8"};
}

std::vector<std::string> PeerQuantizerNames() { return {"ort-minmax", "ort-entropy", "nncf"}; }

std::string PeerVariantName(const std::string& quantizer) {
  if (quantizer == "ort-minmax") return "ort-int8-minmax";
  if (quantizer == "ort-entropy") return "ort-int8-entropy";
  return quantizer + "-int8";
}

Status OptimizeOptions::Validate() const {
  if (model.empty()) return InvalidArgumentError("an exported ONNX model is required (--model)");
  if (out_dir.empty()) return InvalidArgumentError("an output folder is required (--output)");
  const auto known = VariantNames();
  for (const auto& v : variants) {
    if (std::find(known.begin(), known.end(), v) == known.end()) {
      return InvalidArgumentError("unknown variant '" + v +
                                  "' (fp32-opt, int8-static, int8-dynamic, pruned, pruned-int8)");
    }
  }
  const auto peers = PeerQuantizerNames();
  for (const auto& q : peer_quantizers) {
    if (std::find(peers.begin(), peers.end(), q) == peers.end()) {
      return InvalidArgumentError("unknown peer quantizer '" + q + "' (ort-minmax, ort-entropy, nncf)");
    }
  }
  KILN_RETURN_IF_ERROR(quantize.Validate());
  KILN_RETURN_IF_ERROR(prune.Validate());
  if (calibration_images < 1) return InvalidArgumentError("calibration images must be positive");
  if (finetune_epochs < 0) return InvalidArgumentError("fine-tune epochs must be >= 0");
  if (int8_budget < 0 || prune_budget < 0) return InvalidArgumentError("budgets must be >= 0");
  if (threads < 1) return InvalidArgumentError("threads must be positive");
  return Status::Ok();
}

Result<OptimizeResult> Optimize(const OptimizeOptions& options, std::ostream* progress,
                                const std::atomic<bool>* stop) {
  KILN_RETURN_IF_ERROR(options.Validate());
  if (!fs::exists(options.model)) return NotFoundError(options.model.string() + ": no such model");
  try {
    return Optimizer(options, progress, stop).Run();
  } catch (const std::exception& e) {
    return InternalError(std::string("optimize failed: ") + e.what());
  }
}

}  // namespace kiln::optimize
