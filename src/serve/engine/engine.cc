#include "kiln/serve/engine/engine.h"

#include <algorithm>
#include <chrono>
#include <mutex>

#include "batcher.h"
#include "repository.h"

namespace kiln::serve {

namespace {

using SteadyTime = std::chrono::steady_clock;

// The Engine interface over the repository manager (which versions exist and route where) and
// each version's Batcher (queue, batches, instances).
class EngineImpl : public Engine {
 public:
  EngineImpl(const EngineOptions& o, metrics::Registry* r)
      : clock_(o.clock != nullptr ? o.clock : SteadyClock()), repository_(o, r) {}
  ~EngineImpl() override { Shutdown(); }

  Status Start() { return repository_.Start(); }

  Result<std::shared_ptr<const ModelInfo>> Find(const std::string& name,
                                                const std::string& version) override {
    KILN_ASSIGN_OR_RETURN(auto v, repository_.Find(name, version));
    return v->info();
  }

  std::vector<std::shared_ptr<const ModelInfo>> ReadyModels() override {
    std::vector<std::shared_ptr<const ModelInfo>> out;
    const auto ready = repository_.Ready("");  // never fails for ""
    for (const auto& v : *ready) out.push_back(v->info());
    return out;
  }

  void Infer(const std::shared_ptr<const ModelInfo>& model, std::vector<float> input,
             int64_t batch, InferCallback done, const InferOptions& options) override {
    // The engine trusts no caller: the batch buffer is sized for max_batch_size elements.
    if (Status bad = CheckRequestSize(*model, input.size(), batch); !bad.ok()) {
      Deliver(done, bad, {});
      return;
    }
    std::shared_ptr<Traffic> traffic =
        options.follow_latest ? repository_.TrafficOf(model->name) : nullptr;
    if (traffic == nullptr) {
      Submit(model->name, options.follow_latest ? 0 : model->version, std::move(input), batch,
             std::move(done), options.follow_latest);
      return;
    }
    Route(traffic, model, std::move(input), batch, std::move(done), options.routing_key);
  }

  Result<std::string> Routing(const std::string& name) override {
    return repository_.Routing(name);
  }
  Result<std::string> SetRouting(const std::string& name, const std::string& policy) override {
    return repository_.SetRouting(name, policy);
  }

  std::vector<ModelIndexEntry> Index() override { return repository_.Index(); }
  Status Load(const std::string& name, const std::optional<std::string>& config_json) override {
    return repository_.Load(name, config_json);
  }
  Status Unload(const std::string& name) override { return repository_.Unload(name); }

  Result<std::vector<ModelStats>> Statistics(const std::string& name,
                                             const std::string& version) override {
    std::vector<std::shared_ptr<Batcher>> versions;
    if (!name.empty() && !version.empty()) {
      KILN_ASSIGN_OR_RETURN(auto v, repository_.Find(name, version));
      versions.push_back(std::move(v));
    } else {
      KILN_ASSIGN_OR_RETURN(versions, repository_.Ready(name));
    }
    std::vector<ModelStats> out;
    for (const auto& v : versions) out.push_back(v->Stats());
    return out;
  }

  Result<DriftReport> Drift(const std::string& name, const std::string& version) override {
    KILN_ASSIGN_OR_RETURN(auto v, repository_.Find(name, version));
    if (v->drift() == nullptr) {
      return UnavailableError("drift tracking is off (kiln serve --drift-window-size 0)");
    }
    return v->drift()->Report();
  }

  int64_t Pending() override {
    int64_t n = 0;
    const auto ready = repository_.Ready("");
    for (const auto& v : *ready) n += v->Pending();
    return n;
  }

  void Shutdown() override { repository_.Shutdown(); }

