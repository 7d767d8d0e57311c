// AVX2 + FMA helpers shared by the fp32 CPU kernels (internal). The code using them carries
// SK_AVX2_TARGET, so its files build with default compiler flags; callers check
// gdn_avx2_available() (gdn_avx2.hpp) before running it.
#pragma once
#include <cstdint>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SK_HAVE_AVX2_CODE 1
#include <immintrin.h>
#define SK_AVX2_TARGET __attribute__((target("avx2,fma")))

namespace sk {
namespace detail {

// Lanes [0, valid) of an 8-float vector (valid clamped to 0..8).
SK_AVX2_TARGET inline __m256i lane_mask(int64_t valid) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(valid)), idx);
}

// The CPU has AVX-512F, AVX2 and FMA (what the fp32 AVX-512 kernels' target attributes use;
// checked once per process).
inline bool avx512f_available() {
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
           __builtin_cpu_supports("fma");
  }();
  return ok;
}

}  // namespace detail
}  // namespace sk
#else
#define SK_HAVE_AVX2_CODE 0
#endif
