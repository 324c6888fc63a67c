#include "kiln/serve/metrics.h"

#include <algorithm>
#include <charconv>
#include <fstream>
#include <memory>
#include <mutex>
#include <cmath>

namespace kiln::serve::metrics {

namespace {

std::string Escape(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

std::string RenderLabels(const Labels& labels) {
  std::string s;
  for (const auto& [k, v] : labels) s += (s.empty() ? "" : ",") + k + "=\"" + Escape(v) + "\"";
  return s;
}

std::string Number(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (std::isnan(v)) return "NaN";
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

// `labels` plus one more label (le), rendered.
std::string With(const std::string& labels, const std::string& extra) {
  return "{" + labels + (labels.empty() ? "" : ",") + extra + "}";
}

}  // namespace

void Series::Add(double v) {
  std::lock_guard l(mu_);
  value_ += v;
}
void Series::Set(double v) {
  std::lock_guard l(mu_);
  value_ = v;
}
void Series::Observe(double v) {
  std::lock_guard l(mu_);
  size_t i = 0;
  while (bounds_ != nullptr && i < bounds_->size() && v > (*bounds_)[i]) ++i;
  ++buckets_[i];
  sum_ += v;
  ++count_;
}
double Series::value() const {
  std::lock_guard l(mu_);
  return bounds_ != nullptr ? static_cast<double>(count_) : value_;
}

std::vector<double> DefaultLatencyBuckets() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
          0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,     10};
}

Series* Registry::Get(const std::string& name, const std::string& help, const std::string& type,
                      const Labels& labels, const std::vector<double>& bounds) {
  std::lock_guard l(mu_);
  Family& f = families_[name];
  if (f.type.empty()) {
    f.help = help;
    f.type = type;
    f.bounds = bounds;
  }
  auto& s = f.series[RenderLabels(labels)];
  if (!s) {
    s = std::make_unique<Series>();
    if (type == "histogram") {
      s->bounds_ = &f.bounds;
      s->buckets_.assign(f.bounds.size() + 1, 0);
    }
  }
  return s.get();
}

Series* Registry::Counter(const std::string& name, const std::string& help,
                          const Labels& labels) {
  return Get(name, help, "counter", labels, {});
}
Series* Registry::Gauge(const std::string& name, const std::string& help, const Labels& labels) {
  return Get(name, help, "gauge", labels, {});
}
Series* Registry::Histogram(const std::string& name, const std::string& help,
                            const Labels& labels, const std::vector<double>& bounds) {
  return Get(name, help, "histogram", labels, bounds);
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
  if (it != families_.end()) it->second.series.erase(RenderLabels(labels));
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
  std::lock_guard l(mu_);
  std::string out;
  for (const auto& [name, f] : families_) {
    if (f.series.empty()) continue;
    out += "# HELP " + name + " " + f.help + "\n# TYPE " + name + " " + f.type + "\n";
    for (const auto& [labels, s] : f.series) {
      std::lock_guard sl(s->mu_);
      if (f.type != "histogram") {
        out += name + (labels.empty() ? "" : "{" + labels + "}") + " " + Number(s->value_) + "\n";
        continue;
      }
      uint64_t cumulative = 0;
      for (size_t i = 0; i <= f.bounds.size(); ++i) {
        cumulative += s->buckets_[i];
        const std::string le =
            i < f.bounds.size() ? Number(f.bounds[i]) : std::string("+Inf");
        out += name + "_bucket" + With(labels, "le=\"" + le + "\"") + " " +
               std::to_string(cumulative) + "\n";
      }
      const std::string l2 = labels.empty() ? "" : "{" + labels + "}";
      out += name + "_sum" + l2 + " " + Number(s->sum_) + "\n";
      out += name + "_count" + l2 + " " + std::to_string(s->count_) + "\n";
    }
  }
  return out;
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
