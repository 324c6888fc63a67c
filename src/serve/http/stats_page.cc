#include <algorithm>
#include <cmath>

#include "kiln/core/statistics.h"
#include "router.h"

// /stats (the reference project's numbers for the web page) and the request window behind it.

namespace kiln::serve::rest {

void RequestWindow::Add(double latency_s, int64_t images) {
  std::lock_guard l(mu_);
  const auto now = Clock::now();
  samples_.push_back({now, latency_s, images});
  Trim(now);
}

void RequestWindow::Trim(Clock::time_point now) {
  while (!samples_.empty() && now - samples_.front().at > std::chrono::seconds(60)) {
    samples_.pop_front();
  }
  while (samples_.size() > 200000) samples_.pop_front();
}

json RequestWindow::Summary() {
  std::lock_guard l(mu_);
  const auto now = Clock::now();
  Trim(now);
  std::vector<double> lat;
  int64_t images = 0;
  for (const auto& s : samples_) {
    lat.push_back(s.latency_s);
    images += s.images;
  }
  std::sort(lat.begin(), lat.end());
  auto pct = [&](double q) -> json {
    if (lat.empty()) return nullptr;
    return QuantileOfSorted(lat, q) * 1000.0;
  };
  const double span =
      samples_.empty()
          ? 60.0
          : std::max(1.0, std::min(60.0, std::chrono::duration<double>(now - started_).count()));
  return {{"window_seconds", span},
          {"requests_last_minute", lat.size()},
          {"images_per_second", static_cast<double>(images) / span},
          {"latency_ms",
           {{"p50", pct(0.5)}, {"p90", pct(0.9)}, {"p95", pct(0.95)}, {"p99", pct(0.99)}}}};
}

// The page's icon: a kiln (a dome with a glowing door).
namespace {
constexpr std::string_view kFavicon =
    R"(<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32">)"
    R"(<path d="M3 29V17a13 13 0 0 1 26 0v12z" fill="#8a4b2d"/>)"
    R"(<path d="M11 29v-7a5 5 0 0 1 10 0v7z" fill="#f5a623"/></svg>)";

}  // namespace

std::string_view Favicon() { return kFavicon; }

// The drift scores the page shows (null when the model has none).
json Router::DriftSummary(const std::string& model, const std::string& version) {
  auto d = engine_->Drift(model, version);
  if (!d.ok() || !d->reference) return nullptr;
  double z = 0;
  for (double v : d->scores.input_z) z = std::max(z, std::abs(v));
  return {{"predictions", d->scores.samples},
          {"class_psi", d->scores.class_psi},
          {"confidence_psi", d->scores.confidence_psi},
          {"max_abs_input_z", z},
          {"mean_confidence", d->scores.mean_confidence},
          {"reference_mean_confidence", d->reference->mean_confidence}};
}

Response Router::Stats() {
  json out = window_.Summary();
  out["requests_total"] = requests_.load();
  out["errors_total"] = errors_.load();
  out["client_errors_total"] = client_errors_.load();
  auto stats = engine_->Statistics("", "");
  json by_class = json::object();
  json models = json::array();
  uint64_t inferences = 0, executions = 0;
  if (stats.ok()) {
    for (const auto& s : *stats) {
      inferences += s.inference_count;
      executions += s.execution_count;
      auto info = engine_->Find(s.name, s.version);
      for (size_t c = 0; c < s.class_counts.size(); ++c) {
        const std::string label =
            info.ok() ? Label(**info, static_cast<int64_t>(c)) : std::to_string(c);
        by_class[label] = by_class.value(label, uint64_t{0}) + s.class_counts[c];
      }
      auto avg_ms = [](const Duration& d) -> json {
        return d.count ? json(static_cast<double>(d.ns) / static_cast<double>(d.count) / 1e6)
                       : json(nullptr);
      };
      models.push_back(
          {{"name", s.name},
           {"version", s.version},
           {"inference_count", s.inference_count},
           {"execution_count", s.execution_count},
           {"average_batch_size",
            s.execution_count ? static_cast<double>(s.inference_count) /
                                    static_cast<double>(s.execution_count)
                              : 0.0},
           {"queue_ms_avg", avg_ms(s.queue)},
           {"compute_ms_avg", avg_ms(s.compute_infer)},
           {"failures", s.fail.count},
           {"drift", DriftSummary(s.name, s.version)}});
    }
  }
  out["predictions_by_class"] = by_class;
  out["average_batch_size"] =
      executions ? static_cast<double>(inferences) / static_cast<double>(executions) : 0.0;
  out["pending_requests"] = engine_->Pending();
  out["models"] = models;
  return Json(out);
}

}  // namespace kiln::serve::rest
