// Winograd F(4x4, 3x3) input and output transforms, fp32, AVX2 + FMA (see winograd.hpp).
//
// Both transforms are separable: a 1-D transform along the columns of each row of the patch
// (kept in a 6x6 (input) or 6x4 (output) array of vectors on the stack), then along the rows.
// Vectors are 8 consecutive channels of one pixel; the last block of a channel run is masked.
#include "winograd.hpp"

#include <algorithm>
#include <vector>

#include "amx_tiles.hpp"  // run_on_threads
#include "avx2_common.hpp"
#include "cpu_common.hpp"     // alloc_aligned
#include "gdn_avx2.hpp"   // gdn_avx2_available

namespace sk {

namespace {
enum WinoErr { kWOk = 0, kWNoAvx2 = 1, kWBadArgs = 2, kWNoMem = 3 };
}  // namespace

const char* winograd_error_message(int code) {
  switch (code) {
    case kWOk: return "ok";
    case kWNoAvx2: return "AVX2 + FMA is not available on this CPU; use the oneDNN path";
    case kWBadArgs: return "bad arguments (null pointer, a size that is not positive, or a tap "
                           "index outside the kernel)";
    case kWNoMem: return "out of memory for a per-thread buffer";
  }
  return "unknown error";
}

#if SK_HAVE_AVX2_CODE
namespace {
using detail::lane_mask;

// B^T for the points 0, 1, -1, 1/2, -1/2, inf:
//   [1/4, 0, -5/4, 0, 1, 0], [0, -1/4, -1/4, 1, 1, 0], [0, 1/4, -1/4, -1, 1, 0],
//   [0, -1/2, -1, 1/2, 1, 0], [0, 1/2, -1, -1/2, 1, 0], [0, 1/4, 0, -5/4, 0, 1]
SK_AVX2_TARGET inline void bt6(const __m256* d, __m256* o) {
  const __m256 q = _mm256_set1_ps(0.25f), h = _mm256_set1_ps(0.5f), f = _mm256_set1_ps(-1.25f);
  const __m256 s12 = _mm256_add_ps(d[1], d[2]), d12 = _mm256_sub_ps(d[1], d[2]);
  const __m256 s43 = _mm256_add_ps(d[4], d[3]), d43 = _mm256_sub_ps(d[4], d[3]);
  const __m256 d42 = _mm256_sub_ps(d[4], d[2]), d31 = _mm256_sub_ps(d[3], d[1]);
  o[0] = _mm256_fmadd_ps(f, d[2], _mm256_fmadd_ps(q, d[0], d[4]));
  o[1] = _mm256_fnmadd_ps(q, s12, s43);
  o[2] = _mm256_fmadd_ps(q, d12, d43);
  o[3] = _mm256_fmadd_ps(h, d31, d42);
  o[4] = _mm256_fnmadd_ps(h, d31, d42);
  o[5] = _mm256_fmadd_ps(f, d[3], _mm256_fmadd_ps(q, d[1], d[5]));
}

// A^T: [1, 1, 1, 1, 1, 0], [0, 1, -1, 1/2, -1/2, 0], [0, 1, 1, 1/4, 1/4, 0],
//      [0, 1, -1, 1/8, -1/8, 1]
SK_AVX2_TARGET inline void at6(const __m256* m, __m256* o) {
  const __m256 a = _mm256_add_ps(m[1], m[2]), b = _mm256_sub_ps(m[1], m[2]);
  const __m256 c = _mm256_add_ps(m[3], m[4]), e = _mm256_sub_ps(m[3], m[4]);
  o[0] = _mm256_add_ps(_mm256_add_ps(m[0], a), c);
  o[1] = _mm256_fmadd_ps(_mm256_set1_ps(0.5f), e, b);
  o[2] = _mm256_fmadd_ps(_mm256_set1_ps(0.25f), c, a);
  o[3] = _mm256_add_ps(_mm256_fmadd_ps(_mm256_set1_ps(0.125f), e, b), m[5]);
}

// 8 channels (`valid` of them, the rest zero) of x as fp32: fp32 x, or bf16 x widened exactly.
SK_AVX2_TARGET inline __m256 load8(const float* src, int64_t valid, __m256i mask) {
  return valid == 8 ? _mm256_loadu_ps(src) : _mm256_maskload_ps(src, mask);
}
SK_AVX2_TARGET inline __m256 load8(const uint16_t* src, int64_t valid, __m256i) {
  __m128i h;
  if (valid == 8) {
    h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
  } else {  // no 16-bit masked load in AVX2: nothing past the channel run is read
    alignas(16) uint16_t buf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t i = 0; i < valid; ++i) buf[i] = src[i];
    h = _mm_load_si128(reinterpret_cast<const __m128i*>(buf));
  }
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

// `valid` lanes of v at dst: fp32, or rounded to bf16 (nearest even: every finite value and
// +-inf bit for bit as torch rounds; a NaN stays a NaN with its sign and top payload bits, where
// torch writes 0xFFFF / 0x7FFF).
SK_AVX2_TARGET inline void store8(float* dst, __m256 v, int64_t valid, __m256i mask) {
  if (valid == 8) {
    _mm256_storeu_ps(dst, v);
  } else {
    _mm256_maskstore_ps(dst, mask, v);
  }
}
SK_AVX2_TARGET inline void store8(uint16_t* dst, __m256 v, int64_t valid, __m256i) {
  const __m256i b = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_add_epi32(b, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF)));
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, _mm256_or_si256(b, _mm256_set1_epi32(0x00400000)), nan);
  r = _mm256_srli_epi32(r, 16);
  const __m128i h = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
  if (valid == 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), h);
  } else {  // nothing past the channel run is written
    alignas(16) uint16_t buf[8];
    _mm_store_si128(reinterpret_cast<__m128i*>(buf), h);
    for (int64_t i = 0; i < valid; ++i) dst[i] = buf[i];
  }
}

