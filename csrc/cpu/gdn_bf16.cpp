// Fused bf16 GDN / IGDN forward on AVX512-BF16 (see gdn_bf16.hpp).
//
// x is [P, C] (P = N * HW pixels, channel stride 1). Work unit: a block of up to kPix pixels:
//   1. z = bf16(x^2) into a per-thread buffer [kPix][C2] (C2 = C rounded up to even, the pad
//      channel zero), read as 32-bit channel pairs;
//   2. per group of one or two panels of 16 output channels (gamma^T packed once per call in
//      channel pairs, [panel][C2/2][16][2] bf16, zero past C): micro-tiles of kMr pixels x 16 or
//      32 channels accumulate n in zmm registers (one broadcast pair of z and one or two B loads
//      per vdpbf16ps row);
//   3. epilogue on the registers: n += beta, y = x / sqrt(n) (IGDN x * sqrt(n)) from the 14-bit
//      estimate and one Newton step, rounded to bf16 and stored with a mask on the last panel.
#include "gdn_bf16.hpp"

#include <algorithm>
#include <cstring>
#include <vector>

#include "amx_tiles.hpp"  // run_on_threads
#include "bf16_dot.hpp"
#include "conv_avx2.hpp"  // conv_bf16_available
#include "cpu_common.hpp"

namespace sk {

namespace {
enum GdnBf16Err { kGOk = 0, kGNoIsa = 1, kGBadArgs = 2, kGNoMem = 3 };
constexpr int kPix = 48;  // pixels per block: z (48 x C2 bf16) + two B panels stay in L1
constexpr int kMr = 12;   // pixels per micro-tile: 24 accumulators for two panels
}  // namespace

const char* gdn_bf16_error_message(int code) {
  switch (code) {
    case kGOk: return "ok";
    case kGNoIsa: return "AVX512-BF16 is not available on this CPU; use the PyTorch path";
    case kGBadArgs: return "unsupported arguments (x must be bf16 channels_last, no factors r, "
                           "splits 1; gamma / beta fp32 or bf16; sizes positive; an output "
                           "buffer for the packed gamma)";
    case kGNoMem: return "out of memory for the packed parameters or the block buffers";
  }
  return "unknown error";
}

#if SK_HAVE_BF16_CODE

namespace {

constexpr __mmask16 kAll = 0xFFFF;

// 1/sqrt(n) (sqrt(n) when want_sqrt) from the 14-bit estimate and one Newton step
// r = r0 / 2 * (3 - n r0^2): fp32 to a few ulp (n > 0 and finite here: beta > 0).
SK_BF16_TARGET inline __m512 rsqrt_nr(__m512 n, bool want_sqrt) {
  const __m512 r0 = _mm512_maskz_rsqrt14_ps(kAll, n);  // maskz: GCC 12's unmasked form
                                                       // warns (-Wuninitialized)
  const __m512 t = _mm512_mul_ps(n, r0);
  const __m512 u = _mm512_fnmadd_ps(t, r0, _mm512_set1_ps(3.0f));
  return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), want_sqrt ? t : r0), u);
}

// 16 bf16 values at p (lanes of m; the others 0) widened exactly to fp32
SK_BF16_TARGET inline __m512 load_bf16(const uint16_t* p, __mmask16 m) {
  const __m256i h = _mm256_maskz_loadu_epi16(m, p);
  const __m512i w = _mm512_maskz_cvtepu16_epi32(kAll, h);
  return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(kAll, w, 16));
}

// z[p][c] = bf16(x[p][c]^2) for np pixel rows (x rows of C, z rows of C2; z[p][C] = 0 if C odd)
SK_BF16_TARGET void squares(const uint16_t* x, uint16_t* z, int64_t np, int64_t C, int64_t C2) {
  for (int64_t p = 0; p < np; ++p) {
    const uint16_t* xr = x + p * C;
    uint16_t* zr = z + p * C2;
    for (int64_t c = 0; c < C; c += 16) {
      const __mmask16 m = detail::lanes16(C - c);
      const __m512 v = load_bf16(xr + c, m);
      const __m256bh h = _mm512_cvtneps_pbh(_mm512_mul_ps(v, v));
      _mm256_mask_storeu_epi16(zr + c, m, (__m256i)h);
    }
    if (C2 > C) zr[C] = 0;
  }
}

