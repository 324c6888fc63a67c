// The serving engine: a Triton-layout model repository, one dynamic batcher per loaded model
// version, and `count` instances per model each running batches on its own backend.
//
//   EngineOptions o;  o.repository = "models/";
//   metrics::Registry registry;
//   KILN_ASSIGN_OR_RETURN(auto engine, Engine::Create(o, &registry));
//   KILN_ASSIGN_OR_RETURN(auto model, engine->Find("cifar", ""));      // "" = latest ready
//   engine->Infer(model, std::move(floats), /*batch=*/4, deadline,
//                 [](Status s, InferResult r) { ... });               // called exactly once
//
// Threads: each instance owns a thread and a backend (Run is never shared). Infer() never
// blocks: a full queue fails at once with Unavailable. Callbacks run on an instance thread (or
// inline, for an immediate failure) and must not block. Unloading or replacing a version stops
// taking new requests, finishes the queued ones, then frees it, so no request in flight is
// dropped. Every public method is thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/backend/inference_backend.h"
#include "kiln/core/clock.h"
#include "kiln/core/drift.h"
#include "kiln/core/status.h"
#include "kiln/data/image.h"
#include "kiln/data/loader.h"
#include "kiln/serve/metrics/metrics.h"
#include "kiln/serve/engine/model_config.h"

namespace kiln::serve {

enum class ModelControlMode { kNone, kPoll, kExplicit };

// Opens a model file as a backend: `kind` is "onnxruntime" or "libtorch" (backend::CreateBackend's
// signature).
using BackendFactory = std::function<Result<std::unique_ptr<backend::InferenceBackend>>(
    const std::string& kind, const backend::BackendOptions& options)>;

struct EngineOptions {
  std::string repository;  // folder of <model>/config.pbtxt and <model>/<version>/model.*
  ModelControlMode control_mode = ModelControlMode::kNone;
  // explicit mode: models loaded at start (Triton's --load-model); empty = none.
  std::vector<std::string> startup_models;
  int poll_seconds = 5;  // poll mode: rescan interval
  int default_max_batch_size = 32;  // for auto-completed configs of batching models
  // false = Triton's --disable-auto-complete-config: every config.pbtxt must be complete on its
  // own (CompleteOptions::auto_complete); a model without one is UNAVAILABLE.
  bool auto_complete_config = true;
  // Queue bound (requests) when the config's default_queue_policy.max_queue_size is 0.
  int max_queue_size = 256;
  // Per-request timeout in the queue (config default_timeout_microseconds overrides when set).
  int64_t request_timeout_ms = 30'000;
  // Engine threads per model, split between its instances unless the config's parameters give
  // intra_op_thread_count.
  int threads = 2;
  // Drift tracking: per model version, the last `drift_window_size` predictions, none older
  // than `drift_window_seconds`, compared with the model's drift reference (models without one
  // only get the confidence histogram). 0 turns drift tracking off.
  int64_t drift_window_size = 1000;
  int drift_window_seconds = 600;
  // Seams for tests (tests/serve/batcher_test.cc): the clock the batchers read (null: the
  // steady clock; it must outlive the engine) and how a model file becomes a backend (empty:
  // backend::CreateBackend).
  Clock* clock = nullptr;
  BackendFactory backend_factory;

