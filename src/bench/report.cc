// REPORT.md and the PNG plots, computed from report.json alone.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <sstream>

#include "kiln/bench/bench.h"
#include "kiln/core/file.h"

namespace kiln::bench {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string Fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

// One measured configuration: a variant (or peer) on an engine.
struct Series {
  std::string label;  // "int8-static / onnxruntime"
  std::string variant;
  std::string engine;
  std::map<int64_t, json> by_batch;  // at the reference thread count
};

// Results at thread count `threads` ("default" rows for ONNX Runtime's defaults), grouped.
std::vector<Series> Group(const json& results, const json& threads) {
  std::vector<Series> out;
  for (const json& r : results) {
    const bool defaults = r["threads"].is_string();
    if (!defaults && r["threads"] != threads) continue;
    const std::string label = r["variant"].get<std::string>() + " / " + r["engine"].get<std::string>();
    auto it = std::find_if(out.begin(), out.end(), [&](const Series& s) { return s.label == label; });
    if (it == out.end()) {
      out.push_back({label, r["variant"], r["engine"], {}});
      it = out.end() - 1;
    }
    it->by_batch[r["batch"].get<int64_t>()] = r;
  }
  return out;
}

const json* Best(const Series& s) {
  const json* best = nullptr;
  for (const auto& [b, r] : s.by_batch) {
    if (!best || r["images_per_second"].get<double>() > (*best)["images_per_second"].get<double>()) best = &r;
  }
  return best;
}

// ---- plots -------------------------------------------------------------------------------
const cv::Scalar kInk(40, 40, 40), kGrid(225, 225, 225);
const cv::Scalar kPalette[] = {{200, 100, 30}, {30, 120, 230}, {40, 160, 40},  {160, 40, 160},
                               {20, 20, 200},  {0, 160, 200},  {120, 120, 0}, {90, 90, 90},
                               {200, 0, 120},  {0, 90, 160},   {100, 60, 200}, {60, 140, 100}};

struct Axes {
  cv::Rect plot;
  double x0, x1, y0, y1;
  bool log_x;
  int X(double v) const {
    const double t = log_x ? (std::log2(v) - std::log2(x0)) / (std::log2(x1) - std::log2(x0))
                           : (v - x0) / (x1 - x0);
    return plot.x + static_cast<int>(t * plot.width);
  }
  int Y(double v) const {
    return plot.y + plot.height - static_cast<int>((v - y0) / (y1 - y0) * plot.height);
  }
};

Axes DrawAxes(cv::Mat& img, const std::string& title, const std::string& xlabel,
              const std::string& ylabel, double x0, double x1, double y0, double y1, bool log_x,
              const std::vector<double>& xticks) {
  Axes a{{80, 56, img.cols - 380, img.rows - 106}, x0, x1, y0, y1, log_x};
  const auto font = cv::FONT_HERSHEY_SIMPLEX;
  cv::putText(img, title, {10, 24}, font, 0.6, kInk, 1, cv::LINE_AA);
  // Enough decimals that neighbouring ticks differ (an accuracy axis spans e.g. 0.902-0.911).
  const double step = (y1 - y0) / 5;
  const int decimals =
      std::fabs(y1) >= 100 ? 0 : std::clamp(static_cast<int>(std::ceil(-std::log10(step))), 2, 6);
  for (int k = 0; k <= 5; ++k) {
    const double v = y0 + step * k;
    const int y = a.Y(v);
    cv::line(img, {a.plot.x, y}, {a.plot.x + a.plot.width, y}, kGrid, 1);
    cv::putText(img, Fmt(("%." + std::to_string(decimals) + "f").c_str(), v), {5, y + 4}, font, 0.4,
                kInk, 1, cv::LINE_AA);
  }
  for (double t : xticks) {
    const int x = a.X(t);
    cv::line(img, {x, a.plot.y}, {x, a.plot.y + a.plot.height}, kGrid, 1);
    cv::putText(img, Fmt(t >= 100 ? "%.0f" : "%g", t), {x - 10, a.plot.y + a.plot.height + 18}, font,
                0.4, kInk, 1, cv::LINE_AA);
  }
  cv::rectangle(img, a.plot, kInk, 1);
  cv::putText(img, xlabel, {a.plot.x + a.plot.width / 2 - 60, img.rows - 20}, font, 0.5, kInk, 1,
              cv::LINE_AA);
  cv::putText(img, ylabel, {a.plot.x, a.plot.y - 8}, font, 0.45, kInk, 1, cv::LINE_AA);
  return a;
}

void Legend(cv::Mat& img, const Axes& a, int i, const std::string& label) {
  const int x = a.plot.x + a.plot.width + 15;
  const int y = a.plot.y + 14 + 20 * i;
  cv::line(img, {x, y - 4}, {x + 20, y - 4}, kPalette[i % 12], 3);
  cv::putText(img, label, {x + 26, y}, cv::FONT_HERSHEY_SIMPLEX, 0.42, kInk, 1, cv::LINE_AA);
}

Status Save(const cv::Mat& img, const fs::path& file) {
  std::vector<uchar> png;
  try {
    if (!cv::imencode(".png", img, png)) return InternalError("cannot encode " + file.string());
  } catch (const cv::Exception& e) {
    return InternalError("cannot encode " + file.string() + ": " + e.what());
  }
  return WriteFileAtomic(file, {reinterpret_cast<const char*>(png.data()), png.size()});
}

Status PlotThroughput(const std::vector<Series>& series, const fs::path& file, const std::string& threads) {
  double ymax = 1, xmin = 1e9, xmax = 1;
  for (const Series& s : series) {
    for (const auto& [b, r] : s.by_batch) {
      ymax = std::max(ymax, r["images_per_second"].get<double>());
      xmin = std::min(xmin, static_cast<double>(b));
      xmax = std::max(xmax, static_cast<double>(b));
    }
  }
  if (xmax <= xmin) xmax = xmin * 2;
  std::vector<double> ticks;
  for (double t = xmin; t <= xmax; t *= 2) ticks.push_back(t);
  cv::Mat img(520, 1100, CV_8UC3, cv::Scalar(255, 255, 255));
  Axes a = DrawAxes(img, "images/s vs batch size (" + threads + " threads)", "batch size (log2)",
                    "images/s", xmin, xmax, 0, ymax * 1.05, true, ticks);
  for (size_t i = 0; i < series.size(); ++i) {
    cv::Point prev(-1, -1);
    for (const auto& [b, r] : series[i].by_batch) {
      cv::Point p(a.X(static_cast<double>(b)), a.Y(r["images_per_second"].get<double>()));
      if (prev.x >= 0) cv::line(img, prev, p, kPalette[i % 12], 2, cv::LINE_AA);
      cv::circle(img, p, 3, kPalette[i % 12], cv::FILLED, cv::LINE_AA);
      prev = p;
    }
    Legend(img, a, static_cast<int>(i), series[i].label);
  }
  return Save(img, file);
}

Status PlotLatency(const std::vector<Series>& series, const fs::path& file, const std::string& threads) {
  std::vector<const Series*> rows;
  double xmax = 0;
  for (const Series& s : series) {
    auto it = s.by_batch.find(1);
    if (it == s.by_batch.end()) continue;
    rows.push_back(&s);
    xmax = std::max(xmax, it->second["max_ms"].get<double>());
  }
  const int h = 90 + 34 * static_cast<int>(std::max<size_t>(rows.size(), 1));
  cv::Mat img(h, 1100, CV_8UC3, cv::Scalar(255, 255, 255));
  const auto font = cv::FONT_HERSHEY_SIMPLEX;
  cv::putText(img, "latency at batch 1 (" + threads + " threads): min | p50 box to p90 | p99 | max",
              {10, 24}, font, 0.6, kInk, 1, cv::LINE_AA);
  const int x0 = 300, x1 = 1060;
  auto X = [&](double v) { return x0 + static_cast<int>(v / (xmax * 1.05) * (x1 - x0)); };
  for (int k = 0; k <= 5; ++k) {
    const double v = xmax * 1.05 * k / 5;
    cv::line(img, {X(v), 40}, {X(v), h - 40}, kGrid, 1);
    cv::putText(img, Fmt("%.2f ms", v), {X(v) - 20, h - 20}, font, 0.4, kInk, 1, cv::LINE_AA);
  }
  for (size_t i = 0; i < rows.size(); ++i) {
    const json& r = rows[i]->by_batch.at(1);
    const int y = 60 + 34 * static_cast<int>(i);
    cv::putText(img, rows[i]->label, {10, y + 5}, font, 0.45, kInk, 1, cv::LINE_AA);
    const cv::Scalar c = kPalette[i % 12];
    cv::line(img, {X(r["min_ms"]), y}, {X(r["max_ms"]), y}, c, 1, cv::LINE_AA);
    cv::rectangle(img, cv::Point(X(r["median_ms"]), y - 8), cv::Point(X(r["p90_ms"]), y + 8), c, cv::FILLED);
    for (const char* k : {"min_ms", "p99_ms", "max_ms"}) {
      cv::line(img, {X(r[k]), y - 8}, {X(r[k]), y + 8}, c, 2);
    }
  }
  return Save(img, file);
}

struct Point {
  std::string label;
  double ips;
  double accuracy;
};

// Points on the Pareto front: no other point is both faster and at least as accurate.
std::vector<Point> ParetoFront(std::vector<Point> pts) {
  std::sort(pts.begin(), pts.end(), [](const Point& a, const Point& b) { return a.ips > b.ips; });
  std::vector<Point> front;
  double best_acc = -1;
  for (const Point& p : pts) {
    if (p.accuracy > best_acc) {
      front.push_back(p);
      best_acc = p.accuracy;
    }
  }
  return front;
}

Status PlotPareto(const std::vector<Point>& pts, const fs::path& file) {
  double xmax = 1, ylo = 1, yhi = 0;
  for (const Point& p : pts) {
    xmax = std::max(xmax, p.ips);
    ylo = std::min(ylo, p.accuracy);
    yhi = std::max(yhi, p.accuracy);
  }
  const double pad = std::max(0.002, (yhi - ylo) * 0.15);
  cv::Mat img(520, 1100, CV_8UC3, cv::Scalar(255, 255, 255));
  std::vector<double> ticks;
  for (int k = 0; k <= 5; ++k) ticks.push_back(xmax * 1.1 * k / 5);
  Axes a = DrawAxes(img, "test accuracy vs best images/s (Pareto front in red)", "images/s",
                    "test accuracy", 0, xmax * 1.1, ylo - pad, yhi + pad, false, ticks);
  std::vector<Point> front = ParetoFront(pts);
  for (size_t i = 1; i < front.size(); ++i) {
    cv::line(img, {a.X(front[i - 1].ips), a.Y(front[i - 1].accuracy)},
             {a.X(front[i].ips), a.Y(front[i].accuracy)}, cv::Scalar(30, 30, 220), 2, cv::LINE_AA);
  }
  for (size_t i = 0; i < pts.size(); ++i) {
    cv::circle(img, {a.X(pts[i].ips), a.Y(pts[i].accuracy)}, 5, kPalette[i % 12], cv::FILLED, cv::LINE_AA);
    Legend(img, a, static_cast<int>(i), pts[i].label);
  }
  return Save(img, file);
}

// "1.20-1.31" (min-max of the rounds' medians), or "-" for a single round.
std::string RoundRange(const json& r) {
  if (!r.contains("round_medians_ms") || r["round_medians_ms"].size() < 2) return "-";
  const auto v = r["round_medians_ms"].get<std::vector<double>>();
  return Fmt("%.3f", *std::min_element(v.begin(), v.end())) + "-" +
         Fmt("%.3f", *std::max_element(v.begin(), v.end()));
}

// "1.18-1.33" (the 95% confidence interval of the median), or "-" for a single round.
std::string Interval(const json& r) {
  if (!r.contains("ci95_ms")) return "-";
  return Fmt("%.3f", r["ci95_ms"][0]) + "-" + Fmt("%.3f", r["ci95_ms"][1]);
}

}  // namespace

