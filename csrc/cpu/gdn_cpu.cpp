// Fused GDN / IGDN forward on AMX-BF16 (see gdn_cpu.hpp).
//
// Work unit: a block of pixels. Per block:
//   1. z = x^2 (fp32), rounded to bf16 (and for splits == 3 also z_lo = bf16(z - z_hi)) into a
//      small per-thread buffer in the layout the GEMM wants;
//   2. n = z gamma^T on AMX tiles (tdpbf16ps, fp32 accumulation) into a per-thread fp32 buffer;
//   3. epilogue: y = x * rsqrt(n + beta) (IGDN: x * sqrt(n + beta)), written once.
// channels_last: the block is 32 pixel rows; A = z [32 x K], B = gamma^T packed in VNNI pairs,
// tile by tile (BTiles).
// NCHW: the block is PB pixels of one image; A = gamma [C x K], B = z [K x PB] packed in VNNI
// pairs (n comes out transposed, [C x PB], which is NCHW's layout).
// Any C: K is padded to a multiple of 32 and the output channels to a multiple of 16 with zeros
// in the packed buffers (zero rows/columns add nothing to n). splits == 3 triples K:
// [z_hi | z_lo | z_hi] . [g_hi ; g_hi ; g_lo].
#include "gdn_cpu.hpp"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>
#if defined(_OPENMP)
#include <omp.h>
#endif