// Tiles [t0, t1) of the input transform; TX, TV: float (fp32) or uint16_t (bf16) x and V.
template <class TX, class TV>
SK_AVX2_TARGET void input_tiles(const WinoInArgs& a, const TX* x, TV* V, int64_t t0,
                                int64_t t1) {
  const int64_t C = a.C, s = a.s, K = s * s * C, T = a.t_count;
  const __m256 zero = _mm256_setzero_ps();
  __m256 d[6], row[6][6], col[6], o[6];
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t tx = t % a.tw, ty = (t / a.tw) % a.th, n = t / (a.tw * a.th);
    const TX* xn = x + n * a.H * a.W * C;
    for (int64_t p = 0; p < s; ++p) {
      int64_t rows[6];
      for (int i = 0; i < 6; ++i) {
        const int64_t h = s * (4 * ty + i) + p - a.P;
        rows[i] = (h >= 0 && h < a.H) ? h : -1;
      }
      for (int64_t q = 0; q < s; ++q) {
        int64_t cols[6];
        for (int j = 0; j < 6; ++j) {
          const int64_t w = s * (4 * tx + j) + q - a.P;
          cols[j] = (w >= 0 && w < a.W) ? w : -1;
        }
        TV* vt = V + (t - a.t_begin) * K + (p * s + q) * C;
        for (int64_t c0 = 0; c0 < C; c0 += 8) {
          const int64_t valid = std::min<int64_t>(8, C - c0);
          const __m256i mask = lane_mask(valid);
          for (int i = 0; i < 6; ++i) {
            if (rows[i] < 0) {
              for (int v = 0; v < 6; ++v) row[i][v] = zero;
              continue;
            }
            const TX* xr = xn + rows[i] * a.W * C + c0;
            for (int j = 0; j < 6; ++j) {
              d[j] = cols[j] < 0 ? zero : load8(xr + cols[j] * C, valid, mask);
            }
            bt6(d, row[i]);
          }
          for (int v = 0; v < 6; ++v) {
            for (int i = 0; i < 6; ++i) col[i] = row[i][v];
            bt6(col, o);
            for (int u = 0; u < 6; ++u) store8(vt + (u * 6 + v) * T * K + c0, o[u], valid, mask);
          }
        }
      }
    }
  }
}

