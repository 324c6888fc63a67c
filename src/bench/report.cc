// REPORT.md and the PNG plots, computed from report.json alone.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <optional>
#include <sstream>

#include "kiln/bench/bench.h"
#include "kiln/core/file.h"
#include "kiln/plot/chart.h"

namespace kiln::bench {

namespace fs = std::filesystem;
using nlohmann::json;
using plot::Format;

namespace {

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

// ---- plots (kiln/plot/chart.h) ----------------------------------------------------------------
constexpr plot::Box kPlotArea{80, 56, 720, 414};  // in a 1100 x 520 canvas; legend to the right

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
  plot::Canvas canvas(1100, 520);
  canvas.Text("images/s vs batch size (" + threads + " threads)", 10, 24, 0.6);
  plot::AxesOptions ao;
  ao.area = kPlotArea;
  ao.x0 = xmin;
  ao.x1 = xmax;
  ao.log_x = true;
  for (double t = xmin; t <= xmax; t *= 2) ao.x_ticks.push_back(t);
  ao.y0 = 0;
  ao.y1 = ymax * 1.05;
  ao.caption = "images/s";
  ao.x_label = "batch size (log2)";
  plot::Axes axes(&canvas, ao);
  for (size_t i = 0; i < series.size(); ++i) {
    std::vector<double> xs, ys;
    for (const auto& [b, r] : series[i].by_batch) {
      xs.push_back(static_cast<double>(b));
      ys.push_back(r["images_per_second"].get<double>());
    }
    axes.Line(xs, ys, plot::PaletteColor(i));
    axes.Legend(static_cast<int>(i), series[i].label, plot::PaletteColor(i));
  }
  return canvas.SavePng(file);
}

// Horizontal boxes, one row per series: a whisker from min to max, a box from p50 to p90, ticks
// at min, p99 and max.
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
  plot::Canvas canvas(1100, h);
  canvas.Text("latency at batch 1 (" + threads + " threads): min | p50 box to p90 | p99 | max", 10,
              24, 0.6);
  const int x0 = 300, x1 = 1060;
  auto X = [&](double v) { return x0 + static_cast<int>(v / (xmax * 1.05) * (x1 - x0)); };
  for (int k = 0; k <= 5; ++k) {
    const double v = xmax * 1.05 * k / 5;
    canvas.Line(X(v), 40, X(v), h - 40, plot::kGrid);
    canvas.Text(plot::Format("%.2f ms", v), X(v) - 20, h - 20, 0.4);
  }
  for (size_t i = 0; i < rows.size(); ++i) {
    const json& r = rows[i]->by_batch.at(1);
    const int y = 60 + 34 * static_cast<int>(i);
    canvas.Text(rows[i]->label, 10, y + 5);
    const plot::Rgb c = plot::PaletteColor(i);
    canvas.Line(X(r["min_ms"]), y, X(r["max_ms"]), y, c);
    canvas.Rectangle({X(r["median_ms"]), y - 8, X(r["p90_ms"]) - X(r["median_ms"]), 16}, c, true);
    for (const char* k : {"min_ms", "p99_ms", "max_ms"}) canvas.Line(X(r[k]), y - 8, X(r[k]), y + 8, c, 2);
  }
  return canvas.SavePng(file);
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
  plot::Canvas canvas(1100, 520);
  canvas.Text("test accuracy vs best images/s (Pareto front in red)", 10, 24, 0.6);
  plot::AxesOptions ao;
  ao.area = kPlotArea;
  ao.x0 = 0;
  ao.x1 = xmax * 1.1;
  for (int k = 0; k <= 5; ++k) ao.x_ticks.push_back(xmax * 1.1 * k / 5);
  ao.y0 = ylo - pad;
  ao.y1 = yhi + pad;
  ao.caption = "test accuracy";
  ao.x_label = "images/s";
  plot::Axes axes(&canvas, ao);
  std::vector<double> fx, fy;
  for (const Point& p : ParetoFront(pts)) {
    fx.push_back(p.ips);
    fy.push_back(p.accuracy);
  }
  axes.Line(fx, fy, plot::kHighlight, 2, 0);
  for (size_t i = 0; i < pts.size(); ++i) {
    axes.Dot(pts[i].ips, pts[i].accuracy, 5, plot::PaletteColor(i));
    axes.Legend(static_cast<int>(i), pts[i].label, plot::PaletteColor(i));
  }
  return canvas.SavePng(file);
}

