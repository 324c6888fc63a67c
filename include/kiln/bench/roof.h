// This machine's compute roof, measured: peak FP32 fused multiply-add and INT8 dot-product
// throughput at a given thread count, from register-only loops (no memory traffic) with enough
// independent accumulators to hide instruction latency. Benchmarks divide a model's achieved
// FLOP/s by these to say how close to the hardware each engine gets.
//
// ISA: AVX-512F + AVX-512 VNNI (vfmadd231ps zmm: 32 FLOP; vpdpbusd zmm: 64 u8 x s8 products,
// counted as 128 ops) when the CPU has them, else AVX2 + FMA (vfmadd231ps ymm: 16 FLOP;
// vpmaddubsw + vpmaddwd + vpaddd: 32 products, 64 ops). Without AVX2 the roof is reported as
// unavailable (isa "none", zeros).
#pragma once

#include <string>
#include <vector>

namespace kiln::bench {

struct RoofPoint {
  int threads = 1;
  double fp32_gflops = 0.0;  // best of the repetitions
  double int8_gops = 0.0;
};

struct Roof {
  std::string isa;  // "avx512-vnni", "avx2-fma" or "none"
  std::vector<RoofPoint> points;
  // The point for `threads` (the closest measured thread count).
  const RoofPoint* At(int threads) const;
};

// Measures each thread count for about `seconds` (split over 5 repetitions; the best counts).
Roof MeasureRoof(const std::vector<int>& threads, double seconds = 0.5);

}  // namespace kiln::bench