 private:
  // Queues the request on `version` (0: the highest READY version). A version being replaced
  // refuses new work; with `follow_latest` the request resolves again and goes to its successor.
  void Submit(const std::string& name, int64_t version, std::vector<float> input, int64_t batch,
              InferCallback done, bool follow_latest) {
    auto p = std::make_unique<QueuedRequest>();
    p->input = std::move(input);
    p->batch = batch;
    p->done = std::move(done);
    p->enqueued = clock_->Now();
    for (int attempt = 0; attempt < 3; ++attempt) {
      const bool latest = version == 0 || (attempt > 0 && follow_latest);
      auto v = repository_.Find(name, latest ? "" : std::to_string(version));
      if (!v.ok()) {
        if (attempt == 0 && follow_latest && version != 0) continue;
        Deliver(p->done, v.status(), {});
        return;
      }
      if (!CheckRequestSize(*(*v)->info(), p->input.size(), p->batch).ok()) {
        Deliver(p->done,
                UnavailableError("model '" + name + "' changed while the request was prepared; "
                                 "retry"),
                {});
        return;
      }
      p->deadline = p->enqueued + (*v)->timeout();
      if ((*v)->Enqueue(p)) return;
    }
    Deliver(p->done, UnavailableError("model '" + name + "' is being unloaded"), {});
  }

  // The top-1 index of each of `batch` rows.
  static std::vector<int64_t> Top1(const std::vector<float>& output, int64_t batch) {
    std::vector<int64_t> top;
    if (batch <= 0 || output.empty()) return top;
    const int64_t width = static_cast<int64_t>(output.size()) / batch;
    for (int64_t b = 0; b < batch; ++b) {
      const auto row = output.begin() + b * width;
      top.push_back(std::max_element(row, row + width) - row);
    }
    return top;
  }

  // Both sides of a shadowed request: compared when the second one finishes.
  struct ShadowPair {
    std::mutex mu;
    int sides = 0;
    bool primary_ok = false, shadow_ok = false;
    std::vector<int64_t> primary, shadow;
  };
  static void Compare(Traffic& traffic, int64_t version, ShadowPair& pair, double seconds) {
    int64_t images = 0, disagreements = 0;
    if (pair.primary_ok && pair.shadow_ok && pair.primary.size() == pair.shadow.size()) {
      images = static_cast<int64_t>(pair.primary.size());
      for (size_t i = 0; i < pair.primary.size(); ++i) {
        disagreements += pair.primary[i] != pair.shadow[i] ? 1 : 0;
      }
    }
    traffic.RecordShadow(version, pair.shadow_ok, seconds, images, disagreements);
  }

  // A request without a version under a routing policy: the arm it picks, a shadow copy when
  // the queues have room (shadow work is dropped first), and for a failing canary the answer
  // of the fallback version, so that a bad canary costs no client a failed request.
  void Route(const std::shared_ptr<Traffic>& traffic, const std::shared_ptr<const ModelInfo>& model,
             std::vector<float> input, int64_t batch, InferCallback done, const std::string& key) {
    const int64_t arm = traffic->Pick(key);
    const int64_t shadow = traffic->Shadow(key);
    std::shared_ptr<ShadowPair> pair;
    if (shadow > 0 && shadow != arm) {
      auto primary = repository_.Find(model->name, arm > 0 ? std::to_string(arm) : "");
      auto mirror = repository_.Find(model->name, std::to_string(shadow));
      if (primary.ok() && mirror.ok() && (*primary)->Pending() * 2 < (*primary)->max_queue() &&
          (*mirror)->Pending() * 2 < (*mirror)->max_queue()) {
        pair = std::make_shared<ShadowPair>();
        const auto start = clock_->Now();
        Submit(model->name, shadow, input, batch,
               [this, traffic, pair, shadow, start, batch](Status s, InferResult r) {
                 const double secs = Seconds(start);
                 std::lock_guard l(pair->mu);
                 pair->shadow_ok = s.ok();
                 if (s.ok()) pair->shadow = Top1(r.output, batch);
                 if (++pair->sides == 2) Compare(*traffic, shadow, *pair, secs);
               },
               /*follow_latest=*/false);
      } else {
        traffic->RecordShadowDropped(shadow);
      }
    }
    const int64_t fallback = arm > 0 ? traffic->Fallback(arm) : 0;
    std::vector<float> kept;
    if (arm > 0 && traffic->KeepsInput(arm)) kept = input;
    const auto start = clock_->Now();
    Submit(model->name, arm, std::move(input), batch,
           [this, traffic, pair, arm, shadow, fallback, start, batch, name = model->name,
            kept = std::move(kept), done = std::move(done)](Status s, InferResult r) mutable {
             if (pair) {
               std::lock_guard l(pair->mu);
               pair->primary_ok = s.ok();
               if (s.ok()) pair->primary = Top1(r.output, batch);
               if (++pair->sides == 2) Compare(*traffic, shadow, *pair, Seconds(start));
             }
             // A canary's server-side failure is answered by the fallback version; a request
             // the model refuses (InvalidArgument) would fail there too.
             if (!s.ok() && arm > 0 && !kept.empty() && s.code() != StatusCode::kInvalidArgument) {
               traffic->RecordPrimary(arm, false, Seconds(start), /*fell_back=*/true);
               Submit(name, fallback, std::move(kept), batch, std::move(done),
                      /*follow_latest=*/true);
               return;
             }
             // An arm that was not READY sent its request on to the highest READY version:
             // the answer stands, and the arm is charged with an error and a fallback.
             if (arm > 0) {
               const bool elsewhere = s.ok() && r.version != arm;
               traffic->RecordPrimary(arm, s.ok() && !elsewhere, Seconds(start), elsewhere);
             }
             Deliver(done, std::move(s), std::move(r));
           },
           /*follow_latest=*/true);
  }

