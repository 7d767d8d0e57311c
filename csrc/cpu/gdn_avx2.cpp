// Fused fp32 GDN / IGDN forward on AVX2 + FMA (see gdn_avx2.hpp).
//
// channels_last x is [P, C] (P = N * HW pixels, channel stride 1). Work unit: a block of up to
// kPix pixels (NCHW: of one image, transposed into a [kPix][C] buffer first and back after).
// Per block:
//   1. z = x^2 (fp32) into a per-thread buffer [kPix][C] (L1-resident);
//   2. per panel of 16 output channels (gamma^T packed once per call as [C][16] panels, zero
//      past C): micro-tiles of kMr pixels x 16 channels accumulate n in 12 ymm registers
//      (broadcast z, two B loads, 2 * kMr FMAs per input channel), the panel staying in L1
//      across the block's micro-tiles;
//   3. epilogue on the registers: n += beta, y = x / sqrt(n) (IGDN x * sqrt(n)) by a refined
//      reciprocal square root (rsqrt_nr), stored with a mask on the last panel.
#include "gdn_avx2.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>
#if defined(_OPENMP)
#include <omp.h>
#endif

#include "amx_tiles.hpp"  // run_on_threads
#include "cpu_common.hpp"

#include "avx2_common.hpp"

namespace sk {

namespace {
enum Avx2Err { kAOk = 0, kANoAvx2 = 1, kABadArgs = 2, kANoMem = 3 };

using FloatBuf = detail::Buf<float>;

constexpr int kMr = 6;     // pixels per micro-tile (12 accumulators + 2 B + 1 broadcast ymm)
constexpr int kPix = 24;   // pixels per block: z (24 x C fp32) + one B panel stay in L1
}  // namespace

const char* gdn_avx2_error_message(int code) {
  switch (code) {
    case kAOk: return "ok";
    case kANoAvx2: return "AVX2 + FMA is not available on this CPU; use the PyTorch path";
    case kABadArgs:
      return "bad arguments (the AVX2 kernel covers fp32 or bf16 x, NCHW or channels_last; the "
             "factors r only for fp32 channels_last; gamma fp32 or bf16, C >= 1; a packed gamma "
             "buffer 32-byte aligned)";
    case kANoMem: return "out of memory for the packed gamma or a per-thread buffer";
  }
  return "unknown error";
}

#if SK_HAVE_AVX2_CODE

bool gdn_avx2_available() {
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return ok;
}

namespace {

using detail::lane_mask;

// sqrt(n) (want_sqrt) or 1 / sqrt(n) from the hardware estimate (12 bits) and one Newton step
// r = r0 / 2 * (3 - n * r0^2): within a few ulp of the correctly rounded fp32 value (relative
// error < 1e-6, measured against float64 in the tests), and on Zen 3 ~4x the throughput of
// vsqrtps + vdivps, which share one divider and cost ~30 % of the kernel at 48 channels.
// n > 0 and finite here (n = beta + gamma x^2 with beta > 0); n = inf (x^2 overflowing) gives
// NaN, as does n = 0, where the exact form gives 0 or inf.
SK_AVX2_TARGET inline __m256 rsqrt_nr(__m256 n, bool want_sqrt) {
  const __m256 r0 = _mm256_rsqrt_ps(n);
  const __m256 t = _mm256_mul_ps(n, r0);                                   // n r0
  const __m256 u = _mm256_fnmadd_ps(t, r0, _mm256_set1_ps(3.0f));          // 3 - n r0^2
  return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), want_sqrt ? t : r0), u);
}

// The epilogue of one pixel row: n = acc + beta, y = x / sqrt(n) (IGDN x * sqrt(n)) on
// channels [0, valid) of the panel (all 16 when full).
// rr (nullable): the factors themselves, stored at the same offsets as y.
SK_AVX2_TARGET inline void finish(__m256 a0, __m256 a1, __m256 be0, __m256 be1, const float* xr,
                                  float* yr, float* rr, bool full, __m256i m0, __m256i m1,
                                  bool inverse) {
  const __m256 s0 = rsqrt_nr(_mm256_add_ps(a0, be0), inverse);
  const __m256 s1 = rsqrt_nr(_mm256_add_ps(a1, be1), inverse);
  if (full) {
    _mm256_storeu_ps(yr, _mm256_mul_ps(_mm256_loadu_ps(xr), s0));
    _mm256_storeu_ps(yr + 8, _mm256_mul_ps(_mm256_loadu_ps(xr + 8), s1));
    if (rr != nullptr) {
      _mm256_storeu_ps(rr, s0);
      _mm256_storeu_ps(rr + 8, s1);
    }
  } else {
    _mm256_maskstore_ps(yr, m0, _mm256_mul_ps(_mm256_maskload_ps(xr, m0), s0));
    _mm256_maskstore_ps(yr + 8, m1, _mm256_mul_ps(_mm256_maskload_ps(xr + 8, m1), s1));
    if (rr != nullptr) {
      _mm256_maskstore_ps(rr, m0, s0);
      _mm256_maskstore_ps(rr + 8, m1, s1);
    }
  }
}

