#include "kiln/train/plot.h"

#include <algorithm>
#include <vector>

#include "kiln/plot/chart.h"

namespace kiln::train {

namespace {

struct Series {
  std::string name;
  std::vector<double> values;
  plot::Rgb color;
};

// One chart in the canvas box `area`: a line per series against the epoch, legend top-right for
// falling curves (loss) and bottom-right for rising ones (accuracy).
void DrawChart(plot::Canvas& canvas, plot::Box area, const std::string& title,
               const std::vector<Series>& series, bool percent) {
  double lo = 1e300, hi = -1e300;
  size_t n = 0;
  for (const auto& s : series) {
    for (double v : s.values) {
      lo = std::min(lo, v);
      hi = std::max(hi, v);
    }
    n = std::max(n, s.values.size());
  }
  if (n == 0) return;
  if (hi - lo < 1e-9) {
    hi += 0.5;
    lo -= 0.5;
  }
  const double pad = (hi - lo) * 0.05;
  plot::AxesOptions ao;
  ao.area = {area.x + 60, area.y + 30, area.width - 75, area.height - 70};
  // One epoch: a single point in the middle.
  ao.x0 = n == 1 ? 0 : 1;
  ao.x1 = n == 1 ? 2 : static_cast<double>(n);
  ao.y0 = lo - pad;
  ao.y1 = hi + pad;
  ao.y_ticks = 4;
  ao.y_label_gap = 58;
  ao.y_format = [percent](double v) {
    return percent ? plot::Format("%.1f%%", v * 100) : plot::Format("%.3f", v);
  };
  for (size_t i = 0; i < n; i += std::max<size_t>(1, n / 10)) ao.x_ticks.push_back(i + 1.0);
  ao.x_format = [](double v) { return plot::Format("%.0f", v); };
  ao.x_grid = false;
  ao.caption = title;
  ao.x_label = "epoch";
  ao.legend = percent ? plot::LegendPlace::kInsideBottomRight : plot::LegendPlace::kInsideTopRight;
  ao.legend_entries = static_cast<int>(series.size());
  plot::Axes axes(&canvas, ao);
  for (size_t k = 0; k < series.size(); ++k) {
    std::vector<double> epochs;
    for (size_t i = 0; i < series[k].values.size(); ++i) epochs.push_back(i + 1.0);
    axes.Line(epochs, series[k].values, series[k].color);
    axes.Legend(static_cast<int>(k), series[k].name, series[k].color);
  }
}

}  // namespace

Status PlotTrainingCurves(const std::vector<EpochMetrics>& epochs, const std::filesystem::path& png,
                          const std::string& title) {
  const plot::Rgb train = plot::PaletteColor(0), validation = plot::PaletteColor(1);
  Series tl{"train", {}, train}, vl{"validation", {}, validation};
  Series ta{"train", {}, train}, va{"validation", {}, validation};
  for (const auto& e : epochs) {
    tl.values.push_back(e.train_loss);
    vl.values.push_back(e.val_loss);
    ta.values.push_back(e.train_accuracy);
    va.values.push_back(e.val_accuracy);
  }
  plot::Canvas canvas(1000, 430);
  canvas.Text(title, 10, 22, 0.6, {0, 0, 0});
  DrawChart(canvas, {0, 30, 500, 400}, "loss (train: with label smoothing)", {tl, vl}, false);
  DrawChart(canvas, {500, 30, 500, 400}, "accuracy", {ta, va}, true);
  return canvas.SavePng(png);
}

}  // namespace kiln::train