Status WriteReport(const json& report, const fs::path& out_dir) {
  try {
    const json& results = report.at("results");
    json ref_threads = 1;
    for (const json& r : results) {
      if (r["threads"].is_number() && r["threads"].get<int>() > ref_threads.get<int>()) ref_threads = r["threads"];
    }
    const std::string t = std::to_string(ref_threads.get<int>());
    std::vector<Series> series = Group(results, ref_threads);
    // Peers as series too.
    const json& peers = report.at("peers");
    if (peers.value("available", false)) {
      std::vector<Series> peer_series = Group(peers.at("results"), ref_threads);
      series.insert(series.begin(), peer_series.begin(), peer_series.end());
    }
    std::map<std::string, json> variants;
    for (const json& v : report.at("variants")) variants[v["name"]] = v;
    // -1 when unknown (model files benchmarked without a kiln optimize manifest).
    auto accuracy_of = [&](const std::string& variant) -> double {
      auto it = variants.find(variant);
      if (it != variants.end()) return it->second.value("test_accuracy", -1.0);
      return variants.count("fp32") ? variants["fp32"].value("test_accuracy", -1.0)
                                    : -1.0;  // peers run fp32
    };
    auto delta_of = [&](const std::string& variant) -> double {
      auto it = variants.find(variant);
      return it != variants.end() ? it->second.value("accuracy_delta_points", 0.0) : 0.0;
    };

    // Baseline for speedups: PyTorch eager in Python when measured, else ONNX Runtime FP32.
    const Series* base = nullptr;
    for (const Series& s : series) {
      if (s.engine == "pytorch-eager") base = &s;
    }
    for (const Series& s : series) {
      if (!base && s.variant == "fp32" && s.engine == "onnxruntime") base = &s;
    }
    const double base_ips = base && Best(*base) ? (*Best(base ? *base : series[0]))["images_per_second"].get<double>() : 0;
    const int64_t fp32_size = variants.count("fp32") ? variants["fp32"].value("size_bytes", int64_t{0}) : 0;

    std::ostringstream md;
    const json& m = report.at("machine");
    md << "# Kiln benchmark report\n\n"
       << "Generated by `kiln bench` on " << report.value("created", "") << " — every number below was "
       << "measured in this one run, on this machine; nothing is copied from elsewhere.\n\n"
       << "- Command: `" << report.value("command", "") << "`\n"
       << "- Machine: " << m.value("cpu", "?") << ", " << m.value("logical_cpus", 0) << " logical CPUs, "
       << Fmt("%.1f", m.value("memory_bytes", int64_t{0}) / 1073741824.0) << " GiB, flags: "
       << m.value("flags", json::array()).dump() << ", " << m.value("kernel", "") << "\n"
       << "- Versions: Kiln " << report["versions"].value("kiln", "") << ", ONNX Runtime "
       << report["versions"].value("onnxruntime", "") << ", " << report["versions"].value("libtorch", "")
       << ", Python torch " << report["versions"].value("python_torch", "") << "\n"
       << "- Model: " << report["model"].value("arch", "?") << " (manifest `" << report.value("manifest", "")
       << "`)\n\n";

    md << "## Roof (measured at the start of the run)\n\n| threads | FP32 FMA GFLOP/s | INT8 dot GOP/s |\n|---|---|---|\n";
    for (const json& p : report["roof"]["points"]) {
      md << "| " << p["threads"] << " | " << Fmt("%.1f", p["fp32_gflops"]) << " | "
         << Fmt("%.1f", p["int8_gops"]) << " |\n";
    }
    md << "\nISA: " << report["roof"].value("isa", "?") << ".\n\n";

    md << "## Summary (" << t << " threads)\n\n"
       << "Latency: median at batch 1. Images/s: the best batch size. Speedup: images/s over "
       << (base ? base->label : std::string("(no baseline)"))
       << ". Compression: FP32 file size over this "
       << "file's size. Accuracy: all 10,000 test images (from `kiln optimize`; \"not measured\" "
          "when "
       << "model files were given instead of a manifest).\n\n"
       << "| variant / engine | size (MB) | compression | test accuracy | Δ points | latency b=1 "
          "(ms) | images/s | at batch | speedup |\n"
       << "|---|---|---|---|---|---|---|---|---|\n";
    std::vector<Point> points;
    for (const Series& s : series) {
      const json* best = Best(s);
      if (!best) continue;
      auto it = variants.find(s.variant);
      const int64_t size = it != variants.end() ? it->second.value("size_bytes", int64_t{0}) : fp32_size;
      const double ips = (*best)["images_per_second"].get<double>();
      md << "| " << s.label << " | " << Fmt("%.2f", size / 1e6) << " | "
         << (size > 0 && fp32_size > 0 ? Fmt("%.2fx", static_cast<double>(fp32_size) / size) : "-")
         << " | "
         << (accuracy_of(s.variant) >= 0 ? Fmt("%.2f%%", 100 * accuracy_of(s.variant))
                                         : "not measured")
         << " | "
         << (variants.count(s.variant) && variants[s.variant].contains("accuracy_delta_points")
                 ? Fmt("%+.2f", delta_of(s.variant))
                 : "-")
         << " | " << (s.by_batch.count(1) ? Fmt("%.3f", s.by_batch.at(1)["median_ms"]) : "-")
         << " | " << Fmt("%.0f", ips) << " | " << (*best)["batch"] << " | "
         << (base_ips > 0 ? Fmt("%.2fx", ips / base_ips) : "-") << " |\n";
      if (accuracy_of(s.variant) >= 0) points.push_back({s.label, ips, accuracy_of(s.variant)});
    }
    if (!peers.value("available", false)) {
      md << "\nPeers (PyTorch in Python) were not measured: " << peers.value("reason", "?") << "\n";
    } else if (peers.contains("top1_agreement_with_onnxruntime")) {
      md << "\nThe Python peers ran the same weights on the same inputs: top-1 agreement with ONNX Runtime "
         << Fmt("%.2f%%", 100 * peers["top1_agreement_with_onnxruntime"].get<double>()) << ".\n";
    }

    md << "\n## Conclusions (computed from the table above)\n\n";
    for (double budget : {0.0, 0.5, 1.0}) {
      const Series* best = nullptr;
      double best_ips = 0;
      for (const Series& s : series) {
        if (!variants.count(s.variant) || !variants[s.variant].contains("accuracy_delta_points") ||
            delta_of(s.variant) < -budget - 1e-9) {
          continue;
        }
        const json* b = Best(s);
        if (b && (*b)["images_per_second"].get<double>() > best_ips) {
          best_ips = (*b)["images_per_second"].get<double>();
          best = &s;
        }
      }
      if (best) {
        md << "- Fastest within " << Fmt("%.1f", budget) << " points of FP32 accuracy: **" << best->label
           << "**, " << Fmt("%.0f", best_ips) << " images/s"
           << (base_ips > 0 ? " (" + Fmt("%.2fx", best_ips / base_ips) + " the baseline)" : std::string()) << ".\n";
      }
    }
    for (const Series& s : series) {
      const json* best = Best(s);
      if (!best) continue;
      int64_t knee = 0;
      for (const auto& [b, r] : s.by_batch) {
        if (r["images_per_second"].get<double>() >= 0.9 * (*best)["images_per_second"].get<double>()) {
          knee = b;
          break;
        }
      }
      md << "- " << s.label << ": lowest latency at batch " << s.by_batch.begin()->first << " ("
         << Fmt("%.3f ms", s.by_batch.begin()->second["median_ms"]) << "), most images/s at batch "
         << (*best)["batch"] << "; batch " << knee << " already reaches 90% of that.\n";
    }

    md << "\n## Full matrix\n\n| variant | engine | threads | batch | median ms | 95% CI of the median | p90 | p99 | min | max | rounds' medians | images/s | runs | stable | peak RSS MB | roof |\n"
       << "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    auto rows = [&](const json& list) {
      for (const json& r : list) {
        md << "| " << r["variant"].get<std::string>() << " | " << r["engine"].get<std::string>() << " | "
           << (r["threads"].is_string() ? r["threads"].get<std::string>() : std::to_string(r["threads"].get<int>()))
           << " | " << r["batch"] << " | " << Fmt("%.3f", r["median_ms"]) << " | " << Interval(r) << " | " << Fmt("%.3f", r["p90_ms"])
           << " | " << Fmt("%.3f", r["p99_ms"]) << " | " << Fmt("%.3f", r["min_ms"]) << " | "
           << Fmt("%.3f", r["max_ms"]) << " | " << RoundRange(r) << " | "
           << Fmt("%.0f", r["images_per_second"]) << " | " << r["runs"]
           << " | " << (r.value("stable", false) ? "yes" : "no") << " | "
           << (r.contains("peak_rss_bytes") ? Fmt("%.0f", r["peak_rss_bytes"].get<double>() / 1e6) : "-") << " | "
           << (r.contains("roof_fraction") ? Fmt("%.1f%%", 100 * r["roof_fraction"].get<double>()) : "-")
           << " |\n";
      }
    };
    rows(results);
    if (peers.value("available", false)) rows(peers["results"]);

    const json& method = report.at("method");
    md << "\n## Method\n\n";
    for (const auto& [k, v] : method.items()) md << "- " << k << ": " << (v.is_string() ? v.get<std::string>() : v.dump()) << "\n";
    md << "\n## Plots\n\n![throughput](throughput.png)\n\n![latency](latency_batch1.png)\n\n![pareto](pareto.png)\n";

    KILN_RETURN_IF_ERROR(PlotThroughput(series, out_dir / "throughput.png", t));
    KILN_RETURN_IF_ERROR(PlotLatency(series, out_dir / "latency_batch1.png", t));
    KILN_RETURN_IF_ERROR(PlotPareto(points, out_dir / "pareto.png"));
    KILN_RETURN_IF_ERROR(WriteFileAtomic(out_dir / "report.json", report.dump(2) + "\n"));
    KILN_RETURN_IF_ERROR(WriteFileAtomic(out_dir / "REPORT.md", md.str()));
  } catch (const json::exception& e) {
    return InvalidArgumentError(std::string("report data is incomplete: ") + e.what());
  }
  return Status::Ok();
}

}  // namespace kiln::bench