// "1.20-1.31" (min-max of the rounds' medians), or "-" for a single round.
std::string RoundRange(const json& r) {
  if (!r.contains("round_medians_ms") || r["round_medians_ms"].size() < 2) return "-";
  const auto v = r["round_medians_ms"].get<std::vector<double>>();
  return Format("%.3f", *std::min_element(v.begin(), v.end())) + "-" +
         Format("%.3f", *std::max_element(v.begin(), v.end()));
}

// "1.18-1.33" (the 95% confidence interval of the median), or "-" for a single round.
std::string Interval(const json& r) {
  if (!r.contains("ci95_ms")) return "-";
  return Format("%.3f", r["ci95_ms"][0]) + "-" + Format("%.3f", r["ci95_ms"][1]);
}

// "1.234 (1.201-1.266)": a speedup and its 95% interval, or "-".
std::string Speedup(const json& r) {
  if (!r.contains("speedup")) return "-";
  const json& s = r["speedup"];
  std::string out = Format("%.3f", s["value"]);
  if (s.contains("ci95")) out += " (" + Format("%.3f", s["ci95"][0]) + "-" + Format("%.3f", s["ci95"][1]) + ")";
  return out;
}

double SpeedupValue(const json& r) { return r.contains("speedup") ? r["speedup"]["value"].get<double>() : 0.0; }