#include "amx_tiles.hpp"
#include "cpu_common.hpp"
#if SK_HAVE_AMX_CODE
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace sk {

namespace {

constexpr int kClRows = 32;  // channels_last: pixels per block (two 16-row A tiles)
constexpr int kNchwPix = 64;  // NCHW: pixels per block (a multiple of 32)

enum Err { kOk = 0, kNoAmx = 1, kBadArgs = 2, kNoMem = 3 };

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

using detail::AlignedFree;
using detail::Buf;
using detail::load_param;

template <class T>
Buf<T> alloc_zeroed(int64_t n) {
  size_t bytes = static_cast<size_t>(round_up(std::max<int64_t>(n, 1) * sizeof(T), 64));
  void* p = std::aligned_alloc(64, bytes);
  if (p) std::memset(p, 0, bytes);
  return Buf<T>(static_cast<T*>(p));
}

// A grow-only buffer kept between calls (one per calling thread): no allocation, and no page
// faults on fresh memory, per call.
template <class T>
struct Reusable {
  Buf<T> buf;
  int64_t cap = 0;
  // n elements, zeroed; nullptr when out of memory
  T* zeroed(int64_t n) {
    if (n > cap) {
      buf = alloc_zeroed<T>(n);
      cap = buf ? n : 0;
    } else {
      std::memset(buf.get(), 0, static_cast<size_t>(n) * sizeof(T));
    }
    return buf.get();
  }
};

// Shapes shared by the workers of one call.
struct Plan {
  int64_t C, Kpad, Cpad, K3;  // K3 = splits * Kpad
  int splits;
  const uint16_t* gpack;      // packed gamma (layout depends on channels_last)
  const float* beta;          // effective beta, fp32, [C] (padded to Cpad)
};

// Per-worker buffers: bf16 z operand and fp32 n, both 64-byte aligned and zeroed.
struct Scratch {
  Reusable<uint16_t> zr;
  Reusable<float> nr;
  uint16_t* z = nullptr;
  float* n = nullptr;
  bool ok() const { return z && n; }
};

}  // namespace

#if SK_HAVE_AMX_CODE

#define SK_TARGET SK_AMX_TARGET

namespace {

using amx::config_full;
using amx::release;

// Where the B tiles of a GEMM lie. Rows: B in VNNI rows (K/2 rows of N pairs, ldb elements per
// row; the NCHW path's z): tile (k, column j) at B + (k/2)*ldb + 2j, rows ldb*2 bytes apart.
// Tiles: the channels_last packing of gamma (pack_gamma): 16-column panels of K/32 tiles of 16
// pair rows x 32 elements, each tile 1 KB contiguous, a panel one sequential stream (at C > 128
// the packed gamma no longer fits L1 and streams from L2 for every block of rows; as rows of the
// whole [K/2][N][2] matrix each tile was 16 lines 2*N*2 bytes apart: ~9 % slower at C = 144 /
// 192): tile (k, j) at B + (j/16)*K*16 + k*16.
struct BRows {
  const uint16_t* B;
  int64_t ldb;
  const uint16_t* at(int64_t k, int64_t j) const { return B + (k / 2) * ldb + 2 * j; }
  long stride() const { return static_cast<long>(ldb * 2); }
};
struct BTiles {
  const uint16_t* B;
  int64_t K;
  const uint16_t* at(int64_t k, int64_t j) const { return B + (j / 16) * K * 16 + k * 16; }
  long stride() const { return 64; }
};

// C tiles 0..3 (C[i][j] = tmm(2i+j)), A tiles 4, 5, B tiles 6, 7: the 32 x 32 block of C at
// (rows of A, columns j..j+32).
template <int MT, int NT, class BT>
SK_TARGET inline void micro(const uint16_t* A, int64_t lda, const BT& bt, int64_t j, float* Cm,
                            int64_t ldc, int64_t K) {
  _tile_zero(0);
  if constexpr (NT == 2) _tile_zero(1);
  if constexpr (MT == 2) _tile_zero(2);
  if constexpr (MT == 2 && NT == 2) _tile_zero(3);
  const long sa = lda * 2, sb = bt.stride();
  for (int64_t k = 0; k < K; k += 32) {
    _tile_loadd(4, A + k, sa);
    if constexpr (MT == 2) _tile_loadd(5, A + 16 * lda + k, sa);
    _tile_loadd(6, bt.at(k, j), sb);
    if constexpr (NT == 2) _tile_loadd(7, bt.at(k, j + 16), sb);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (NT == 2) _tile_dpbf16ps(1, 4, 7);
    if constexpr (MT == 2) _tile_dpbf16ps(2, 5, 6);
    if constexpr (MT == 2 && NT == 2) _tile_dpbf16ps(3, 5, 7);
  }
  const long sc = ldc * 4;
  _tile_stored(0, Cm, sc);
  if constexpr (NT == 2) _tile_stored(1, Cm + 16, sc);
  if constexpr (MT == 2) _tile_stored(2, Cm + 16 * ldc, sc);
  if constexpr (MT == 2 && NT == 2) _tile_stored(3, Cm + 16 * ldc + 16, sc);
}

// Cm[M x N] (fp32, ldc) = A[M x K] (bf16 row-major, lda) . B (bt: BRows or BTiles). M, N
// multiples of 16; K a multiple of 32.
template <class BT>
SK_TARGET void gemm(const uint16_t* A, int64_t lda, const BT& bt, float* Cm, int64_t ldc,
                    int64_t M, int64_t N, int64_t K) {
  for (int64_t i = 0; i < M; i += 32) {
    const bool m2 = i + 32 <= M;
    const uint16_t* a = A + i * lda;
    for (int64_t j = 0; j < N; j += 32) {
      const bool n2 = j + 32 <= N;
      float* c = Cm + i * ldc + j;
      if (m2 && n2) micro<2, 2>(a, lda, bt, j, c, ldc, K);
      else if (m2) micro<2, 1>(a, lda, bt, j, c, ldc, K);
      else if (n2) micro<1, 2>(a, lda, bt, j, c, ldc, K);
      else micro<1, 1>(a, lda, bt, j, c, ldc, K);
    }
  }
}

SK_TARGET inline __m512 load16(const void* base, int dtype, int64_t idx, __mmask16 m) {
  if (dtype == kBF16) {
    __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(base) + idx);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  return _mm512_maskz_loadu_ps(m, static_cast<const float*>(base) + idx);
}

SK_TARGET inline __m256i to_bf16(__m512 v) { return (__m256i)_mm512_cvtneps_pbh(v); }

SK_TARGET inline __m512 from_bf16(__m256i h) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

SK_TARGET inline void store16(void* base, int dtype, int64_t idx, __m512 v, __mmask16 m) {
  if (dtype == kBF16)
    _mm256_mask_storeu_epi16(static_cast<uint16_t*>(base) + idx, m, to_bf16(v));
  else
    _mm512_mask_storeu_ps(static_cast<float*>(base) + idx, m, v);
}

// x * rsqrt(n) (GDN) or x * sqrt(n) (IGDN); rsqrt14 + one Newton step (relative error ~1e-7),
// with exact IEEE results at n = +-0, +inf (rsqrt(0) = inf, sqrt(inf) = inf, ...) and NaN for
// n < 0 or NaN. NEWTON = false (a bf16 y): rsqrt14 alone, relative error < 2^-14: 64x below the
// rounding of y to bf16 (2^-8) and 32x below what the bf16 x^2 the products read brings to the
// root (2^-9); the same IEEE cases (IGDN's n * r0 is 0 * inf at n = 0 and inf * 0 at n = inf:
// those lanes take n, as with the Newton step).
template <bool INV, bool NEWTON = true>
SK_TARGET inline __m512 gdn_apply(__m512 x, __m512 n) {
  const __m512 r0 = _mm512_rsqrt14_ps(n);
  if constexpr (!NEWTON && !INV) return _mm512_mul_ps(x, r0);
  // r0 = 0 or inf (n = inf or 0): the lanes whose result the exact IEEE cases fix
  const __mmask16 special = _mm512_fpclass_ps_mask(r0, 0x02 | 0x04 | 0x08 | 0x10);
  if constexpr (!NEWTON)
    return _mm512_mul_ps(x, _mm512_mask_mov_ps(_mm512_mul_ps(n, r0), special, n));
  const __m512 nr = _mm512_mul_ps(n, r0);
  // r = r0 * (1.5 - 0.5 * n * r0^2)
  const __m512 h = _mm512_mul_ps(_mm512_set1_ps(0.5f), r0);
  const __m512 t = _mm512_fnmadd_ps(nr, h, _mm512_set1_ps(1.5f));  // 1.5 - 0.5 n r0^2
  if constexpr (INV) {
    __m512 s = _mm512_mul_ps(nr, t);  // n * r
    s = _mm512_mask_mov_ps(s, special, n);
    return _mm512_mul_ps(x, s);
  } else {
    __m512 r = _mm512_mul_ps(r0, t);
    r = _mm512_mask_mov_ps(r, special, r0);
    return _mm512_mul_ps(x, r);
  }
}

inline __mmask16 tail_mask(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << n) - 1u);
}

