// Kiln's metrics registry on prometheus-cpp (core): counters, gauges and histograms with
// labels, their values kept by prometheus-cpp's metric types and rendered by its text
// serializer (exposition format 0.0.4).
//
//   Registry r;
//   Series* ok = r.Counter("nv_inference_request_success", "Successful requests",
//                          {{"model", "m"}, {"version", "1"}});
//   ok->Add(1);                                   // hot path: one atomic add, no lookup
//   Series* h = r.Histogram("kiln_queue_duration_seconds", "...", {...}, DefaultLatencyBuckets());
//   h->Observe(0.003);
//   r.RemoveMatching({{"model", "m"}, {"version", "1"}});   // the version was unloaded
//   std::string text = r.Render();
//
// Handles (Series*) stay valid for the registry's lifetime, even after their series is removed
// (a removed series is no longer exported; writes to it are harmless): resolve them once (at
// model load) and only increment on the hot path. Thread-safe.
#pragma once

#include <prometheus/client_metric.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/metric_family.h>

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
  ~Series();
  void Add(double v);      // counters (v >= 0) and gauges
  void Set(double v);      // gauges
  void Observe(double v);  // histograms
  double value() const;    // counter/gauge value, or the histogram's count

 private:
  friend class Registry;
  Series() = default;
  prometheus::ClientMetric Collect() const;
  std::unique_ptr<prometheus::Counter> counter_;
  std::unique_ptr<prometheus::Gauge> gauge_;
  std::unique_ptr<prometheus::Histogram> histogram_;
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
  // Stops exporting one series (its handle stays valid).
  void Remove(const std::string& name, const Labels& labels);
  // Stops exporting every series whose labels include all of `subset` (a model version's
  // series when it is unloaded).
  void RemoveMatching(const Labels& subset);
  std::string Render() const;

 private:
  struct Entry {
    Labels labels;
    std::shared_ptr<Series> series;
  };
  struct Family {
    std::string help;
    prometheus::MetricType type = prometheus::MetricType::Untyped;
    std::vector<double> bounds;
    std::map<std::string, Entry> series;  // by rendered label set
  };
  Series* Get(const std::string& name, const std::string& help, prometheus::MetricType type,
              const Labels& labels, const std::vector<double>& bounds);
  mutable std::mutex mu_;
  std::map<std::string, Family> families_;
  std::vector<std::shared_ptr<Series>> removed_;  // kept alive: handles may still point here
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
