// A clock seam: what reads the time or waits for a deadline takes a Clock*, so a test can run
// it on a ManualClock and decide when time passes (LevelDB's Env, Triton's tests of the dynamic
// batcher). Production code passes SteadyClock().
//
//   std::unique_lock l(mu);
//   while (!ready && clock->Now() < deadline) clock->WaitUntil(cv, l, deadline);
//
// WaitUntil may return early (a notify, a spurious wake-up, or, on a ManualClock, a tick of its
// polling): callers re-check their condition and the time, as with a condition variable.
// Thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>

namespace kiln {

class Clock {
 public:
  using time_point = std::chrono::steady_clock::time_point;
  using duration = std::chrono::steady_clock::duration;

  virtual ~Clock() = default;
  virtual time_point Now() const = 0;
  // Blocks on `cv` (with `lock` held on entry and on return) until notified or until Now()
  // reaches `deadline`, whichever comes first.
  virtual void WaitUntil(std::condition_variable& cv, std::unique_lock<std::mutex>& lock,
                         time_point deadline) const = 0;
};

// std::chrono::steady_clock. Never destroyed.
Clock* SteadyClock();

// Time stands still until Advance() or Set(). A waiter on a deadline that time reaches wakes
// within about a millisecond of real time (WaitUntil polls: the waiter's condition variable is
// its own, so Advance cannot notify it). Starts at an arbitrary fixed point.
class ManualClock : public Clock {
 public:
  ManualClock();
  time_point Now() const override;
  void WaitUntil(std::condition_variable& cv, std::unique_lock<std::mutex>& lock,
                 time_point deadline) const override;
  void Advance(duration d);

 private:
  std::atomic<int64_t> now_ns_;
};

}  // namespace kiln