// Tiles [t0, t1) of the output transform into y (TY: float, or uint16_t for bf16).
template <class TY>
SK_AVX2_TARGET void output_tiles(const WinoOutArgs& a, TY* y, int64_t t0, int64_t t1) {
  const int64_t Co = a.Co, r = a.r, Cp = r * r * Co, T = a.t_count;
  __m256 m[6], rowt[6][4], col[6], o[4];
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t tx = t % a.tw, ty = (t / a.tw) % a.th, n = t / (a.tw * a.th);
    TY* yn = y + n * a.Ho * a.Wo * Co;
    for (int64_t ry = 0; ry < r; ++ry) {
      for (int64_t rx = 0; rx < r; ++rx) {
        const float* mt = a.M + (t - a.t_begin) * Cp + (ry * r + rx) * Co;
        for (int64_t c0 = 0; c0 < Co; c0 += 8) {
          const int64_t valid = std::min<int64_t>(8, Co - c0);
          const bool full = valid == 8;
          const __m256i mask = lane_mask(valid);
          for (int u = 0; u < 6; ++u) {
            for (int v = 0; v < 6; ++v) {
              const float* src = mt + (u * 6 + v) * T * Cp + c0;
              m[v] = full ? _mm256_loadu_ps(src) : _mm256_maskload_ps(src, mask);
            }
            at6(m, rowt[u]);
          }
          __m256 bias = _mm256_setzero_ps();
          if (a.bias != nullptr) {
            bias = full ? _mm256_loadu_ps(a.bias + c0) : _mm256_maskload_ps(a.bias + c0, mask);
          }
          for (int j = 0; j < 4; ++j) {
            const int64_t w = r * (4 * tx + j) + rx;
            if (w >= a.Wo) break;
            for (int u = 0; u < 6; ++u) col[u] = rowt[u][j];
            at6(col, o);
            for (int i = 0; i < 4; ++i) {
              const int64_t h = r * (4 * ty + i) + ry;
              if (h >= a.Ho) break;
              store8(yn + (h * a.Wo + w) * Co + c0, _mm256_add_ps(o[i], bias), valid, mask);
            }
          }
        }
      }
    }
  }
}

// U = G g G^T for 8 columns (g: the 9 taps a*3 + b), stored at dst + ij*stride (masked tail).
SK_AVX2_TARGET inline void ggt8(const __m256* g, const float* G, float* dst, int64_t stride,
                                int64_t valid, __m256i m) {
  for (int i = 0; i < 6; ++i) {
    const __m256 gi0 = _mm256_set1_ps(G[3 * i]), gi1 = _mm256_set1_ps(G[3 * i + 1]),
                 gi2 = _mm256_set1_ps(G[3 * i + 2]);
    __m256 t[3];
    for (int b = 0; b < 3; ++b) {
      t[b] = _mm256_fmadd_ps(gi2, g[6 + b], _mm256_fmadd_ps(gi1, g[3 + b],
                                                            _mm256_mul_ps(gi0, g[b])));
    }
    for (int j = 0; j < 6; ++j) {
      const __m256 u = _mm256_fmadd_ps(
          _mm256_set1_ps(G[3 * j + 2]), t[2],
          _mm256_fmadd_ps(_mm256_set1_ps(G[3 * j + 1]), t[1],
                          _mm256_mul_ps(_mm256_set1_ps(G[3 * j]), t[0])));
      float* d = dst + (i * 6 + j) * stride;
      if (valid == 8) {
        _mm256_storeu_ps(d, u);
      } else {
        _mm256_maskstore_ps(d, m, u);
      }
    }
  }
}