bool IsDefaultsEngine(const std::string& engine) {
  return engine.size() > 8 && engine.compare(engine.size() - 8, 8, "-default") == 0;
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
       << Format("%.1f", m.value("memory_bytes", int64_t{0}) / 1073741824.0) << " GiB, flags: "
       << m.value("flags", json::array()).dump() << ", " << m.value("kernel", "") << "\n"
       << "- Versions: Kiln " << report["versions"].value("kiln", "") << ", ONNX Runtime "
       << report["versions"].value("onnxruntime", "") << ", OpenVINO "
       << report["versions"].value("openvino", "unavailable") << ", "
       << report["versions"].value("libtorch", "")
       << ", Python torch " << report["versions"].value("python_torch", "") << "\n"
       << "- Model: " << report["model"].value("arch", "?") << " (manifest `" << report.value("manifest", "")
       << "`)\n\n";

    // ---- ratios first: what carries from one run to the next ----
    const std::string reference = report.contains("reference")
                                      ? report["reference"].value("variant", "fp32") + " / " +
                                            report["reference"].value("engine", "onnxruntime")
                                      : std::string("fp32 / onnxruntime");
    std::vector<int64_t> batches;
    for (const json& r : results) {
      const int64_t b = r["batch"].get<int64_t>();
      if (std::find(batches.begin(), batches.end(), b) == batches.end()) batches.push_back(b);
    }
    std::sort(batches.begin(), batches.end());
    std::map<std::pair<std::string, std::string>, double> engine_accuracy;  // (variant, engine)
    for (const json& a : report.value("accuracy", json::array())) {
      if (a.contains("accuracy")) engine_accuracy[{a["variant"], a["engine"]}] = a["accuracy"].get<double>();
    }
    // The accuracy a (variant, engine) pair is judged by: what that engine computed on the test
    // images when bench measured it (an engine can disagree with ONNX Runtime), else the manifest's
    // (kiln optimize, through ONNX Runtime). Its delta is against fp32 on the reference engine
    // over the same images, so both sides saw the same test images.
    auto judged_accuracy = [&](const Series& s) -> double {
      auto it = engine_accuracy.find({s.variant, s.engine});
      return it != engine_accuracy.end() ? it->second : accuracy_of(s.variant);
    };
    auto judged_delta = [&](const Series& s) -> std::optional<double> {
      auto it = engine_accuracy.find({s.variant, s.engine});
      auto ref = engine_accuracy.find({"fp32", "onnxruntime"});
      if (it != engine_accuracy.end() && ref != engine_accuracy.end()) {
        return 100 * (it->second - ref->second);
      }
      if (variants.count(s.variant) && variants[s.variant].contains("accuracy_delta_points")) {
        return delta_of(s.variant);
      }
      return std::nullopt;
    };
    auto accuracy_cell = [&](const Series& s) -> std::string {
      auto it = engine_accuracy.find({s.variant, s.engine});
      if (it != engine_accuracy.end()) return Format("%.2f%%", 100 * it->second);
      return accuracy_of(s.variant) >= 0 && s.engine.rfind("pytorch", 0) != 0 &&
                     s.engine.rfind("torchscript", 0) != 0
                 ? Format("%.2f%%", 100 * accuracy_of(s.variant)) + " (manifest)"
                 : std::string("-");
    };
    md << "## Speed relative to the reference (" << t << " threads; engines at their own defaults: "
       << "their own thread count)\n\n"
       << "Each cell: images/s of the variant on the engine over images/s of the reference (**"
       << reference << "**, Kiln's session, same thread count and batch size), measured "
       << "interleaved with it in every round (reference, the column's cells, reference), as the "
       << "mean of the rounds' ratios with its 95% confidence interval. Absolute images/s move with "
       << "the machine from one run to the next (docs/decisions.md, Benchmarking); these ratios do "
       << "not, so compare runs by them (`bench/compare_reports.py a/report.json b/report.json` "
       << "judges two reports on the speedups and also shows their latency intervals and the "
       << "drift between them). "
       << "Accuracy: test images through this engine (see \"Accuracy by engine\"; \"(manifest)\": "
       << "from `kiln optimize`, through ONNX Runtime).\n\n";
    if (report.contains("drift")) {
      const json& d = report["drift"];
      md << "Drift seen in this run through the reference alone: ";
      if (d.value("between_rounds", json()).is_object()) {
        md << "between rounds its median moved by " << Format("%.1f%%", 100 * d["between_rounds"]["median"].get<double>())
           << " at the median column (max " << Format("%.1f%%", 100 * d["between_rounds"]["max"].get<double>()) << "); ";
      } else {
        md << "one round, so no drift between rounds is visible; ";
      }
      if (d.value("within_column", json()).is_object()) {
        md << "its two measurements around a column differed by " << Format("%.1f%%", 100 * d["within_column"]["median"].get<double>())
           << " at the median (max " << Format("%.1f%%", 100 * d["within_column"]["max"].get<double>()) << ").";
      }
      md << "\n\n";
    }
    md << "| variant / engine | accuracy |";
    for (int64_t b : batches) md << " b=" << b << " |";
    md << "\n|---|---|";
    for (size_t i = 0; i < batches.size(); ++i) md << "---|";
    md << "\n";
    for (const Series& s : series) {
      md << "| " << s.label << " | " << accuracy_cell(s) << " |";
      for (int64_t b : batches) {
        auto it = s.by_batch.find(b);
        md << " " << (it == s.by_batch.end() ? std::string("-") : Speedup(it->second))
           << (it != s.by_batch.end() && it->second.contains("speedup") &&
                       !it->second["speedup"].value("interleaved", true)
                   ? " *"
                   : "")
           << " |";
      }
      md << "\n";
    }
    md << "\n\\* not interleaved: a Python peer, measured in its own process after Kiln's pass of "
          "the round, against that round's reference.\n\n";

    // Goals: the best of Kiln's engines against the fastest runtime at its own defaults.
    std::map<std::string, std::vector<const Series*>> by_variant;
    for (const Series& s : series) by_variant[s.variant].push_back(&s);
    bool any_goal = false;
    std::ostringstream goals;
    goals << "## Kiln's engines against the runtimes' own defaults\n\n"
          << "Per variant: the best of Kiln's engines (Kiln's settings: onnxruntime, openvino, "
             "openvino-bf16, libtorch) over the fastest of ONNX Runtime and OpenVINO at their own "
             "defaults, as the ratio of their speedups (same reference, so drift cancels). Batch "
             "1, and the batch at which the fastest default engine reaches its most images/s. "
             "Goal: 0.95 or more. An engine running bfloat16 (openvino-bf16, and openvino-default "
             "on CPUs with AVX512-BF16 or AMX) changes results slightly: its accuracy is in the "
             "table above.\n\n"
          << "| variant | batch 1: best Kiln engine | fastest default | Kiln / default | best batch | best Kiln engine | fastest default | Kiln / default |\n"
          << "|---|---|---|---|---|---|---|---|\n";
    for (const auto& [variant, list] : by_variant) {
      auto best_at = [&](int64_t b, bool defaults) -> std::pair<const Series*, double> {
        const Series* best = nullptr;
        double v = 0;
        for (const Series* s : list) {
          if (IsDefaultsEngine(s->engine) != defaults) continue;
          if (s->engine.rfind("pytorch", 0) == 0 || s->engine.rfind("torchscript", 0) == 0) continue;
          auto it = s->by_batch.find(b);
          if (it == s->by_batch.end()) continue;
          if (SpeedupValue(it->second) > v) {
            v = SpeedupValue(it->second);
            best = s;
          }
        }
        return {best, v};
      };
      if (batches.empty()) break;
      auto [k1, kv1] = best_at(batches.front(), false);
      auto [d1, dv1] = best_at(batches.front(), true);
      if (!k1 || !d1) continue;
      // The fastest default engine's best batch (absolute images/s).
      int64_t bb = batches.front();
      double best_ips = 0;
      for (const Series* s : list) {
        if (!IsDefaultsEngine(s->engine)) continue;
        for (const auto& [b, r] : s->by_batch) {
          if (r["images_per_second"].get<double>() > best_ips) {
            best_ips = r["images_per_second"].get<double>();
            bb = b;
          }
        }
      }
      auto [kb, kvb] = best_at(bb, false);
      auto [db, dvb] = best_at(bb, true);
      if (!kb || !db) continue;
      any_goal = true;
      auto verdict = [](double r) { return Format("%.3f", r) + (r >= 0.95 ? "" : " **below**"); };
      goals << "| " << variant << " | " << k1->engine << " " << Format("%.3f", kv1) << " | "
            << d1->engine << " " << Format("%.3f", dv1) << " | " << verdict(kv1 / dv1) << " | "
            << bb << " | " << kb->engine << " " << Format("%.3f", kvb) << " | " << db->engine
            << " " << Format("%.3f", dvb) << " | " << verdict(kvb / dvb) << " |\n";
    }
    if (any_goal) md << goals.str() << "\n";

    // The INT8 quantizers side by side (kiln optimize's peers: ONNX Runtime's and NNCF's PTQ).
    std::vector<std::string> quantized;
    for (const json& v : report.at("variants")) {
      const std::string n = v.value("name", "");
      if (v.value("precision", "") == "int8" &&
          (v.contains("peer") || n == "int8-static")) {
        quantized.push_back(n);
      }
    }
    if (quantized.size() > 1) {
      md << "## INT8 quantizers side by side (the same FP32 model and calibration images)\n\n"
         << "Accuracy and agreement with FP32: all test images through ONNX Runtime (`kiln "
            "optimize`). Speedups: over the reference, on each engine at " << t << " threads.\n\n"
         << "| variant | quantizer | size (MB) | test accuracy | agreement with FP32 |";
      for (const char* e : {"onnxruntime", "openvino"}) {
        md << " " << e << " b=1 | " << e << " b=" << (batches.empty() ? 0 : batches.back()) << " |";
      }
      md << "\n|---|---|---|---|---|---|---|---|---|\n";
      for (const std::string& n : quantized) {
        const json& v = variants[n];
        md << "| " << n << " | "
           << (v.contains("peer") ? v["peer"].value("tool", "?") : std::string("Kiln"))
           << " | " << Format("%.2f", v.value("size_bytes", int64_t{0}) / 1e6) << " | "
           << Format("%.2f%%", 100 * v.value("test_accuracy", 0.0)) << " | "
           << Format("%.2f%%", 100 * v.value("agreement_with_fp32", 0.0)) << " |";
        for (const char* e : {"onnxruntime", "openvino"}) {
          const Series* s = nullptr;
          for (const Series& x : series) {
            if (x.variant == n && x.engine == e) s = &x;
          }
          for (int64_t b : {batches.empty() ? int64_t{1} : batches.front(),
                            batches.empty() ? int64_t{1} : batches.back()}) {
            md << " " << (s && s->by_batch.count(b) ? Speedup(s->by_batch.at(b)) : std::string("-"))
               << " |";
          }
        }
        md << "\n";
      }
      md << "\n";
    }

    if (report.contains("accuracy") && !report["accuracy"].empty()) {
      md << "## Accuracy by engine\n\nThe same test images through every (variant, engine); "
            "agreement: top-1 agreement with ONNX Runtime (Kiln's session) on the same variant.\n\n"
         << "| variant | engine | images | accuracy | agreement with onnxruntime |\n|---|---|---|---|---|\n";
      for (const json& a : report["accuracy"]) {
        md << "| " << a["variant"].get<std::string>() << " | " << a["engine"].get<std::string>() << " | "
           << a.value("images", 0) << " | "
           << (a.contains("accuracy") ? Format("%.2f%%", 100 * a["accuracy"].get<double>())
                                      : "failed: " + a.value("error", std::string("?")))
           << " | "
           << (a.contains("agreement_with_onnxruntime")
                   ? Format("%.2f%%", 100 * a["agreement_with_onnxruntime"].get<double>())
                   : std::string("-"))
           << " |\n";
      }
      md << "\n";
    }
    if (report.contains("unavailable") && !report["unavailable"].empty()) {
      md << "Not measured (the engine could not load the variant):\n\n";
      for (const json& u : report["unavailable"]) {
        md << "- " << u["variant"].get<std::string>() << " / " << u["engine"].get<std::string>() << ": "
           << u.value("error", std::string("?")) << "\n";
      }
      md << "\n";
    }

    md << "## Roof (measured at the start of the run)\n\n| threads | FP32 FMA GFLOP/s | INT8 dot GOP/s |\n|---|---|---|\n";
    for (const json& p : report["roof"]["points"]) {
      md << "| " << p["threads"] << " | " << Format("%.1f", p["fp32_gflops"]) << " | "
         << Format("%.1f", p["int8_gops"]) << " |\n";
    }
    md << "\nISA: " << report["roof"].value("isa", "?") << ".\n\n";

    md << "## Absolute numbers (" << t << " threads; these move with the machine)\n\n"
       << "Latency: median at batch 1. Images/s: the best batch size. Speedup: images/s over "
       << (base ? base->label : std::string("(no baseline)"))
       << ". Compression: FP32 file size over this "
       << "file's size. Accuracy and Δ points: the test images through this engine (\"Accuracy "
          "by engine\"; Δ against fp32 / onnxruntime on the same images), else from `kiln "
          "optimize` through ONNX Runtime, marked (manifest); \"not measured\" when model files "
          "were given instead of a manifest and no accuracy was measured.\n\n"
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
      const double accuracy = judged_accuracy(s);
      const std::optional<double> delta = judged_delta(s);
      // Unlike accuracy_cell, which leaves the Python peers' cells blank, this table gives every
      // pair without an accuracy of its own engine the manifest's.
      const bool computed = engine_accuracy.count({s.variant, s.engine}) > 0;
      const std::string cell = accuracy < 0 ? std::string("not measured")
                                            : Format("%.2f%%", 100 * accuracy) +
                                                  (computed ? "" : " (manifest)");
      md << "| " << s.label << " | " << Format("%.2f", size / 1e6) << " | "
         << (size > 0 && fp32_size > 0 ? Format("%.2fx", static_cast<double>(fp32_size) / size) : "-")
         << " | " << cell << " | " << (delta ? Format("%+.2f", *delta) : "-")
         << " | " << (s.by_batch.count(1) ? Format("%.3f", s.by_batch.at(1)["median_ms"]) : "-")
         << " | " << Format("%.0f", ips) << " | " << (*best)["batch"] << " | "
         << (base_ips > 0 ? Format("%.2fx", ips / base_ips) : "-") << " |\n";
      if (accuracy >= 0) points.push_back({s.label, ips, accuracy});
    }
    if (!peers.value("available", false)) {
      md << "\nPeers (PyTorch in Python) were not measured: " << peers.value("reason", "?") << "\n";
    } else if (peers.contains("top1_agreement_with_onnxruntime")) {
      md << "\nThe Python peers ran the same weights on the same inputs: top-1 agreement with ONNX Runtime "
         << Format("%.2f%%", 100 * peers["top1_agreement_with_onnxruntime"].get<double>()) << ".\n";
    }

    md << "\n## Conclusions (computed from the table above)\n\n";
    for (double budget : {0.0, 0.5, 1.0}) {
      const Series* best = nullptr;
      double best_ips = 0;
      for (const Series& s : series) {
        const std::optional<double> delta = judged_delta(s);
        if (!delta || *delta < -budget - 1e-9) continue;
        const json* b = Best(s);
        if (b && (*b)["images_per_second"].get<double>() > best_ips) {
          best_ips = (*b)["images_per_second"].get<double>();
          best = &s;
        }
      }
      if (best) {
        md << "- Fastest within " << Format("%.1f", budget) << " points of FP32 accuracy: **" << best->label
           << "**, " << Format("%.0f", best_ips) << " images/s"
           << (base_ips > 0 ? " (" + Format("%.2fx", best_ips / base_ips) + " the baseline)" : std::string()) << ".\n";
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
         << Format("%.3f ms", s.by_batch.begin()->second["median_ms"]) << "), most images/s at batch "
         << (*best)["batch"] << "; batch " << knee << " already reaches 90% of that.\n";
    }

    md << "\n## Full matrix\n\n| variant | engine | threads | batch | median ms | 95% CI of the median | p90 | p99 | min | max | rounds' medians | images/s | speedup (95% CI) | runs | stable | memory MB | roof |\n"
       << "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    auto rows = [&](const json& list) {
      for (const json& r : list) {
        md << "| " << r["variant"].get<std::string>() << " | " << r["engine"].get<std::string>() << " | "
           << (r["threads"].is_string() ? r["threads"].get<std::string>() : std::to_string(r["threads"].get<int>()))
           << " | " << r["batch"] << " | " << Format("%.3f", r["median_ms"]) << " | " << Interval(r) << " | " << Format("%.3f", r["p90_ms"])
           << " | " << Format("%.3f", r["p99_ms"]) << " | " << Format("%.3f", r["min_ms"]) << " | "
           << Format("%.3f", r["max_ms"]) << " | " << RoundRange(r) << " | "
           << Format("%.0f", r["images_per_second"]) << " | " << Speedup(r) << " | " << r["runs"]
           << " | " << (r.value("stable", false) ? "yes" : "no") << " | "
           << (r.contains("memory_bytes") ? Format("%.0f", r["memory_bytes"].get<double>() / 1e6) : "-") << " | "
           << (r.contains("roof_fraction") ? Format("%.1f%%", 100 * r["roof_fraction"].get<double>()) : "-")
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
