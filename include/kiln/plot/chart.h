// The one chart helper behind Kiln's PNG plots (the training curves, kiln bench's throughput,
// latency and Pareto plots): a white canvas, axes with grid, ticks and labels, line series with
// markers, legends, and an atomic PNG write. Drawn with OpenCV, which Kiln already links for
// images; why not a plotting library: docs/decisions.md, "Charts".
//
//   plot::Canvas canvas(1100, 520);
//   canvas.Text("images/s vs batch size", 10, 24, 0.6);
//   plot::AxesOptions ao;
//   ao.area = {80, 56, 720, 414};
//   ao.x0 = 1; ao.x1 = 64; ao.log_x = true; ao.x_ticks = {1, 2, 4, 8, 16, 32, 64};
//   ao.y0 = 0; ao.y1 = 5000;
//   plot::Axes axes(&canvas, ao);
//   axes.Line(xs, ys, plot::PaletteColor(0));
//   axes.Legend(0, "fp32 / onnxruntime", plot::PaletteColor(0));
//   KILN_RETURN_IF_ERROR(canvas.SavePng("throughput.png"));
//
// Coordinates are pixels, origin top-left. Not thread-safe.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kiln/core/status.h"

namespace kiln::plot {

struct Rgb {
  uint8_t r = 0, g = 0, b = 0;
};

inline constexpr Rgb kInk{40, 40, 40};
inline constexpr Rgb kGrid{225, 225, 225};
inline constexpr Rgb kHighlight{220, 30, 30};

// Twelve distinguishable colours, cycling.
Rgb PaletteColor(size_t i);

struct Box {
  int x = 0, y = 0, width = 0, height = 0;
};

class Canvas {
 public:
  Canvas(int width, int height);  // white
  ~Canvas();
  Canvas(const Canvas&) = delete;
  Canvas& operator=(const Canvas&) = delete;

  // `x`, `y` is the left end of the text's baseline; `scale` as OpenCV's Hershey font.
  void Text(const std::string& text, int x, int y, double scale = 0.45, Rgb color = kInk);
  void Line(int x0, int y0, int x1, int y1, Rgb color, int thickness = 1);
  void Rectangle(const Box& box, Rgb color, bool filled = false);
  void Dot(int x, int y, int radius, Rgb color);

  // Encodes the canvas as PNG and writes it atomically; Internal if it cannot be encoded.
  Status SavePng(const std::filesystem::path& file) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

enum class LegendPlace { kOutsideRight, kInsideTopRight, kInsideBottomRight };

struct AxesOptions {
  Box area;  // the plot area inside the canvas
  double x0 = 0, x1 = 1, y0 = 0, y1 = 1;
  bool log_x = false;  // log2 scale; x0 and x1 must be > 0
  // Horizontal grid lines with a label at the left: y_ticks + 1 of them, evenly spaced.
  int y_ticks = 5;
  int y_label_gap = 75;  // the y tick labels start this many pixels left of the plot area
  std::function<std::string(double)> y_format;  // default: enough decimals to tell ticks apart
  // Labelled positions on the x axis; with x_grid, a vertical grid line at each.
  std::vector<double> x_ticks;
  std::function<std::string(double)> x_format;  // default "%g"
  bool x_grid = true;
  std::string caption;  // above the plot area, left-aligned
  std::string x_label;  // below the tick labels, centred
  LegendPlace legend = LegendPlace::kOutsideRight;
  int legend_entries = 1;  // for kInsideBottomRight: how many entries to make room for
};

// Draws the frame, grid, tick labels and labels on construction.
class Axes {
 public:
  Axes(Canvas* canvas, AxesOptions options);

  int X(double v) const;
  int Y(double v) const;

  // A polyline through (xs[i], ys[i]) with a dot at each point (dot_radius 0: no dots).
  void Line(const std::vector<double>& xs, const std::vector<double>& ys, Rgb color,
            int thickness = 2, int dot_radius = 3);
  void Dot(double x, double y, int radius, Rgb color);
  // The i-th legend entry: a short stroke in `color` and `label`.
  void Legend(int i, const std::string& label, Rgb color);

 private:
  Canvas* canvas_;
  AxesOptions o_;
};

// printf-style formatting of one number, for tick labels ("%.2f ms").
std::string Format(const char* format, double v);

}  // namespace kiln::plot
