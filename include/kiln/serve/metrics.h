// A small Prometheus registry: counters, gauges and histograms with labels, rendered in the
// Prometheus text exposition format (version 0.0.4).
//
//   Registry r;
//   Series* ok = r.Counter("nv_inference_request_success", "Successful requests",
//                          {{"model", "m"}, {"version", "1"}});
//   ok->Add(1);                                   // hot path: no lookup, one short lock
//   Series* h = r.Histogram("kiln_queue_duration_seconds", "...", {...}, DefaultLatencyBuckets());
//   h->Observe(0.003);
//   std::string text = r.Render();
//
// Handles (Series*) stay valid for the registry's lifetime: resolve them once (at model load) and
// only increment on the hot path. Thread-safe.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace kiln::serve::metrics {

using Labels = std::vector<std::pair<std::string, std::string>>;

class Series {
 public:
  void Add(double v);           // counters and gauges
  void Set(double v);           // gauges
  void Observe(double v);       // histograms
  double value() const;         // counter/gauge value, or the histogram's count

 private:
  friend class Registry;
  mutable std::mutex mu_;
  double value_ = 0;
  const std::vector<double>* bounds_ = nullptr;
  std::vector<uint64_t> buckets_;  // non-cumulative counts per bound, plus +Inf
  double sum_ = 0;
  uint64_t count_ = 0;
};

std::vector<double> DefaultLatencyBuckets();  // seconds, 100 us .. 10 s

class Registry {
 public:
  Series* Counter(const std::string& name, const std::string& help, const Labels& labels);
  Series* Gauge(const std::string& name, const std::string& help, const Labels& labels);
  Series* Histogram(const std::string& name, const std::string& help, const Labels& labels,
                    const std::vector<double>& bounds);
  // A function called at render time to refresh gauges (CPU, memory).
  void OnRender(std::function<void()> hook);
  // The same while `owner` lives; dropped once it has gone (per model version hooks).
  void OnRender(std::weak_ptr<void> owner, std::function<void()> hook);
  // Drops one series. Only for series nobody keeps a handle of (looked up on every change).
  void Remove(const std::string& name, const Labels& labels);
  std::string Render() const;

 private:
  struct Family {
    std::string help;
    std::string type;
    std::vector<double> bounds;
    std::map<std::string, std::unique_ptr<Series>> series;  // by rendered label set
  };
  Series* Get(const std::string& name, const std::string& help, const std::string& type,
              const Labels& labels, const std::vector<double>& bounds);
  mutable std::mutex mu_;
  std::map<std::string, Family> families_;
  struct Hook {
    std::function<void()> run;
    std::weak_ptr<void> owner;
    bool owned = false;
  };
  mutable std::vector<Hook> hooks_;  // Render() drops those whose owner has gone
};

// Triton's CPU and memory gauges (nv_cpu_utilization, nv_cpu_memory_total_bytes,
// nv_cpu_memory_used_bytes), read from /proc at each Render.
void AddSystemGauges(Registry* r);

}  // namespace kiln::serve::metrics