// Columns [c0, c1) of the inverse weight transform: per 8 columns and row i of M, r = M_i G
// (3 vectors), then out[a][b] += G[i][a] r[b] (9 accumulators).
SK_AVX2_TARGET void weight_grad_cols(const WinoWeightGradArgs& a, int64_t c0, int64_t c1) {
  const float* G = a.G;
  for (int64_t c = c0; c < c1; c += 8) {
    const int64_t valid = std::min<int64_t>(8, c1 - c);
    const __m256i m = lane_mask(valid);
    __m256 acc[9];
    for (int t = 0; t < 9; ++t) acc[t] = _mm256_setzero_ps();
    for (int i = 0; i < 6; ++i) {
      __m256 r[3] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
      for (int j = 0; j < 6; ++j) {
        const __m256 v = _mm256_maskload_ps(a.M + (i * 6 + j) * a.n + c, m);
        for (int b = 0; b < 3; ++b) r[b] = _mm256_fmadd_ps(_mm256_set1_ps(G[3 * j + b]), v, r[b]);
      }
      for (int aa = 0; aa < 3; ++aa) {
        const __m256 gi = _mm256_set1_ps(G[3 * i + aa]);
        for (int b = 0; b < 3; ++b) acc[aa * 3 + b] = _mm256_fmadd_ps(gi, r[b], acc[aa * 3 + b]);
      }
    }
    // the final layout: per lane, its 9 values to their taps
    alignas(32) float buf[9][8];
    for (int t = 0; t < 9; ++t) _mm256_store_ps(buf[t], acc[t]);
    const int64_t phases2 = a.cp / a.c2;
    for (int64_t l = 0; l < valid; ++l) {
      const int64_t col = c + l, kidx = col / a.cp, j = col % a.cp;
      const int64_t ph = kidx / a.c1 * phases2 + j / a.c2;
      float* d = a.out + kidx % a.c1 * a.s1 + j % a.c2 * a.s2;
      const int32_t* tp = a.taps + ph * 9;
      for (int t = 0; t < 9; ++t)
        if (tp[t] >= 0) d[tp[t]] = buf[t][l];
    }
  }
}

// Tiles [t0, t1) of winograd_grad_tiles_f43: per tile, phase and 8 channels, the 4x4 values g
// (zero past the image), then per row i of A: t = A_i g (4 vectors), U[i][j] = t A_j^T.
SK_AVX2_TARGET void grad_tiles(const WinoGradTilesArgs& a, int64_t t0, int64_t t1) {
  const int64_t s = a.s, Co = a.Co, cp = s * s * Co, T = a.N * a.th * a.tw;
  const float* AT = a.AT;
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n = t / (a.th * a.tw), ty = t / a.tw % a.th, tx = t % a.tw;
    for (int64_t ry = 0; ry < s; ++ry) {
      for (int64_t rx = 0; rx < s; ++rx) {
        const int64_t ph = ry * s + rx;
        for (int64_t o = 0; o < Co; o += 8) {
          const int64_t valid = std::min<int64_t>(8, Co - o);
          const __m256i m = lane_mask(valid);
          __m256 g[16];
          for (int i = 0; i < 4; ++i) {
            const int64_t y = s * (4 * ty + i) + ry;
            for (int j = 0; j < 4; ++j) {
              const int64_t x = s * (4 * tx + j) + rx;
              g[i * 4 + j] = (y < a.Ho && x < a.Wo)
                  ? _mm256_maskload_ps(a.gy + ((n * a.Ho + y) * a.Wo + x) * Co + o, m) : zero;
            }
          }
          float* dst = a.U + t * cp + ph * Co + o;
          for (int i = 0; i < 6; ++i) {
            __m256 r[4];
            for (int b = 0; b < 4; ++b) {
              __m256 acc = _mm256_mul_ps(_mm256_set1_ps(AT[i]), g[b]);
              for (int k = 1; k < 4; ++k)
                acc = _mm256_fmadd_ps(_mm256_set1_ps(AT[k * 6 + i]), g[k * 4 + b], acc);
              r[b] = acc;
            }
            for (int j = 0; j < 6; ++j) {
              __m256 u = _mm256_mul_ps(_mm256_set1_ps(AT[j]), r[0]);
              for (int k = 1; k < 4; ++k) u = _mm256_fmadd_ps(_mm256_set1_ps(AT[k * 6 + j]), r[k], u);
              float* d = dst + (i * 6 + j) * T * cp;
              if (valid == 8) {
                _mm256_storeu_ps(d, u);
              } else {
                _mm256_maskstore_ps(d, m, u);
              }
            }
          }
        }
      }
    }
  }
}

