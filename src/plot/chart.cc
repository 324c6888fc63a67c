#include "kiln/plot/chart.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "kiln/core/file.h"

namespace kiln::plot {

namespace {

cv::Scalar Bgr(Rgb c) { return cv::Scalar(c.b, c.g, c.r); }

constexpr auto kFont = cv::FONT_HERSHEY_SIMPLEX;

}  // namespace

std::string Format(const char* format, double v) {
  char b[64];
  std::snprintf(b, sizeof b, format, v);
  return b;
}

Rgb PaletteColor(size_t i) {
  static constexpr Rgb kPalette[] = {{30, 100, 200}, {230, 120, 30}, {40, 160, 40},
                                     {160, 40, 160}, {200, 20, 20},  {200, 160, 0},
                                     {0, 120, 120},  {90, 90, 90},   {120, 0, 200},
                                     {160, 90, 0},   {200, 60, 100}, {100, 140, 60}};
  return kPalette[i % std::size(kPalette)];
}

struct Canvas::Impl {
  cv::Mat image;
};

Canvas::Canvas(int width, int height) : impl_(std::make_unique<Impl>()) {
  impl_->image =
      cv::Mat(std::max(1, height), std::max(1, width), CV_8UC3, cv::Scalar(255, 255, 255));
}

Canvas::~Canvas() = default;

void Canvas::Text(const std::string& text, int x, int y, double scale, Rgb color) {
  cv::putText(impl_->image, text, {x, y}, kFont, scale, Bgr(color), 1, cv::LINE_AA);
}

void Canvas::Line(int x0, int y0, int x1, int y1, Rgb color, int thickness) {
  cv::line(impl_->image, {x0, y0}, {x1, y1}, Bgr(color), thickness, cv::LINE_AA);
}

void Canvas::Rectangle(const Box& box, Rgb color, bool filled) {
  cv::rectangle(impl_->image, cv::Rect(box.x, box.y, box.width, box.height), Bgr(color),
                filled ? cv::FILLED : 1);
}

void Canvas::Dot(int x, int y, int radius, Rgb color) {
  cv::circle(impl_->image, {x, y}, radius, Bgr(color), cv::FILLED, cv::LINE_AA);
}

Status Canvas::SavePng(const std::filesystem::path& file) const {
  std::vector<uchar> png;
  try {
    if (!cv::imencode(".png", impl_->image, png)) {
      return InternalError("cannot encode " + file.string());
    }
  } catch (const cv::Exception& e) {
    return InternalError("cannot encode " + file.string() + ": " + e.what());
  }
  return WriteFileAtomic(file, {reinterpret_cast<const char*>(png.data()), png.size()});
}

Axes::Axes(Canvas* canvas, AxesOptions options) : canvas_(canvas), o_(std::move(options)) {
  if (o_.x1 <= o_.x0) o_.x1 = o_.x0 + 1;
  if (o_.y1 <= o_.y0) o_.y1 = o_.y0 + 1;
  const Box& p = o_.area;
  const int ticks = std::max(1, o_.y_ticks);
  const double step = (o_.y1 - o_.y0) / ticks;
  // Enough decimals that neighbouring ticks differ (an accuracy axis spans e.g. 0.902-0.911).
  const int decimals = std::fabs(o_.y1) >= 100
                           ? 0
                           : std::clamp(static_cast<int>(std::ceil(-std::log10(step))), 2, 6);
  const std::string y_default = "%." + std::to_string(decimals) + "f";
  for (int k = 0; k <= ticks; ++k) {
    const double v = o_.y0 + step * k;
    const int y = Y(v);
    canvas_->Line(p.x, y, p.x + p.width, y, kGrid, 1);
    canvas_->Text(o_.y_format ? o_.y_format(v) : Format(y_default.c_str(), v),
                  std::max(2, p.x - o_.y_label_gap), y + 4, 0.4);
  }
  for (double t : o_.x_ticks) {
    const int x = X(t);
    if (o_.x_grid) canvas_->Line(x, p.y, x, p.y + p.height, kGrid, 1);
    canvas_->Text(o_.x_format ? o_.x_format(t) : Format(t >= 100 ? "%.0f" : "%g", t), x - 8,
                  p.y + p.height + 17, 0.4);
  }
  canvas_->Rectangle(p, kInk);
  if (!o_.caption.empty()) canvas_->Text(o_.caption, p.x, p.y - 8, 0.5);
  if (!o_.x_label.empty()) {
    canvas_->Text(o_.x_label, p.x + p.width / 2 - 4 * static_cast<int>(o_.x_label.size()),
                  p.y + p.height + 36, 0.45);
  }
}

int Axes::X(double v) const {
  const double t = o_.log_x
                       ? (std::log2(v) - std::log2(o_.x0)) / (std::log2(o_.x1) - std::log2(o_.x0))
                       : (v - o_.x0) / (o_.x1 - o_.x0);
  return o_.area.x + static_cast<int>(t * o_.area.width);
}

int Axes::Y(double v) const {
  return o_.area.y + o_.area.height -
         static_cast<int>((v - o_.y0) / (o_.y1 - o_.y0) * o_.area.height);
}

void Axes::Line(const std::vector<double>& xs, const std::vector<double>& ys, Rgb color,
                int thickness, int dot_radius) {
  const size_t n = std::min(xs.size(), ys.size());
  for (size_t i = 0; i < n; ++i) {
    if (i > 0) canvas_->Line(X(xs[i - 1]), Y(ys[i - 1]), X(xs[i]), Y(ys[i]), color, thickness);
    if (dot_radius > 0) canvas_->Dot(X(xs[i]), Y(ys[i]), dot_radius, color);
  }
}

void Axes::Dot(double x, double y, int radius, Rgb color) {
  canvas_->Dot(X(x), Y(y), radius, color);
}

void Axes::Legend(int i, const std::string& label, Rgb color) {
  const Box& p = o_.area;
  int x = p.x + p.width + 15;
  int y = p.y + 14 + 20 * i;
  if (o_.legend == LegendPlace::kInsideTopRight) {
    x = p.x + p.width - 125;
  } else if (o_.legend == LegendPlace::kInsideBottomRight) {
    x = p.x + p.width - 125;
    y = p.y + p.height - 8 - 20 * (std::max(1, o_.legend_entries) - 1 - i);
  }
  canvas_->Line(x, y - 4, x + 20, y - 4, color, 3);
  canvas_->Text(label, x + 26, y, 0.42);
}

}  // namespace kiln::plot
