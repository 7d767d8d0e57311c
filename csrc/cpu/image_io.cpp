// The image <-> transform conversions (see image_io.hpp).
//
// fp32 -> bf16 rounds as torch does (bf16_round.hpp: integer arithmetic, subnormals kept). NCHW
// input: 32 pixels of each of the C = 3 planes are rounded in registers and interleaved by
// two-source permutes into 96 channels_last elements; other channel counts go through a scalar
// loop.
#include "image_io.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "amx_tiles.hpp"  // SK_HAVE_AMX_CODE, for_rows, cpu_avx512bw
#include "bf16_round.hpp"  // round16_bf16
#include "cpu_common.hpp"  // detail::to_bf16_bits, detail::bf16_to_float

namespace sk {

namespace {
enum ImgErr { kIOk = 0, kIBadArgs = 1 };

using detail::bf16_to_float;
using detail::to_bf16_bits;

// NaN kept (std::min / std::max would turn it into a bound)
inline float clamp_keep_nan(float v, float lo, float hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

// The value range of a row (see ImageToBf16Args::range): min, max and whether a NaN was seen.
struct Range {
  float lo = INFINITY, hi = -INFINITY;
  bool nan = false;
  void add(float v) {
    if (v != v) nan = true;
    lo = v < lo ? v : lo;
    hi = v > hi ? v : hi;
  }
  void add(const Range& o) {
    nan = nan || o.nan;
    lo = std::min(lo, o.lo);
    hi = std::max(hi, o.hi);
  }
};

// Scalar: pixels [w0, w1) of row (n, h); their values into rg.
void to_bf16_row_scalar(const ImageToBf16Args& a, int64_t n, int64_t h, int64_t w0, int64_t w1,
                        Range& rg) {
  uint16_t* o = a.out + (n * a.H + h) * a.W * a.C;
  for (int64_t w = w0; w < w1; ++w)
    for (int64_t c = 0; c < a.C; ++c) {
      const int64_t i = a.channels_last ? ((n * a.H + h) * a.W + w) * a.C + c
                                        : ((n * a.C + c) * a.H + h) * a.W + w;
      o[w * a.C + c] = to_bf16_bits(a.x[i]);
      rg.add(a.x[i]);
    }
}

#if SK_HAVE_AMX_CODE
#define SK_ITARGET __attribute__((target("avx512f,avx512bw")))

// Running min / max of vectors and whether a lane was NaN (min / max return their second
// operand when one is NaN: the loaded value second, so a NaN lane does not stick; hence the mask).
struct VRange {
  __m512 lo, hi;
  __mmask16 nan;
};

SK_ITARGET inline VRange vrange_init() {
  return VRange{_mm512_set1_ps(INFINITY), _mm512_set1_ps(-INFINITY), 0};
}

SK_ITARGET inline void vrange_add(VRange& r, __m512 v) {
  r.lo = _mm512_min_ps(r.lo, v);
  r.hi = _mm512_max_ps(r.hi, v);
  r.nan = static_cast<__mmask16>(r.nan | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q));
}

// (through memory: gcc 12's _mm512_reduce_min_ps, inlined into value_range's pass, warned of an
// uninitialized value, a false positive)
SK_ITARGET inline void vrange_into(const VRange& r, Range& rg) {
  alignas(64) float lo[16], hi[16];
  _mm512_store_ps(lo, r.lo);
  _mm512_store_ps(hi, r.hi);
  rg.add(Range{*std::min_element(lo, lo + 16), *std::max_element(hi, hi + 16), r.nan != 0});
}

// 32 fp32 at p -> 32 bf16 in one register (lane order kept); the values into r
SK_ITARGET inline __m512i round32(const float* p, VRange& r) {
  const __m512 a = _mm512_loadu_ps(p), b = _mm512_loadu_ps(p + 16);
  vrange_add(r, a);
  vrange_add(r, b);
  const __m256i lo = _mm512_cvtepi32_epi16(round16_bf16(a));
  const __m256i hi = _mm512_cvtepi32_epi16(round16_bf16(b));
  return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

// Interleave indexes: output vector j (elements 32j..32j+31 of 32 pixels x 3 channels), element
// k = pixel p = (32j + k) / 3, channel c = (32j + k) % 3. idx01[j]: for c < 2, p from plane c
// (index p + 32c of the pair (P0, P1)); idx2[j]: p for the lanes with c == 2 (mask m2[j]).
struct Interleave3 {
  alignas(64) uint16_t idx01[3][32];
  alignas(64) uint16_t idx2[3][32];
  uint32_t m2[3];
  Interleave3() {
    for (int j = 0; j < 3; ++j) {
      m2[j] = 0;
      for (int k = 0; k < 32; ++k) {
        const int e = 32 * j + k, p = e / 3, c = e % 3;
        idx01[j][k] = static_cast<uint16_t>(c < 2 ? p + 32 * c : 0);
        idx2[j][k] = static_cast<uint16_t>(p);
        if (c == 2) m2[j] |= 1u << k;
      }
    }
  }
};

SK_ITARGET void to_bf16_row_simd(const ImageToBf16Args& a, int64_t n, int64_t h, Range& rg) {
  const int64_t W = a.W, C = a.C;
  uint16_t* o = a.out + (n * a.H + h) * W * C;
  VRange vr = vrange_init();
  if (a.channels_last) {  // a flat cast of the row
    const float* x = a.x + (n * a.H + h) * W * C;
    const int64_t m = W * C, m32 = m / 32 * 32;
    for (int64_t i = 0; i < m32; i += 32) _mm512_storeu_si512(o + i, round32(x + i, vr));
    for (int64_t i = m32; i < m; ++i) {
      o[i] = to_bf16_bits(x[i]);
      rg.add(x[i]);
    }
    vrange_into(vr, rg);
    return;
  }
  if (C != 3) {
    to_bf16_row_scalar(a, n, h, 0, W, rg);
    return;
  }
  static const Interleave3 il;
  const float* p0 = a.x + ((n * 3 + 0) * a.H + h) * W;
  const float* p1 = p0 + a.H * W;
  const float* p2 = p1 + a.H * W;
  const int64_t W32 = W / 32 * 32;
  for (int64_t w = 0; w < W32; w += 32) {
    const __m512i r0 = round32(p0 + w, vr), r1 = round32(p1 + w, vr), r2 = round32(p2 + w, vr);
    uint16_t* d = o + w * 3;
    for (int j = 0; j < 3; ++j) {
      __m512i v = _mm512_permutex2var_epi16(r0, _mm512_load_si512(il.idx01[j]), r1);
      v = _mm512_mask_permutexvar_epi16(v, il.m2[j], _mm512_load_si512(il.idx2[j]), r2);
      _mm512_storeu_si512(d + 32 * j, v);
    }
  }
  if (W32 < W) to_bf16_row_scalar(a, n, h, W32, W, rg);
  vrange_into(vr, rg);
}

// Values [i0, i1) of x into rg.
SK_ITARGET void range_simd(const float* x, int64_t i0, int64_t i1, Range& rg) {
  VRange vr = vrange_init(), vr2 = vrange_init();  // (two chains: min / max latency)
  int64_t i = i0;
  for (; i + 32 <= i1; i += 32) {
    vrange_add(vr, _mm512_loadu_ps(x + i));
    vrange_add(vr2, _mm512_loadu_ps(x + i + 16));
  }
  for (; i < i1; ++i) rg.add(x[i]);
  vrange_into(vr, rg);
  vrange_into(vr2, rg);
}

SK_ITARGET void to_image_simd(const Bf16ToImageArgs& a, int64_t i0, int64_t i1) {
  const __m512 lo = _mm512_set1_ps(a.lo), hi = _mm512_set1_ps(a.hi);
  int64_t i = i0;
  for (; i + 16 <= i1; i += 16) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.x + i));
    const __m512 v = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    // max / min return their second operand when either is NaN: v second keeps NaN
    _mm512_storeu_ps(a.out + i, _mm512_min_ps(hi, _mm512_max_ps(lo, v)));
  }
  for (; i < i1; ++i) a.out[i] = clamp_keep_nan(bf16_to_float(a.x[i]), a.lo, a.hi);
}
#endif  // SK_HAVE_AMX_CODE

