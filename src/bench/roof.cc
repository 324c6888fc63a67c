#include "kiln/bench/roof.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <thread>

namespace kiln::bench {

namespace {

using Clock = std::chrono::steady_clock;

// 16 independent accumulators: enough for 2 FMA ports x 4-5 cycles of latency.
__attribute__((target("avx512f"))) double Fp32Avx512(int64_t iterations) {
  __m512 acc[16];
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i) * 1e-3f);
  const __m512 a = _mm512_set1_ps(0.999999f);
  const __m512 b = _mm512_set1_ps(1e-7f);
  for (int64_t n = 0; n < iterations; ++n) {
    for (int i = 0; i < 16; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
  }
  __m512 sum = acc[0];
  for (int i = 1; i < 16; ++i) sum = _mm512_add_ps(sum, acc[i]);
  alignas(64) float out[16];
  _mm512_store_ps(out, sum);  // (GCC 12 warns falsely inside _mm512_reduce_add_ps)
  double s = 0;
  for (float v : out) s += v;
  return s;
}

__attribute__((target("avx512f,avx512vnni"))) double Int8Vnni(int64_t iterations) {
  __m512i acc[16];
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_set1_epi32(i);
  const __m512i a = _mm512_set1_epi8(3);
  const __m512i b = _mm512_set1_epi8(-2);
  for (int64_t n = 0; n < iterations; ++n) {
    for (int i = 0; i < 16; ++i) acc[i] = _mm512_dpbusd_epi32(acc[i], a, b);
  }
  __m512i sum = acc[0];
  for (int i = 1; i < 16; ++i) sum = _mm512_add_epi32(sum, acc[i]);
  alignas(64) int32_t out[16];
  _mm512_store_si512(out, sum);
  double s = 0;
  for (int32_t v : out) s += v;
  return s;
}

__attribute__((target("avx2,fma"))) double Fp32Avx2(int64_t iterations) {
  __m256 acc[16];
  for (int i = 0; i < 16; ++i) acc[i] = _mm256_set1_ps(static_cast<float>(i) * 1e-3f);
  const __m256 a = _mm256_set1_ps(0.999999f);
  const __m256 b = _mm256_set1_ps(1e-7f);
  for (int64_t n = 0; n < iterations; ++n) {
    for (int i = 0; i < 16; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  }
  __m256 sum = acc[0];
  for (int i = 1; i < 16; ++i) sum = _mm256_add_ps(sum, acc[i]);
  alignas(32) float out[8];
  _mm256_store_ps(out, sum);
  double s = 0;
  for (float v : out) s += v;
  return s;
}

__attribute__((target("avx2"))) double Int8Avx2(int64_t iterations) {
  __m256i acc[8];
  for (int i = 0; i < 8; ++i) acc[i] = _mm256_set1_epi32(i);
  const __m256i a = _mm256_set1_epi8(3);
  const __m256i b = _mm256_set1_epi8(-2);
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t n = 0; n < iterations; ++n) {
    for (int i = 0; i < 8; ++i) {
      const __m256i p = _mm256_maddubs_epi16(a, b);  // 32 u8 x s8 products, pairwise sums
      acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(p, ones));
    }
  }
  __m256i sum = acc[0];
  for (int i = 1; i < 8; ++i) sum = _mm256_add_epi32(sum, acc[i]);
  alignas(32) int32_t out[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(out), sum);
  double s = 0;
  for (int32_t v : out) s += v;
  return s;
}

std::atomic<double> g_sink{0.0};

// Runs `kernel(iterations)` on `threads` threads at once; returns ops per second.
template <typename Kernel>
double Rate(Kernel kernel, int threads, double ops_per_iteration, double seconds) {
  // Calibrate: iterations that take about `seconds` / 5 on one thread.
  int64_t iterations = 1 << 14;
  for (;;) {
    const auto t0 = Clock::now();
    g_sink = g_sink + kernel(iterations);
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (s > seconds / 20 || iterations > (int64_t{1} << 34)) {
      iterations = static_cast<int64_t>(static_cast<double>(iterations) * (seconds / 5) / std::max(s, 1e-6));
      break;
    }
    iterations *= 4;
  }
  iterations = std::max<int64_t>(iterations, 1024);
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    std::atomic<int> ready{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&] {
        ready.fetch_add(1);
        while (!go.load()) std::this_thread::yield();
        g_sink = g_sink + kernel(iterations);
      });
    }
    while (ready.load() < threads) std::this_thread::yield();
    const auto t0 = Clock::now();
    go = true;
    for (auto& th : pool) th.join();
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    best = std::max(best, ops_per_iteration * static_cast<double>(iterations) * threads / s);
  }
  return best;
}

}  // namespace

const RoofPoint* Roof::At(int threads) const {
  const RoofPoint* best = nullptr;
  for (const RoofPoint& p : points) {
    if (best == nullptr || std::abs(p.threads - threads) < std::abs(best->threads - threads)) best = &p;
  }
  return best;
}

Roof MeasureRoof(const std::vector<int>& threads, double seconds) {
  Roof roof;
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vnni");
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  roof.isa = avx512 ? "avx512-vnni" : avx2 ? "avx2-fma" : "none";
  for (int t : threads) {
    RoofPoint p;
    p.threads = t;
    if (avx512) {
      p.fp32_gflops = Rate(Fp32Avx512, t, 16 * 32.0, seconds) / 1e9;
      p.int8_gops = Rate(Int8Vnni, t, 16 * 128.0, seconds) / 1e9;
    } else if (avx2) {
      p.fp32_gflops = Rate(Fp32Avx2, t, 16 * 16.0, seconds) / 1e9;
      p.int8_gops = Rate(Int8Avx2, t, 8 * 64.0, seconds) / 1e9;
    }
    roof.points.push_back(p);
  }
  return roof;
}

}  // namespace kiln::bench
