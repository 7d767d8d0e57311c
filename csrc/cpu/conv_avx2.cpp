// Direct fp32 conv for few input channels on AVX2 + FMA (see conv_avx2.hpp).
#include "conv_avx2.hpp"

#include <algorithm>
#include <vector>

#include "amx_tiles.hpp"  // run_on_threads
#include "avx2_common.hpp"
#include "cpu_common.hpp"
#include "gdn_avx2.hpp"   // gdn_avx2_available

namespace sk {

namespace {
enum ConvErr { kCOk = 0, kCNoAvx2 = 1, kCBadArgs = 2, kCNoMem = 3 };
constexpr int kMr = 6;  // output pixels per micro-tile (12 accumulators)
}  // namespace

const char* conv_avx2_error_message(int code) {
  switch (code) {
    case kCOk: return "ok";
    case kCNoAvx2: return "AVX2 + FMA is not available on this CPU; use the oneDNN path";
    case kCBadArgs: return "bad arguments (null pointer, a size that is not positive, or Ho / Wo "
                           "not matching the geometry)";
    case kCNoMem: return "out of memory for a per-thread window buffer";
  }
  return "unknown error";
}

#if SK_HAVE_AVX2_CODE
namespace {
using detail::lane_mask;

// MR pixels (x windows at a + r * ps, tap row ky at + ky * rs, kC values each) x one 16-channel
// panel (wp: [k][kC][16]), tap rows [ky0, ky1); y rows at y + r * Co, channels [c0, c0 + valid).
template <int MR>
SK_AVX2_TARGET void micro(const float* a, int64_t ps, int64_t rs, int64_t ky0, int64_t ky1,
                          int64_t kC, const float* wp, const float* bias16, float* y, int64_t Co,
                          int64_t valid) {
  const __m256 bi0 = _mm256_loadu_ps(bias16), bi1 = _mm256_loadu_ps(bias16 + 8);
  __m256 c00 = bi0, c01 = bi1, c10 = bi0, c11 = bi1, c20 = bi0, c21 = bi1;
  __m256 c30 = bi0, c31 = bi1, c40 = bi0, c41 = bi1, c50 = bi0, c51 = bi1;
  for (int64_t ky = ky0; ky < ky1; ++ky) {
    const float* ar = a + ky * rs;
    const float* br = wp + ky * kC * 16;
    for (int64_t j = 0; j < kC; ++j) {
      const __m256 b0 = _mm256_load_ps(br + j * 16);
      const __m256 b1 = _mm256_load_ps(br + j * 16 + 8);
      __m256 v = _mm256_broadcast_ss(ar + j);
      c00 = _mm256_fmadd_ps(v, b0, c00);
      c01 = _mm256_fmadd_ps(v, b1, c01);
      if constexpr (MR > 1) {
        v = _mm256_broadcast_ss(ar + ps + j);
        c10 = _mm256_fmadd_ps(v, b0, c10);
        c11 = _mm256_fmadd_ps(v, b1, c11);
      }
      if constexpr (MR > 2) {
        v = _mm256_broadcast_ss(ar + 2 * ps + j);
        c20 = _mm256_fmadd_ps(v, b0, c20);
        c21 = _mm256_fmadd_ps(v, b1, c21);
      }
      if constexpr (MR > 3) {
        v = _mm256_broadcast_ss(ar + 3 * ps + j);
        c30 = _mm256_fmadd_ps(v, b0, c30);
        c31 = _mm256_fmadd_ps(v, b1, c31);
      }
      if constexpr (MR > 4) {
        v = _mm256_broadcast_ss(ar + 4 * ps + j);
        c40 = _mm256_fmadd_ps(v, b0, c40);
        c41 = _mm256_fmadd_ps(v, b1, c41);
      }
      if constexpr (MR > 5) {
        v = _mm256_broadcast_ss(ar + 5 * ps + j);
        c50 = _mm256_fmadd_ps(v, b0, c50);
        c51 = _mm256_fmadd_ps(v, b1, c51);
      }
    }
  }
  const __m256 acc[12] = {c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51};
  const __m256i m0 = lane_mask(valid), m1 = lane_mask(valid - 8);
  for (int r = 0; r < MR; ++r) {
    float* yr = y + r * Co;
    if (valid == 16) {
      _mm256_storeu_ps(yr, acc[2 * r]);
      _mm256_storeu_ps(yr + 8, acc[2 * r + 1]);
    } else {
      _mm256_maskstore_ps(yr, m0, acc[2 * r]);
      _mm256_maskstore_ps(yr + 8, m1, acc[2 * r + 1]);
    }
  }
}

using MicroFn = void (*)(const float*, int64_t, int64_t, int64_t, int64_t, int64_t, const float*,
                         const float*, float*, int64_t, int64_t);
constexpr MicroFn kMicro[kMr + 1] = {nullptr, micro<1>, micro<2>, micro<3>,
                                     micro<4>, micro<5>, micro<6>};

// Output rows [r0, r1) of all N images (row index n * Ho + oy). win: a [k][k*C] buffer.
SK_AVX2_TARGET void conv_rows(const ConvAvx2Args& a, const float* bias_pad, int64_t r0, int64_t r1,
                              float* win) {
  const int64_t C = a.C, k = a.k, s = a.stride, p = a.pad, kC = k * C, Co = a.Co;
  const int64_t panels = (Co + 15) / 16;
  // interior output columns: the whole window inside x
  const int64_t ox_lo = std::min<int64_t>(a.Wo, (p + s - 1) / s);
  const int64_t ox_hi = std::max<int64_t>(ox_lo, std::min<int64_t>(a.Wo, (a.W + p - k) / s + 1));
  for (int64_t row = r0; row < r1; ++row) {
    const int64_t n = row / a.Ho, oy = row % a.Ho;
    const int64_t iy0 = s * oy - p;  // input row of tap row 0
    const int64_t ky0 = std::max<int64_t>(0, -iy0), ky1 = std::min<int64_t>(k, a.H - iy0);
    const float* xn = a.x + n * a.H * a.W * C;
    float* yrow = a.y + (n * a.Ho + oy) * a.Wo * Co;
    for (int64_t pb = 0; pb < panels; ++pb) {
      const float* wp = a.w + pb * k * kC * 16;
      const float* b16 = bias_pad + pb * 16;
      const int64_t valid = std::min<int64_t>(16, Co - pb * 16);
      // interior: windows read in place (row iy0 + ky, column s*ox - p)
      for (int64_t ox = ox_lo; ox < ox_hi; ox += kMr) {
        const int mr = static_cast<int>(std::min<int64_t>(kMr, ox_hi - ox));
        const float* base = xn + (iy0 * a.W + (s * ox - p)) * C;
        kMicro[mr](base, s * C, a.W * C, ky0, ky1, kC, wp, b16, yrow + ox * Co + pb * 16, Co,
                   valid);
      }
      // border columns: a zero-padded copy of the window
      for (int64_t ox = 0; ox < a.Wo; ++ox) {
        if (ox == ox_lo) ox = std::max(ox_hi, ox_lo);
        if (ox >= a.Wo) break;
        const int64_t ix0 = s * ox - p;
        for (int64_t ky = ky0; ky < ky1; ++ky) {
          const float* xr = xn + (iy0 + ky) * a.W * C;
          float* wr = win + ky * kC;
          for (int64_t kx = 0; kx < k; ++kx) {
            const int64_t ix = ix0 + kx;
            for (int64_t c = 0; c < C; ++c) {
              wr[kx * C + c] = (ix >= 0 && ix < a.W) ? xr[ix * C + c] : 0.0f;
            }
          }
        }
        micro<1>(win, 0, kC, ky0, ky1, kC, wp, b16, yrow + ox * Co + pb * 16, Co, valid);
      }
    }
  }
}
}  // namespace

int conv_avx2_forward(const ConvAvx2Args& a) {
  if (!gdn_avx2_available()) return kCNoAvx2;
  if (a.x == nullptr || a.w == nullptr || a.y == nullptr || a.N <= 0 || a.H <= 0 || a.W <= 0 ||
      a.C <= 0 || a.Co <= 0 || a.k <= 0 || a.stride <= 0 || a.pad < 0 ||
      a.Ho != (a.H + 2 * a.pad - a.k) / a.stride + 1 ||
      a.Wo != (a.W + 2 * a.pad - a.k) / a.stride + 1 || a.Ho <= 0 || a.Wo <= 0) {
    return kCBadArgs;
  }
  const int64_t panels = (a.Co + 15) / 16;
  std::vector<float> bias_pad(static_cast<size_t>(panels * 16), 0.0f);
  if (a.bias != nullptr) std::copy(a.bias, a.bias + a.Co, bias_pad.begin());
  const int64_t rows = a.N * a.Ho;
  const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(a.nthreads, rows));
  const int64_t win_len = a.k * a.k * a.C;
  std::vector<detail::Buf<float>> wins;
  for (int64_t t = 0; t < nt; ++t) {
    wins.push_back(detail::alloc_aligned<float>(win_len));
    if (!wins.back()) return kCNoMem;
  }
  run_on_threads(nt, [&](int64_t t) {
    conv_rows(a, bias_pad.data(), rows * t / nt, rows * (t + 1) / nt, wins[t].get());
  });
  return kCOk;
}