// MR pixels (z rows at z + r * C) x 16 output channels of one panel (bp: [C][16]): n in 2 * MR
// named ymm accumulators (an array of vectors was kept in memory by gcc 12: a store per FMA),
// then the epilogue: pixels' x rows at x + r * C, outputs at y + r * C, channels
// [c0, c0 + valid) of the row (valid <= 16).
template <int MR>
SK_AVX2_TARGET void micro(const float* z, const float* bp, int64_t C, const float* beta16,
                          const float* x, float* y, float* r, int64_t c0, int64_t valid,
                          bool inverse) {
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  const float* z0 = z;
  for (int64_t i = 0; i < C; ++i, ++z0) {
    const __m256 b0 = _mm256_load_ps(bp + i * 16);
    const __m256 b1 = _mm256_load_ps(bp + i * 16 + 8);
    __m256 a = _mm256_broadcast_ss(z0);
    c00 = _mm256_fmadd_ps(a, b0, c00);
    c01 = _mm256_fmadd_ps(a, b1, c01);
    if constexpr (MR > 1) {
      a = _mm256_broadcast_ss(z0 + C);
      c10 = _mm256_fmadd_ps(a, b0, c10);
      c11 = _mm256_fmadd_ps(a, b1, c11);
    }
    if constexpr (MR > 2) {
      a = _mm256_broadcast_ss(z0 + 2 * C);
      c20 = _mm256_fmadd_ps(a, b0, c20);
      c21 = _mm256_fmadd_ps(a, b1, c21);
    }
    if constexpr (MR > 3) {
      a = _mm256_broadcast_ss(z0 + 3 * C);
      c30 = _mm256_fmadd_ps(a, b0, c30);
      c31 = _mm256_fmadd_ps(a, b1, c31);
    }
    if constexpr (MR > 4) {
      a = _mm256_broadcast_ss(z0 + 4 * C);
      c40 = _mm256_fmadd_ps(a, b0, c40);
      c41 = _mm256_fmadd_ps(a, b1, c41);
    }
    if constexpr (MR > 5) {
      a = _mm256_broadcast_ss(z0 + 5 * C);
      c50 = _mm256_fmadd_ps(a, b0, c50);
      c51 = _mm256_fmadd_ps(a, b1, c51);
    }
  }
  const __m256 be0 = _mm256_load_ps(beta16), be1 = _mm256_load_ps(beta16 + 8);
  const bool full = valid == 16;
  const __m256i m0 = lane_mask(valid), m1 = lane_mask(valid - 8);
  const float* xr = x + c0;
  float* yr = y + c0;
  float* rr = r == nullptr ? nullptr : r + c0;
  auto row = [&](int i) { return rr == nullptr ? nullptr : rr + i * C; };
  finish(c00, c01, be0, be1, xr, yr, row(0), full, m0, m1, inverse);
  if constexpr (MR > 1) finish(c10, c11, be0, be1, xr + C, yr + C, row(1), full, m0, m1, inverse);
  if constexpr (MR > 2)
    finish(c20, c21, be0, be1, xr + 2 * C, yr + 2 * C, row(2), full, m0, m1, inverse);
  if constexpr (MR > 3)
    finish(c30, c31, be0, be1, xr + 3 * C, yr + 3 * C, row(3), full, m0, m1, inverse);
  if constexpr (MR > 4)
    finish(c40, c41, be0, be1, xr + 4 * C, yr + 4 * C, row(4), full, m0, m1, inverse);
  if constexpr (MR > 5)
    finish(c50, c51, be0, be1, xr + 5 * C, yr + 5 * C, row(5), full, m0, m1, inverse);
}

// z[r][c] = x[r][c]^2 for np pixels
SK_AVX2_TARGET void squares(const float* x, float* z, int64_t np, int64_t C) {
  const int64_t n = np * C;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    _mm256_storeu_ps(z + i, _mm256_mul_ps(v, v));
  }
  for (; i < n; ++i) z[i] = x[i] * x[i];
}