// ---------------------------------------------------------------- channels_last worker
// A block of nr < kClRows rows (the last): z's rows past the end zeroed, once per call (done);
// their n is discarded.
inline void zero_rows_past_end(uint16_t* zb, int64_t nr, int64_t K3, bool& done) {
  if (nr < kClRows && !done) {
    std::memset(zb + nr * K3, 0, (kClRows - nr) * K3 * sizeof(uint16_t));
    done = true;
  }
}

// run_cl for a bf16 x with one split (the bf16 inference path) and NCH = ceil(C/16) vectors per
// pixel: the chunks' effective beta and the last chunk's mask are held in registers for the
// whole call and each pixel's chunks are unrolled (the generic loop below reloads beta and
// builds a mask per vector). The same operations on the same values: the same bits.
template <bool INV, int NCH>
SK_TARGET void run_cl_bf16(const GdnArgs& a, const Plan& p, Scratch& sc, int64_t row0,
                           int64_t row1) {
  const int64_t C = p.C, K3 = p.K3, Cpad = p.Cpad;
  uint16_t* const zb = sc.z;
  float* const nb = sc.n;
  const uint16_t* const x = static_cast<const uint16_t*>(a.x);
  uint16_t* const y = static_cast<uint16_t*>(a.y);
  const __mmask16 last = tail_mask(C - (NCH - 1) * 16);
  __m512 bv[NCH];
  for (int j = 0; j < NCH; ++j) bv[j] = _mm512_loadu_ps(p.beta + 16 * j);  // (padded to Cpad)
  bool tail_zeroed = false;
  for (int64_t r0 = row0; r0 < row1; r0 += kClRows) {
    const int64_t nr = std::min<int64_t>(kClRows, row1 - r0);
    zero_rows_past_end(zb, nr, K3, tail_zeroed);
    const uint16_t* xr = x + r0 * C;
    for (int64_t r = 0; r < nr; ++r, xr += C) {
      uint16_t* const zr = zb + r * K3;
#pragma GCC unroll 16
      for (int j = 0; j < NCH; ++j) {
        const __mmask16 m = j + 1 < NCH ? static_cast<__mmask16>(0xffff) : last;
        const __m512 v = from_bf16(_mm256_maskz_loadu_epi16(m, xr + 16 * j));
        _mm256_mask_storeu_epi16(zr + 16 * j, m, to_bf16(_mm512_mul_ps(v, v)));
      }
    }
    gemm(zb, K3, BTiles{p.gpack, K3}, nb, Cpad, kClRows, Cpad, K3);
    xr = x + r0 * C;
    uint16_t* yr = y + r0 * C;
    for (int64_t r = 0; r < nr; ++r, xr += C, yr += C) {
      const float* const nr_ = nb + r * Cpad;
#pragma GCC unroll 16
      for (int j = 0; j < NCH; ++j) {
        const __mmask16 m = j + 1 < NCH ? static_cast<__mmask16>(0xffff) : last;
        const __m512 v = from_bf16(_mm256_maskz_loadu_epi16(m, xr + 16 * j));
        const __m512 n = _mm512_add_ps(_mm512_loadu_ps(nr_ + 16 * j), bv[j]);
        _mm256_mask_storeu_epi16(yr + 16 * j, m, to_bf16(gdn_apply<INV, false>(v, n)));
      }
    }
  }
}