namespace {
// ---- transposed conv onto few output channels --------------------------------------------------

// Horizontal sum of the 8 lanes.
SK_AVX2_TARGET inline float hsum(__m256 v) {
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}

// PX output pixels of one phase (x columns qx0 + j + tap offset, all inside x unless CHECKED:
// then taps outside x are skipped per pixel) x CO channels.
template <int PX, int CO, bool CHECKED>
SK_AVX2_TARGET void convt_pixels(const ConvTAvx2Args& a, const float* const* xrows,
                                 const int32_t* krows, int nrows, const int32_t* offs,
                                 const int32_t* kcols, int ncols, int64_t qx0,
                                 const float* bias, float* y, int64_t ystride) {
  __m256 acc[PX][CO];
  for (int j = 0; j < PX; ++j)
    for (int c = 0; c < CO; ++c) acc[j][c] = _mm256_setzero_ps();
  const int64_t C = a.C, Cpad = a.Cpad, k = a.k;
  const int64_t full = C / 8 * 8;
  const __m256i tail = lane_mask(C - full);
  for (int ia = 0; ia < nrows; ++ia) {
    const float* xr = xrows[ia];
    for (int ib = 0; ib < ncols; ++ib) {
      const float* wk = a.w + (krows[ia] * k + kcols[ib]) * CO * Cpad;
      const float* xp[PX];
      bool ok[PX];
      for (int j = 0; j < PX; ++j) {
        const int64_t ix = qx0 + j + offs[ib];
        ok[j] = !CHECKED || (ix >= 0 && ix < a.W);
        xp[j] = xr + (ok[j] ? ix : 0) * C;
      }
      for (int64_t c0 = 0; c0 < Cpad; c0 += 8) {
        __m256 wv[CO];
        for (int c = 0; c < CO; ++c) wv[c] = _mm256_load_ps(wk + c * Cpad + c0);
        for (int j = 0; j < PX; ++j) {
          if (CHECKED && !ok[j]) continue;
          const __m256 xv = c0 < full ? _mm256_loadu_ps(xp[j] + c0)
                                      : _mm256_maskload_ps(xp[j] + c0, tail);
          for (int c = 0; c < CO; ++c) acc[j][c] = _mm256_fmadd_ps(xv, wv[c], acc[j][c]);
        }
      }
    }
  }
  for (int j = 0; j < PX; ++j)
    for (int c = 0; c < CO; ++c) y[j * ystride + c] = hsum(acc[j][c]) + bias[c];
}

template <int CO>
SK_AVX2_TARGET void convt_rows(const ConvTAvx2Args& a, const float* bias, int64_t r0, int64_t r1) {
  constexpr int kPx = 4;
  const int64_t s = a.s, C = a.C, kmax = a.kmax;
  const float* xrows[64];
  int32_t krows[64];
  for (int64_t row = r0; row < r1; ++row) {
    const int64_t n = row / a.Ho, oy = row % a.Ho, q = oy / s, ry = oy % s;
    const float* xn = a.x + n * a.H * a.W * C;
    int nrows = 0;
    for (int t = 0; t < a.ntap[ry]; ++t) {
      const int64_t iy = q + a.tap_off[ry * kmax + t];
      if (iy < 0 || iy >= a.H) continue;
      xrows[nrows] = xn + iy * a.W * C;
      krows[nrows++] = a.tap_k[ry * kmax + t];
    }
    float* yrow = a.y + (n * a.Ho + oy) * a.Wo * CO;
    const int64_t ys = s * CO;
    // interior columns [lo, hi): every tap column inside x for every phase rx (blocks of kPx
    // pixels run all phases in turn, so their x columns stay in L1 across the phases)
    int64_t lo = 0, hi = a.W;
    for (int64_t rx = 0; rx < s; ++rx) {
      const int64_t nq = rx < a.Wo ? (a.Wo - rx + s - 1) / s : 0;  // output columns q*s + rx
      hi = std::min(hi, nq);
      for (int t = 0; t < a.ntap[rx]; ++t) {
        const int64_t o = a.tap_off[rx * kmax + t];
        lo = std::max(lo, -o);
        hi = std::min(hi, a.W - o);
      }
    }
    hi = std::max(hi, lo);
    const int64_t hi4 = lo + (hi - lo) / kPx * kPx;
    for (int64_t qx = lo; qx < hi4; qx += kPx) {
      for (int64_t rx = 0; rx < s; ++rx) {
        convt_pixels<kPx, CO, false>(a, xrows, krows, nrows, a.tap_off + rx * kmax,
                                     a.tap_k + rx * kmax, a.ntap[rx], qx, bias,
                                     yrow + rx * CO + qx * ys, ys);
      }
    }
    for (int64_t rx = 0; rx < s; ++rx) {  // the rest, one checked pixel at a time
      const int64_t nq = rx < a.Wo ? (a.Wo - rx + s - 1) / s : 0;
      for (int64_t qx = 0; qx < nq; ++qx) {
        if (qx == lo && hi4 > lo) qx = hi4;
        if (qx >= nq) break;
        convt_pixels<1, CO, true>(a, xrows, krows, nrows, a.tap_off + rx * kmax,
                                  a.tap_k + rx * kmax, a.ntap[rx], qx, bias,
                                  yrow + rx * CO + qx * ys, ys);
      }
    }
  }
}
}  // namespace