  Status Validate() const;
};

// Immutable description of a loaded model version.
struct ModelInfo {
  std::string name;
  int64_t version = 0;
  std::string platform;  // onnxruntime_onnx | pytorch_libtorch
  inference::ModelConfig config;  // completed and validated
  int64_t max_batch_size = 0;
  std::string input_name, output_name;
  std::vector<int64_t> input_dims, output_dims;  // without the batch dimension when batching
  int64_t input_elements = 0;   // floats per batch element
  int64_t output_elements = 0;
  std::vector<std::string> labels;  // output label file, Kiln metadata, or empty
  // Normalization for image preprocessing (Kiln metadata; else pixel / 255).
  data::Normalization normalization;
  bool has_kiln_normalization = false;
  // What the model's predictions looked like on held-out data (Kiln metadata), if known.
  std::optional<drift::Reference> drift_reference;
  std::vector<std::string> warnings;  // config fields ignored etc.
};

struct InferResult {
  std::vector<float> output;  // batch * output_elements
  int64_t batch = 0;
  int64_t queue_ns = 0, compute_input_ns = 0, compute_infer_ns = 0, compute_output_ns = 0;
  int64_t executed_batch = 0;  // size of the batch this request ran in
  int64_t version = 0;         // the version that answered (routing may choose another)
};

// How a request is routed among a model's versions.
struct InferOptions {
  // The client named no version: the model's routing policy (or the highest READY version)
  // chooses, and a request that meets a version being replaced goes to the new one.
  bool follow_latest = true;
  // Sticky routing: requests with the same key reach the same version while the weights stay
  // (HTTP header X-Kiln-Routing-Key, gRPC metadata x-kiln-routing-key). Empty: random.
  std::string routing_key;
};
using InferCallback = std::function<void(Status, InferResult)>;

struct ModelIndexEntry {
  std::string name;
  std::string version;  // empty when the model itself failed (no versions)
  std::string state;    // READY | UNAVAILABLE | LOADING
  std::string reason;
};

struct Duration {
  uint64_t count = 0;
  uint64_t ns = 0;
};
struct BatchStats {
  int64_t batch_size = 0;
  Duration compute_input, compute_infer, compute_output;
};
struct ModelStats {
  std::string name, version;
  uint64_t last_inference_ms = 0;
  uint64_t inference_count = 0, execution_count = 0;
  Duration success, fail, queue, compute_input, compute_infer, compute_output;
  std::vector<BatchStats> batch_stats;
  std::vector<uint64_t> class_counts;  // top-1 predictions per output index
};

// A model version's drift window against its reference (GET /v2/models/{m}/drift).
struct DriftReport {
  std::string name, version;
  int64_t window_size = 0;     // predictions the window holds at most
  int64_t window_seconds = 0;  // and their longest age
  std::optional<drift::Reference> reference;  // none: the model has no drift reference
  drift::Profile window;
  drift::Scores scores;
};

// What the HTTP and gRPC frontends check and format the same way, so both protocols give the
// same answers and the same messages.

// The shape a client sees for `dims`: a leading -1 batch dimension when the model batches.
std::vector<int64_t> BatchedShape(const ModelInfo& model, const std::vector<int64_t>& dims);
// "[1,3,32,32]".
std::string ShapeString(const std::vector<int64_t>& shape);
// Checks a request's shape for the model's input and returns the batch it carries (1 when
// max_batch_size is 0). InvalidArgument naming both shapes, or a batch over max_batch_size.
Result<int64_t> CheckInputShape(const ModelInfo& model, const std::vector<int64_t>& shape);
// The checks of an inference request both frontends make (one implementation, one wording):
// the request carries `input_count` inputs; the one input is `name`, `datatype`, `shape`.
// Returns the batch it carries (CheckInputShape).
Result<int64_t> CheckInferInput(const ModelInfo& model, size_t input_count,
                                const std::string& name, const std::string& datatype,
                                const std::vector<int64_t>& shape);
// The input's data: `got` values (`unit` "values") or bytes (`unit` "bytes") found in `where`
// (e.g. "contents.fp32_contents") for `shape`, which carries `batch` elements.
Status CheckInferDataSize(const ModelInfo& model, const std::vector<int64_t>& shape,
                          int64_t batch, size_t got, const std::string& unit,
                          const std::string& where);
// A requested output's name.
Status CheckInferOutput(const ModelInfo& model, const std::string& name);

// An uploaded image (PNG, JPEG, GIF, BMP, WebP, ...) as the model's input tensor: decoded within
// `limits`, resized to the model's [3,H,W] input and normalized as the model was trained.
// InvalidArgument when the model does not take images or the image is broken.
struct ImageTimings {
  double decode_ms = 0, preprocess_ms = 0;
};
Result<std::vector<float>> ImageToInput(const ModelInfo& model, std::string_view image,
                                        const data::ImageLimits& limits,
                                        ImageTimings* timings = nullptr);

// Triton's classification extension: for each row of `output` (output_elements values each),
// the min(k, classes) highest values as "<value>:<index>[:<label>]", highest first.
std::vector<std::string> ClassificationStrings(const ModelInfo& model,
                                               const std::vector<float>& output, int64_t k);

class Engine {
 public:
  // Loads the repository per the control mode. Models that fail are UNAVAILABLE (not an error);
  // a missing repository folder is NotFound. `registry` must outlive the engine.
  static Result<std::unique_ptr<Engine>> Create(const EngineOptions& options,
                                                metrics::Registry* registry);
  virtual ~Engine() = default;

