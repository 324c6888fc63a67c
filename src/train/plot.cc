#include "kiln/train/plot.h"

#include <algorithm>
#include <cstdio>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <vector>

#include "kiln/core/file.h"

namespace kiln::train {

namespace {

struct Series {
  std::string name;
  std::vector<double> values;
  cv::Scalar color;
};

// Draws one chart into `area` of `img`: axes, ticks, a line per series and a legend.
// The legend goes top-right for falling curves (loss) and bottom-right for rising ones.
void DrawChart(cv::Mat& img, cv::Rect area, const std::string& title,
               const std::vector<Series>& series, bool percent) {
  const int left = 60, right = 15, top = 30, bottom = 40;
  cv::Rect plot(area.x + left, area.y + top, area.width - left - right, area.height - top - bottom);
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
  lo -= pad;
  hi += pad;
  const auto font = cv::FONT_HERSHEY_SIMPLEX;
  const cv::Scalar ink(40, 40, 40), grid(220, 220, 220);
  cv::putText(img, title, {area.x + left, area.y + 20}, font, 0.55, ink, 1, cv::LINE_AA);
  auto px = [&](size_t i) {
    return plot.x + (n == 1 ? plot.width / 2 : static_cast<int>(plot.width * i / (n - 1)));
  };
  auto py = [&](double v) {
    return plot.y + plot.height - static_cast<int>((v - lo) / (hi - lo) * plot.height);
  };
  for (int k = 0; k <= 4; ++k) {
    double v = lo + (hi - lo) * k / 4;
    int y = py(v);
    cv::line(img, {plot.x, y}, {plot.x + plot.width, y}, grid, 1);
    char label[32];
    std::snprintf(label, sizeof label, percent ? "%.1f%%" : "%.3f", percent ? v * 100 : v);
    cv::putText(img, label, {area.x + 2, y + 4}, font, 0.38, ink, 1, cv::LINE_AA);
  }
  const size_t step = std::max<size_t>(1, n / 10);
  for (size_t i = 0; i < n; i += step) {
    cv::putText(img, std::to_string(i + 1), {px(i) - 4, plot.y + plot.height + 16}, font, 0.38, ink,
                1, cv::LINE_AA);
  }
  cv::putText(img, "epoch", {plot.x + plot.width / 2 - 20, plot.y + plot.height + 34}, font, 0.45,
              ink, 1, cv::LINE_AA);
  cv::rectangle(img, plot, ink, 1);
  int legend_y =
      percent ? plot.y + plot.height - 8 - 18 * static_cast<int>(series.size() - 1) : plot.y + 16;
  for (const auto& s : series) {
    for (size_t i = 0; i < s.values.size(); ++i) {
      cv::Point p(px(i), py(s.values[i]));
      if (i > 0) cv::line(img, {px(i - 1), py(s.values[i - 1])}, p, s.color, 2, cv::LINE_AA);
      cv::circle(img, p, 3, s.color, cv::FILLED, cv::LINE_AA);
    }
    cv::line(img, {plot.x + plot.width - 120, legend_y - 4},
             {plot.x + plot.width - 100, legend_y - 4}, s.color, 2);
    cv::putText(img, s.name, {plot.x + plot.width - 95, legend_y}, font, 0.42, ink, 1, cv::LINE_AA);
    legend_y += 18;
  }
}

}  // namespace

Status PlotTrainingCurves(const std::vector<EpochMetrics>& epochs, const std::filesystem::path& png,
                          const std::string& title) {
  Series tl{"train", {}, {200, 100, 30}}, vl{"validation", {}, {30, 120, 230}};
  Series ta{"train", {}, {200, 100, 30}}, va{"validation", {}, {30, 120, 230}};
  for (const auto& e : epochs) {
    tl.values.push_back(e.train_loss);
    vl.values.push_back(e.val_loss);
    ta.values.push_back(e.train_accuracy);
    va.values.push_back(e.val_accuracy);
  }
  cv::Mat img(430, 1000, CV_8UC3, cv::Scalar(255, 255, 255));
  cv::putText(img, title, {10, 22}, cv::FONT_HERSHEY_SIMPLEX, 0.6, cv::Scalar(0, 0, 0), 1,
              cv::LINE_AA);
  DrawChart(img, {0, 30, 500, 400}, "loss (train: with label smoothing)", {tl, vl}, false);
  DrawChart(img, {500, 30, 500, 400}, "accuracy", {ta, va}, true);
  std::vector<uchar> bytes;
  try {
    if (!cv::imencode(".png", img, bytes)) return InternalError("cannot encode " + png.string());
  } catch (const cv::Exception& e) {
    return InternalError("cannot encode " + png.string() + ": " + e.what());
  }
  return WriteFileAtomic(png, {reinterpret_cast<const char*>(bytes.data()), bytes.size()});
}

}  // namespace kiln::train
