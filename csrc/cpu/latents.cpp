// Quantization of latents to coder symbols and back (see latents.hpp).
//
// channels_last -> NCHW is a transpose of each image row's [W, C] block into [C, W]: 16 pixels x
// 16 channels at a time in AVX-512 registers (convert, transpose, store 16 rows of 16 symbols),
// or 8 x 8 in AVX2 registers on CPUs without AVX-512; the remainders (W or C not multiples of the
// block) run the scalar code, which defines the results.
#include "latents.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

#include "cpu_common.hpp"  // detail::bf16_to_float
#include "amx_tiles.hpp"  // SK_HAVE_AMX_CODE (x86-64 gcc/clang on Linux), run_on_threads
#include "bf16_round.hpp"  // round16_bf16, round8_bf16

namespace sk {

namespace {

enum LatErr { kLOk = 0, kLNoSimd = 1, kLBadArgs = 2 };
constexpr int kLF32 = 0, kLBF16 = 1;

using detail::bf16_to_float;

// round half to even, then cvttss2si semantics (NaN / out of range -> INT32_MIN)
inline int32_t quantize_one(float v, float m) {
  const float r = std::nearbyint(v - m);  // default rounding mode: to nearest, ties to even
  if (!(r >= -2147483648.0f && r < 2147483648.0f)) return INT32_MIN;
  return static_cast<int32_t>(r);
}

inline float load_y(const void* y, int dt, int64_t i) {
  return dt == kLBF16 ? bf16_to_float(static_cast<const uint16_t*>(y)[i])
                      : static_cast<const float*>(y)[i];
}

// Scalar reference of one row (n, h): pixels [w0, w1) x channels [c0, c1).
// Returns the number of INT32_MIN results.
int64_t quantize_row_scalar(const QuantizeArgs& a, int64_t n, int64_t h, int64_t w0, int64_t w1,
                            int64_t c0, int64_t c1) {
  int64_t bad = 0;
  for (int64_t c = c0; c < c1; ++c) {
    int32_t* o = a.out + ((n * a.C + c) * a.H + h) * a.W;
    const float m = a.medians[c];
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t i = a.channels_last ? ((n * a.H + h) * a.W + w) * a.C + c
                                        : ((n * a.C + c) * a.H + h) * a.W + w;
      o[w] = quantize_one(load_y(a.y, a.ydtype, i), m);
      bad += o[w] == INT32_MIN;
    }
  }
  return bad;
}

void dequantize_row_scalar(const DequantizeArgs& a, int64_t n, int64_t h, int64_t w0, int64_t w1,
                           int64_t c0, int64_t c1) {
  for (int64_t w = w0; w < w1; ++w) {
    const int64_t o = ((n * a.H + h) * a.W + w) * a.C;
    for (int64_t c = c0; c < c1; ++c) {
      const float v =
          static_cast<float>(a.sym[((n * a.C + c) * a.H + h) * a.W + w]) + a.medians[c];
      if (a.out_bf16)
        static_cast<uint16_t*>(a.out)[o + c] = detail::to_bf16_bits(v);
      else
        static_cast<float*>(a.out)[o + c] = v;
    }
  }
}

#if SK_HAVE_AMX_CODE
#define SK_LTARGET __attribute__((target("avx512f,avx512bw")))

// In-register transpose of a 16 x 16 block of 32-bit elements (r[i][j] -> r[j][i]).
SK_LTARGET inline void transpose16(__m512i r[16]) {
  __m512i t[16], u[16], v[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int g = 0; g < 16; g += 4) {
    u[g] = _mm512_unpacklo_epi64(t[g], t[g + 2]);
    u[g + 1] = _mm512_unpackhi_epi64(t[g], t[g + 2]);
    u[g + 2] = _mm512_unpacklo_epi64(t[g + 1], t[g + 3]);
    u[g + 3] = _mm512_unpackhi_epi64(t[g + 1], t[g + 3]);
  }
  for (int k = 0; k < 4; ++k) {
    v[k] = _mm512_shuffle_i32x4(u[k], u[4 + k], 0x88);
    v[4 + k] = _mm512_shuffle_i32x4(u[k], u[4 + k], 0xdd);
    v[8 + k] = _mm512_shuffle_i32x4(u[8 + k], u[12 + k], 0x88);
    v[12 + k] = _mm512_shuffle_i32x4(u[8 + k], u[12 + k], 0xdd);
  }
  for (int k = 0; k < 4; ++k) {
    r[k] = _mm512_shuffle_i32x4(v[k], v[8 + k], 0x88);
    r[8 + k] = _mm512_shuffle_i32x4(v[k], v[8 + k], 0xdd);
    r[4 + k] = _mm512_shuffle_i32x4(v[4 + k], v[12 + k], 0x88);
    r[12 + k] = _mm512_shuffle_i32x4(v[4 + k], v[12 + k], 0xdd);
  }
}

SK_LTARGET inline __m512 load16(const void* y, int dt, int64_t i) {
  if (dt == kLBF16) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(
        static_cast<const uint16_t*>(y) + i));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  return _mm512_loadu_ps(static_cast<const float*>(y) + i);
}