  double Seconds(Clock::time_point start) const {
    return std::chrono::duration<double>(clock_->Now() - start).count();
  }

  Clock* const clock_;  // the batchers' clock (EngineOptions::clock)
  ModelRepository repository_;
};

}  // namespace

Status EngineOptions::Validate() const {
  if (repository.empty()) return InvalidArgumentError("--model-repository is required");
  if (poll_seconds < 1) return InvalidArgumentError("--repository-poll-secs must be >= 1");
  if (default_max_batch_size < 1) return InvalidArgumentError("default max batch size must be >= 1");
  if (max_queue_size < 1) return InvalidArgumentError("--max-queue-size must be >= 1");
  if (request_timeout_ms < 1) return InvalidArgumentError("--request-timeout-ms must be >= 1");
  if (threads < 1) return InvalidArgumentError("--threads must be >= 1");
  if (drift_window_size < 0 || drift_window_size > 10'000'000) {
    return InvalidArgumentError("--drift-window-size must be in [0, 10000000]");
  }
  if (drift_window_seconds < 1) return InvalidArgumentError("--drift-window-seconds must be >= 1");
  return Status::Ok();
}

std::vector<int64_t> BatchedShape(const ModelInfo& model, const std::vector<int64_t>& dims) {
  std::vector<int64_t> s;
  if (model.max_batch_size > 0) s.push_back(-1);
  s.insert(s.end(), dims.begin(), dims.end());
  return s;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? "," : "") + std::to_string(shape[i]);
  return out + "]";
}

Result<int64_t> CheckInputShape(const ModelInfo& model, const std::vector<int64_t>& shape) {
  const auto& dims = model.input_dims;
  if (model.max_batch_size > 0) {
    if (shape.size() != dims.size() + 1 || shape[0] < 1 ||
        !std::equal(dims.begin(), dims.end(), shape.begin() + 1)) {
      return InvalidArgumentError("input '" + model.input_name + "' shape " + ShapeString(shape) +
                                  " does not match the model's " +
                                  ShapeString(BatchedShape(model, dims)));
    }
    if (shape[0] > model.max_batch_size) {
      return InvalidArgumentError("batch " + std::to_string(shape[0]) +
                                  " exceeds the model's max_batch_size " +
                                  std::to_string(model.max_batch_size));
    }
    return shape[0];
  }
  if (shape != dims) {
    return InvalidArgumentError("input '" + model.input_name + "' shape " + ShapeString(shape) +
                                " does not match the model's " + ShapeString(dims));
  }
  return int64_t{1};
}