// The range of all the parts into out {min, max}: both NaN when one part saw a NaN.
void store_range(const std::vector<Range>& parts, float* out) {
  Range all;
  for (const Range& r : parts) all.add(r);
  out[0] = all.nan ? NAN : all.lo;
  out[1] = all.nan ? NAN : all.hi;
}

}  // namespace

bool image_io_simd_available() { return cpu_avx512bw(); }

const char* image_io_error_message(int code) {
  switch (code) {
    case kIOk: return "ok";
    case kIBadArgs: return "bad arguments (null pointer, negative or overflowing size; "
                           "bf16_to_image: lo > hi or a bound not finite)";
  }
  return "unknown error";
}

int image_to_bf16(const ImageToBf16Args& a) {
  int64_t count = 0;
  if (!detail::sizes_ok(a.N, a.C, a.H, a.W, &count)) return kIBadArgs;
  if (count == 0) return kIOk;
  if (a.x == nullptr || a.out == nullptr) return kIBadArgs;
  const bool wide = image_io_simd_available();
  // one Range per row (a few KB), merged after: rows run on any thread
  std::vector<Range> rows(static_cast<size_t>(a.range ? a.N * a.H : 0));
  for_rows(a.N * a.H, a.W * a.C, a.nthreads, [&](int64_t r) {
    Range local;
    Range& rg = a.range ? rows[static_cast<size_t>(r)] : local;
#if SK_HAVE_AMX_CODE
    if (wide) {
      to_bf16_row_simd(a, r / a.H, r % a.H, rg);
      return;
    }
#endif
    to_bf16_row_scalar(a, r / a.H, r % a.H, 0, a.W, rg);
  });
  (void)wide;
  if (a.range) store_range(rows, a.range);
  return kIOk;
}

