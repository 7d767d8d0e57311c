// Direct fp32 conv for few input channels on AVX2 + FMA (see conv_avx2.hpp).
#include "conv_avx2.hpp"

#include <algorithm>
#include <cstring>
#include <vector>

#include "amx_tiles.hpp"  // run_on_threads
#include "avx2_common.hpp"
#include "bf16_dot.hpp"
#include "cpu_common.hpp"
#include "gdn_avx2.hpp"   // gdn_avx2_available

namespace sk {

namespace {
enum ConvErr { kCOk = 0, kCNoAvx2 = 1, kCBadArgs = 2, kCNoMem = 3, kCNoBf16 = 4, kCNoAvx512 = 5 };
constexpr int kMr = 6;  // output pixels per micro-tile (12 accumulators)
constexpr int kMaxRows = 8;
// Fully unrolled register-tile loops: without it GCC may keep a micro-tile's accumulator array
// in memory (a store per FMA: the fp32 transposed kernel ran 2x slower).
#define SK_UNROLL _Pragma("GCC unroll 32")  // x rows summed in registers per pass of a transposed conv
}  // namespace

const char* conv_avx2_error_message(int code) {
  switch (code) {
    case kCOk: return "ok";
    case kCNoAvx2: return "AVX2 + FMA is not available on this CPU; use the oneDNN path";
    case kCBadArgs: return "bad arguments (null pointer, a size that is not positive, or Ho / Wo "
                           "not matching the geometry)";
    case kCNoMem: return "out of memory for a per-thread window buffer";
    case kCNoBf16: return "AVX512-BF16 is not available on this CPU; use the oneDNN path";
    case kCNoAvx512: return "AVX-512 is not available on this CPU; use the AVX2 kernel";
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

// fp32 x / taps / y on AVX2 + FMA (ConvAvx2Args): one 16-channel panel per micro-tile.
struct ConvFp32Ops {
  using T = float;
  using Y = float;
  static constexpr int kMr = sk::kMr;
  static constexpr int kG = 1;
  static int64_t panel_elems(int64_t k, int64_t kC) { return k * kC * 16; }
  // mr pixels x np (= 1) panels from panel pb
  static void micro(int mr, int, const float* base, int64_t ps, int64_t rs, int64_t ky0,
                    int64_t ky1, int64_t kC, const float* w, int64_t pb, int64_t pstride,
                    const float* bias_pad, float* y, int64_t Co) {
    kMicro[mr](base, ps, rs, ky0, ky1, kC, w + pb * pstride, bias_pad + pb * 16, y + pb * 16,
               Co, std::min<int64_t>(16, Co - pb * 16));
  }
};

// Output rows [r0, r1) of all N images (row index n * Ho + oy). win: a [k][k*C] buffer.
template <class Ops, class Args>
void conv_rows(const Args& a, const float* bias_pad, int64_t r0, int64_t r1,
               typename Ops::T* win) {
  using T = typename Ops::T;
  const int64_t C = a.C, k = a.k, s = a.stride, p = a.pad, kC = k * C, Co = a.Co;
  const int64_t panels = (Co + 15) / 16, pstride = Ops::panel_elems(k, kC);
  // interior output columns: the whole window inside x
  const int64_t ox_lo = std::min<int64_t>(a.Wo, (p + s - 1) / s);
  const int64_t ox_hi = std::max<int64_t>(ox_lo, std::min<int64_t>(a.Wo, (a.W + p - k) / s + 1));
  for (int64_t row = r0; row < r1; ++row) {
    const int64_t n = row / a.Ho, oy = row % a.Ho;
    const int64_t iy0 = s * oy - p;  // input row of tap row 0
    const int64_t ky0 = std::max<int64_t>(0, -iy0), ky1 = std::min<int64_t>(k, a.H - iy0);
    const T* xn = a.x + n * a.H * a.W * C;
    auto* yrow = a.y + (n * a.Ho + oy) * a.Wo * Co;
    for (int64_t pb = 0; pb < panels; pb += Ops::kG) {
      const int np = static_cast<int>(std::min<int64_t>(Ops::kG, panels - pb));
      // interior: windows read in place (row iy0 + ky, column s*ox - p)
      for (int64_t ox = ox_lo; ox < ox_hi; ox += Ops::kMr) {
        const int mr = static_cast<int>(std::min<int64_t>(Ops::kMr, ox_hi - ox));
        const T* base = xn + (iy0 * a.W + (s * ox - p)) * C;
        Ops::micro(mr, np, base, s * C, a.W * C, ky0, ky1, kC, a.w, pb, pstride, bias_pad,
                   yrow + ox * Co, Co);
      }
      // border columns: a zero-padded copy of the window
      for (int64_t ox = 0; ox < a.Wo; ++ox) {
        if (ox == ox_lo) ox = std::max(ox_hi, ox_lo);
        if (ox >= a.Wo) break;
        const int64_t ix0 = s * ox - p;
        for (int64_t ky = ky0; ky < ky1; ++ky) {
          const T* xr = xn + (iy0 + ky) * a.W * C;
          T* wr = win + ky * kC;
          for (int64_t kx = 0; kx < k; ++kx) {
            const int64_t ix = ix0 + kx;
            for (int64_t c = 0; c < C; ++c) {
              wr[kx * C + c] = (ix >= 0 && ix < a.W) ? xr[ix * C + c] : T(0);
            }
          }
        }
        Ops::micro(1, np, win, 0, kC, ky0, ky1, kC, a.w, pb, pstride, bias_pad, yrow + ox * Co,
                   Co);
      }
    }
  }
}

template <class Ops, class Args>
int conv_forward(const Args& a, bool available, int no_isa) {
  if (!available) return no_isa;
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
  std::vector<detail::Buf<typename Ops::T>> wins;
  for (int64_t t = 0; t < nt; ++t) {
    wins.push_back(detail::alloc_aligned<typename Ops::T>(win_len));
    if (!wins.back()) return kCNoMem;
  }
  run_on_threads(nt, [&](int64_t t) {
    conv_rows<Ops>(a, bias_pad.data(), rows * t / nt, rows * (t + 1) / nt, wins[t].get());
  });
  return kCOk;
}
}  // namespace

int conv_avx2_forward(const ConvAvx2Args& a) {
  return conv_forward<ConvFp32Ops>(a, gdn_avx2_available(), kCNoAvx2);
}

namespace {
// ---- transposed conv onto few output channels --------------------------------------------------
// The fp32 (AVX2 + FMA) and bf16 (AVX512-BF16) kernels share the row logic (convt_rows, below);
// their Ops supply the register micro-tiles (a row of x through one kernel row, added into the
// row buffers) and the final sum of the buffers into a y row.

// The x rows of one output row: x row r (channels of pixel ix at xs[r] + ix*C) goes through
// kernel row ws[r] (taps [C][L], or in channel pairs); every row adds into the same output lanes
// of a pixel, so a micro-tile sums them all in registers and adds into the row buffers once.
template <class T>
struct ConvtRows {
  const T* xs[kMaxRows];
  const T* ws[kMaxRows];
  int n = 0;
};

// PX consecutive input pixels (from pixel offset xo) times G 8-lane vectors of the packed taps
// (this group's lanes at +8*v0): each pixel's k*Co products of one kernel row are added into its
// own row buffer at dst[j] (the buffers of neighbouring pixels differ, so the stores of one pixel
// never feed the loads of the next).
template <int PX, int G>
SK_AVX2_TARGET inline void convt_block(const ConvtRows<float>& rows, int64_t xo, int64_t C,
                                       int64_t L, int64_t v0, float* const* dst) {
  __m256 acc[PX][G];
  SK_UNROLL for (int j = 0; j < PX; ++j)
    SK_UNROLL for (int g = 0; g < G; ++g) acc[j][g] = _mm256_setzero_ps();
  for (int r = 0; r < rows.n; ++r) {
    const float* x = rows.xs[r] + xo;
    const float* wk = rows.ws[r] + 8 * v0;
    for (int64_t c = 0; c < C; ++c) {
      __m256 wv[G];
      SK_UNROLL for (int g = 0; g < G; ++g) wv[g] = _mm256_load_ps(wk + c * L + 8 * g);
      SK_UNROLL for (int j = 0; j < PX; ++j) {
        const __m256 xb = _mm256_broadcast_ss(x + j * C + c);
        SK_UNROLL for (int g = 0; g < G; ++g) acc[j][g] = _mm256_fmadd_ps(xb, wv[g], acc[j][g]);
      }
    }
  }
  SK_UNROLL for (int j = 0; j < PX; ++j)
    SK_UNROLL for (int g = 0; g < G; ++g) {
      float* d = dst[j] + 8 * g;
      _mm256_storeu_ps(d, _mm256_add_ps(_mm256_loadu_ps(d), acc[j][g]));
    }
}

// Ops::block<M, G> for the M = rem < PX pixels left at the end of a row: one micro-tile of
// their size (one pixel at a time would leave the accumulator chains latency-bound).
template <class Ops, int G, int M>
inline void convt_tail(int rem, const ConvtRows<typename Ops::T>& rows, int64_t xo, int64_t C,
                       int64_t L, int64_t v0, float* const* dst) {
  if constexpr (M >= 1) {
    if (rem == M) {
      Ops::template block<M, G>(rows, xo, C, L, v0, dst);
      return;
    }
    convt_tail<Ops, G, M - 1>(rem, rows, xo, C, L, v0, dst);
  }
}

// All pixels [0, W) of the x rows through their kernel rows, lanes [V*v0, V*v0 + V*G)
// (V = Ops::kLanes): pixel ix adds into bufs[ix % nb] + step*ix + V*v0.
template <class Ops, int G>
inline void convt_row_group(const ConvtRows<typename Ops::T>& rows, int64_t W, int64_t C,
                            int64_t L, int64_t v0, float* const* bufs, int64_t nb,
                            int64_t step) {
  constexpr int PX = Ops::template pixels<G>();
  float* dst[PX];
  int64_t ix = 0, b = 0;  // b = ix % nb
  for (; ix < W; ix += PX) {
    const int n = static_cast<int>(std::min<int64_t>(PX, W - ix));
    for (int j = 0; j < n; ++j) {
      dst[j] = bufs[b] + step * (ix + j) + Ops::kLanes * v0;
      b = b + 1 == nb ? 0 : b + 1;
    }
    if (n == PX)
      Ops::template block<PX, G>(rows, ix * C, C, L, v0, dst);
    else
      convt_tail<Ops, G, PX - 1>(n, rows, ix * C, C, L, v0, dst);
  }
}

template <class Ops>
void convt_row(const ConvtRows<typename Ops::T>& rows, int64_t W, int64_t C, int64_t L,
               float* const* bufs, int64_t nb, int64_t step) {
  const int64_t V = L / Ops::kLanes;
  for (int64_t v0 = 0; v0 < V; v0 += 4) {
    switch (std::min<int64_t>(4, V - v0)) {
      case 1: convt_row_group<Ops, 1>(rows, W, C, L, v0, bufs, nb, step); break;
      case 2: convt_row_group<Ops, 2>(rows, W, C, L, v0, bufs, nb, step); break;
      case 3: convt_row_group<Ops, 3>(rows, W, C, L, v0, bufs, nb, step); break;
      default: convt_row_group<Ops, 4>(rows, W, C, L, v0, bufs, nb, step); break;
    }
  }
}

// v + the buffers' values at index i, which are zeroed
inline float sum_and_clear(float v, float* const* bufs, int64_t nb, int64_t i) {
  for (int64_t b = 0; b < nb; ++b) {
    v += bufs[b][i];
    bufs[b][i] = 0.0f;
  }
  return v;
}

// fp32 x, taps and y on AVX2 + FMA (ConvTAvx2Args).
struct Fp32Ops {
  using T = float;
  static constexpr int64_t kLanes = 8;
  static constexpr int kNoIsa = kCNoAvx2;
  template <int G>
  static constexpr int pixels() { return G == 1 ? 8 : G == 2 ? 6 : G == 3 ? 4 : 3; }  // <= 12 acc
  static bool available() { return gdn_avx2_available(); }
  static int64_t kernel_row_elems(int64_t C, int64_t L) { return C * L; }
  template <int PX, int G>
  SK_AVX2_TARGET static void block(const ConvtRows<float>& rows, int64_t xo, int64_t C,
                                   int64_t L, int64_t v0, float* const* dst) {
    convt_block<PX, G>(rows, xo, C, L, v0, dst);
  }
  // yrow[f] = brow[f] + sum of bufs[b][off + f], f < nout; those buffer values are zeroed
  SK_AVX2_TARGET static void finish(const float* brow, float* const* bufs, int64_t nb,
                                    int64_t off, int64_t nout, float* yrow) {
    const __m256 zero = _mm256_setzero_ps();
    int64_t f = 0;
    for (; f + 8 <= nout; f += 8) {
      __m256 v = _mm256_loadu_ps(brow + f);
      for (int64_t b = 0; b < nb; ++b) {
        v = _mm256_add_ps(v, _mm256_loadu_ps(bufs[b] + off + f));
        _mm256_storeu_ps(bufs[b] + off + f, zero);
      }
      _mm256_storeu_ps(yrow + f, v);
    }
    for (; f < nout; ++f) yrow[f] = sum_and_clear(brow[f], bufs, nb, off + f);
  }
};

#define SK_AVX512_TARGET __attribute__((target("avx512f,avx2,fma")))

// fp32 x, taps and y on AVX-512 (ConvTAvx2Args with L a multiple of 16): the AVX2 kernel's
// micro-tiles with 16-lane zmm vectors and 32 registers (12 pixels x 2 vectors).
struct Fp32Avx512Ops {
  using T = float;
  static constexpr int64_t kLanes = 16;
  static constexpr int kNoIsa = kCNoAvx512;
  template <int G>
  static constexpr int pixels() { return G == 1 ? 16 : G == 2 ? 12 : G == 3 ? 8 : 6; }  // <= 24
  static bool available() { return conv_avx512_available(); }
  static int64_t kernel_row_elems(int64_t C, int64_t L) { return C * L; }
  template <int PX, int G>
  SK_AVX512_TARGET static void block(const ConvtRows<float>& rows, int64_t xo, int64_t C,
                                     int64_t L, int64_t v0, float* const* dst) {
    __m512 acc[PX][G];
    SK_UNROLL for (int j = 0; j < PX; ++j)
      SK_UNROLL for (int g = 0; g < G; ++g) acc[j][g] = _mm512_setzero_ps();
    for (int r = 0; r < rows.n; ++r) {
      const float* x = rows.xs[r] + xo;
      const float* wk = rows.ws[r] + 16 * v0;
      for (int64_t c = 0; c < C; ++c) {
        __m512 wv[G];
        SK_UNROLL for (int g = 0; g < G; ++g) wv[g] = _mm512_loadu_ps(wk + c * L + 16 * g);
        SK_UNROLL for (int j = 0; j < PX; ++j) {
          const __m512 xb = _mm512_set1_ps(x[j * C + c]);
          SK_UNROLL for (int g = 0; g < G; ++g)
            acc[j][g] = _mm512_fmadd_ps(xb, wv[g], acc[j][g]);
        }
      }
    }
    SK_UNROLL for (int j = 0; j < PX; ++j)
      SK_UNROLL for (int g = 0; g < G; ++g) {
        float* d = dst[j] + 16 * g;
        _mm512_storeu_ps(d, _mm512_add_ps(_mm512_loadu_ps(d), acc[j][g]));
      }
  }
  SK_AVX512_TARGET static void finish(const float* brow, float* const* bufs, int64_t nb,
                                      int64_t off, int64_t nout, float* yrow) {
    const __m512 zero = _mm512_setzero_ps();
    int64_t f = 0;
    for (; f + 16 <= nout; f += 16) {
      __m512 v = _mm512_loadu_ps(brow + f);
      for (int64_t b = 0; b < nb; ++b) {
        v = _mm512_add_ps(v, _mm512_loadu_ps(bufs[b] + off + f));
        _mm512_storeu_ps(bufs[b] + off + f, zero);
      }
      _mm512_storeu_ps(yrow + f, v);
    }
    for (; f < nout; ++f) yrow[f] = sum_and_clear(brow[f], bufs, nb, off + f);
  }
};

// bf16 x and taps, fp32 sums, bf16 y on AVX512-BF16 (ConvTBf16Args): vdpbf16ps takes the
// products of two input channels per lane, so the taps are packed in channel pairs
// ([k][ceil(C/2)][L][2]) and x is broadcast two channels (32 bits) at a time; an odd last channel
// is broadcast alone (its partner zero), so no value past the pixel is read.
struct Bf16Ops {
  using T = uint16_t;
  static constexpr int64_t kLanes = 16;
  static constexpr int kNoIsa = kCNoBf16;
  template <int G>
  static constexpr int pixels() { return G == 1 ? 16 : G == 2 ? 12 : G == 3 ? 8 : 6; }  // <= 24
  static bool available() { return conv_bf16_available(); }
  static int64_t kernel_row_elems(int64_t C, int64_t L) { return (C + 1) / 2 * L * 2; }
  template <int PX, int G>
  SK_BF16_TARGET static void block(const ConvtRows<uint16_t>& rows, int64_t xo, int64_t C,
                                   int64_t L, int64_t v0, float* const* dst) {
    __m512 acc[PX][G];
    SK_UNROLL for (int j = 0; j < PX; ++j)
      SK_UNROLL for (int g = 0; g < G; ++g) acc[j][g] = _mm512_setzero_ps();
    const int64_t pairs = C / 2;
    for (int r = 0; r < rows.n; ++r) {
      const uint16_t* x = rows.xs[r] + xo;
      const uint16_t* wc = rows.ws[r] + 32 * v0;
      for (int64_t cp = 0; cp < pairs; ++cp)
        detail::dot_pairs<PX, G, false>(acc, x + 2 * cp, C, wc + cp * L * 2, 32);
      if (C & 1) detail::dot_pairs<PX, G, true>(acc, x + 2 * pairs, C, wc + pairs * L * 2, 32);
    }
    SK_UNROLL for (int j = 0; j < PX; ++j)
      SK_UNROLL for (int g = 0; g < G; ++g) {
        float* d = dst[j] + 16 * g;
        _mm512_storeu_ps(d, _mm512_add_ps(_mm512_loadu_ps(d), acc[j][g]));
      }
  }
  SK_BF16_TARGET static void finish(const float* brow, float* const* bufs, int64_t nb,
                                    int64_t off, int64_t nout, uint16_t* yrow) {
    const __m512 zero = _mm512_setzero_ps();
    int64_t f = 0;
    for (; f + 16 <= nout; f += 16) {
      __m512 v = _mm512_loadu_ps(brow + f);
      for (int64_t b = 0; b < nb; ++b) {
        v = _mm512_add_ps(v, _mm512_loadu_ps(bufs[b] + off + f));
        _mm512_storeu_ps(bufs[b] + off + f, zero);
      }
      const __m256bh h = _mm512_cvtneps_pbh(v);
      std::memcpy(yrow + f, &h, 32);
    }
    for (; f < nout; ++f) yrow[f] = detail::to_bf16_bits(sum_and_clear(brow[f], bufs, nb, off + f));
  }
};

inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// Output rows [r0, r1) (row index n * Ho + oy). ws: nb row buffers of blen floats, then a
// bias row of Wo*Co + 16 floats.
template <class Ops, class Args>
void convt_rows(const Args& a, int64_t nb, int64_t blen, float* ws, int64_t r0, int64_t r1) {
  const int64_t s = a.s, k = a.k, p = a.pad, C = a.C, Co = a.Co, L = a.L;
  const int64_t nout = a.Wo * Co, krow = Ops::kernel_row_elems(C, L);
  float* bufs[64];
  for (int64_t b = 0; b < nb; ++b) bufs[b] = ws + b * blen;
  float* brow = ws + nb * blen;
  for (int64_t f = 0; f < nout + 16; ++f) brow[f] = a.bias != nullptr ? a.bias[f % Co] : 0.0f;
  std::fill(ws, ws + nb * blen, 0.0f);
  for (int64_t row = r0; row < r1; ++row) {
    const int64_t n = row / a.Ho, oy = row % a.Ho;
    // x rows iy with kernel row ky = oy + p - s*iy in [0, k)
    const int64_t iy_lo = std::max<int64_t>(0, floor_div(oy + p - k, s) + 1);
    const int64_t iy_hi = std::min<int64_t>(a.H - 1, floor_div(oy + p, s));
    for (int64_t i0 = iy_lo; i0 <= iy_hi; i0 += kMaxRows) {  // one pass unless k > 8 s
      ConvtRows<typename Ops::T> xrows;
      for (int64_t iy = i0; iy <= std::min(iy_hi, i0 + kMaxRows - 1); ++iy, ++xrows.n) {
        xrows.xs[xrows.n] = a.x + ((n * a.H + iy) * a.W) * C;
        xrows.ws[xrows.n] = a.w + (oy + p - s * iy) * krow;
      }
      convt_row<Ops>(xrows, a.W, C, L, bufs, nb, s * Co);
    }
    // y = bias + the buffers from column p on; finish zeroes what it reads, the rest of the
    // buffers (left of column p, right of the last) is zeroed here for the next row
    Ops::finish(brow, bufs, nb, p * Co, nout, a.y + (n * a.Ho + oy) * nout);
    for (int64_t b = 0; b < nb; ++b) {
      std::fill(bufs[b], bufs[b] + p * Co, 0.0f);
      std::fill(bufs[b] + p * Co + nout, bufs[b] + blen, 0.0f);
    }
  }
}

template <class Ops, class Args>
int convt_forward(const Args& a) {
  const int64_t V = Ops::kLanes;
  if (!Ops::available()) return Ops::kNoIsa;
  if (a.x == nullptr || a.w == nullptr || a.y == nullptr || a.N <= 0 || a.H <= 0 || a.W <= 0 ||
      a.C <= 0 || a.Co < 1 || a.k <= 0 || a.s <= 0 || a.pad < 0 || a.L < a.k * a.Co ||
      a.L % V || a.L >= a.k * a.Co + V || a.Ho <= 0 || a.Wo <= 0) {
    return kCBadArgs;
  }
  const int64_t full_h = (a.H - 1) * a.s - 2 * a.pad + a.k, full_w = (a.W - 1) * a.s - 2 * a.pad + a.k;
  if (a.Ho < full_h || a.Ho >= full_h + a.s || a.Wo - full_w != a.Ho - full_h) return kCBadArgs;
  // pixel ix writes lanes [s*Co*ix, s*Co*ix + L) of buffer ix % nb: nb*s*Co >= L keeps the
  // pixels of one buffer apart
  const int64_t step = a.s * a.Co;
  const int64_t nb = (a.L + step - 1) / step;
  if (nb > 64) return kCBadArgs;
  // the last pixel ends at step*(W-1) + L; output column Wo-1 reads index (Wo-1+p)*Co + Co
  const int64_t blen = (std::max(step * (a.W - 1) + a.L, (a.Wo + a.pad) * a.Co + 16) + 15) / 16 * 16;
  const int64_t rows = a.N * a.Ho;
  const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(a.nthreads, rows));
  const int64_t ws_len = nb * blen + a.Wo * a.Co + 16;
  std::vector<detail::Buf<float>> ws;
  for (int64_t t = 0; t < nt; ++t) {
    ws.push_back(detail::alloc_aligned<float>(ws_len));
    if (!ws.back()) return kCNoMem;
  }
  run_on_threads(nt, [&](int64_t t) {
    convt_rows<Ops>(a, nb, blen, ws[t].get(), rows * t / nt, rows * (t + 1) / nt);
  });
  return kCOk;
}
}  // namespace

namespace {
// The AVX-512 image conv variants' micro-tiles (D::tile<MR, G>: MR <= 8 pixels x G <= 3 panels
// of 16 channels, T the element of x and taps), chosen per call of the row driver (conv_rows).
template <class D, class T>
struct PanelTiles {
  static constexpr int kMr = 8;
  static constexpr int kG = 3;
  using TileFn = void (*)(const T*, int64_t, int64_t, int64_t, int64_t, int64_t, const T*,
                          int64_t, const float*, T*, int64_t, int64_t);
  template <int G>
  static constexpr TileFn kTiles[9] = {
      nullptr,                  D::template tile<1, G>, D::template tile<2, G>,
      D::template tile<3, G>, D::template tile<4, G>, D::template tile<5, G>,
      D::template tile<6, G>, D::template tile<7, G>, D::template tile<8, G>};
  static void micro(int mr, int np, const T* base, int64_t ps, int64_t rs, int64_t ky0,
                    int64_t ky1, int64_t kC, const T* w, int64_t pb, int64_t pstride,
                    const float* bias_pad, T* y, int64_t Co) {
    const TileFn fn = np == 3 ? kTiles<3>[mr] : np == 2 ? kTiles<2>[mr] : kTiles<1>[mr];
    fn(base, ps, rs, ky0, ky1, kC, w + pb * pstride, pstride, bias_pad + pb * 16, y, Co,
       pb * 16);
  }
};

// bf16 x / taps, fp32 sums, bf16 y on AVX512-BF16 (ConvBf16Args): the kC run of a tap row in
// input-element pairs (vdpbf16ps), a pixel's pair broadcast as 32 bits (an odd last element
// alone, its partner zero: nothing past the window row is read), micro-tiles of up to 8 pixels
// x 3 panels (24 zmm accumulators; SlimCAE's widths are 3, 6, 9 or 12 panels, w=72 5).
struct ConvBf16Ops : PanelTiles<ConvBf16Ops, uint16_t> {
  using T = uint16_t;
  static int64_t panel_elems(int64_t k, int64_t kC) { return k * ((kC + 1) / 2) * 32; }
  template <int MR, int G>
  SK_BF16_TARGET static void tile(const uint16_t* a, int64_t ps, int64_t rs, int64_t ky0,
                                  int64_t ky1, int64_t kC, const uint16_t* wp, int64_t pstride,
                                  const float* bias, uint16_t* y, int64_t Co, int64_t c0) {
    __m512 acc[MR][G];
    SK_UNROLL for (int g = 0; g < G; ++g) {
      const __m512 bi = _mm512_loadu_ps(bias + 16 * g);
      SK_UNROLL for (int r = 0; r < MR; ++r) acc[r][g] = bi;
    }
    const int64_t pairs = kC / 2, row = (kC + 1) / 2 * 32;
    for (int64_t ky = ky0; ky < ky1; ++ky) {
      const uint16_t* ar = a + ky * rs;
      const uint16_t* br = wp + ky * row;
      for (int64_t jp = 0; jp < pairs; ++jp)
        detail::dot_pairs<MR, G, false>(acc, ar + 2 * jp, ps, br + jp * 32, pstride);
      if (kC & 1) detail::dot_pairs<MR, G, true>(acc, ar + kC - 1, ps, br + pairs * 32, pstride);
    }
    SK_UNROLL for (int g = 0; g < G; ++g) {
      const int64_t c = c0 + 16 * g;
      const __mmask16 m = detail::lanes16(Co - c);
      SK_UNROLL for (int r = 0; r < MR; ++r)
        _mm256_mask_storeu_epi16(y + r * Co + c, m, (__m256i)_mm512_cvtneps_pbh(acc[r][g]));
    }
  }
};
}  // namespace

int conv_bf16_forward(const ConvBf16Args& a) {
  return conv_forward<ConvBf16Ops>(a, conv_bf16_available(), kCNoBf16);
}

namespace {
// fp32 x / taps / y on AVX-512 (ConvAvx2Args, ConvFp32Ops' packing): micro-tiles of up to 8
// pixels x 3 panels (24 zmm accumulators, 3 tap vectors and a broadcast of x: 28 of the 32
// registers) instead of the AVX2 kernel's 6 x 1 (12 ymm): 3 tap loads and 8 broadcasts per 24
// FMAs of 16 lanes, against 2 loads and 6 broadcasts per 12 FMAs of 8.
struct ConvFp32Avx512Ops : PanelTiles<ConvFp32Avx512Ops, float> {
  using T = float;
  static int64_t panel_elems(int64_t k, int64_t kC) { return k * kC * 16; }
  template <int MR, int G>
  SK_AVX512_TARGET static void tile(const float* a, int64_t ps, int64_t rs, int64_t ky0,
                                    int64_t ky1, int64_t kC, const float* wp, int64_t pstride,
                                    const float* bias, float* y, int64_t Co, int64_t c0) {
    __m512 acc[MR][G];
    SK_UNROLL for (int g = 0; g < G; ++g) {
      const __m512 bi = _mm512_loadu_ps(bias + 16 * g);
      SK_UNROLL for (int r = 0; r < MR; ++r) acc[r][g] = bi;
    }
    for (int64_t ky = ky0; ky < ky1; ++ky) {
      const float* ar = a + ky * rs;
      const float* br = wp + ky * kC * 16;
      for (int64_t j = 0; j < kC; ++j) {
        __m512 b[G];
        SK_UNROLL for (int g = 0; g < G; ++g) b[g] = _mm512_loadu_ps(br + g * pstride + j * 16);
        SK_UNROLL for (int r = 0; r < MR; ++r) {
          const __m512 v = _mm512_set1_ps(ar[r * ps + j]);
          SK_UNROLL for (int g = 0; g < G; ++g) acc[r][g] = _mm512_fmadd_ps(v, b[g], acc[r][g]);
        }
      }
    }
    SK_UNROLL for (int g = 0; g < G; ++g) {
      const int64_t c = c0 + 16 * g, valid = Co - c;   // valid >= 1: the panel exists
      const __mmask16 m = valid >= 16 ? static_cast<__mmask16>(0xFFFF)
                                      : static_cast<__mmask16>((1u << valid) - 1u);
      SK_UNROLL for (int r = 0; r < MR; ++r) _mm512_mask_storeu_ps(y + r * Co + c, m, acc[r][g]);
    }
  }
};
}  // namespace

int conv_avx512_forward(const ConvAvx2Args& a) {
  return conv_forward<ConvFp32Avx512Ops>(a, conv_avx512_available(), kCNoAvx512);
}

bool conv_bf16_available() {
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
  }();
  return ok;
}

bool conv_avx512_available() { return detail::avx512f_available(); }

int conv_transpose_avx2_forward(const ConvTAvx2Args& a) { return convt_forward<Fp32Ops>(a); }
int conv_transpose_avx512_forward(const ConvTAvx2Args& a) {
  return convt_forward<Fp32Avx512Ops>(a);
}
int conv_transpose_bf16_forward(const ConvTBf16Args& a) { return convt_forward<Bf16Ops>(a); }

#else

int conv_avx2_forward(const ConvAvx2Args&) { return kCNoAvx2; }
int conv_transpose_avx2_forward(const ConvTAvx2Args&) { return kCNoAvx2; }
bool conv_bf16_available() { return false; }
int conv_transpose_bf16_forward(const ConvTBf16Args&) { return kCNoBf16; }
bool conv_avx512_available() { return false; }
int conv_transpose_avx512_forward(const ConvTAvx2Args&) { return kCNoAvx512; }
int conv_bf16_forward(const ConvBf16Args&) { return kCNoBf16; }
int conv_avx512_forward(const ConvAvx2Args&) { return kCNoAvx512; }

#endif

}  // namespace sk
