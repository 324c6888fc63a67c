// One loaded model version's scheduler, as Triton's DynamicBatchScheduler: a bounded queue,
// batch formation (up to max_batch_size, cut early at a preferred size, held at most
// max_queue_delay for more), per-request queue timeouts, and one thread per instance, each
// running batches on its own backend (a backend's Run is never shared). Internal to
// kiln_serve_engine.
//
// Time comes from the Clock seam, the backends are InferenceBackends: with a ManualClock and a
// fake backend a test decides when time passes and what a batch returns, so batch formation,
// delays and timeouts are checked exactly (tests/serve/batcher_test.cc).
//
// Enqueue() never blocks. Callbacks run on an instance thread (or inline, for a full queue) and
// must not block; one that throws is logged and ignored. Stop() stops taking requests,
// finishes the queued ones, then joins the threads: no request in flight is dropped.
// Thread-safe.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "drift_tracker.h"
#include "kiln/backend/inference_backend.h"
#include "kiln/core/clock.h"
#include "kiln/serve/engine/engine.h"
#include "kiln/serve/metrics/metrics.h"

namespace kiln::serve {

struct QueuedRequest {
  std::vector<float> input;
  int64_t batch = 0;
  Clock::time_point enqueued, deadline;
  InferCallback done;
};

// Hands a request its answer; an exception from the callback ends here, reported once.
void Deliver(const InferCallback& done, Status s, InferResult r) noexcept;

// What a version accepts: 1..max_batch_size elements of exactly input_elements floats each (or
// the config's whole shape, batch 1, for models with max_batch_size 0). InvalidArgument.
Status CheckRequestSize(const ModelInfo& m, size_t floats, int64_t batch);

// The version's Prometheus series, resolved once at load (the hot path only increments).
struct MetricHandles {
  metrics::Series *success, *fail_rejected, *fail_canceled, *fail_backend, *inference_count,
      *exec_count, *pending, *request_us, *queue_us, *input_us, *infer_us, *output_us, *load_secs,
      *h_request, *h_queue, *h_compute, *ml_infer, *ml_predictions;
  std::vector<metrics::Series*> by_class;
};
MetricHandles ResolveMetricHandles(const ModelInfo& info, metrics::Registry* registry);

struct BatcherOptions {
  int64_t max_queue = 256;               // requests queued at most
  Clock::duration timeout{};             // a request's longest wait in the queue
  Clock* clock = nullptr;                // null: SteadyClock()
};

class Batcher {
 public:
  // Starts one thread per backend. `drift` may be null (drift tracking off).
  Batcher(std::shared_ptr<const ModelInfo> info,
          std::vector<std::unique_ptr<backend::InferenceBackend>> instances,
          const BatcherOptions& options, MetricHandles handles,
          std::shared_ptr<DriftTracker> drift);
  ~Batcher();
  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;

  const std::shared_ptr<const ModelInfo>& info() const { return info_; }
  DriftTracker* drift() const { return drift_.get(); }
  Clock::duration timeout() const { return timeout_; }
  int64_t max_queue() const { return max_queue_; }

  // False when stopping (`request` is left untouched: the caller resolves the model again);
  // otherwise the request is taken: queued, or failed through its callback (Unavailable) when
  // the queue is full. `request->deadline` must be set.
  bool Enqueue(std::unique_ptr<QueuedRequest>& request);
  // Stops taking requests, finishes the queued ones, joins the instance threads. Idempotent.
  void Stop();
  // Requests queued or running.
  int64_t Pending();
  ModelStats Stats();

 private:
  void RecordFail(Clock::duration d);
  void Loop(size_t instance);
  void Execute(size_t instance, std::vector<std::unique_ptr<QueuedRequest>>& batch, int64_t n,
               std::vector<float>& in, std::vector<float>& out);

  const std::shared_ptr<const ModelInfo> info_;
  const std::vector<std::unique_ptr<backend::InferenceBackend>> backends_;
  const int64_t max_queue_;
  const Clock::duration timeout_;
  Clock* const clock_;
  const MetricHandles m_;
  const std::shared_ptr<DriftTracker> drift_;  // null when drift tracking is off
  bool dynamic_ = false;
  Clock::duration delay_{0};
  std::set<int64_t> preferred_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<QueuedRequest>> queue_;  // guarded by mu_
  int64_t pending_ = 0;     // queued + running requests; guarded by mu_
  bool forming_ = false;    // an instance is forming a batch; guarded by mu_
  bool stopping_ = false;   // guarded by mu_
  std::vector<std::thread> threads_;

  std::mutex stats_mu_;
  ModelStats stats_;                         // guarded by stats_mu_
  std::map<int64_t, BatchStats> batch_stats_;  // guarded by stats_mu_
};

}  // namespace kiln::serve
