// Triton model repositories, written and checked: `kiln repo write` lays out Kiln's models as a
// repository that Triton and `kiln serve --disable-auto-complete-config` load as it is (every
// config.pbtxt complete and explicit), and `kiln repo check` lints any Triton repository for the
// known reasons a model ends up UNAVAILABLE in Triton.
//
//   repo::WriteOptions o;
//   o.out = "deploy/models";
//   KILN_ASSIGN_OR_RETURN(o.models, repo::SourcesFromManifest("runs/x/optimized/manifest.json",
//   "")); o.warmup_image = image;  // a real sample, preprocessed per model
//   KILN_ASSIGN_OR_RETURN(auto written, repo::WriteRepository(o));
//   KILN_ASSIGN_OR_RETURN(auto findings, repo::CheckRepository("deploy/models", {}));
//
// Thread-compatible free functions; errors are Status values that name the file at fault.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "kiln/core/status.h"
#include "kiln/data/image.h"

namespace kiln::serve::repo {

// One model to write: `file` is an ONNX model or a TorchScript archive exported by Kiln (it
// carries Kiln's metadata: input shape, labels, normalization).
struct ModelSource {
  std::string name;            // the model's folder (Triton's model name)
  std::filesystem::path file;  // *.onnx or *.pt
  std::string variant;         // what it is ("fp32", "int8-static", "torchscript", ...)
  bool integer = false;        // integer (INT8) kernels: not written for GPU hosts
};

// The engine an ONNX model is written for (TorchScript is always pytorch_libtorch).
struct EngineChoice {
  std::string backend;  // "onnxruntime" or "openvino"
  std::string reason;   // why (written into config.pbtxt as a comment)
};

// For `onnx_backend` "auto": per ONNX model, the faster of ONNX Runtime and OpenVINO (with
// Kiln's settings) in a `kiln bench` report of the same variants: the geometric mean over the
// batch sizes up to `max_batch_size` of each engine's speedup (its ratio to the report's
// reference, measured interleaved), at `threads` (else the report's largest thread count).
// ONNX Runtime when the report has no cell of the variant on one of them. NotFound/InvalidArgument
// for an unreadable report.
Result<std::map<std::string, EngineChoice>> ChooseEngines(const std::filesystem::path& bench_report,
                                                          const std::vector<ModelSource>& models,
                                                          int threads, int max_batch_size);

struct WriteOptions {
  std::filesystem::path out;  // the repository folder (created; existing models need `force`)
  std::vector<ModelSource> models;
  bool force = false;  // replace model folders that exist in `out`
  // dynamic_batching: max_batch_size, the preferred sizes (those above max_batch_size are
  // dropped; empty = powers of two from 8 up to max_batch_size) and the queue delay.
  int max_batch_size = 32;
  std::vector<int> preferred_batch_sizes;
  int64_t max_queue_delay_us = 1000;
  int instances = 1;  // instance_group count
  int threads = 2;    // intra-op threads per instance (ONNX Runtime, libtorch, OpenVINO)
  // The engine of ONNX models: "onnxruntime" (platform onnxruntime_onnx), "openvino" (Triton's
  // OpenVINO backend: backend "openvino", default_model_filename "model.onnx", its
  // PERFORMANCE_HINT / NUM_STREAMS / INFERENCE_NUM_THREADS parameters) or "auto" (per model,
  // the faster of the two in `bench_report`, see ChooseEngines).
  std::string onnx_backend = "onnxruntime";
  std::filesystem::path bench_report;  // a kiln bench report.json, for "auto"
  // Triton's ONNX Runtime graph optimization level: -1 basic, 0 all (ONNX Runtime's default),
  // 1 extended.
  int graph_level = 0;
  // GPU hosts: KIND_GPU instances, and the TensorRT accelerator (FP16) for ONNX models;
  // integer variants are left out (their QDQ / integer kernels are what TensorRT's FP16 path
  // does not run). Untested here: this machine has no GPU.
  bool gpu = false;
  // The model_warmup sample: decoded RGB, resized and normalized for each model as the server
  // does for an upload, written as the raw FP32 file warmup/sample.
  data::RgbImage warmup_image;

  Status Validate() const;
};

struct WrittenModel {
  std::string name;
  std::string platform;  // onnxruntime_onnx | pytorch_libtorch | openvino (a backend)
  std::string reason;    // why this engine (with "auto")
  std::filesystem::path dir;
};

// Writes one model folder per source: <name>/config.pbtxt, <name>/1/model.onnx|model.pt,
// <name>/labels.txt (when the model has labels), <name>/warmup/sample. Each folder is built in
// a temporary sibling and renamed into place. InvalidArgument for a model that cannot be opened,
// AlreadyExists for a folder that exists without `force`.
Result<std::vector<WrittenModel>> WriteRepository(const WriteOptions& options);

// The configuration WriteRepository writes for `model` with `options` (its engine:
// `options.onnx_backend`, which must not be "auto"), as the JSON ModelConfig that Triton's load
// request takes in its "config" parameter (`POST /v2/repository/models/<name>/load`): a server
// in explicit mode runs the model with it as if the folder had been written so. The model file
// is opened to read its tensors; errors as WriteRepository's.
Result<std::string> ModelConfigJson(const WriteOptions& options, const ModelSource& model);

// The normalization Kiln's metadata in `model`'s file states (what the server applies to an
// uploaded image), for clients that send tensors; mean 0 and std 1 when the file has none.
Result<data::Normalization> ModelNormalization(const ModelSource& model);

// The models of a `kiln optimize` manifest: every variant that passed its accuracy gate, named
// "<prefix>-<variant>" (prefix "" = the manifest's architecture), and the TorchScript exports as
// "<prefix>-torchscript" (FP32) and "<prefix>-<variant>-torchscript" (e.g. the pruned model). Left
// out, with the reason in `skipped`: failed variants, fp32-opt (ONNX Runtime's saved optimized
// graph, tied to the ONNX Runtime version and CPU that wrote it; the same optimizations run when
// the FP32 model loads) and the peer quantizers' models (measured beside Kiln's, not Kiln's to
// deploy).
Result<std::vector<ModelSource>> SourcesFromManifest(const std::filesystem::path& manifest,
                                                     const std::string& prefix,
                                                     std::vector<std::string>* skipped = nullptr);

enum class Severity { kError, kWarning };

struct Finding {
  Severity severity = Severity::kError;
  std::string model;    // the model folder ("" for the repository itself)
  std::string problem;  // what is wrong, naming the file or field
  std::string fix;      // what to change
};

struct CheckOptions {
  // As Triton with --disable-auto-complete-config: a missing config.pbtxt, platform,
  // max_batch_size with tensors, or tensor data_type / dims is an error, not left to
  // auto-completion.
  bool strict = false;
};

// Lints the repository at `dir` without loading models into an engine: ONNX graphs are read
// with the ONNX protobuf API, TorchScript archives are listed with libarchive. Findings:
// no numeric version folder, a missing model file, a config that does not parse or names
// another model, input/output names not in the model, TorchScript tensors not named
// <name>__<index>, the batch dimension inside `dims`, a fixed-batch ONNX model with
// max_batch_size > 0, dims or data types that differ from the model, a torch.save() pickle, a
// quantized TorchScript model on KIND_GPU, a label file whose line count differs from the
// classes, preferred batch sizes over max_batch_size. NotFound when `dir` is not a folder.
Result<std::vector<Finding>> CheckRepository(const std::filesystem::path& dir,
                                             const CheckOptions& options);

}  // namespace kiln::serve::repo