// MR pixels (z rows at z + r*C2, x / y rows at x / y + r*C) x G panels of 16 output channels
// from channel c0 (bp: the first panel, the next one pstride elements on; beta: at c0).
template <int MR, int G>
SK_BF16_TARGET void micro(const uint16_t* z, int64_t C2, const uint16_t* bp, int64_t pstride,
                        const float* beta, const uint16_t* x, uint16_t* y, int64_t C, int64_t c0,
                        bool inverse) {
  __m512 acc[MR][G];
  SK_UNROLL for (int r = 0; r < MR; ++r)
    SK_UNROLL for (int g = 0; g < G; ++g) acc[r][g] = _mm512_setzero_ps();
  const int64_t pairs = C2 / 2;
  for (int64_t i = 0; i < pairs; ++i)
    detail::dot_pairs<MR, G, false>(acc, z + 2 * i, C2, bp + i * 32, pstride);
  SK_UNROLL for (int g = 0; g < G; ++g) {
    const int64_t c = c0 + 16 * g;
    const __mmask16 m = detail::lanes16(C - c);
    const __m512 be = _mm512_loadu_ps(beta + 16 * g);
    SK_UNROLL for (int r = 0; r < MR; ++r) {
      const __m512 s = rsqrt_nr(_mm512_add_ps(acc[r][g], be), inverse);
      const __m512 v = _mm512_mul_ps(load_bf16(x + r * C + c, m), s);
      _mm256_mask_storeu_epi16(y + r * C + c, m, (__m256i)_mm512_cvtneps_pbh(v));
    }
  }
}

template <int G>
SK_BF16_TARGET void panels(const uint16_t* z, int64_t C2, const uint16_t* bp, int64_t pstride,
                         const float* beta, const uint16_t* x, uint16_t* y, int64_t np,
                         int64_t C, int64_t c0, bool inverse) {
  int64_t p = 0;
  for (; p + kMr <= np; p += kMr)
    micro<kMr, G>(z + p * C2, C2, bp, pstride, beta, x + p * C, y + p * C, C, c0, inverse);
  for (; p < np; ++p)
    micro<1, G>(z + p * C2, C2, bp, pstride, beta, x + p * C, y + p * C, C, c0, inverse);
}

// One block of np <= kPix pixels (x / y rows of C channels from x / y).
SK_BF16_TARGET void run_block(const uint16_t* x, uint16_t* y, int64_t np, int64_t C, int64_t C2,
                            const uint16_t* bp, const float* beta, uint16_t* z, bool inverse) {
  const int64_t NP = (C + 15) / 16, pstride = C2 * 16;
  squares(x, z, np, C, C2);
  for (int64_t q = 0; q < NP; q += 2) {
    const uint16_t* panel = bp + q * pstride;
    if (NP - q >= 2)
      panels<2>(z, C2, panel, pstride, beta + q * 16, x, y, np, C, q * 16, inverse);
    else
      panels<1>(z, C2, panel, pstride, beta + q * 16, x, y, np, C, q * 16, inverse);
  }
}

// detail::to_bf16_bits on 16 lanes (round to nearest even, NaN kept quiet, denormals rounded as
// torch does: vcvtne2ps2bf16 would flush them to zero)
SK_BF16_TARGET inline __m256i to_bf16_bits16(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i hi = _mm512_srli_epi32(u, 16);
  const __m512i rounded = _mm512_srli_epi32(
      _mm512_add_epi32(u, _mm512_add_epi32(_mm512_and_si512(hi, _mm512_set1_epi32(1)),
                                           _mm512_set1_epi32(0x7fff))), 16);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(
      _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
  const __m512i r = _mm512_mask_mov_epi32(rounded, nan,
                                          _mm512_or_si512(hi, _mm512_set1_epi32(0x40)));
  return _mm512_cvtepi32_epi16(r);
}

// rows[o][i] = bf16(gamma_k[o, i]) for o < C, i < C2 (0 at i >= C), element by element with
// gdn_gamma's arithmetic: a product, then a sum. Compiled without the kernels' FMA target, so
// the compiler cannot fuse them into one rounding (it did inside pack_gamma).
__attribute__((noinline)) void pack_rows_scalar(const GdnArgs& a, int64_t C2, uint16_t* rows) {
  for (int64_t o = 0; o < a.C; ++o)
    for (int64_t i = 0; i < C2; ++i)
      rows[o * C2 + i] = detail::to_bf16_bits(detail::gdn_gamma(a, o, i));
}

// gamma_k^T in panels of 16 output channels and input-channel pairs, bf16:
// bp[q][i/2][j][i%2] = bf16(gamma_k[q*16 + j, i]) (0 past C), in two passes: the rows of gamma_k
// to bf16 (rows[o][i], NP*16 rows of C2), then each packed vector (one input-channel pair of 16
// rows) gathered as 32-bit words. The rows are converted 16 lanes at a time where gamma_k is
// gamma itself (no SlimGDN+ scalars: gdn_gamma's x * 1 + 0 is x + 0, exact) in fp32 with unit
// stride along its input channels, as SlimGDN's effective parameters are; element by element
// otherwise. Same bits either way. At C = 192: ~5 us against ~65 us element by element.
SK_BF16_TARGET void pack_gamma(const GdnArgs& a, int64_t C2, int64_t NP, uint16_t* rows,
                               uint16_t* bp) {
  const int64_t C = a.C, R = NP * 16;
  if (a.gdtype == kF32 && a.g_s1 == 1 && a.gamma_scale == 1.0 && a.gamma_bias == 0.0) {
    const __m512 zero = _mm512_setzero_ps();
    for (int64_t o = 0; o < C; ++o) {
      const float* g = static_cast<const float*>(a.gamma) + o * a.g_s0;
      uint16_t* r = rows + o * C2;
      for (int64_t i = 0; i < C2; i += 16) {
        const __mmask16 m = detail::lanes16(C - i);          // C - i >= 0: i < C2 <= C + 1
        const __mmask16 st = detail::lanes16(C2 - i);
        // + 0: -0 becomes +0 as in gdn_gamma; lanes past C are 0
        const __m512 v = _mm512_maskz_add_ps(m, _mm512_maskz_loadu_ps(m, g + i), zero);
        _mm256_mask_storeu_epi16(r + i, st, to_bf16_bits16(v));
      }
    }
  } else {
    pack_rows_scalar(a, C2, rows);
  }
  std::memset(rows + C * C2, 0, static_cast<size_t>((R - C) * C2) * sizeof(uint16_t));
  const int64_t pairs = C2 / 2;
  const __m512i idx = _mm512_mullo_epi32(
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
      _mm512_set1_epi32(static_cast<int>(pairs)));
  int32_t* dst = reinterpret_cast<int32_t*>(bp);
  for (int64_t q = 0; q < NP; ++q) {
    const int32_t* src = reinterpret_cast<const int32_t*>(rows + q * 16 * C2);
    for (int64_t p = 0; p < pairs; ++p, dst += 16)
      _mm512_storeu_si512(dst, _mm512_i32gather_epi32(idx, src + p, 4));
  }
}

}  // namespace