// zb: A = [32 x K3] bf16, zeroed; nb: [32 x Cpad] fp32. XD: x's (and y's) dtype, a constant
// (no dtype test per vector).
template <bool INV, int XD>
SK_TARGET void run_cl(const GdnArgs& a, const Plan& p, Scratch& sc, int64_t row0,
                      int64_t row1) {
  if constexpr (XD == kBF16) {
    if (p.splits == 1) {
      switch ((p.C + 15) / 16) {
#define SK_GDN_CL_CASE(N) \
  case N: return run_cl_bf16<INV, N>(a, p, sc, row0, row1);
        SK_GDN_CL_CASE(1) SK_GDN_CL_CASE(2) SK_GDN_CL_CASE(3) SK_GDN_CL_CASE(4)
        SK_GDN_CL_CASE(5) SK_GDN_CL_CASE(6) SK_GDN_CL_CASE(7) SK_GDN_CL_CASE(8)
        SK_GDN_CL_CASE(9) SK_GDN_CL_CASE(10) SK_GDN_CL_CASE(11) SK_GDN_CL_CASE(12)
#undef SK_GDN_CL_CASE
        default: break;
      }
    }
  }
  const int64_t C = p.C, K3 = p.K3, Kpad = p.Kpad, Cpad = p.Cpad;
  uint16_t* const zb = sc.z;
  float* const nb = sc.n;
  constexpr int xd = XD;
  bool tail_zeroed = false;
  for (int64_t r0 = row0; r0 < row1; r0 += kClRows) {
    const int64_t nr = std::min<int64_t>(kClRows, row1 - r0);
    zero_rows_past_end(zb, nr, K3, tail_zeroed);
    for (int64_t r = 0; r < nr; ++r) {
      const int64_t xo = (r0 + r) * C;
      uint16_t* zr = zb + r * K3;
      for (int64_t c = 0; c < C; c += 16) {
        const __mmask16 m = tail_mask(C - c);
        const __m512 v = load16(a.x, xd, xo + c, m);
        const __m512 z = _mm512_mul_ps(v, v);
        const __m256i hi = to_bf16(z);
        _mm256_mask_storeu_epi16(zr + c, m, hi);
        if (p.splits == 3) {
          const __m256i lo = to_bf16(_mm512_sub_ps(z, from_bf16(hi)));
          _mm256_mask_storeu_epi16(zr + Kpad + c, m, lo);
          _mm256_mask_storeu_epi16(zr + 2 * Kpad + c, m, hi);
        }
      }
    }
    gemm(zb, K3, BTiles{p.gpack, K3}, nb, Cpad, kClRows, Cpad, K3);
    for (int64_t r = 0; r < nr; ++r) {
      const int64_t xo = (r0 + r) * C;
      const float* nr_ = nb + r * Cpad;
      for (int64_t c = 0; c < C; c += 16) {
        const __mmask16 m = tail_mask(C - c);
        const __m512 v = load16(a.x, xd, xo + c, m);
        const __m512 n = _mm512_add_ps(_mm512_loadu_ps(nr_ + c), _mm512_loadu_ps(p.beta + c));
        store16(a.y, xd, xo + c, gdn_apply<INV, XD != kBF16>(v, n), m);
      }
    }
  }
}