  // `version` "" means the highest READY version. NotFound for an unknown model or version,
  // Unavailable for a model that is not ready.
  virtual Result<std::shared_ptr<const ModelInfo>> Find(const std::string& name,
                                                        const std::string& version) = 0;
  // Names of READY models (sorted) with their versions.
  virtual std::vector<std::shared_ptr<const ModelInfo>> ReadyModels() = 0;

  // Queues `batch` elements (input holds batch * input_elements floats, or exactly the config's
  // shape for max_batch_size 0). `done` is called exactly once. The engine checks the request
  // itself (batch in [1, max_batch_size], the input's size): a wrong one fails with
  // InvalidArgument, whoever the caller. With `options.follow_latest` (the client named no
  // version) the model's routing policy picks the version (weighted, sticky on the routing key),
  // may copy the input to a shadow version, and answers a failed canary request from the
  // stable version; without a policy the highest READY version answers. InferResult::version
  // says which version did.
  virtual void Infer(const std::shared_ptr<const ModelInfo>& model, std::vector<float> input,
                     int64_t batch, InferCallback done, const InferOptions& options = {}) = 0;

  virtual std::vector<ModelIndexEntry> Index() = 0;
  // Repository extension. In mode none/poll: InvalidArgument (as Triton). `config_json`:
  // Triton's configuration override (a load request's parameters.config, the JSON form of
  // ModelConfig), used instead of config.pbtxt for this load; it is validated like a
  // config.pbtxt, and one that does not parse or does not load fails with InvalidArgument while
  // the versions that were serving go on serving.
  virtual Status Load(const std::string& name,
                      const std::optional<std::string>& config_json = std::nullopt) = 0;
  virtual Status Unload(const std::string& name) = 0;
  // name "" = every model; version "" = every loaded version.
  virtual Result<std::vector<ModelStats>> Statistics(const std::string& name,
                                                     const std::string& version) = 0;
  // The drift window of a model version ("" = the highest READY one). NotFound/Unavailable as
  // Find; Unavailable when drift tracking is off.
  virtual Result<DriftReport> Drift(const std::string& name, const std::string& version) = 0;
  // Traffic between a model's versions (docs/rollout.md): the routing policy, per version its
  // requests, errors, fallbacks and p99, the shadow's comparisons and the rollout decisions, as
  // JSON. NotFound for an unknown model.
  virtual Result<std::string> Routing(const std::string& name) = 0;
  // Replaces the policy (the JSON of ParseRoutingPolicy; "{}" routes everything to the highest
  // READY version again). Every version it names must be READY, and the versions must take the
  // same input and give the same output. InvalidArgument / NotFound; the old policy stays then.
  // A later load of the model takes the policy of its config again.
  virtual Result<std::string> SetRouting(const std::string& name, const std::string& policy_json) = 0;
  // Requests queued or running, over all models.
  virtual int64_t Pending() = 0;
  // Stops polling, finishes every queued request, joins all threads. Idempotent.
  virtual void Shutdown() = 0;
};

}  // namespace kiln::serve
