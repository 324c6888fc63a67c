// A terminal progress bar for long work (training epochs, downloads, evaluation).
//
//   kiln::ProgressBar bar("epoch 3/30", total_batches, std::cerr);
//   for (...) { ...; bar.Update(done, "loss 1.23 acc 54.1%"); }
//   bar.Finish("val 81.2%");
//
// On a terminal it redraws one line (at most ~10 times a second); on a pipe or file it prints
// a plain line every 10% so logs stay readable. Shows done/total, percent, rate and ETA.
// Not thread-safe: one thread updates a bar.
#pragma once

#include <chrono>
#include <cstdint>
#include <iosfwd>
#include <string>

namespace kiln {

class ProgressBar {
 public:
  // `unit` names what is counted in the rate ("img/s" counts `total` in images, etc.).
  ProgressBar(std::string label, int64_t total, std::ostream& out, std::string unit = "it");

  // Sets progress to `done` (0..total) with free text appended after the bar.
  void Update(int64_t done, const std::string& text = "");
  // Draws the completed bar and ends the line.
  void Finish(const std::string& text = "");
  // Ends the line where the bar stands (work stopped before the end).
  void Stop(const std::string& text = "");

  double ElapsedSeconds() const;

  // Formats seconds as "1:05:03" / "4:07".
  static std::string FormatDuration(double seconds);

 private:
  void Draw(const std::string& text, bool final_line);

  std::string label_;
  int64_t total_;
  int64_t done_ = 0;
  std::ostream& out_;
  std::string unit_;
  bool tty_;
  int last_decile_ = -1;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
};

}  // namespace kiln