// One block of np <= kPix pixels whose x / y (/ r, nullable) rows (C floats each, stride C)
// start at x / y / r.
SK_AVX2_TARGET void run_block(const float* x, float* y, float* r, int64_t np, int64_t C,
                              const float* bp, const float* beta, float* z, bool inverse) {
  const int64_t NP = (C + 15) / 16;
  squares(x, z, np, C);
  for (int64_t q = 0; q < NP; ++q) {
    const float* panel = bp + q * C * 16;
    const int64_t c0 = q * 16, valid = std::min<int64_t>(16, C - c0);
    int64_t p = 0;
    for (; p + kMr <= np; p += kMr) {
      micro<kMr>(z + p * C, panel, C, beta + c0, x + p * C, y + p * C,
                 r == nullptr ? nullptr : r + p * C, c0, valid, inverse);
    }
    const float* zr = z + p * C;
    const float* xr = x + p * C;
    float* yr = y + p * C;
    float* rr = r == nullptr ? nullptr : r + p * C;
    switch (np - p) {
      case 5: micro<5>(zr, panel, C, beta + c0, xr, yr, rr, c0, valid, inverse); break;
      case 4: micro<4>(zr, panel, C, beta + c0, xr, yr, rr, c0, valid, inverse); break;
      case 3: micro<3>(zr, panel, C, beta + c0, xr, yr, rr, c0, valid, inverse); break;
      case 2: micro<2>(zr, panel, C, beta + c0, xr, yr, rr, c0, valid, inverse); break;
      case 1: micro<1>(zr, panel, C, beta + c0, xr, yr, rr, c0, valid, inverse); break;
      default: break;
    }
  }
}

// An element of x / y as the fp32 run_block works on: fp32 as it is, bf16 (uint16 bits) widened
// exactly and rounded back to nearest even.
inline float widen(float v) { return v; }
inline float widen(uint16_t h) { return detail::bf16_to_float(h); }
inline void put(float* p, float v) { *p = v; }
inline void put(uint16_t* p, float v) { *p = detail::to_bf16_bits(v); }

// Blocks k0..k1 of the call, x / y of element type T (float, or uint16_t for bf16).
// channels_last: block k is pixels k*kPix.. of [P, C]; fp32 is read and written in place, bf16
// widened into xb first, computed into yb and rounded back into y. NCHW: block k is pixels
// j*kPix.. of image n (k = n * per_image + j), transposed (and widened) into xb ([np][C]) first,
// computed into yb, transposed back into y.
template <class T>
SK_AVX2_TARGET void run_blocks(const GdnArgs& a, const float* bp, const float* beta, float* z,
                               float* xb, float* yb, int64_t k0, int64_t k1) {
  const int64_t C = a.C, HW = a.HW;
  const T* x = static_cast<const T*>(a.x);
  T* y = static_cast<T*>(a.y);
  constexpr bool kF32In = std::is_same<T, float>::value;
  if (a.channels_last) {
    const int64_t P = a.N * HW;
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t p = k * kPix, np = std::min<int64_t>(kPix, P - p);
      if constexpr (kF32In) {
        run_block(x + p * C, y + p * C, a.r == nullptr ? nullptr : a.r + p * C, np, C, bp,
                  beta, z, a.inverse);
      } else {
        for (int64_t i = 0; i < np * C; ++i) xb[i] = widen(x[p * C + i]);
        run_block(xb, yb, nullptr, np, C, bp, beta, z, a.inverse);
        for (int64_t i = 0; i < np * C; ++i) put(y + p * C + i, yb[i]);
      }
    }
    return;
  }
  const int64_t per_image = (HW + kPix - 1) / kPix;
  for (int64_t k = k0; k < k1; ++k) {
    const int64_t n = k / per_image, p = (k % per_image) * kPix;
    const int64_t np = std::min<int64_t>(kPix, HW - p);
    const int64_t base = n * C * HW + p;
    for (int64_t c = 0; c < C; ++c)
      for (int64_t r = 0; r < np; ++r) xb[r * C + c] = widen(x[base + c * HW + r]);
    run_block(xb, yb, nullptr, np, C, bp, beta, z, a.inverse);
    for (int64_t c = 0; c < C; ++c)
      for (int64_t r = 0; r < np; ++r) put(y + base + c * HW + r, yb[r * C + c]);
  }
}