int value_range(const ValueRangeArgs& a) {
  if (a.n < 0 || a.range == nullptr) return kIBadArgs;
  if (a.n == 0) {
    a.range[0] = a.range[1] = 0.0f;
    return kIOk;
  }
  if (a.x == nullptr) return kIBadArgs;
  const bool wide = image_io_simd_available();
  constexpr int64_t kChunk = 16384;  // values per unit of work
  const int64_t chunks = (a.n + kChunk - 1) / kChunk;
  std::vector<Range> parts(static_cast<size_t>(chunks));
  for_rows(chunks, kChunk, a.nthreads, [&](int64_t r) {
    const int64_t i0 = r * kChunk, i1 = std::min(a.n, i0 + kChunk);
    Range& rg = parts[static_cast<size_t>(r)];
#if SK_HAVE_AMX_CODE
    if (wide) {
      range_simd(a.x, i0, i1, rg);
      return;
    }
#endif
    for (int64_t i = i0; i < i1; ++i) rg.add(a.x[i]);
  });
  (void)wide;
  store_range(parts, a.range);
  return kIOk;
}

int bf16_to_image(const Bf16ToImageArgs& a) {
  if (a.n < 0 || !(a.lo <= a.hi) || !std::isfinite(a.lo) || !std::isfinite(a.hi))
    return kIBadArgs;
  if (a.n == 0) return kIOk;
  if (a.x == nullptr || a.out == nullptr) return kIBadArgs;
  const bool wide = image_io_simd_available();
  constexpr int64_t kRow = 4096;  // elements per unit of work
  for_rows((a.n + kRow - 1) / kRow, kRow, a.nthreads, [&](int64_t r) {
    const int64_t i0 = r * kRow, i1 = std::min(a.n, i0 + kRow);
#if SK_HAVE_AMX_CODE
    if (wide) {
      to_image_simd(a, i0, i1);
      return;
    }
#endif
    for (int64_t i = i0; i < i1; ++i) a.out[i] = clamp_keep_nan(bf16_to_float(a.x[i]), a.lo, a.hi);
  });
  (void)wide;
  return kIOk;
}

}  // namespace sk
