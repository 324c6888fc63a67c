#include "batcher.h"

#include <algorithm>
#include <iostream>

namespace kiln::serve {

namespace {

int64_t Ns(Clock::duration d) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
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

}  // namespace

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

Batcher::Batcher(std::shared_ptr<const ModelInfo> info,
                 std::vector<std::unique_ptr<backend::InferenceBackend>> instances,
                 const BatcherOptions& options, MetricHandles handles,
                 std::shared_ptr<DriftTracker> drift)
    : info_(std::move(info)),
      backends_(std::move(instances)),
      max_queue_(options.max_queue),
      timeout_(options.timeout),
      clock_(options.clock != nullptr ? options.clock : SteadyClock()),
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

Batcher::~Batcher() { Stop(); }

bool Batcher::Enqueue(std::unique_ptr<QueuedRequest>& p) {
  std::unique_lock l(mu_);
  if (stopping_) return false;
  if (static_cast<int64_t>(queue_.size()) >= max_queue_) {
    l.unlock();
    m_.fail_rejected->Add(1);
    RecordFail(clock_->Now() - p->enqueued);
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

void Batcher::Stop() {
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

int64_t Batcher::Pending() {
  std::lock_guard l(mu_);
  return pending_;
}

ModelStats Batcher::Stats() {
  std::lock_guard l(stats_mu_);
  ModelStats s = stats_;
  s.name = info_->name;
  s.version = std::to_string(info_->version);
  for (const auto& [size, b] : batch_stats_) s.batch_stats.push_back(b);
  return s;
}

void Batcher::RecordFail(Clock::duration d) {
  std::lock_guard l(stats_mu_);
  ++stats_.fail.count;
  stats_.fail.ns += static_cast<uint64_t>(Ns(d));
}

void Batcher::Loop(size_t instance) {
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
        if (n >= max_batch || preferred_.count(n) > 0 || clock_->Now() >= wake) break;
        clock_->WaitUntil(cv_, l, wake);
      }
    }
    std::vector<std::unique_ptr<QueuedRequest>> batch, expired;
    int64_t n = 0;
    const auto now = clock_->Now();
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

void Batcher::Execute(size_t instance, std::vector<std::unique_ptr<QueuedRequest>>& batch,
                      int64_t n, std::vector<float>& in, std::vector<float>& out) {
  const auto start = clock_->Now();
  size_t at = 0;
  for (const auto& p : batch) {
    std::copy(p->input.begin(), p->input.end(), in.begin() + static_cast<ptrdiff_t>(at));
    at += p->input.size();
  }
  const auto t1 = clock_->Now();
  // Models with max_batch_size 0 run their config shape as is (its first dim is the batch).
  const int64_t run_batch = info_->max_batch_size > 0 ? n : 1;
  Status s = RunGuarded(*backends_[instance], in.data(), run_batch, out.data());
  const auto t2 = clock_->Now();
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
  const auto t3 = clock_->Now();
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
      results[i].version = info_->version;
      Deliver(p->done, Status::Ok(), std::move(results[i]));
    } else {
      m_.fail_backend->Add(1);
      Deliver(p->done, s, {});
    }
  }
  // Drift statistics from the batch's own buffers, after the answers are on their way.
  if (s.ok() && drift_) drift_->Add(out.data(), n, per, in.data());
}

MetricHandles ResolveMetricHandles(const ModelInfo& info, metrics::Registry* registry) {
  const metrics::Labels l = {{"model", info.name}, {"version", std::to_string(info.version)}};
  auto with = [&](const std::string& k, const std::string& v) {
    metrics::Labels x = l;
    x.emplace_back(k, v);
    return x;
  };
  auto& r = *registry;
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

}  // namespace kiln::serve