// load16 of the lanes in k only (zeros elsewhere; no access past them)
SK_LTARGET inline __m512 load16_masked(const void* y, int dt, int64_t i, __mmask16 k) {
  if (dt == kLBF16) {
    // (a 512-bit masked load with the upper 16 lanes off: AVX512BW, no VL)
    const __m256i h = _mm512_castsi512_si256(
        _mm512_maskz_loadu_epi16(static_cast<__mmask32>(k), static_cast<const uint16_t*>(y) + i));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  return _mm512_maskz_loadu_ps(k, static_cast<const float*>(y) + i);
}

// round half to even, then truncating conversion (exact for integers; NaN / out of range ->
// 0x80000000, as the scalar quantize_one)
SK_LTARGET inline __m512i quantize16(__m512 v, __m512 m) {
  const __m512 r = _mm512_roundscale_ps(_mm512_sub_ps(v, m),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return _mm512_cvttps_epi32(r);
}

// One image row (n, h); returns the number of INT32_MIN results.
SK_LTARGET int64_t quantize_row_simd(const QuantizeArgs& a, int64_t n, int64_t h) {
  const int64_t W = a.W, C = a.C, W16 = W / 16 * 16, C16 = C / 16 * 16;
  const __m512i vmin = _mm512_set1_epi32(INT32_MIN);
  int64_t bad = 0;
  if (!a.channels_last) {  // NCHW: no transpose, 16 pixels of one channel at a time
    for (int64_t c = 0; c < C; ++c) {
      const int64_t base = ((n * C + c) * a.H + h) * W;
      const __m512 m = _mm512_set1_ps(a.medians[c]);
      for (int64_t w = 0; w < W16; w += 16) {
        const __m512i r = quantize16(load16(a.y, a.ydtype, base + w), m);
        bad += __builtin_popcount(_mm512_cmpeq_epi32_mask(r, vmin));
        _mm512_storeu_si512(a.out + base + w, r);
      }
    }
    if (W16 < W) bad += quantize_row_scalar(a, n, h, W16, W, 0, C);
    return bad;
  }
  const int64_t row = (n * a.H + h) * W * C;
  for (int64_t c0 = 0; c0 < C16; c0 += 16) {
    const __m512 m = _mm512_loadu_ps(a.medians + c0);
    int32_t* o = a.out + ((n * C + c0) * a.H + h) * W;  // channel c0 + j at o + j*H*W
    const int64_t plane = a.H * W;
    for (int64_t w0 = 0; w0 < W16; w0 += 16) {
      __m512i r[16];
      for (int i = 0; i < 16; ++i) {
        r[i] = quantize16(load16(a.y, a.ydtype, row + (w0 + i) * C + c0), m);
        bad += __builtin_popcount(_mm512_cmpeq_epi32_mask(r[i], vmin));
      }
      transpose16(r);
      for (int j = 0; j < 16; ++j) _mm512_storeu_si512(o + j * plane + w0, r[j]);
    }
  }
  if (C16 < C) {  // the last C - C16 channels: masked loads, the same transpose, ct rows stored
    const int64_t ct = C - C16, plane = a.H * W;
    const __mmask16 k = static_cast<__mmask16>((1u << ct) - 1u);
    const __m512 m = _mm512_maskz_loadu_ps(k, a.medians + C16);
    int32_t* o = a.out + ((n * C + C16) * a.H + h) * W;
    for (int64_t w0 = 0; w0 < W16; w0 += 16) {
      __m512i r[16];
      for (int i = 0; i < 16; ++i) {
        r[i] = quantize16(load16_masked(a.y, a.ydtype, row + (w0 + i) * C + C16, k), m);
        bad += __builtin_popcount(_mm512_mask_cmpeq_epi32_mask(k, r[i], vmin));
      }
      transpose16(r);
      for (int64_t j = 0; j < ct; ++j) _mm512_storeu_si512(o + j * plane + w0, r[j]);
    }
  }
  if (W16 < W) bad += quantize_row_scalar(a, n, h, W16, W, 0, C);
  return bad;
}

// 16 floats at dst (element offset) as fp32, or as bf16 rounded to nearest even (integer
// arithmetic: no AVX512-BF16 needed), under mask k.
SK_LTARGET inline void store16(const DequantizeArgs& a, int64_t dst, __m512 v, __mmask16 k) {
  if (a.out_bf16) {
    _mm512_mask_cvtepi32_storeu_epi16(static_cast<uint16_t*>(a.out) + dst, k, round16_bf16(v));
  } else {
    _mm512_mask_storeu_ps(static_cast<float*>(a.out) + dst, k, v);
  }
}

SK_LTARGET void dequantize_row_simd(const DequantizeArgs& a, int64_t n, int64_t h) {
  const int64_t W = a.W, C = a.C, W16 = W / 16 * 16, C16 = C / 16 * 16;
  const int64_t plane = a.H * W;
  const int64_t orow = (n * a.H + h) * W * C;
  for (int64_t c0 = 0; c0 < C16; c0 += 16) {
    const __m512 m = _mm512_loadu_ps(a.medians + c0);
    const int32_t* s = a.sym + ((n * C + c0) * a.H + h) * W;
    for (int64_t w0 = 0; w0 < W16; w0 += 16) {
      __m512i r[16];
      for (int j = 0; j < 16; ++j) r[j] = _mm512_loadu_si512(s + j * plane + w0);
      transpose16(r);
      for (int i = 0; i < 16; ++i)
        store16(a, orow + (w0 + i) * C + c0, _mm512_add_ps(_mm512_cvtepi32_ps(r[i]), m),
                static_cast<__mmask16>(0xFFFF));
    }
  }
  if (C16 < C) {  // the last C - C16 channels: ct rows loaded (zeros above), masked stores
    const int64_t ct = C - C16;
    const __mmask16 k = static_cast<__mmask16>((1u << ct) - 1u);
    const __m512 m = _mm512_maskz_loadu_ps(k, a.medians + C16);
    const int32_t* s = a.sym + ((n * C + C16) * a.H + h) * W;
    for (int64_t w0 = 0; w0 < W16; w0 += 16) {
      __m512i r[16];
      for (int64_t j = 0; j < 16; ++j)
        r[j] = j < ct ? _mm512_loadu_si512(s + j * plane + w0) : _mm512_setzero_si512();
      transpose16(r);
      for (int i = 0; i < 16; ++i)
        store16(a, orow + (w0 + i) * C + C16, _mm512_add_ps(_mm512_cvtepi32_ps(r[i]), m), k);
    }
  }
  if (W16 < W) dequantize_row_scalar(a, n, h, W16, W, 0, C);
}

// ---- the same on AVX2 (8 x 8 blocks), for CPUs without AVX-512 -------------------------------
#define SK_L2TARGET __attribute__((target("avx2,fma")))

SK_L2TARGET inline void transpose8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

SK_L2TARGET inline __m256 load8(const void* y, int dt, int64_t i) {
  if (dt == kLBF16) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(
        static_cast<const uint16_t*>(y) + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  return _mm256_loadu_ps(static_cast<const float*>(y) + i);
}

// as quantize16: round half to even, truncating conversion (NaN / out of range -> 0x80000000)
SK_L2TARGET inline __m256i quantize8(__m256 v, __m256 m) {
  return _mm256_cvttps_epi32(_mm256_round_ps(_mm256_sub_ps(v, m),
                                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

SK_L2TARGET inline int64_t count_min8(__m256i r) {
  const __m256i eq = _mm256_cmpeq_epi32(r, _mm256_set1_epi32(INT32_MIN));
  return __builtin_popcount(_mm256_movemask_ps(_mm256_castsi256_ps(eq)));
}

SK_L2TARGET int64_t quantize_row_avx2(const QuantizeArgs& a, int64_t n, int64_t h) {
  const int64_t W = a.W, C = a.C, W8 = W / 8 * 8, C8 = C / 8 * 8;
  int64_t bad = 0;
  if (!a.channels_last) {
    for (int64_t c = 0; c < C; ++c) {
      const int64_t base = ((n * C + c) * a.H + h) * W;
      const __m256 m = _mm256_set1_ps(a.medians[c]);
      for (int64_t w = 0; w < W8; w += 8) {
        const __m256i r = quantize8(load8(a.y, a.ydtype, base + w), m);
        bad += count_min8(r);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(a.out + base + w), r);
      }
    }
    if (W8 < W) bad += quantize_row_scalar(a, n, h, W8, W, 0, C);
    return bad;
  }
  const int64_t row = (n * a.H + h) * W * C, plane = a.H * W;
  for (int64_t c0 = 0; c0 < C8; c0 += 8) {
    const __m256 m = _mm256_loadu_ps(a.medians + c0);
    int32_t* o = a.out + ((n * C + c0) * a.H + h) * W;
    for (int64_t w0 = 0; w0 < W8; w0 += 8) {
      __m256 r[8];
      for (int i = 0; i < 8; ++i) {
        const __m256i q = quantize8(load8(a.y, a.ydtype, row + (w0 + i) * C + c0), m);
        bad += count_min8(q);
        r[i] = _mm256_castsi256_ps(q);
      }
      transpose8(r);
      for (int j = 0; j < 8; ++j)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + j * plane + w0),
                            _mm256_castps_si256(r[j]));
    }
  }
  if (W8 < W) bad += quantize_row_scalar(a, n, h, W8, W, 0, C8);
  if (C8 < C) bad += quantize_row_scalar(a, n, h, 0, W, C8, C);
  return bad;
}

// 8 floats at dst (element offset) as fp32, or as bf16 rounded to nearest even.
SK_L2TARGET inline void store8(const DequantizeArgs& a, int64_t dst, __m256 v) {
  if (a.out_bf16) {
    const __m256i r = round8_bf16(v);
    // 8 x 32-bit -> 8 x 16-bit (values < 2^16): pack within lanes, then gather the two halves
    const __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(a.out) + dst),
                     _mm256_castsi256_si128(p));
  } else {
    _mm256_storeu_ps(static_cast<float*>(a.out) + dst, v);
  }
}

SK_L2TARGET void dequantize_row_avx2(const DequantizeArgs& a, int64_t n, int64_t h) {
  const int64_t W = a.W, C = a.C, W8 = W / 8 * 8, C8 = C / 8 * 8;
  const int64_t plane = a.H * W;
  const int64_t orow = (n * a.H + h) * W * C;
  for (int64_t c0 = 0; c0 < C8; c0 += 8) {
    const __m256 m = _mm256_loadu_ps(a.medians + c0);
    const int32_t* s = a.sym + ((n * C + c0) * a.H + h) * W;
    for (int64_t w0 = 0; w0 < W8; w0 += 8) {
      __m256 r[8];
      for (int j = 0; j < 8; ++j)
        r[j] = _mm256_castsi256_ps(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + j * plane + w0)));
      transpose8(r);
      for (int i = 0; i < 8; ++i)
        store8(a, orow + (w0 + i) * C + c0,
               _mm256_add_ps(_mm256_cvtepi32_ps(_mm256_castps_si256(r[i])), m));
    }
  }
  if (W8 < W) dequantize_row_scalar(a, n, h, W8, W, 0, C8);
  if (C8 < C) dequantize_row_scalar(a, n, h, 0, W, C8, C);
}
#endif  // SK_HAVE_AMX_CODE

}  // namespace