int gdn_forward_bf16(const GdnArgs& a) {
  if (!conv_bf16_available()) return kGNoIsa;
  if (a.x == nullptr || a.y == nullptr || a.gamma == nullptr || a.beta == nullptr ||
      a.xdtype != kBF16 || !a.channels_last || a.r != nullptr || a.splits != 1 || a.N <= 0 ||
      a.C <= 0 || a.HW <= 0 || (a.gdtype != kF32 && a.gdtype != kBF16) ||
      (a.bdtype != kF32 && a.bdtype != kBF16))
    return kGBadArgs;
  const int64_t C = a.C, C2 = (C + 1) / 2 * 2, NP = (C + 15) / 16, P = a.N * a.HW;
  // gamma_k^T in panels of 16 output channels and input-channel pairs, bf16:
  // bp[q][i/2][j][i%2] = gamma_k[q*16 + j, i] (0 past C), packed here unless the caller passes
  // it (gdn_pack_gamma_bf16); beta padded with 1 (never stored)
  detail::Buf<uint16_t> own;
  const uint16_t* bp = static_cast<const uint16_t*>(a.packed_gamma);
  if (bp == nullptr) {
    own = detail::alloc_aligned<uint16_t>(gdn_bf16_packed_size(C));
    if (!own) return kGNoMem;
    if (const int rc = gdn_pack_gamma_bf16(a, own.get())) return rc;
    bp = own.get();
  }
  detail::Buf<float> beta = detail::alloc_aligned<float>(NP * 16);
  if (!beta) return kGNoMem;
  for (int64_t o = 0; o < NP * 16; ++o) beta[o] = detail::gdn_beta(a, o);
  // threads: ranges of whole blocks, at least 4 blocks each
  const int64_t blocks = (P + kPix - 1) / kPix;
  const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(a.nthreads, blocks / 4));
  std::vector<detail::Buf<uint16_t>> bufs(static_cast<size_t>(nt));
  for (auto& buf : bufs) {
    buf = detail::alloc_aligned<uint16_t>(kPix * C2);
    if (!buf) return kGNoMem;
  }
  const uint16_t* x = static_cast<const uint16_t*>(a.x);
  uint16_t* y = static_cast<uint16_t*>(a.y);
  run_on_threads(nt, [&](int64_t t) {
    uint16_t* z = bufs[static_cast<size_t>(t)].get();
    const int64_t k0 = blocks * t / nt, k1 = blocks * (t + 1) / nt;
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t p = k * kPix, np = std::min<int64_t>(kPix, P - p);
      run_block(x + p * C, y + p * C, np, C, C2, bp, beta.get(), z, a.inverse);
    }
  });
  return kGOk;
}

int gdn_pack_gamma_bf16(const GdnArgs& a, uint16_t* out) {
  if (!conv_bf16_available()) return kGNoIsa;
  if (out == nullptr || a.gamma == nullptr || a.C <= 0 ||
      (a.gdtype != kF32 && a.gdtype != kBF16))
    return kGBadArgs;
  const int64_t C2 = (a.C + 1) / 2 * 2, NP = (a.C + 15) / 16;
  detail::Buf<uint16_t> rows = detail::alloc_aligned<uint16_t>(NP * 16 * C2);
  if (!rows) return kGNoMem;
  pack_gamma(a, C2, NP, rows.get(), out);
  return kGOk;
}

#else

int gdn_forward_bf16(const GdnArgs&) { return kGNoIsa; }
int gdn_pack_gamma_bf16(const GdnArgs&, uint16_t*) { return kGNoIsa; }

#endif

int64_t gdn_bf16_packed_size(int64_t C) { return (C + 15) / 16 * ((C + 1) / 2 * 2) * 16; }

}  // namespace sk
