#include "kiln/serve/metrics/metrics.h"

#include <prometheus/text_serializer.h>

#include <algorithm>
#include <fstream>
#include <memory>
#include <mutex>

namespace kiln::serve::metrics {

namespace {

// The key of a label set in its family (and the order series are rendered in).
std::string Key(const Labels& labels) {
  std::string s;
  for (const auto& [k, v] : labels) s += k + '\x1f' + v + '\x1e';
  return s;
}

bool Contains(const Labels& labels, const Labels& subset) {
  return std::all_of(subset.begin(), subset.end(), [&](const auto& want) {
    return std::find(labels.begin(), labels.end(), want) != labels.end();
  });
}

}  // namespace

Series::~Series() = default;

void Series::Add(double v) {
  if (counter_) {
    counter_->Increment(v);
  } else if (gauge_) {
    gauge_->Increment(v);
  }
}
void Series::Set(double v) {
  if (gauge_) gauge_->Set(v);
}
void Series::Observe(double v) {
  if (histogram_) histogram_->Observe(v);
}
double Series::value() const {
  if (counter_) return counter_->Value();
  if (gauge_) return gauge_->Value();
  if (histogram_) return static_cast<double>(histogram_->Collect().histogram.sample_count);
  return 0;
}
prometheus::ClientMetric Series::Collect() const {
  if (counter_) return counter_->Collect();
  if (gauge_) return gauge_->Collect();
  return histogram_->Collect();
}

std::vector<double> DefaultLatencyBuckets() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
          0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,     10};
}

Series* Registry::Get(const std::string& name, const std::string& help,
                      prometheus::MetricType type, const Labels& labels,
                      const std::vector<double>& bounds) {
  std::lock_guard l(mu_);
  Family& f = families_[name];
  if (f.series.empty() && f.help.empty()) {
    f.help = help;
    f.type = type;
    f.bounds = bounds;
  }
  Entry& e = f.series[Key(labels)];
  if (!e.series) {
    e.labels = labels;
    e.series.reset(new Series());
    switch (f.type) {
      case prometheus::MetricType::Counter:
        e.series->counter_ = std::make_unique<prometheus::Counter>();
        break;
      case prometheus::MetricType::Histogram:
        e.series->histogram_ = std::make_unique<prometheus::Histogram>(f.bounds);
        break;
      default:
        e.series->gauge_ = std::make_unique<prometheus::Gauge>();
        break;
    }
  }
  return e.series.get();
}

Series* Registry::Counter(const std::string& name, const std::string& help,
                          const Labels& labels) {
  return Get(name, help, prometheus::MetricType::Counter, labels, {});
}
Series* Registry::Gauge(const std::string& name, const std::string& help, const Labels& labels) {
  return Get(name, help, prometheus::MetricType::Gauge, labels, {});
}
Series* Registry::Histogram(const std::string& name, const std::string& help,
                            const Labels& labels, const std::vector<double>& bounds) {
  return Get(name, help, prometheus::MetricType::Histogram, labels, bounds);
}

void Registry::OnRender(std::function<void()> hook) {
  std::lock_guard l(mu_);
  hooks_.push_back({std::move(hook), {}, false});
}

void Registry::OnRender(std::weak_ptr<void> owner, std::function<void()> hook) {
  std::lock_guard l(mu_);
  hooks_.push_back({std::move(hook), std::move(owner), true});
}

void Registry::Remove(const std::string& name, const Labels& labels) {
  std::lock_guard l(mu_);
  auto it = families_.find(name);
  if (it == families_.end()) return;
  auto s = it->second.series.find(Key(labels));
  if (s == it->second.series.end()) return;
  removed_.push_back(std::move(s->second.series));
  it->second.series.erase(s);
}

void Registry::RemoveMatching(const Labels& subset) {
  std::lock_guard l(mu_);
  for (auto& [name, f] : families_) {
    for (auto it = f.series.begin(); it != f.series.end();) {
      if (Contains(it->second.labels, subset)) {
        removed_.push_back(std::move(it->second.series));
        it = f.series.erase(it);
      } else {
        ++it;
      }
    }
  }
}

std::string Registry::Render() const {
  std::vector<Hook> hooks;
  {
    std::lock_guard l(mu_);
    hooks_.erase(std::remove_if(hooks_.begin(), hooks_.end(),
                                [](const Hook& h) { return h.owned && h.owner.expired(); }),
                 hooks_.end());
    hooks = hooks_;
  }
  for (auto& h : hooks) {
    if (!h.owned) {
      h.run();
    } else if (auto alive = h.owner.lock()) {
      h.run();
    }
  }
  std::vector<prometheus::MetricFamily> out;
  {
    std::lock_guard l(mu_);
    for (const auto& [name, f] : families_) {
      if (f.series.empty()) continue;
      prometheus::MetricFamily mf;
      mf.name = name;
      mf.help = f.help;
      mf.type = f.type;
      for (const auto& [key, e] : f.series) {
        prometheus::ClientMetric m = e.series->Collect();
        for (const auto& [k, v] : e.labels) m.label.push_back({k, v});
        mf.metric.push_back(std::move(m));
      }
      out.push_back(std::move(mf));
    }
  }
  return prometheus::TextSerializer().Serialize(out);
}

// CPU and memory gauges of Triton's family, read from /proc at scrape time.
void AddSystemGauges(Registry* r) {
  auto* cpu = r->Gauge("nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0]", {});
  auto* total = r->Gauge("nv_cpu_memory_total_bytes", "CPU total memory (RAM), in bytes", {});
  auto* used = r->Gauge("nv_cpu_memory_used_bytes", "CPU used memory (RAM), in bytes", {});
  auto last = std::make_shared<std::pair<uint64_t, uint64_t>>(0, 0);  // busy, total jiffies
  auto mu = std::make_shared<std::mutex>();
  r->OnRender([cpu, total, used, last, mu] {
    std::ifstream stat("/proc/stat");
    std::string tag;
    uint64_t v[8] = {};
    stat >> tag;
    for (auto& x : v) stat >> x;
    const uint64_t idle = v[3] + v[4];
    uint64_t all = 0;
    for (auto x : v) all += x;
    {
      std::lock_guard l(*mu);
      if (all > last->second) {
        const double d_all = static_cast<double>(all - last->second);
        const double d_busy = static_cast<double>((all - idle) - last->first);
        cpu->Set(std::clamp(d_busy / d_all, 0.0, 1.0));
      }
      *last = {all - idle, all};
    }
    std::ifstream mem("/proc/meminfo");
    std::string key, unit;
    uint64_t value = 0, mem_total = 0, mem_avail = 0;
    while (mem >> key >> value >> unit) {
      if (key == "MemTotal:") mem_total = value * 1024;
      if (key == "MemAvailable:") mem_avail = value * 1024;
    }
    total->Set(static_cast<double>(mem_total));
    used->Set(static_cast<double>(mem_total - std::min(mem_total, mem_avail)));
  });
}

}  // namespace kiln::serve::metrics
