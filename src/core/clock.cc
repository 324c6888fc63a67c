#include "kiln/core/clock.h"

namespace kiln {

namespace {

class Steady final : public Clock {
 public:
  time_point Now() const override { return std::chrono::steady_clock::now(); }
  void WaitUntil(std::condition_variable& cv, std::unique_lock<std::mutex>& lock,
                 time_point deadline) const override {
    cv.wait_until(lock, deadline);
  }
};

}  // namespace

Clock* SteadyClock() {
  static Steady* clock = new Steady();  // never destroyed: threads may use it during exit
  return clock;
}

// One hour after the clock's epoch, so that time_point arithmetic before "now" stays positive.
ManualClock::ManualClock() : now_ns_(3'600'000'000'000) {}

Clock::time_point ManualClock::Now() const {
  return time_point(std::chrono::nanoseconds(now_ns_.load(std::memory_order_acquire)));
}

void ManualClock::WaitUntil(std::condition_variable& cv, std::unique_lock<std::mutex>& lock,
                            time_point deadline) const {
  if (Now() >= deadline) return;
  cv.wait_for(lock, std::chrono::milliseconds(1));
}

void ManualClock::Advance(duration d) {
  now_ns_.fetch_add(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count(),
                    std::memory_order_acq_rel);
}

}  // namespace kiln
