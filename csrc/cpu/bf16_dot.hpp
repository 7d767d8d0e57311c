// vdpbf16ps micro-tile helpers shared by the AVX512-BF16 kernels (internal; conv_avx2.cpp,
// gdn_bf16.cpp). The code using them carries SK_BF16_TARGET, so their files build with default
// compiler flags; callers check conv_bf16_available() (conv_avx2.hpp) before running it.
#pragma once
#include <cstdint>
#include <cstring>

// Fully unrolled register-tile loops: without it GCC may keep a micro-tile's accumulator array
// in memory (a store per FMA: the fp32 transposed kernel ran 2x slower).
#define SK_UNROLL _Pragma("GCC unroll 32")

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SK_HAVE_BF16_CODE 1
#include <immintrin.h>
#define SK_BF16_TARGET \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma")))

namespace sk {
namespace detail {

// acc[r][g] += the products of one element pair of MR rows (row r's pair at x + r*ps, two bf16
// read as 32 bits; ONE: a single last element, its partner zero, nothing past it read) with G
// tap vectors (vector g at w + g*ws: 16 lanes x the pair's 2 bf16).
template <int MR, int G, bool ONE>
SK_BF16_TARGET inline void dot_pairs(__m512 (&acc)[MR][G], const uint16_t* x, int64_t ps,
                                     const uint16_t* w, int64_t ws) {
  __m512bh b[G];
  SK_UNROLL for (int g = 0; g < G; ++g) b[g] = (__m512bh)_mm512_loadu_si512(w + g * ws);
  SK_UNROLL for (int r = 0; r < MR; ++r) {
    const uint16_t* xp = x + r * ps;
    int32_t v;
    if (ONE) {
      v = static_cast<int32_t>(*xp);
    } else {
      std::memcpy(&v, xp, 4);
    }
    const __m512bh xb = (__m512bh)_mm512_set1_epi32(v);
    SK_UNROLL for (int g = 0; g < G; ++g) acc[r][g] = _mm512_dpbf16_ps(acc[r][g], b[g], xb);
  }
}

// Lanes [0, valid) of a 16-lane vector (all 16 from valid >= 16).
SK_BF16_TARGET inline __mmask16 lanes16(int64_t valid) {
  return valid >= 16 ? static_cast<__mmask16>(0xFFFF)
                     : static_cast<__mmask16>((1u << valid) - 1u);
}

}  // namespace detail
}  // namespace sk
#else
#define SK_HAVE_BF16_CODE 0
#endif