int conv_transpose_avx2_forward(const ConvTAvx2Args& a) {
  if (!gdn_avx2_available()) return kCNoAvx2;
  if (a.x == nullptr || a.w == nullptr || a.y == nullptr || a.tap_off == nullptr ||
      a.tap_k == nullptr || a.ntap == nullptr || a.N <= 0 || a.H <= 0 || a.W <= 0 || a.C <= 0 ||
      a.Cpad < a.C || a.Cpad % 8 || a.Co < 1 || a.Co > 3 || a.k <= 0 || a.s <= 0 ||
      a.kmax <= 0 || a.kmax > 64 || a.Ho <= 0 || a.Wo <= 0) {
    return kCBadArgs;
  }
  for (int64_t r = 0; r < a.s; ++r) {
    if (a.ntap[r] < 0 || a.ntap[r] > a.kmax) return kCBadArgs;
    for (int t = 0; t < a.ntap[r]; ++t) {
      if (a.tap_k[r * a.kmax + t] < 0 || a.tap_k[r * a.kmax + t] >= a.k) return kCBadArgs;
    }
  }
  float bias[3] = {0.0f, 0.0f, 0.0f};
  if (a.bias != nullptr) std::copy(a.bias, a.bias + a.Co, bias);
  const int64_t rows = a.N * a.Ho;
  const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(a.nthreads, rows));
  run_on_threads(nt, [&](int64_t t) {
    const int64_t r0 = rows * t / nt, r1 = rows * (t + 1) / nt;
    if (a.Co == 1) convt_rows<1>(a, bias, r0, r1);
    else if (a.Co == 2) convt_rows<2>(a, bias, r0, r1);
    else convt_rows<3>(a, bias, r0, r1);
  });
  return kCOk;
}

#else

int conv_avx2_forward(const ConvAvx2Args&) { return kCNoAvx2; }
int conv_transpose_avx2_forward(const ConvTAvx2Args&) { return kCNoAvx2; }

#endif

}  // namespace sk