// bp[q][i][j] = gamma_k[q*16 + j, i] (0 past C), NP panels of C x 16. Compiled without the
// FMA target: the SlimGDN+ scalars round a product, then a sum (gdn_gamma's arithmetic).
void pack_gamma_avx2(const GdnArgs& a, float* bp) {
  const int64_t C = a.C, NP = (C + 15) / 16;
  if (a.gdtype == kF32) {  // gdn_gamma with its branches hoisted (2.5x faster at C = 192)
    const float* g = static_cast<const float*>(a.gamma);
    const float sc = static_cast<float>(a.gamma_scale), bi = static_cast<float>(a.gamma_bias);
    for (int64_t q = 0; q < NP; ++q) {
      const int64_t nj = std::min<int64_t>(16, C - q * 16);
      for (int64_t i = 0; i < C; ++i) {
        float* d = bp + (q * C + i) * 16;
        const float* gi = g + q * 16 * a.g_s0 + i * a.g_s1;
        for (int64_t j = 0; j < nj; ++j) d[j] = gi[j * a.g_s0] * sc + bi;
        for (int64_t j = nj; j < 16; ++j) d[j] = 0.0f;
      }
    }
  } else {
    for (int64_t q = 0; q < NP; ++q)
      for (int64_t i = 0; i < C; ++i)
        for (int64_t j = 0; j < 16; ++j)
          bp[(q * C + i) * 16 + j] = detail::gdn_gamma(a, q * 16 + j, i);
  }
}

}  // namespace

int gdn_pack_gamma_avx2(const GdnArgs& a, float* out) {
  if (!gdn_avx2_available()) return kANoAvx2;
  if (out == nullptr || reinterpret_cast<uintptr_t>(out) % 32 != 0 || a.gamma == nullptr ||
      a.C <= 0 || (a.gdtype != kF32 && a.gdtype != kBF16))
    return kABadArgs;
  pack_gamma_avx2(a, out);
  return kAOk;
}

int gdn_forward_avx2(const GdnArgs& a) {
  if (!gdn_avx2_available()) return kANoAvx2;
  if (a.x == nullptr || a.y == nullptr || a.gamma == nullptr || a.beta == nullptr ||
      (a.xdtype != kF32 && a.xdtype != kBF16) || a.N <= 0 || a.C <= 0 || a.HW <= 0 ||
      (a.gdtype != kF32 && a.gdtype != kBF16) || (a.bdtype != kF32 && a.bdtype != kBF16) ||
      (a.r != nullptr && (!a.channels_last || a.xdtype != kF32)) ||
      reinterpret_cast<uintptr_t>(a.packed_gamma) % 32 != 0)  // (read by aligned loads)
    return kABadArgs;
  const int64_t C = a.C, NP = (C + 15) / 16, P = a.N * a.HW;
  // gamma^T in panels of 16 output channels: bp[q][i][j] = gamma_k[q*16 + j, i] (0 past C),
  // packed here unless the caller passes it (gdn_pack_gamma_avx2); beta padded with 1 (the
  // padded lanes are never stored)
  FloatBuf own;
  const float* bp = static_cast<const float*>(a.packed_gamma);
  if (bp == nullptr) {
    own = detail::alloc_aligned<float>(gdn_avx2_packed_size(C));
    if (!own) return kANoMem;
    pack_gamma_avx2(a, own.get());
    bp = own.get();
  }
  FloatBuf beta = detail::alloc_aligned<float>(NP * 16);
  if (!beta) return kANoMem;
  for (int64_t o = 0; o < NP * 16; ++o) beta[o] = detail::gdn_beta(a, o);
  // threads: ranges of whole blocks, at least 4 blocks each (NCHW: blocks within one image)
  const int64_t blocks = a.channels_last ? (P + kPix - 1) / kPix
                                         : a.N * ((a.HW + kPix - 1) / kPix);
  const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(a.nthreads, blocks / 4));
  // z (+ xb, yb for NCHW and for bf16)
  const int64_t per_thread = (a.channels_last && a.xdtype == kF32 ? 1 : 3) * kPix * C;
  std::vector<FloatBuf> bufs(static_cast<size_t>(nt));
  for (auto& buf : bufs) {
    buf = detail::alloc_aligned<float>(per_thread);
    if (!buf) return kANoMem;
  }
  run_on_threads(nt, [&](int64_t t) {
    float* z = bufs[static_cast<size_t>(t)].get();
    float* xb = z + kPix * C;
    float* yb = z + 2 * kPix * C;
    const int64_t k0 = blocks * t / nt, k1 = blocks * (t + 1) / nt;
    if (a.xdtype == kBF16)
      run_blocks<uint16_t>(a, bp, beta.get(), z, xb, yb, k0, k1);
    else
      run_blocks<float>(a, bp, beta.get(), z, xb, yb, k0, k1);
  });
  return kAOk;
}

#else  // !SK_HAVE_AVX2_CODE

bool gdn_avx2_available() { return false; }
int gdn_forward_avx2(const GdnArgs&) { return kANoAvx2; }
int gdn_pack_gamma_avx2(const GdnArgs&, float*) { return kANoAvx2; }

#endif

int64_t gdn_avx2_packed_size(int64_t C) { return (C + 15) / 16 * C * 16; }

}  // namespace sk