// ------------------------------------------------------------------------ NCHW worker
// blocks b in [b0, b1): image b / nblk, pixels (b % nblk) * kNchwPix ...
// zb: B = [K3/2 x PB x 2] bf16, zeroed; nb: [Cpad x PB] fp32
template <bool INV>
SK_TARGET void run_nchw(const GdnArgs& a, const Plan& p, Scratch& sc, int64_t b0,
                        int64_t b1) {
  const int64_t C = p.C, K3 = p.K3, Kpad = p.Kpad, Cpad = p.Cpad, HW = a.HW;
  const int64_t nblk = (HW + kNchwPix - 1) / kNchwPix;
  constexpr int64_t PB = kNchwPix;
  uint16_t* const zb = sc.z;
  float* const nb = sc.n;
  const int xd = a.xdtype;
  const int64_t kpairs = (C + 1) / 2;
  const int64_t half = Kpad / 2;  // pair rows per split part
  const int64_t nall = a.N * nblk;
  const int64_t es = xd == kBF16 ? 2 : 4;
  const char* const xb = static_cast<const char*>(a.x);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t img = b / nblk, p0 = (b % nblk) * PB;
    const int64_t np = std::min<int64_t>(PB, HW - p0);
    const int64_t base = img * C * HW + p0;  // x index of (img, c=0, p0)
    // The C channel rows of a block are C separate streams, more than the hardware prefetchers
    // follow: prefetch the next block's x into L2 (measured 5-25% faster; prefetching y's lines
    // for writing did not help).
    const int64_t bn = b + 1 < nall ? b + 1 : b;
    const int64_t p0n = (bn % nblk) * PB, npn = std::min<int64_t>(PB, HW - p0n);
    const int64_t basen = (bn / nblk) * C * HW + p0n;
    for (int64_t k = 0; k < kpairs; ++k) {
      const int64_t c0 = 2 * k, c1 = 2 * k + 1;
      for (int64_t q = 0; q < npn; q += 64 / es) {
        _mm_prefetch(xb + (basen + c0 * HW + q) * es, _MM_HINT_T1);
        if (c1 < C) _mm_prefetch(xb + (basen + c1 * HW + q) * es, _MM_HINT_T1);
      }
      for (int64_t q = 0; q < PB; q += 16) {
        const __mmask16 m = np - q > 0 ? tail_mask(np - q) : static_cast<__mmask16>(0);
        const __m512 v0 = load16(a.x, xd, base + c0 * HW + q, m);
        const __m512 v1 = c1 < C ? load16(a.x, xd, base + c1 * HW + q, m) : _mm512_setzero_ps();
        const __m512 z0 = _mm512_mul_ps(v0, v0), z1 = _mm512_mul_ps(v1, v1);
        const __m256i h0 = to_bf16(z0), h1 = to_bf16(z1);
        const __m512i hi = _mm512_or_si512(_mm512_cvtepu16_epi32(h0),
                                           _mm512_slli_epi32(_mm512_cvtepu16_epi32(h1), 16));
        _mm512_store_si512(zb + (k * PB + q) * 2, hi);
        if (p.splits == 3) {
          const __m256i l0 = to_bf16(_mm512_sub_ps(z0, from_bf16(h0)));
          const __m256i l1 = to_bf16(_mm512_sub_ps(z1, from_bf16(h1)));
          const __m512i lo = _mm512_or_si512(_mm512_cvtepu16_epi32(l0),
                                             _mm512_slli_epi32(_mm512_cvtepu16_epi32(l1), 16));
          _mm512_store_si512(zb + ((half + k) * PB + q) * 2, lo);
          _mm512_store_si512(zb + ((2 * half + k) * PB + q) * 2, hi);
        }
      }
    }
    gemm(p.gpack, K3, BRows{zb, 2 * PB}, nb, PB, Cpad, PB, K3);
    for (int64_t c = 0; c < C; ++c) {
      const __m512 bc = _mm512_set1_ps(p.beta[c]);
      const float* nr_ = nb + c * PB;
      const int64_t xo = base + c * HW;
      for (int64_t q = 0; q < np; q += 16) {
        const __mmask16 m = tail_mask(np - q);
        const __m512 v = load16(a.x, xd, xo + q, m);
        const __m512 n = _mm512_add_ps(_mm512_loadu_ps(nr_ + q), bc);
        store16(a.y, xd, xo + q, gdn_apply<INV>(v, n), m);
      }
    }
  }
}