// Rows [r0, r1) of winograd_kernel_weight_f43: per row and block of 8 lanes, the kernels' taps
// are gathered into tap-major vectors (a small buffer), then every phase's 3x3 is transformed.
SK_AVX2_TARGET void kernel_weight_rows(const WinoKernelWeightArgs& a, int64_t r0, int64_t r1,
                                       float* buf) {
  const int64_t kk = a.kk;
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t c = r0; c < r1; ++c) {
    for (int64_t o = 0; o < a.L; o += 8) {
      const int64_t valid = std::min<int64_t>(8, a.L - o);
      const __m256i m = lane_mask(valid);
      for (int64_t l = 0; l < 8; ++l) {
        const float* src = a.w + c * a.Ic + (o + l) * a.Il;
        for (int64_t t = 0; t < kk; ++t) buf[t * 8 + l] = l < valid ? src[t] : 0.0f;
      }
      for (int64_t ph = 0; ph < a.P; ++ph) {
        __m256 g[9];
        for (int t = 0; t < 9; ++t) {
          const int32_t src = a.idx[ph * 9 + t];
          g[t] = src < 0 ? zero : _mm256_loadu_ps(buf + src * 8);
        }
        ggt8(g, a.G, a.U + ph * a.Sph + c * a.Sc + o, a.S36, valid, m);
      }
    }
  }
}

// Columns [c0, c1) of the weight transform: per 8 columns, t = G g (6x3) then U = t G^T (6x6),
// 162 FMAs, the 9 inputs and one row of t in registers; the last block masked.
SK_AVX2_TARGET void weight_cols(const WinoWeightArgs& a, int64_t c0, int64_t c1) {
  for (int64_t c = c0; c < c1; c += 8) {
    const int64_t valid = std::min<int64_t>(8, c1 - c);
    const __m256i m = lane_mask(valid);
    __m256 g[9];
    for (int t = 0; t < 9; ++t) g[t] = _mm256_maskload_ps(a.g + t * a.n + c, m);
    ggt8(g, a.G, a.U + c, a.n, valid, m);
  }
}

// Columns [0, n) split over the threads in blocks of 8 (a block is one AVX2 vector wide).
template <class F>
void over_columns(int64_t n, int nthreads, const F& body) {
  const int64_t blocks = (n + 7) / 8;
  const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(nthreads, blocks));
  run_on_threads(nt, [&](int64_t i) {
    body(8 * (blocks * i / nt), std::min(n, 8 * (blocks * (i + 1) / nt)));
  });
}

// Tiles [b, b + T) split evenly over the threads.
template <class F>
void over_tiles(int64_t b, int64_t T, int nthreads, const F& body) {
  const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(nthreads, T));
  run_on_threads(nt, [&](int64_t i) { body(b + T * i / nt, b + T * (i + 1) / nt); });
}

// Resolves t_count = 0 (all tiles); false when the range is outside [0, N*th*tw).
template <class A>
bool tile_range(A& a) {
  const int64_t total = a.N * a.th * a.tw;
  if (a.t_count == 0 && a.t_begin == 0) a.t_count = total;
  return a.t_begin >= 0 && a.t_count > 0 && a.t_begin + a.t_count <= total;
}
}  // namespace

int winograd_input_f43(const WinoInArgs& args) {
  if (!gdn_avx2_available()) return kWNoAvx2;
  WinoInArgs a = args;
  if ((a.x == nullptr) == (a.x_bf16 == nullptr) || (a.V == nullptr) == (a.V_bf16 == nullptr) ||
      a.N <= 0 || a.H <= 0 || a.W <= 0 || a.C <= 0 || a.s <= 0 || a.th <= 0 || a.tw <= 0 ||
      !tile_range(a)) {
    return kWBadArgs;
  }
  over_tiles(a.t_begin, a.t_count, a.nthreads, [&a](int64_t t0, int64_t t1) {
    if (a.x != nullptr && a.V != nullptr) {
      input_tiles(a, a.x, a.V, t0, t1);
    } else if (a.x != nullptr) {
      input_tiles(a, a.x, a.V_bf16, t0, t1);
    } else if (a.V != nullptr) {
      input_tiles(a, a.x_bf16, a.V, t0, t1);
    } else {
      input_tiles(a, a.x_bf16, a.V_bf16, t0, t1);
    }
  });
  return kWOk;
}