namespace {
// The AVX-512 row kernels where the CPU has them; -DSK_LATENTS_AVX2 builds (a test driver,
// tests/csrc/latents_file.cpp) take the AVX2 ones on any CPU.
inline bool avx512_rows() {
#if defined(SK_LATENTS_AVX2)
  return false;
#else
  return cpu_avx512bw();
#endif
}
}  // namespace

bool latents_simd_available() {
#if SK_HAVE_AMX_CODE
  static const bool ok = cpu_avx512bw() ||
                         (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"));
  return ok;
#else
  return false;
#endif
}

const char* latents_error_message(int code) {
  switch (code) {
    case kLOk: return "ok";
    case kLNoSimd: return "neither AVX-512 (F + BW) nor AVX2 + FMA is available on this CPU (or "
                          "this build)";
    case kLBadArgs: return "bad arguments (null pointer, negative or overflowing size or unknown "
                           "dtype)";
  }
  return "unknown error";
}

int quantize_latents(const QuantizeArgs& a) {
  if (!latents_simd_available()) return kLNoSimd;
  int64_t count = 0;
  if (!detail::sizes_ok(a.N, a.C, a.H, a.W, &count) || (a.ydtype != kLF32 && a.ydtype != kLBF16))
    return kLBadArgs;
  if (count == 0) return kLOk;
  if (a.y == nullptr || a.medians == nullptr || a.out == nullptr) return kLBadArgs;
#if SK_HAVE_AMX_CODE
  std::atomic<int64_t> bad{0};
  const bool wide = avx512_rows();
  for_rows(a.N * a.H, a.W * a.C, a.nthreads, [&](int64_t r) {
    const int64_t b = wide ? quantize_row_simd(a, r / a.H, r % a.H)
                           : quantize_row_avx2(a, r / a.H, r % a.H);
    if (b) bad.fetch_add(b, std::memory_order_relaxed);
  });
  if (a.invalid) *a.invalid = bad.load();
#endif
  return kLOk;
}

int dequantize_latents(const DequantizeArgs& a) {
  if (!latents_simd_available()) return kLNoSimd;
  int64_t count = 0;
  if (!detail::sizes_ok(a.N, a.C, a.H, a.W, &count) || (a.out_bf16 != 0 && a.out_bf16 != 1))
    return kLBadArgs;
  if (count == 0) return kLOk;
  if (a.sym == nullptr || a.medians == nullptr || a.out == nullptr) return kLBadArgs;
#if SK_HAVE_AMX_CODE
  const bool wide = avx512_rows();
  for_rows(a.N * a.H, a.W * a.C, a.nthreads, [&](int64_t r) {
    if (wide) {
      dequantize_row_simd(a, r / a.H, r % a.H);
    } else {
      dequantize_row_avx2(a, r / a.H, r % a.H);
    }
  });
#endif
  return kLOk;
}

}  // namespace sk