// gamma_k = gamma[:C, :C] * gs + gb, split into bf16 hi / lo, packed for the GEMM along K as
// [hi | hi | lo] (splits 3) or [hi] (splits 1): channels_last pairs it (as B, VNNI [K3/2][Cpad][2])
// with A = [z_hi | z_lo | z_hi]; NCHW (as A, row-major [Cpad][K3]) with B = [z_hi; z_lo; z_hi].
// gpack arrives zeroed (the padding stays zero).
SK_TARGET void pack_gamma(const GdnArgs& a, int64_t C, int64_t Kpad, int64_t Cpad, int64_t K3,
                          float gs, float gb, uint16_t* gpack) {
  // 1. hi / lo parts, row-major [C][Kpad] (zero-padded columns)
  thread_local std::vector<uint16_t> hi_buf, lo_buf;
  thread_local std::vector<float> tmp;
  hi_buf.assign(C * Kpad, 0);
  lo_buf.assign(C * Kpad, 0);
  if (a.g_s1 != 1) tmp.resize(C);
  const __m512 vs = _mm512_set1_ps(gs), vb = _mm512_set1_ps(gb);
  for (int64_t o = 0; o < C; ++o) {
    const void* row = a.gamma;
    int dtype = a.gdtype;
    int64_t off = o * a.g_s0;
    if (a.g_s1 != 1) {
      for (int64_t i = 0; i < C; ++i) tmp[i] = load_param(a.gamma, a.gdtype, off + i * a.g_s1);
      row = tmp.data();
      dtype = kF32;
      off = 0;
    }
    uint16_t* hi = hi_buf.data() + o * Kpad;
    uint16_t* lo = lo_buf.data() + o * Kpad;
    for (int64_t i = 0; i < C; i += 16) {
      const __mmask16 m = tail_mask(C - i);
      const __m512 g = _mm512_add_ps(_mm512_mul_ps(load16(row, dtype, off + i, m), vs), vb);
      const __m256i h = to_bf16(g);
      _mm256_mask_storeu_epi16(hi + i, m, h);
      _mm256_mask_storeu_epi16(lo + i, m, to_bf16(_mm512_sub_ps(g, from_bf16(h))));
    }
  }
  // 2. the GEMM operand, written in its own order (a transposing write order thrashed the cache:
  //    ~80 us at C = 192)
  for (int s = 0; s < a.splits; ++s) {
    const uint16_t* src = s == 2 ? lo_buf.data() : hi_buf.data();
    if (a.channels_last) {
      // tile (jt, kc) (16 columns jt*16.., K chunk kc of K3) at (jt * K3/32 + kc) * 512: pair
      // row kr of K3 (elements 2kr, 2kr+1) of column o at tile (o/16, kr/16), row kr % 16,
      // pair o % 16 (BTiles)
      uint32_t* const g32 = reinterpret_cast<uint32_t*>(gpack);
      for (int64_t r = 0; r < (C + 1) / 2; ++r) {
        const int64_t kr = s * Kpad / 2 + r;
        uint32_t* const row = g32 + (kr / 16) * 256 + (kr % 16) * 16;
        for (int64_t o = 0; o < C; ++o)
          std::memcpy(row + (o / 16) * (K3 / 32) * 256 + o % 16, src + o * Kpad + 2 * r, 4);
      }
    } else {
      for (int64_t o = 0; o < C; ++o)
        std::memcpy(gpack + o * K3 + s * Kpad, src + o * Kpad, static_cast<size_t>(C) * 2);
    }
  }
}

bool detect_amx() {
  unsigned eax, ebx, ecx, edx;
  if (__get_cpuid_max(0, nullptr) < 7) return false;
  __cpuid_count(1, 0, eax, ebx, ecx, edx);
  if (!(ecx & (1u << 27))) return false;  // OSXSAVE
  __cpuid_count(7, 0, eax, ebx, ecx, edx);
  const bool avx512f = ebx & (1u << 16), avx512dq = ebx & (1u << 17),
             avx512bw = ebx & (1u << 30), avx512vl = ebx & (1u << 31);
  const bool amx_bf16 = edx & (1u << 22), amx_tile = edx & (1u << 24);
  if (!(avx512f && avx512dq && avx512bw && avx512vl && amx_bf16 && amx_tile)) return false;
  __cpuid_count(7, 1, eax, ebx, ecx, edx);
  if (!(eax & (1u << 5))) return false;  // AVX512_BF16
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  const uint64_t xcr0 = (static_cast<uint64_t>(hi) << 32) | lo;
  const uint64_t need = (1u << 1) | (1u << 2) | (7u << 5);  // SSE, AVX, AVX-512 state
  if ((xcr0 & need) != need) return false;
  // Linux >= 5.16: the tile data state must be requested per process.
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0) return false;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  const uint64_t xcr0b = (static_cast<uint64_t>(hi) << 32) | lo;
  return (xcr0b & (3u << 17)) == (3u << 17);  // XTILECFG, XTILEDATA
}