Result<int64_t> CheckInferInput(const ModelInfo& model, size_t input_count,
                                const std::string& name, const std::string& datatype,
                                const std::vector<int64_t>& shape) {
  if (input_count != 1) {
    return InvalidArgumentError("model '" + model.name + "' expects 1 input, the request has " +
                                std::to_string(input_count));
  }
  if (name != model.input_name) {
    return InvalidArgumentError("unexpected inference input '" + name + "' for model '" +
                                model.name + "' (its input is '" + model.input_name + "')");
  }
  if (datatype != "FP32") {
    return InvalidArgumentError("input '" + model.input_name + "' datatype '" + datatype +
                                "' does not match the model's FP32");
  }
  return CheckInputShape(model, shape);
}

Status CheckInferDataSize(const ModelInfo& model, const std::vector<int64_t>& shape,
                          int64_t batch, size_t got, const std::string& unit,
                          const std::string& where) {
  const size_t elements = static_cast<size_t>(batch * model.input_elements);
  const size_t want = unit == "bytes" ? elements * sizeof(float) : elements;
  if (got == want) return Status::Ok();
  return InvalidArgumentError("input '" + model.input_name + "' has " + std::to_string(got) + " " +
                              unit + " in " + where + " but shape " + ShapeString(shape) +
                              " FP32 needs " + std::to_string(want));
}

Status CheckInferOutput(const ModelInfo& model, const std::string& name) {
  if (name == model.output_name) return Status::Ok();
  return InvalidArgumentError("unexpected inference output '" + name + "' for model '" +
                              model.name + "' (its output is '" + model.output_name + "')");
}

Result<std::vector<float>> ImageToInput(const ModelInfo& model, std::string_view image,
                                        const data::ImageLimits& limits, ImageTimings* timings) {
  std::vector<int64_t> chw = model.input_dims;
  if (model.max_batch_size == 0 && !chw.empty() && chw[0] == 1) chw.erase(chw.begin());
  if (chw.size() != 3 || chw[0] != 3) {
    return InvalidArgumentError("model '" + model.name + "' does not take images (input " +
                                ShapeString(model.input_dims) + ", expected [3,H,W])");
  }
  if (image.empty()) return InvalidArgumentError("empty image");
  const auto t0 = SteadyTime::now();
  KILN_ASSIGN_OR_RETURN(data::RgbImage img, data::DecodeImage(image, limits));
  const auto t1 = SteadyTime::now();
  std::vector<float> tensor(static_cast<size_t>(model.input_elements));
  KILN_RETURN_IF_ERROR(
      data::PreprocessImage(img, chw[1], chw[2], model.normalization, tensor.data()));
  if (timings != nullptr) {
    timings->decode_ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
    timings->preprocess_ms = std::chrono::duration<double, std::milli>(SteadyTime::now() - t1).count();
  }
  return tensor;
}

std::vector<std::string> ClassificationStrings(const ModelInfo& model,
                                               const std::vector<float>& output, int64_t k) {
  const int64_t classes = model.output_elements;
  std::vector<std::string> out;
  if (classes <= 0 || k <= 0) return out;
  k = std::min(k, classes);
  const int64_t rows = static_cast<int64_t>(output.size()) / classes;
  std::vector<int64_t> idx(static_cast<size_t>(classes));
  for (int64_t row = 0; row < rows; ++row) {
    const float* v = output.data() + row * classes;
    for (int64_t c = 0; c < classes; ++c) idx[static_cast<size_t>(c)] = c;
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                      [&](int64_t a, int64_t b) { return v[a] > v[b]; });
    for (int64_t i = 0; i < k; ++i) {
      const int64_t c = idx[static_cast<size_t>(i)];
      std::string e = std::to_string(v[c]) + ":" + std::to_string(c);
      if (c < static_cast<int64_t>(model.labels.size())) {
        e += ":" + model.labels[static_cast<size_t>(c)];
      }
      out.push_back(std::move(e));
    }
  }
  return out;
}

Result<std::unique_ptr<Engine>> Engine::Create(const EngineOptions& options,
                                               metrics::Registry* registry) {
  KILN_RETURN_IF_ERROR(options.Validate());
  auto e = std::make_unique<EngineImpl>(options, registry);
  KILN_RETURN_IF_ERROR(e->Start());
  return std::unique_ptr<Engine>(std::move(e));
}

}  // namespace kiln::serve
