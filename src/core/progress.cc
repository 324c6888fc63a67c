#include "kiln/core/progress.h"

#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <sstream>

namespace kiln {

namespace {
bool IsTerminal(const std::ostream& out) {
  if (&out == &std::cerr) return isatty(STDERR_FILENO) != 0;
  if (&out == &std::cout) return isatty(STDOUT_FILENO) != 0;
  return false;
}
}  // namespace

ProgressBar::ProgressBar(std::string label, int64_t total, std::ostream& out, std::string unit)
    : label_(std::move(label)),
      total_(total > 0 ? total : 1),
      out_(out),
      unit_(std::move(unit)),
      tty_(IsTerminal(out)),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

double ProgressBar::ElapsedSeconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

std::string ProgressBar::FormatDuration(double seconds) {
  if (seconds < 0 || seconds > 1e7) return "--:--";
  auto s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", static_cast<long long>(s / 3600),
                  static_cast<long long>((s / 60) % 60), static_cast<long long>(s % 60));
  } else {
    std::snprintf(buf, sizeof buf, "%lld:%02lld", static_cast<long long>(s / 60),
                  static_cast<long long>(s % 60));
  }
  return buf;
}

void ProgressBar::Update(int64_t done, const std::string& text) {
  done_ = done < 0 ? 0 : (done > total_ ? total_ : done);
  auto now = std::chrono::steady_clock::now();
  if (tty_) {
    if (now - last_draw_ < std::chrono::milliseconds(100) && done_ < total_) return;
    last_draw_ = now;
    Draw(text, false);
  } else {
    int decile = static_cast<int>(done_ * 10 / total_);
    if (decile == last_decile_ || decile == 10) return;  // the final line comes from Finish()
    last_decile_ = decile;
    Draw(text, true);
  }
}

void ProgressBar::Finish(const std::string& text) {
  done_ = total_;
  Draw(text, true);
}

void ProgressBar::Stop(const std::string& text) { Draw(text, true); }

void ProgressBar::Draw(const std::string& text, bool final_line) {
  constexpr int kWidth = 24;
  double elapsed = ElapsedSeconds();
  double frac = static_cast<double>(done_) / static_cast<double>(total_);
  int filled = static_cast<int>(frac * kWidth);
  double rate = elapsed > 0 ? static_cast<double>(done_) / elapsed : 0.0;
  double eta = rate > 0 ? static_cast<double>(total_ - done_) / rate : -1;
  std::ostringstream line;
  line << label_ << " [" << std::string(filled, '#') << std::string(kWidth - filled, '.') << "] ";
  char pct[16];
  std::snprintf(pct, sizeof pct, "%5.1f%%", frac * 100.0);
  char r[32];
  std::snprintf(r, sizeof r, "%.0f %s", rate, unit_.c_str());
  line << pct << " " << r << " " << FormatDuration(elapsed);
  if (done_ < total_) line << " eta " << FormatDuration(eta);
  if (!text.empty()) line << "  " << text;
  if (tty_) {
    out_ << "\r\033[K" << line.str();
    if (final_line) out_ << "\n";
  } else {
    out_ << line.str() << "\n";
  }
  out_.flush();
}

}  // namespace kiln