// The packed gamma of the last call on this thread, reused when the same parameter slice (same
// bytes, compared in full), scalars and layout come again: packing costs ~25-50 us at C = 192,
// more than the whole kernel on small images. Strided (g_s1 != 1) gammas are always repacked.
const uint16_t* packed_gamma(const GdnArgs& a, int64_t C, int64_t Kpad, int64_t Cpad, int64_t K3,
                             float gs, float gb) {
  struct Key {
    const void* ptr;
    int dtype, splits;
    int64_t s0, C;
    bool cl;
    float gs, gb;
    bool operator==(const Key& o) const {
      return ptr == o.ptr && dtype == o.dtype && splits == o.splits && s0 == o.s0 && C == o.C &&
             cl == o.cl && std::memcmp(&gs, &o.gs, 4) == 0 && std::memcmp(&gb, &o.gb, 4) == 0;
    }
  };
  thread_local Reusable<uint16_t> gpack_buf;
  thread_local std::vector<unsigned char> raw;  // the bytes of gamma[:C, :C] packed last
  thread_local Key last{};
  thread_local bool valid = false;
  const Key key{a.gamma, a.gdtype, a.splits, a.g_s0, C, a.channels_last, gs, gb};
  const size_t es = a.gdtype == kBF16 ? 2 : 4, row = static_cast<size_t>(C) * es;
  const auto* g = static_cast<const unsigned char*>(a.gamma);
  const bool cacheable = a.g_s1 == 1;
  if (cacheable && valid && key == last && gpack_buf.cap >= Cpad * K3) {
    bool same = true;
    for (int64_t o = 0; o < C && same; ++o)
      same = std::memcmp(raw.data() + o * row, g + o * a.g_s0 * es, row) == 0;
    if (same) return gpack_buf.buf.get();
  }
  valid = false;
  uint16_t* const gpack = gpack_buf.zeroed(Cpad * K3);
  if (!gpack) return nullptr;
  pack_gamma(a, C, Kpad, Cpad, K3, gs, gb, gpack);
  if (cacheable) {
    raw.resize(row * C);
    for (int64_t o = 0; o < C; ++o) std::memcpy(raw.data() + o * row, g + o * a.g_s0 * es, row);
    last = key;
    valid = true;
  }
  return gpack;
}

}  // namespace

SK_TARGET void gdn_rows_bf16(const GdnRows& g, uint16_t* x, int64_t rows, uint16_t* z,
                             float* n) {
  GdnArgs a;
  a.x = x;
  a.y = x;  // in place: run_cl reads each vector of x before it writes y there
  a.xdtype = kBF16;
  a.C = g.C;
  const int64_t Kpad = round_up(g.C, 32);
  const Plan p{g.C, Kpad, round_up(g.C, 16), Kpad, 1, g.gpack, g.beta};
  Scratch sc;
  sc.z = z;
  sc.n = n;
  if (g.inverse) run_cl<true, kBF16>(a, p, sc, 0, rows);
  else run_cl<false, kBF16>(a, p, sc, 0, rows);
}

#else  // !SK_HAVE_AMX_CODE

void gdn_rows_bf16(const GdnRows&, uint16_t*, int64_t, uint16_t*, float*) {}

#endif  // SK_HAVE_AMX_CODE

bool amx_available() {
#if SK_HAVE_AMX_CODE
  static const bool ok = detect_amx();
  return ok;
#else
  return false;
#endif
}

int64_t gdn_amx_packed_size(int64_t C, int splits) {
  return round_up(C, 16) * splits * round_up(C, 32);
}

int gdn_pack_gamma_amx(const GdnArgs& a, uint16_t* out) {
  if (!amx_available()) return kNoAmx;
  if (a.gamma == nullptr || out == nullptr || a.C <= 0 || (a.splits != 1 && a.splits != 3))
    return kBadArgs;
#if SK_HAVE_AMX_CODE
  const int64_t C = a.C, Kpad = round_up(C, 32), Cpad = round_up(C, 16), K3 = a.splits * Kpad;
  std::memset(out, 0, static_cast<size_t>(Cpad * K3) * sizeof(uint16_t));
  pack_gamma(a, C, Kpad, Cpad, K3, static_cast<float>(a.gamma_scale),
             static_cast<float>(a.gamma_bias), out);
  return kOk;
#else
  return kNoAmx;
#endif
}

const char* gdn_error_message(int code) {
  switch (code) {
    case kOk: return "ok";
    case kNoAmx: return "AMX-BF16 is not available on this CPU/OS (or this build)";
    case kBadArgs: return "unsupported arguments (dtype, sizes or splits)";
    case kNoMem: return "out of memory for the packed buffers";
    default: return "unknown error";
  }
}