int winograd_output_f43(const WinoOutArgs& args) {
  if (!gdn_avx2_available()) return kWNoAvx2;
  WinoOutArgs a = args;
  if (a.M == nullptr || (a.y == nullptr) == (a.y_bf16 == nullptr) || a.N <= 0 || a.th <= 0 ||
      a.tw <= 0 || a.Co <= 0 || a.r <= 0 || a.Ho <= 0 || a.Wo <= 0 || !tile_range(a)) {
    return kWBadArgs;
  }
  over_tiles(a.t_begin, a.t_count, a.nthreads, [&a](int64_t t0, int64_t t1) {
    if (a.y_bf16 != nullptr) {
      output_tiles(a, a.y_bf16, t0, t1);
    } else {
      output_tiles(a, a.y, t0, t1);
    }
  });
  return kWOk;
}

int winograd_weight_f43(const WinoWeightArgs& a) {
  if (!gdn_avx2_available()) return kWNoAvx2;
  if (a.g == nullptr || a.G == nullptr || a.U == nullptr || a.n <= 0) return kWBadArgs;
  over_columns(a.n, a.nthreads, [&a](int64_t c0, int64_t c1) { weight_cols(a, c0, c1); });
  return kWOk;
}

int winograd_kernel_weight_f43(const WinoKernelWeightArgs& a) {
  if (!gdn_avx2_available()) return kWNoAvx2;
  if (a.w == nullptr || a.idx == nullptr || a.G == nullptr || a.U == nullptr || a.kk <= 0 ||
      a.R <= 0 || a.L <= 0 || a.P <= 0) {
    return kWBadArgs;
  }
  for (int64_t i = 0; i < a.P * 9; ++i) {
    if (a.idx[i] < -1 || a.idx[i] >= a.kk) return kWBadArgs;
  }
  const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(a.nthreads, a.R));
  std::vector<detail::Buf<float>> bufs;
  for (int64_t t = 0; t < nt; ++t) {
    bufs.push_back(detail::alloc_aligned<float>(a.kk * 8));
    if (!bufs.back()) return kWNoMem;
  }
  run_on_threads(nt, [&a, &bufs, nt](int64_t i) {
    kernel_weight_rows(a, a.R * i / nt, a.R * (i + 1) / nt, bufs[i].get());
  });
  return kWOk;
}

int winograd_weight_grad_f43(const WinoWeightGradArgs& a) {
  if (!gdn_avx2_available()) return kWNoAvx2;
  if (a.M == nullptr || a.G == nullptr || a.out == nullptr || a.n <= 0) return kWBadArgs;
  if (a.taps == nullptr || a.cp <= 0 || a.c1 <= 0 || a.c2 <= 0 || a.n % a.cp != 0 ||
      a.cp % a.c2 != 0 || (a.n / a.cp) % a.c1 != 0 || a.s1 < 0 || a.s2 < 0 ||
      (a.n / a.cp / a.c1 > 1 && a.cp / a.c2 > 1)) {
    return kWBadArgs;
  }
  over_columns(a.n, a.nthreads, [&a](int64_t c0, int64_t c1) { weight_grad_cols(a, c0, c1); });
  return kWOk;
}

int winograd_grad_tiles_f43(const WinoGradTilesArgs& a) {
  if (!gdn_avx2_available()) return kWNoAvx2;
  if (a.gy == nullptr || a.AT == nullptr || a.U == nullptr || a.N <= 0 || a.Ho <= 0 ||
      a.Wo <= 0 || a.Co <= 0 || a.s <= 0 || a.th * 4 * a.s < a.Ho || a.tw * 4 * a.s < a.Wo) {
    return kWBadArgs;
  }
  over_tiles(0, a.N * a.th * a.tw, a.nthreads,
             [&a](int64_t t0, int64_t t1) { grad_tiles(a, t0, t1); });
  return kWOk;
}

#else  // no AVX2 code on this compiler / architecture

int winograd_input_f43(const WinoInArgs&) { return kWNoAvx2; }
int winograd_output_f43(const WinoOutArgs&) { return kWNoAvx2; }
int winograd_weight_f43(const WinoWeightArgs&) { return kWNoAvx2; }
int winograd_kernel_weight_f43(const WinoKernelWeightArgs&) { return kWNoAvx2; }
int winograd_weight_grad_f43(const WinoWeightGradArgs&) { return kWNoAvx2; }
int winograd_grad_tiles_f43(const WinoGradTilesArgs&) { return kWNoAvx2; }

#endif

}  // namespace sk
