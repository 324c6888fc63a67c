#include "kiln/serve/engine.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "kiln/backend/inference_backend.h"
#include "kiln/backend/model_metadata.h"
#include "drift_tracker.h"

namespace kiln::serve {

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

int64_t Ns(Clock::duration d) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
}

std::string ReadFile(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
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

struct QueuedRequest {
  std::vector<float> input;
  int64_t batch = 0;
  Clock::time_point enqueued, deadline;
  InferCallback done;
};

// Hands a request its answer. A callback that throws must not take an instance thread (and
// with it the process) down: the exception ends here, reported once.
void Deliver(const InferCallback& done, Status s, InferResult r) noexcept {
  try {
    done(std::move(s), std::move(r));
  } catch (const std::exception& e) {
    std::cerr << "kiln serve: an inference callback threw (ignored): " << e.what() << std::endl;
  } catch (...) {
    std::cerr << "kiln serve: an inference callback threw (ignored)" << std::endl;
  }
}

// Backends return Status, but a third-party engine may still throw: that fails the batch.
Status RunGuarded(backend::InferenceBackend& b, const float* in, int64_t batch,
                  float* out) noexcept {
  try {
    return b.Run(in, batch, out);
  } catch (const std::exception& e) {
    return InternalError(std::string("the inference backend failed: ") + e.what());
  } catch (...) {
    return InternalError("the inference backend failed with an unknown exception");
  }
}

// What Infer accepts: 1..max_batch_size elements of exactly input_elements floats each (or
// the config's whole shape, batch 1, for models with max_batch_size 0).
Status CheckRequestSize(const ModelInfo& m, size_t floats, int64_t batch) {
  const int64_t max_batch = std::max<int64_t>(1, m.max_batch_size);
  if (batch < 1 || batch > max_batch) {
    return InvalidArgumentError("batch " + std::to_string(batch) + " is outside [1, " +
                                std::to_string(max_batch) + "] for model '" + m.name + "'");
  }
  const auto want = static_cast<size_t>(batch * m.input_elements);
  if (floats != want) {
    return InvalidArgumentError("the request for model '" + m.name + "' holds " +
                                std::to_string(floats) + " values; batch " +
                                std::to_string(batch) + " needs " + std::to_string(want));
  }
  return Status::Ok();
}

struct MetricHandles {
  metrics::Series *success, *fail_rejected, *fail_canceled, *fail_backend, *inference_count,
      *exec_count, *pending, *request_us, *queue_us, *input_us, *infer_us, *output_us, *load_secs,
      *h_request, *h_queue, *h_compute, *ml_infer, *ml_predictions;
  std::vector<metrics::Series*> by_class;
};

// One loaded model version: its queue, the batcher logic and `instances` threads.
class ModelVersion {
 public:
  ModelVersion(std::shared_ptr<const ModelInfo> info,
               std::vector<std::unique_ptr<backend::InferenceBackend>> instances,
               int64_t max_queue, Clock::duration timeout, MetricHandles handles,
               std::shared_ptr<DriftTracker> drift)
      : info_(std::move(info)),
        backends_(std::move(instances)),
        max_queue_(max_queue),
        timeout_(timeout),
        m_(std::move(handles)),
        drift_(std::move(drift)) {
    const auto& c = info_->config;
    dynamic_ = c.has_dynamic_batching() && info_->max_batch_size > 0;
    if (dynamic_) {
      delay_ = std::chrono::microseconds(c.dynamic_batching().max_queue_delay_microseconds());
      for (int p : c.dynamic_batching().preferred_batch_size()) preferred_.insert(p);
    }
    for (size_t i = 0; i < backends_.size(); ++i) {
      threads_.emplace_back([this, i] { Loop(i); });
    }
  }
  ~ModelVersion() { Stop(); }

  const std::shared_ptr<const ModelInfo>& info() const { return info_; }
  DriftTracker* drift() const { return drift_.get(); }

  // False when stopping (the caller resolves the model again); otherwise the request is taken
  // (queued, or failed through its callback when the queue is full).
  bool Enqueue(std::unique_ptr<QueuedRequest>& p) {
    std::unique_lock l(mu_);
    if (stopping_) return false;
    if (static_cast<int64_t>(queue_.size()) >= max_queue_) {
      l.unlock();
      m_.fail_rejected->Add(1);
      RecordFail(Clock::now() - p->enqueued);
      Deliver(p->done, UnavailableError("model '" + info_->name + "' queue is full (" +
                               std::to_string(max_queue_) + " requests): retry later"),
              {});
      return true;
    }
    queue_.push_back(std::move(p));
    ++pending_;
    m_.pending->Set(static_cast<double>(pending_));
    cv_.notify_all();
    return true;
  }

  // Stops taking requests, finishes the queued ones, joins the instance threads.
  void Stop() {
    {
      std::lock_guard l(mu_);
      if (stopping_ && threads_.empty()) return;
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
    std::lock_guard l(mu_);
    threads_.clear();
  }

  int64_t Pending() {
    std::lock_guard l(mu_);
    return pending_;
  }

  ModelStats Stats() {
    std::lock_guard l(stats_mu_);
    ModelStats s = stats_;
    s.name = info_->name;
    s.version = std::to_string(info_->version);
    for (const auto& [size, b] : batch_stats_) s.batch_stats.push_back(b);
    return s;
  }

 private:
  void RecordFail(Clock::duration d) {
    std::lock_guard l(stats_mu_);
    ++stats_.fail.count;
    stats_.fail.ns += static_cast<uint64_t>(Ns(d));
  }

  void Loop(size_t instance) {
    const int64_t max_batch = std::max<int64_t>(1, info_->max_batch_size);
    std::vector<float> in(static_cast<size_t>(max_batch * info_->input_elements));
    std::vector<float> out(static_cast<size_t>(max_batch * info_->output_elements));
    std::unique_lock l(mu_);
    for (;;) {
      cv_.wait(l, [&] { return (!queue_.empty() && !forming_) || (stopping_ && queue_.empty()); });
      if (queue_.empty()) return;
      forming_ = true;
      if (dynamic_) {
        const auto deadline = queue_.front()->enqueued + delay_;
        while (!stopping_) {
          int64_t n = 0;
          for (const auto& p : queue_) {
            if (n + p->batch > max_batch) break;
            n += p->batch;
          }
          // Wake for the batching deadline or, earlier, the oldest request's own timeout.
          const auto wake = std::min(deadline, queue_.front()->deadline);
          if (n >= max_batch || preferred_.count(n) > 0 || Clock::now() >= wake) break;
          cv_.wait_until(l, wake);
        }
      }
      std::vector<std::unique_ptr<QueuedRequest>> batch, expired;
      int64_t n = 0;
      const auto now = Clock::now();
      while (!queue_.empty()) {
        auto& f = queue_.front();
        if (f->deadline < now) {
          expired.push_back(std::move(f));
          queue_.pop_front();
          continue;
        }
        if (n > 0 && n + f->batch > max_batch) break;
        n += f->batch;
        batch.push_back(std::move(f));
        queue_.pop_front();
        if (!dynamic_) break;
      }
      pending_ -= static_cast<int64_t>(expired.size());
      forming_ = false;
      cv_.notify_all();
      l.unlock();
      for (auto& p : expired) {
        m_.fail_canceled->Add(1);
        RecordFail(now - p->enqueued);
        Deliver(p->done, UnavailableError("request timed out after waiting " +
                                 std::to_string(Ns(now - p->enqueued) / 1000000) +
                                 " ms in the queue of model '" + info_->name + "'"),
                {});
      }
      if (!batch.empty()) Execute(instance, batch, n, in, out);
      l.lock();
      pending_ -= static_cast<int64_t>(batch.size());
      m_.pending->Set(static_cast<double>(pending_));
    }
  }

  void Execute(size_t instance, std::vector<std::unique_ptr<QueuedRequest>>& batch, int64_t n,
               std::vector<float>& in, std::vector<float>& out) {
    const auto start = Clock::now();
    size_t at = 0;
    for (const auto& p : batch) {
      std::copy(p->input.begin(), p->input.end(), in.begin() + static_cast<ptrdiff_t>(at));
      at += p->input.size();
    }
    const auto t1 = Clock::now();
    // Models with max_batch_size 0 run their config shape as is (its first dim is the batch).
    const int64_t run_batch = info_->max_batch_size > 0 ? n : 1;
    Status s = RunGuarded(*backends_[instance], in.data(), run_batch, out.data());
    const auto t2 = Clock::now();
    std::vector<InferResult> results(batch.size());
    const int64_t per = info_->output_elements;
    size_t offset = 0;
    if (s.ok()) {
      for (size_t i = 0; i < batch.size(); ++i) {
        const size_t count = static_cast<size_t>(batch[i]->batch * per);
        results[i].output.assign(out.begin() + static_cast<ptrdiff_t>(offset),
                                 out.begin() + static_cast<ptrdiff_t>(offset + count));
        offset += count;
        results[i].batch = batch[i]->batch;
      }
    }
    const auto t3 = Clock::now();
    const int64_t in_ns = Ns(t1 - start), infer_ns = Ns(t2 - t1), out_ns = Ns(t3 - t2);
    {
      std::lock_guard l(stats_mu_);
      if (s.ok()) {
        stats_.inference_count += static_cast<uint64_t>(n);
        ++stats_.execution_count;
        stats_.last_inference_ms = static_cast<uint64_t>(
            std::chrono::duration_cast<std::chrono::milliseconds>(
                std::chrono::system_clock::now().time_since_epoch())
                .count());
        auto& b = batch_stats_[n];
        b.batch_size = n;
        for (Duration* d : {&b.compute_input, &b.compute_infer, &b.compute_output}) ++d->count;
        b.compute_input.ns += static_cast<uint64_t>(in_ns);
        b.compute_infer.ns += static_cast<uint64_t>(infer_ns);
        b.compute_output.ns += static_cast<uint64_t>(out_ns);
      }
      for (const auto& p : batch) {
        const int64_t q = Ns(start - p->enqueued), total = Ns(t3 - p->enqueued);
        if (!s.ok()) {
          ++stats_.fail.count;
          stats_.fail.ns += static_cast<uint64_t>(total);
          continue;
        }
        ++stats_.success.count;
        stats_.success.ns += static_cast<uint64_t>(total);
        ++stats_.queue.count;
        stats_.queue.ns += static_cast<uint64_t>(q);
        for (Duration* d : {&stats_.compute_input, &stats_.compute_infer, &stats_.compute_output})
          ++d->count;
        stats_.compute_input.ns += static_cast<uint64_t>(in_ns);
        stats_.compute_infer.ns += static_cast<uint64_t>(infer_ns);
        stats_.compute_output.ns += static_cast<uint64_t>(out_ns);
      }
    }
    if (s.ok()) {
      m_.inference_count->Add(static_cast<double>(n));
      m_.exec_count->Add(1);
      m_.ml_predictions->Add(static_cast<double>(n));
      m_.ml_infer->Observe(static_cast<double>(infer_ns) * 1e-9);
      m_.h_compute->Observe(static_cast<double>(in_ns + infer_ns + out_ns) * 1e-9);
      // Predictions by class: the arg-max of each output row (every served model classifies).
      const int64_t classes = per;
      for (int64_t r = 0; r < n && classes > 0; ++r) {
        const float* row = out.data() + r * classes;
        const auto best = std::max_element(row, row + classes) - row;
        if (best < static_cast<int64_t>(m_.by_class.size())) m_.by_class[best]->Add(1);
        std::lock_guard l(stats_mu_);
        if (stats_.class_counts.size() < static_cast<size_t>(classes))
          stats_.class_counts.resize(static_cast<size_t>(classes));
        ++stats_.class_counts[static_cast<size_t>(best)];
      }
    }
    for (size_t i = 0; i < batch.size(); ++i) {
      auto& p = batch[i];
      const int64_t q = Ns(start - p->enqueued), total = Ns(t3 - p->enqueued);
      if (s.ok()) {
        m_.success->Add(1);
        m_.request_us->Add(static_cast<double>(total / 1000));
        m_.queue_us->Add(static_cast<double>(q / 1000));
        m_.input_us->Add(static_cast<double>(in_ns / 1000));
        m_.infer_us->Add(static_cast<double>(infer_ns / 1000));
        m_.output_us->Add(static_cast<double>(out_ns / 1000));
        m_.h_request->Observe(static_cast<double>(total) * 1e-9);
        m_.h_queue->Observe(static_cast<double>(q) * 1e-9);
        results[i].queue_ns = q;
        results[i].compute_input_ns = in_ns;
        results[i].compute_infer_ns = infer_ns;
        results[i].compute_output_ns = out_ns;
        results[i].executed_batch = n;
        Deliver(p->done, Status::Ok(), std::move(results[i]));
      } else {
        m_.fail_backend->Add(1);
        Deliver(p->done, s, {});
      }
    }
    // Drift statistics from the batch's own buffers, after the answers are on their way.
    if (s.ok() && drift_) drift_->Add(out.data(), n, per, in.data());
  }

  std::shared_ptr<const ModelInfo> info_;
  std::vector<std::unique_ptr<backend::InferenceBackend>> backends_;
  const int64_t max_queue_;
  const Clock::duration timeout_;
  MetricHandles m_;
  const std::shared_ptr<DriftTracker> drift_;  // null when drift tracking is off
  bool dynamic_ = false;
  Clock::duration delay_{0};
  std::set<int64_t> preferred_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<QueuedRequest>> queue_;
  int64_t pending_ = 0;  // queued + running requests
  bool forming_ = false;
  bool stopping_ = false;
  std::vector<std::thread> threads_;

  std::mutex stats_mu_;
  ModelStats stats_;
  std::map<int64_t, BatchStats> batch_stats_;

 public:
  Clock::duration timeout() const { return timeout_; }
};

struct VersionState {
  std::shared_ptr<ModelVersion> model;  // null when unavailable
  std::string state = "UNAVAILABLE";
  std::string reason;
};

struct ModelEntry {
  std::map<int64_t, VersionState> versions;
  std::string reason;  // model-level failure (bad config, no versions) or "unloaded"
  std::string fingerprint;
  bool loaded = false;
};

class EngineImpl : public Engine {
 public:
  EngineImpl(EngineOptions o, metrics::Registry* r) : options_(std::move(o)), registry_(r) {}
  ~EngineImpl() override { Shutdown(); }

  Status Start() {
    std::error_code ec;
    if (!fs::is_directory(options_.repository, ec)) {
      return NotFoundError("model repository '" + options_.repository + "' is not a folder");
    }
    if (options_.control_mode == ModelControlMode::kExplicit) {
      for (const auto& m : options_.startup_models) {
        if (m == "*") {
          for (const auto& name : ScanNames()) LoadModel(name);
        } else {
          LoadModel(m);
        }
      }
    } else {
      for (const auto& name : ScanNames()) LoadModel(name);
    }
    if (options_.control_mode == ModelControlMode::kPoll) {
      poller_ = std::thread([this] { Poll(); });
    }
    return Status::Ok();
  }

  Result<std::shared_ptr<const ModelInfo>> Find(const std::string& name,
                                                const std::string& version) override {
    auto v = FindVersion(name, version);
    if (!v.ok()) return v.status();
    return (*v)->info();
  }

  std::vector<std::shared_ptr<const ModelInfo>> ReadyModels() override {
    std::lock_guard l(mu_);
    std::vector<std::shared_ptr<const ModelInfo>> out;
    for (const auto& [name, e] : models_) {
      for (const auto& [v, s] : e.versions) {
        if (s.model) out.push_back(s.model->info());
      }
    }
    return out;
  }

  void Infer(const std::shared_ptr<const ModelInfo>& model, std::vector<float> input,
             int64_t batch, InferCallback done, bool follow_latest) override {
    // The engine trusts no caller: the batch buffer is sized for max_batch_size elements.
    if (Status bad = CheckRequestSize(*model, input.size(), batch); !bad.ok()) {
      Deliver(done, bad, {});
      return;
    }
    auto p = std::make_unique<QueuedRequest>();
    p->input = std::move(input);
    p->batch = batch;
    p->enqueued = Clock::now();
    p->done = std::move(done);
    // A version being replaced refuses new work; resolve again and go to its successor.
    for (int attempt = 0; attempt < 3; ++attempt) {
      const bool latest = attempt > 0 && follow_latest;
      auto v = FindVersion(model->name, latest ? "" : std::to_string(model->version));
      if (!v.ok()) {
        if (attempt == 0 && follow_latest) continue;
        Deliver(p->done, v.status(), {});
        return;
      }
      if (!CheckRequestSize(*(*v)->info(), p->input.size(), p->batch).ok()) {
        Deliver(p->done, UnavailableError("model '" + model->name + "' changed while the request was "
                                 "prepared; retry"),
                {});
        return;
      }
      p->deadline = p->enqueued + (*v)->timeout();
      if ((*v)->Enqueue(p)) return;
    }
    Deliver(p->done, UnavailableError("model '" + model->name + "' is being unloaded"), {});
  }

  std::vector<ModelIndexEntry> Index() override {
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

  Status Load(const std::string& name) override {
    if (options_.control_mode != ModelControlMode::kExplicit) {
      return InvalidArgumentError("explicit model load / unload is not allowed unless the server "
                                  "runs with --model-control-mode explicit");
    }
    std::error_code ec;
    if (name.empty() || name.find('/') != std::string::npos || name == "." || name == ".." ||
        !fs::is_directory(fs::path(options_.repository) / name, ec)) {
      return NotFoundError("no model '" + name + "' in the repository");
    }
    LoadModel(name);
    std::lock_guard l(mu_);
    const auto& e = models_[name];
    for (const auto& [v, s] : e.versions) {
      if (s.model) return Status::Ok();
    }
    std::string reason = e.reason;
    for (const auto& [v, s] : e.versions) reason += (reason.empty() ? "" : "; ") + s.reason;
    return InvalidArgumentError("failed to load '" + name + "': " + reason);
  }

  Status Unload(const std::string& name) override {
    if (options_.control_mode != ModelControlMode::kExplicit) {
      return InvalidArgumentError("explicit model load / unload is not allowed unless the server "
                                  "runs with --model-control-mode explicit");
    }
    UnloadModel(name, "unloaded");
    return Status::Ok();
  }

  Result<std::vector<ModelStats>> Statistics(const std::string& name,
                                             const std::string& version) override {
    std::vector<std::shared_ptr<ModelVersion>> versions;
    if (!name.empty()) {
      if (!version.empty()) {
        KILN_ASSIGN_OR_RETURN(auto v, FindVersion(name, version));
        versions.push_back(v);
      } else {
        std::lock_guard l(mu_);
        auto it = models_.find(name);
        if (it == models_.end()) return NotFoundError("unknown model '" + name + "'");
        for (const auto& [n, s] : it->second.versions) {
          if (s.model) versions.push_back(s.model);
        }
        if (versions.empty()) return UnavailableError("model '" + name + "' is not ready");
      }
    } else {
      std::lock_guard l(mu_);
      for (const auto& [n, e] : models_) {
        for (const auto& [v, s] : e.versions) {
          if (s.model) versions.push_back(s.model);
        }
      }
    }
    std::vector<ModelStats> out;
    for (const auto& v : versions) out.push_back(v->Stats());
    return out;
  }

  Result<DriftReport> Drift(const std::string& name, const std::string& version) override {
    KILN_ASSIGN_OR_RETURN(auto v, FindVersion(name, version));
    if (v->drift() == nullptr) {
      return UnavailableError("drift tracking is off (kiln serve --drift-window-size 0)");
    }
    return v->drift()->Report();
  }

  int64_t Pending() override {
    std::lock_guard l(mu_);
    int64_t n = 0;
    for (const auto& [name, e] : models_) {
      for (const auto& [v, s] : e.versions) {
        if (s.model) n += s.model->Pending();
      }
    }
    return n;
  }

  void Shutdown() override {
    {
      std::lock_guard l(mu_);
      if (shut_down_) return;
      shut_down_ = true;
    }
    poll_cv_.notify_all();
    if (poller_.joinable()) poller_.join();
    std::vector<std::shared_ptr<ModelVersion>> all;
    {
      std::lock_guard l(mu_);
      for (auto& [name, e] : models_) {
        for (auto& [v, s] : e.versions) {
          if (s.model) all.push_back(s.model);
        }
      }
    }
    for (auto& m : all) m->Stop();
  }

 private:
  std::vector<std::string> ScanNames() const {
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

  Result<std::shared_ptr<ModelVersion>> FindVersion(const std::string& name,
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

  MetricHandles Handles(const ModelInfo& info) {
    const metrics::Labels l = {{"model", info.name}, {"version", std::to_string(info.version)}};
    auto with = [&](const std::string& k, const std::string& v) {
      metrics::Labels x = l;
      x.emplace_back(k, v);
      return x;
    };
    auto& r = *registry_;
    MetricHandles h{};
    h.success = r.Counter("nv_inference_request_success",
                          "Number of successful inference requests, all batch sizes", l);
    const char* fail_help = "Number of failed inference requests, all batch sizes";
    h.fail_rejected = r.Counter("nv_inference_request_failure", fail_help, with("reason", "REJECTED"));
    h.fail_canceled = r.Counter("nv_inference_request_failure", fail_help, with("reason", "CANCELED"));
    h.fail_backend = r.Counter("nv_inference_request_failure", fail_help, with("reason", "BACKEND"));
    h.inference_count = r.Counter("nv_inference_count",
                                  "Number of inferences performed (batch elements)", l);
    h.exec_count = r.Counter("nv_inference_exec_count",
                             "Number of model executions performed (batches)", l);
    h.pending = r.Gauge("nv_inference_pending_request_count",
                        "Instantaneous number of pending requests awaiting execution", l);
    h.request_us = r.Counter("nv_inference_request_duration_us",
                             "Cumulative inference request duration in microseconds", l);
    h.queue_us = r.Counter("nv_inference_queue_duration_us",
                           "Cumulative inference queuing duration in microseconds", l);
    h.input_us = r.Counter("nv_inference_compute_input_duration_us",
                           "Cumulative compute input duration in microseconds", l);
    h.infer_us = r.Counter("nv_inference_compute_infer_duration_us",
                           "Cumulative compute inference duration in microseconds", l);
    h.output_us = r.Counter("nv_inference_compute_output_duration_us",
                            "Cumulative inference compute output duration in microseconds", l);
    h.load_secs = r.Gauge("nv_model_load_duration_secs", "Model load time in seconds", l);
    const auto b = metrics::DefaultLatencyBuckets();
    h.h_request = r.Histogram("kiln_inference_request_duration_seconds",
                              "Inference request time in the engine (queue + compute)", l, b);
    h.h_queue = r.Histogram("kiln_inference_queue_duration_seconds",
                            "Time requests wait in the dynamic batcher's queue", l, b);
    h.h_compute = r.Histogram("kiln_inference_compute_duration_seconds",
                              "Time per model execution (input + infer + output)", l, b);
    h.ml_infer = r.Histogram("ml_inference_duration_seconds",
                             "Model inference time per batch", l, b);
    h.ml_predictions = r.Counter("ml_predictions_total", "Images classified", l);
    for (size_t c = 0; c < static_cast<size_t>(info.output_elements); ++c) {
      const std::string label = c < info.labels.size() ? info.labels[c] : std::to_string(c);
      h.by_class.push_back(r.Counter("ml_predictions_by_class_total",
                                     "Images classified, by predicted (top-1) class",
                                     with("class", label)));
    }
    return h;
  }

  // The version's drift window (null when tracking is off). Input statistics need a CHW input
  // whose channel count matches the reference's.
  std::shared_ptr<DriftTracker> MakeDriftTracker(const ModelInfo& info) {
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
  void PublishReady(const std::string& name, const ModelEntry& old, const ModelEntry& entry) {
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

  // Loads one version folder into a ready ModelVersion.
  Result<std::shared_ptr<ModelVersion>> LoadVersion(const std::string& name, int64_t version,
                                                    const inference::ModelConfig& base,
                                                    const std::vector<std::string>& warnings) {
    const auto start = Clock::now();
    const fs::path model_dir = fs::path(options_.repository) / name;
    const fs::path vdir = model_dir / std::to_string(version);
    inference::ModelConfig config = base;
    std::string platform = config.platform();
    if (platform.empty()) {
      if (config.backend() == "onnxruntime") platform = kOnnxPlatform;
      if (config.backend() == "pytorch") platform = kTorchPlatform;
    }
    std::error_code ec;
    if (platform.empty()) {
      if (fs::exists(vdir / "model.onnx", ec)) platform = kOnnxPlatform;
      else if (fs::exists(vdir / "model.pt", ec)) platform = kTorchPlatform;
      else
        return NotFoundError("version " + std::to_string(version) +
                             ": no model.onnx or model.pt, and the config names no platform");
    }
    if (platform != kOnnxPlatform && platform != kTorchPlatform) {
      return UnimplementedError("platform '" + platform + "' is not served by Kiln (" +
                                kOnnxPlatform + ", " + kTorchPlatform + ")");
    }
    config.set_platform(platform);
    if (config.name().empty()) config.set_name(name);
    if (config.name() != name) {
      return InvalidArgumentError("config name '" + config.name() + "' differs from the folder '" +
                                  name + "'");
    }
    const bool onnx = platform == kOnnxPlatform;
    const std::string file = config.default_model_filename().empty()
                                 ? (onnx ? "model.onnx" : "model.pt")
                                 : config.default_model_filename();
    const fs::path model_path = vdir / file;
    if (!fs::exists(model_path, ec)) {
      return NotFoundError("version " + std::to_string(version) + ": no " + file);
    }
    if (!onnx) {
      // The classic libtorch failure: a torch.save() pickle instead of a TorchScript archive.
      const std::string head = ReadFile(model_path).substr(0, 4);
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
    for (const char* key : {"intra_op_thread_count", "INTRA_OP_THREAD_COUNT"}) {
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
    std::vector<std::unique_ptr<backend::InferenceBackend>> backends;
    for (int i = 0; i < instances; ++i) {
      auto b = backend::CreateBackend(onnx ? "onnxruntime" : "libtorch", bo);
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
    auto handles = Handles(*info);
    handles.load_secs->Set(std::chrono::duration<double>(Clock::now() - start).count());
    registry_
        ->Gauge("kiln_queue_capacity", "Requests the model version's queue holds at most",
                {{"model", info->name}, {"version", std::to_string(info->version)}})
        ->Set(static_cast<double>(max_queue));
    return std::make_shared<ModelVersion>(info, std::move(backends), max_queue, timeout,
                                          std::move(handles), MakeDriftTracker(*info));
  }

  // (Re)loads a model: reads its config and versions, loads them all, then swaps them in.
  void LoadModel(const std::string& name) {
    std::lock_guard load_lock(load_mu_);  // one load at a time
    const fs::path dir = fs::path(options_.repository) / name;
    ModelEntry entry;
    entry.loaded = true;
    entry.fingerprint = Fingerprint(dir);
    inference::ModelConfig config;
    std::vector<std::string> warnings;
    std::error_code ec;
    Status failure;
    if (fs::exists(dir / "config.pbtxt", ec)) {
      auto c = ParseModelConfig(ReadFile(dir / "config.pbtxt"), &warnings);
      if (c.ok()) {
        config = std::move(c).value();
      } else {
        failure = c.status();
      }
    }
    for (const auto& w : warnings) std::cerr << "kiln serve: model '" << name << "': " << w << "\n";
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
    ModelEntry old;
    {
      std::lock_guard l(mu_);
      auto& slot = models_[name];
      old = std::move(slot);
      // As Triton does on a failed reload: when nothing of the new state loads, the versions
      // that were serving go on serving (and the failed ones say why they are UNAVAILABLE).
      const bool any_ready = std::any_of(entry.versions.begin(), entry.versions.end(),
                                         [](const auto& v) { return v.second.model != nullptr; });
      if (!any_ready) {
        for (auto& [v, state] : old.versions) {
          if (!state.model) continue;  // (a version whose own reload failed is kept too)
          std::cerr << "kiln serve: model '" << name << "' version " << v
                    << " keeps serving: the new state of the model failed to load\n";
          entry.versions[v] = std::move(state);
        }
      }
      slot = std::move(entry);
      PublishReady(name, old, slot);
    }
    Retire(old);
  }

  void UnloadModel(const std::string& name, const std::string& reason) {
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

  // Old versions finish their queued requests (new ones go to the successor), then stop.
  static void Retire(ModelEntry& old) {
    for (auto& [v, s] : old.versions) {
      if (s.model) s.model->Stop();
    }
  }

  void Poll() {
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
      for (const auto& n : load) LoadModel(n);
      for (const auto& n : unload) UnloadModel(n, "removed from the repository");
      l.lock();
    }
  }

  EngineOptions options_;
  metrics::Registry* registry_;
  std::mutex load_mu_;
  std::mutex mu_;
  std::map<std::string, ModelEntry> models_;
  bool shut_down_ = false;
  std::condition_variable poll_cv_;
  std::thread poller_;
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
  const auto t0 = Clock::now();
  KILN_ASSIGN_OR_RETURN(data::RgbImage img, data::DecodeImage(image, limits));
  const auto t1 = Clock::now();
  std::vector<float> tensor(static_cast<size_t>(model.input_elements));
  KILN_RETURN_IF_ERROR(
      data::PreprocessImage(img, chw[1], chw[2], model.normalization, tensor.data()));
  if (timings != nullptr) {
    timings->decode_ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
    timings->preprocess_ms = std::chrono::duration<double, std::milli>(Clock::now() - t1).count();
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