int gdn_forward(const GdnArgs& a) {
  if (!amx_available()) return kNoAmx;
  if (a.N < 0 || a.C <= 0 || a.HW < 0 || !(a.splits == 1 || a.splits == 3) ||
      !(a.xdtype == kF32 || a.xdtype == kBF16) || !(a.gdtype == kF32 || a.gdtype == kBF16) ||
      !(a.bdtype == kF32 || a.bdtype == kBF16) ||
      a.r != nullptr)  // r: the AVX2 kernel's only
    return kBadArgs;
  if (a.N == 0 || a.HW == 0) return kOk;
#if SK_HAVE_AMX_CODE
  const int64_t C = a.C, Kpad = round_up(C, 32), Cpad = round_up(C, 16), K3 = a.splits * Kpad;
  thread_local Reusable<float> beta_buf;
  float* const beta = beta_buf.zeroed(Cpad + 16);
  if (!beta) return kNoMem;
  // effective params in fp32, multiply then add (as the PyTorch path's _effective_params)
  const float gs = static_cast<float>(a.gamma_scale), gb = static_cast<float>(a.gamma_bias);
  const float bs = static_cast<float>(a.beta_scale), bb = static_cast<float>(a.beta_bias);
  for (int64_t c = 0; c < C; ++c) beta[c] = load_param(a.beta, a.bdtype, c * a.b_s0) * bs + bb;
  const uint16_t* const gpack = a.packed_gamma != nullptr
                                    ? static_cast<const uint16_t*>(a.packed_gamma)
                                    : packed_gamma(a, C, Kpad, Cpad, K3, gs, gb);
  if (!gpack) return kNoMem;
  Plan p{C, Kpad, Cpad, K3, a.splits, gpack, beta};

  int64_t units, per_unit_pixels;
  if (a.channels_last) {
    units = (a.N * a.HW + kClRows - 1) / kClRows;
    per_unit_pixels = kClRows;
  } else {
    units = a.N * ((a.HW + kNchwPix - 1) / kNchwPix);
    per_unit_pixels = kNchwPix;
  }
  const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(a.nthreads, units / 4));
  thread_local std::vector<Scratch> tls_scratch;
  // a plain reference: inside the worker lambda the thread_local's name would denote the
  // worker thread's own (empty) instance
  std::vector<Scratch>& scratch = tls_scratch;
  if (static_cast<int64_t>(scratch.size()) < nt) scratch.resize(nt);
  for (int64_t t = 0; t < nt; ++t) {
    Scratch& s = scratch[t];
    s.z = s.zr.zeroed(per_unit_pixels * K3);
    s.n = s.nr.zeroed(per_unit_pixels * Cpad);
    if (!s.ok()) return kNoMem;
  }
  auto work = [&](int64_t t, int64_t u0, int64_t u1) {
    if (u0 >= u1) return;
    Scratch& sc = scratch[t];
    if (a.channels_last) {
      const int64_t P = a.N * a.HW;
      const int64_t r0 = u0 * kClRows, r1 = std::min<int64_t>(P, u1 * kClRows);
      if (a.xdtype == kBF16) {
        if (a.inverse) run_cl<true, kBF16>(a, p, sc, r0, r1);
        else run_cl<false, kBF16>(a, p, sc, r0, r1);
      } else {
        if (a.inverse) run_cl<true, kF32>(a, p, sc, r0, r1);
        else run_cl<false, kF32>(a, p, sc, r0, r1);
      }
    } else {
      if (a.inverse) run_nchw<true>(a, p, sc, u0, u1);
      else run_nchw<false>(a, p, sc, u0, u1);
    }
  };
  // Dynamic schedule: workers grab chunks of blocks from a shared counter, so a thread that gets
  // less CPU (e.g. sharing a core with an OpenMP worker still spinning after a torch op) does
  // less of the work instead of holding everybody up.
  std::atomic<int64_t> next{0};
  const int64_t chunk = nt <= 1 ? units : std::max<int64_t>(1, units / (nt * 8));
  auto worker = [&](int64_t t) {
    config_full();
    for (;;) {
      const int64_t u0 = next.fetch_add(chunk);
      if (u0 >= units) break;
      work(t, u0, std::min(units, u0 + chunk));
    }
    release();
  };
  run_on_threads(nt, worker);
  return kOk;
#else
  return kNoAmx;
#endif
}

}  // namespace sk
