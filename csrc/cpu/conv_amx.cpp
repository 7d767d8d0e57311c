// Direct AMX-BF16 convolution (see conv_amx.hpp).
//
// Work unit: a group of up to 4 blocks of 16 output pixels, each block in one output row. A tile:
// 16 output pixels x 32 elements of one tap row's K = (kx, c) (contiguous in channels_last x),
// read straight from x with row stride stride*C*2 bytes. The blocks of a group share every B tile
// (16 K-pairs x 16 output channels, prepacked). C tiles (16 pixels x 16 channels, fp32) go
// through a small per-thread buffer to the epilogue (bias, round to bf16, store or sub-pixel
// scatter). Tiles: C 0..3, A 4/5 (alternating), B 6/7 (alternating per K chunk).
#include "conv_amx.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>
#if defined(_OPENMP)
#include <omp.h>
#endif

#include "cpu_common.hpp"  // detail::gdn_beta
#include "gdn_cpu.hpp"     // amx_available(), kF32 / kBF16, GdnArgs, gdn_rows_bf16

#include "amx_tiles.hpp"
#define SK_CONV_AMX_CODE SK_HAVE_AMX_CODE

namespace sk {

namespace {
enum ConvErr { kCOk = 0, kCNoAmx = 1, kCBadArgs = 2, kCNoMem = 3, kCRange = kConvRangeError };
}

const char* conv_amx_error_message(int code) {
  switch (code) {
    case kCOk: return "ok";
    case kCNoAmx: return "AMX-BF16 is not available on this CPU/OS; use the oneDNN path";
    case kCBadArgs: return "bad arguments (x must be padded so every 16-pixel block reads in "
                           "bounds, see conv_amx.hpp; phase layout consistent)";
    case kCNoMem: return "out of memory for the per-thread buffer";
    case kCRange: return "a value of x is outside [check_lo, check_hi] or NaN";
  }
  return "unknown error";
}

#if SK_CONV_AMX_CODE

#define SK_CTARGET SK_AMX_TARGET

namespace {

// One K chunk (tap row ky, elements kc*32.. of its (kx, c) run, at offset xo of every block's
// row) for MT pixel blocks: B tile BT (16 K-pairs x 16 output channels, prepacked at wq), A tiles
// 4/5 alternating (block i reads xs[i]), C tiles 0..MT-1. A macro, not a template: gcc's tile
// intrinsics paste the register number into the assembly text.
#define SK_CONV_CHUNK(NAME, BT)                                                            \
  template <int MT>                                                                        \
  SK_CTARGET inline void NAME(const uint16_t* const* xs, long sa, int64_t xo,              \
                              const uint16_t* wq) {                                        \
    _tile_loadd(BT, wq, 64);                                                               \
    _tile_loadd(4, xs[0] + xo, sa);                                                        \
    _tile_dpbf16ps(0, 4, BT);                                                              \
    if constexpr (MT > 1) { _tile_loadd(5, xs[1] + xo, sa); _tile_dpbf16ps(1, 5, BT); }    \
    if constexpr (MT > 2) { _tile_loadd(4, xs[2] + xo, sa); _tile_dpbf16ps(2, 4, BT); }    \
    if constexpr (MT > 3) { _tile_loadd(5, xs[3] + xo, sa); _tile_dpbf16ps(3, 5, BT); }    \
  }
SK_CONV_CHUNK(chunk_b6, 6)
SK_CONV_CHUNK(chunk_b7, 7)
#undef SK_CONV_CHUNK

// MT pixel blocks (each 16 output pixels of one row: A tiles read from xs[i]) x one tile of 16
// output channels: C tiles 0..MT-1 accumulate over the channel tile's nq non-zero K chunks, chunk
// j at x offset xo[j] (tap row ky, elements kc*32.. of its (kx, c) run) with its B tile at w +
// wo[j] (all-zero B tiles, e.g. the taps a sub-pixel phase does not use, are left out). The B tile
// alternates between tiles 6 and 7, so the next chunk's weights load while this chunk's products
// run. acc[i]: fp32 [16][ldc].
template <int MT>
SK_CTARGET void micro(const uint16_t* const* xs, long sa, const int64_t* xo, const int64_t* wo,
                      int64_t nq, const uint16_t* w, float* const* acc, long sc) {
  _tile_zero(0);
  if constexpr (MT > 1) _tile_zero(1);
  if constexpr (MT > 2) _tile_zero(2);
  if constexpr (MT > 3) _tile_zero(3);
  int64_t j = 0;
  for (; j + 1 < nq; j += 2) {
    chunk_b6<MT>(xs, sa, xo[j], w + wo[j]);
    chunk_b7<MT>(xs, sa, xo[j + 1], w + wo[j + 1]);
  }
  if (j < nq) chunk_b6<MT>(xs, sa, xo[j], w + wo[j]);
  _tile_stored(0, acc[0], sc);
  if constexpr (MT > 1) _tile_stored(1, acc[1], sc);
  if constexpr (MT > 2) _tile_stored(2, acc[2], sc);
  if constexpr (MT > 3) _tile_stored(3, acc[3], sc);
}

// MB pixel blocks (1 or 2) x two tiles of 16 output channels whose chunk lists are the same
// (the second's B tiles dw elements after the first's): C tiles 2i, 2i + 1 for block i. Each
// chunk loads both B tiles (6, 7) and each block's A tile (4, 5) once: an A tile serves both
// channel tiles (micro<MT> loads it once per channel tile). acc[i]: block i's first channel
// tile, fp32 [16][ldc] (the second at acc[i] + 16).
template <int MB>
SK_CTARGET void micro22(const uint16_t* const* xs, long sa, const int64_t* xo, const int64_t* wo,
                        int64_t dw, int64_t nq, const uint16_t* w, float* const* acc, long sc) {
  _tile_zero(0);
  _tile_zero(1);
  if constexpr (MB > 1) {
    _tile_zero(2);
    _tile_zero(3);
  }
  for (int64_t j = 0; j < nq; ++j) {
    const uint16_t* wq = w + wo[j];
    _tile_loadd(4, xs[0] + xo[j], sa);
    _tile_loadd(6, wq, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_loadd(7, wq + dw, 64);
    _tile_dpbf16ps(1, 4, 7);
    if constexpr (MB > 1) {
      _tile_loadd(5, xs[1] + xo[j], sa);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, acc[0], sc);
  _tile_stored(1, acc[0] + 16, sc);
  if constexpr (MB > 1) {
    _tile_stored(2, acc[1], sc);
    _tile_stored(3, acc[1] + 16, sc);
  }
}

// Lanes c.. (mask k) of src + bias (bias may be null), rounded to bf16.
SK_CTARGET inline __m256i biased_bf16(const float* src, const float* bias, int64_t c,
                                      __mmask16 k) {
  __m512 v = _mm512_maskz_loadu_ps(k, src + c);
  if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, bias + c));
  return reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v));
}

// bf16 values h widened back to fp32 and clamped to [lo, hi], NaN kept (as bf16_to_image:
// max / min return their second operand when either is NaN).
SK_CTARGET inline __m512 widened_clamped(__m256i h, __m512 lo, __m512 hi) {
  const __m512 w = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  return _mm512_min_ps(hi, _mm512_max_ps(lo, w));
}

// n values of src + bias (bias may be null) rounded to bf16 at dst: the full vectors by plain
// loads and stores (a mask per vector measured ~1.2x slower on a 48-channel layer's whole
// kernel), the last partial one masked.
SK_CTARGET inline void store_bf16(uint16_t* dst, const float* src, const float* bias, int64_t n) {
  int64_t c = 0;
  for (; c + 16 <= n; c += 16) {
    __m512 v = _mm512_loadu_ps(src + c);
    if (bias) v = _mm512_add_ps(v, _mm512_loadu_ps(bias + c));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + c),
                        reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v)));
  }
  if (c < n) {
    const __mmask16 k = static_cast<__mmask16>((1u << (n - c)) - 1u);
    _mm256_mask_storeu_epi16(dst + c, k, biased_bf16(src, bias, c, k));
  }
}

// store_bf16's values widened back to fp32 and clamped to [lo, hi] (widened_clamped).
SK_CTARGET inline void store_f32_clamped(float* dst, const float* src, const float* bias,
                                         int64_t n, float lo, float hi) {
  const __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
  for (int64_t c = 0; c < n; c += 16) {
    const __mmask16 k = static_cast<__mmask16>((1u << std::min<int64_t>(16, n - c)) - 1u);
    _mm512_mask_storeu_ps(dst + c, k, widened_clamped(biased_bf16(src, bias, c, k), vlo, vhi));
  }
}

// n output values at element offset off of y: bf16 (a.y) or clamped fp32 (a.yf).
SK_CTARGET inline void store_out(const ConvAmxArgs& a, int64_t off, const float* src,
                                 const float* bias, int64_t n) {
  if (a.yf != nullptr)
    store_f32_clamped(a.yf + off, src, bias, n, a.out_lo, a.out_hi);
  else
    store_bf16(a.y + off, src, bias, n);
}

// rows runs of n values (src rows ldc floats apart, dst rows dstride elements apart) + bias
// (may be null), rounded to bf16: store_bf16 per row, with the bias in registers and each row's
// vectors unrolled where n is 16..192 full vectors (a conv's outputs per pixel, a sub-pixel
// conv's phase run); the same values.
template <int NCH>
SK_CTARGET inline void store_rows_bf16_n(uint16_t* dst, int64_t dstride, const float* src,
                                         int64_t ldc, const float* bias, int64_t rows) {
  __m512 bv[NCH];  // (no bias: -0, which adds to every value as nothing, -0 included)
  for (int j = 0; j < NCH; ++j)
    bv[j] = bias ? _mm512_loadu_ps(bias + 16 * j) : _mm512_set1_ps(-0.0f);
  for (int64_t r = 0; r < rows; ++r, src += ldc, dst += dstride) {
#pragma GCC unroll 16
    for (int j = 0; j < NCH; ++j)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 16 * j),
                          reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(
                              _mm512_add_ps(_mm512_loadu_ps(src + 16 * j), bv[j]))));
  }
}

SK_CTARGET inline void store_rows_bf16(uint16_t* dst, int64_t dstride, const float* src,
                                       int64_t ldc, const float* bias, int64_t n, int64_t rows) {
  if (n % 16 == 0) {
    switch (n / 16) {
#define SK_STORE_ROWS_CASE(N) \
  case N: return store_rows_bf16_n<N>(dst, dstride, src, ldc, bias, rows);
      SK_STORE_ROWS_CASE(1) SK_STORE_ROWS_CASE(2) SK_STORE_ROWS_CASE(3) SK_STORE_ROWS_CASE(4)
      SK_STORE_ROWS_CASE(5) SK_STORE_ROWS_CASE(6) SK_STORE_ROWS_CASE(7) SK_STORE_ROWS_CASE(8)
      SK_STORE_ROWS_CASE(9) SK_STORE_ROWS_CASE(10) SK_STORE_ROWS_CASE(11) SK_STORE_ROWS_CASE(12)
#undef SK_STORE_ROWS_CASE
      default: break;
    }
  }
  for (int64_t r = 0; r < rows; ++r) store_bf16(dst + r * dstride, src + r * ldc, bias, n);
}

constexpr int kMaxBlocks = 4;

// A growable 64-byte aligned allocation (contents not preserved on growth).
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  ~AlignedBuffer() { std::free(p_); }
  // At least `bytes`; a buffer of more than `keep` bytes is replaced by a smaller one when a
  // call needs at most `keep`: consecutive large calls reuse it (no allocation and page faults
  // per call), and a large image's padded input does not stay for the thread's life once the
  // calls are small again.
  void* get(size_t bytes, size_t keep) {
    if (bytes <= size_ && !(size_ > keep && bytes <= keep)) return p_;
    std::free(p_);
    size_ = 0;
    p_ = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (p_ != nullptr) size_ = bytes;
    return p_;
  }

 private:
  void* p_ = nullptr;
  size_t size_ = 0;
};

// The padded-input buffer is kept across small calls up to this size (SlimCAE's 5x5/2 layers on a
// Kodak image: 1-13 MB at 48-256 channels); a larger one only until a call needs <= this.
constexpr size_t kKeepPadBytes = size_t(16) << 20;

// Whether the kernel reads x through the window layout for these arguments (see
// ConvAmxArgs::windows).
inline bool conv_amx_windows(const ConvAmxArgs& a) {
  return a.windows && a.phase == 1 && a.C > 0 && (a.Cp == 0 || a.Cp == a.C) &&
         a.kw * a.C <= 32 && (a.stride * a.C * 2) % 64 != 0;
}

// Chunk lists: for channel tile nb, nq[nb] chunks at xo/wo[nb * kh * KC ..].
struct ChunkLists {
  const int64_t* xo;
  const int64_t* wo;
  const int64_t* nq;
  int64_t per;  // chunks per channel tile (kh * KC), the lists' stride
  // pair[nb] != 0: channel tiles nb and nb + 1 have the same chunks (so the same x offsets; the
  // second's B tiles per * 512 elements after the first's) and micro22 runs them together (set
  // on a pair's first tile only; null: never, ConvAmxArgs::pair_tiles off)
  const int64_t* pair;
};

// The blocks of group g (up to kMaxBlocks): with group_rows == 2, 2 output rows x 2 column
// blocks (rows 2*(g / ncp) + 0..1, column blocks 2*(g % ncp) + 0..1, ncp = ceil(nxb / 2), or
// order[] of those: a permutation of the column blocks, e.g. to pair the border ones):
// neighbouring output rows share most tap rows (3 of 5 at 5x5/2), so the group's A data is
// ~1.5x smaller than 4 blocks of one row and stays in L1 across the channel tiles; else 4
// consecutive blocks of the row-major order. Returns the count, blocks as (row, column block).
inline int group_blocks(int64_t g, int64_t rows, int64_t nxb, int group_rows, int64_t* br,
                        int64_t* bx, const int64_t* order = nullptr) {
  int m = 0;
  if (group_rows == 2) {
    const int64_t ncp = (nxb + 1) / 2, r0 = 2 * (g / ncp), x0 = 2 * (g % ncp);
    for (int64_t r = r0; r < std::min<int64_t>(r0 + 2, rows); ++r)
      for (int64_t xb = x0; xb < std::min<int64_t>(x0 + 2, nxb); ++xb) {
        br[m] = r;
        bx[m++] = order != nullptr ? order[xb] : xb;
      }
    return m;
  }
  for (int64_t b = g * kMaxBlocks; b < std::min<int64_t>((g + 1) * kMaxBlocks, rows * nxb); ++b) {
    br[m] = b / nxb;
    bx[m++] = b % nxb;
  }
  return m;
}

// The number of groups of group_blocks for rows x nxb blocks.
inline int64_t group_count(int64_t rows, int64_t nxb, int group_rows) {
  return group_rows == 2 ? (rows + 1) / 2 * ((nxb + 1) / 2)
                         : (rows * nxb + kMaxBlocks - 1) / kMaxBlocks;
}

// The fused GDN of the epilogue (ConvAmxArgs::gdn) and a worker's buffers for it: xb, a
// group's bf16 conv output [kMaxBlocks * 16 conv pixels][Co] (GDN rows of Cy; null with the
// window layout, whose GDN runs on y: gdn_band), and gdn_rows_bf16's scratch z (columns past Cy
// zero) and n.
struct EpilogueGdn {
  GdnRows rows;
  uint16_t* xb = nullptr;
  uint16_t* z = nullptr;
  float* n = nullptr;
};

// The group's output runs: for each block i of the group and each of its sub-pixel rows ry
// inside y (phase 1: the block's row), f(i, ry, y0, full, npx). Conv pixel p < npx of the block
// (row i*16 + p of the accumulator) has its run at y's element offset y0 + p*s*Cy: phase 1 its
// Co channels; phase s > 1 the s*Cy elements (rx, c) of phases (ry, 0..s-1) at offset ry*s*Cy
// of its row, pixels (oy*s + ry, ox*s + 0..s-1) of y; for p < full all s of them lie inside y
// (full = npx for phase 1), for p >= full only the first nrx = min(s, Wy - ox*s) (none when
// nrx <= 0).
template <class F>
SK_CTARGET inline void for_each_block_row(const ConvAmxArgs& a, int mt, const int64_t* br,
                                          const int64_t* bx, const F& f) {
  const int64_t s = a.phase;
  for (int i = 0; i < mt; ++i) {
    const int64_t n = br[i] / a.Ho, oy = br[i] % a.Ho, xb = bx[i];
    const int64_t npx = std::min<int64_t>(16, a.Wo - xb * 16);
    const int64_t full = std::max<int64_t>(0, std::min<int64_t>(npx, a.Wy / s - xb * 16));
    for (int64_t ry = 0; ry < s; ++ry) {
      const int64_t yy = oy * s + ry;
      if (yy >= a.Hy) break;
      f(i, ry, ((n * a.Hy + yy) * a.Wy + xb * 16 * s) * a.Cy, full, npx);
    }
  }
}

// The runs (for_each_block_row) of a sub-pixel output whose phase rows hold at most 16 elements
// (s*Cy <= 16, e.g. 4 phases x 3 channels: an image): per block and sub-pixel row, one masked
// vector per conv pixel with the mask and the bias hoisted (the generic runs cost ~18 cycles
// each there, more than the products). Pixels whose phases reach past y's last column go
// through store_out with their own count.
SK_CTARGET void store_narrow_phases(const ConvAmxArgs& a, int mt, const int64_t* br,
                                    const int64_t* bx, const float* accbuf, int64_t ldc) {
  const int64_t s = a.phase, run = s * a.Cy;
  const __mmask16 k = static_cast<__mmask16>((1u << run) - 1u);
  const __m512 lo = _mm512_set1_ps(a.out_lo), hi = _mm512_set1_ps(a.out_hi);
  for_each_block_row(a, mt, br, bx, [&](int i, int64_t ry, int64_t y0, int64_t full,
                                        int64_t npx) SK_CTARGET {
    const float* src = accbuf + i * 16 * ldc + ry * run;
    const float* bias = a.bias ? a.bias + ry * run : nullptr;
    const __m512 b = bias ? _mm512_maskz_loadu_ps(k, bias) : _mm512_setzero_ps();
    int64_t p = 0;
    if (run == 12 && a.yf != nullptr) {
      // 4 pixels' runs of 12 values (e.g. 4 column phases x 3 channels: SlimCAE's image) are 3
      // whole vectors of the output row: joined by permutes and stored whole instead of by 4
      // masked stores (the same values)
      const __m512i j0 = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 16, 17, 18, 19);
      const __m512i j1 = _mm512_setr_epi32(4, 5, 6, 7, 8, 9, 10, 11, 16, 17, 18, 19, 20, 21, 22,
                                           23);
      const __m512i j2 = _mm512_setr_epi32(8, 9, 10, 11, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
                                           26, 27);
      float* out = a.yf + y0;
      for (; p + 4 <= full; p += 4, out += 48) {
        const float* q = src + p * ldc;
        const __m512 v0 = _mm512_add_ps(_mm512_maskz_loadu_ps(k, q), b);
        const __m512 v1 = _mm512_add_ps(_mm512_maskz_loadu_ps(k, q + ldc), b);
        const __m512 v2 = _mm512_add_ps(_mm512_maskz_loadu_ps(k, q + 2 * ldc), b);
        const __m512 v3 = _mm512_add_ps(_mm512_maskz_loadu_ps(k, q + 3 * ldc), b);
        const __m512 o[3] = {_mm512_permutex2var_ps(v0, j0, v1),
                             _mm512_permutex2var_ps(v1, j1, v2),
                             _mm512_permutex2var_ps(v2, j2, v3)};
        for (int j = 0; j < 3; ++j)
          _mm512_storeu_ps(out + 16 * j, widened_clamped(reinterpret_cast<__m256i>(
                                             _mm512_cvtneps_pbh(o[j])), lo, hi));
      }
    }
    for (; p < full; ++p) {
      const __m512 v = _mm512_add_ps(_mm512_maskz_loadu_ps(k, src + p * ldc), b);
      const __m256i h = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v));
      if (a.yf != nullptr) {
        _mm512_mask_storeu_ps(a.yf + y0 + p * run, k, widened_clamped(h, lo, hi));
      } else {
        _mm256_mask_storeu_epi16(a.y + y0 + p * run, k, h);
      }
    }
    for (p = full; p < npx; ++p) {
      const int64_t nrx = std::min<int64_t>(s, a.Wy - (bx[i] * 16 + p) * s);
      if (nrx <= 0) break;
      store_out(a, y0 + p * run, src + p * ldc, bias, nrx * a.Cy);
    }
  });
}

// The runs (for_each_block_row) of any output but the narrow phase rows above: per block and
// sub-pixel row, each pixel's run through store_out (phase 1: its channels; the pixels whose
// phases reach past y's last column with their own count).
SK_CTARGET void store_blocks(const ConvAmxArgs& a, int mt, const int64_t* br, const int64_t* bx,
                             const float* accbuf, int64_t ldc) {
  const int64_t s = a.phase, run = s * a.Cy;
  for_each_block_row(a, mt, br, bx, [&](int i, int64_t ry, int64_t y0, int64_t full,
                                        int64_t npx) SK_CTARGET {
    const float* src = accbuf + i * 16 * ldc + ry * run;
    const float* bias = a.bias ? a.bias + ry * run : nullptr;
    if (a.yf != nullptr)
      for (int64_t p = 0; p < full; ++p)
        store_f32_clamped(a.yf + y0 + p * run, src + p * ldc, bias, run, a.out_lo, a.out_hi);
    else
      store_rows_bf16(a.y + y0, run, src, ldc, bias, run, full);
    for (int64_t p = full; p < npx; ++p) {
      const int64_t nrx = std::min<int64_t>(s, a.Wy - (bx[i] * 16 + p) * s);
      if (nrx <= 0) break;
      store_out(a, y0 + p * run, src + p * ldc, bias, nrx * a.Cy);
    }
  });
}

// count runs of n bf16 elements, from src (runs sstride elements apart) to dst (dstride apart),
// by 32-element vectors where n is 1..6 of them (a sub-pixel conv's phase run of 32..192
// channels: a libc memcpy per run of a few hundred bytes cost more than the copy); returns the
// runs copied (0: n has another size, the caller copies them).
template <int NV>
SK_CTARGET inline void copy_runs_n(uint16_t* dst, int64_t dstride, const uint16_t* src,
                                   int64_t sstride, int64_t count) {
  for (int64_t p = 0; p < count; ++p, dst += dstride, src += sstride) {
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j)
      _mm512_storeu_si512(reinterpret_cast<__m512i*>(dst + 32 * j),
                          _mm512_loadu_si512(reinterpret_cast<const __m512i*>(src + 32 * j)));
  }
}

SK_CTARGET inline int64_t copy_runs(uint16_t* dst, int64_t dstride, const uint16_t* src,
                                    int64_t sstride, int64_t n, int64_t count) {
  if (n % 32 != 0) return 0;
  switch (n / 32) {
    case 1: copy_runs_n<1>(dst, dstride, src, sstride, count); return count;
    case 2: copy_runs_n<2>(dst, dstride, src, sstride, count); return count;
    case 3: copy_runs_n<3>(dst, dstride, src, sstride, count); return count;
    case 4: copy_runs_n<4>(dst, dstride, src, sstride, count); return count;
    case 5: copy_runs_n<5>(dst, dstride, src, sstride, count); return count;
    case 6: copy_runs_n<6>(dst, dstride, src, sstride, count); return count;
    default: return 0;
  }
}

// The group's output with the GDN: bf16(acc + bias) of all its conv pixels into xb, the GDN in
// place on its rows of Cy channels (a conv pixel's Co = s*s*Cy channels are its phases' pixels),
// then xb's runs copied to y.
SK_CTARGET void epilogue_gdn(const ConvAmxArgs& a, const EpilogueGdn& eg, const float* accbuf,
                             int64_t ldc, int mt, const int64_t* br, const int64_t* bx) {
  const int64_t Co = a.Co;
  store_rows_bf16(eg.xb, Co, accbuf, ldc, a.bias, Co, mt * 16);
  gdn_rows_bf16(eg.rows, eg.xb, mt * 16 * a.phase * a.phase, eg.z, eg.n);
  // per block and sub-pixel row: the runs of the pixels whose phases all lie inside y (phase 1:
  // the block's pixels, contiguous in y and in xb: one copy), then the others
  const int64_t s = a.phase, run = s * a.Cy;
  for_each_block_row(a, mt, br, bx, [&](int i, int64_t ry, int64_t y0, int64_t full,
                                        int64_t npx) SK_CTARGET {
    const uint16_t* src = eg.xb + i * 16 * Co + ry * run;
    if (s == 1) {
      std::memcpy(a.y + y0, src, static_cast<size_t>(full * Co) * 2);
      return;
    }
    int64_t p = copy_runs(a.y + y0, run, src, Co, run, full);
    for (; p < npx; ++p) {
      const int64_t nrx = p < full ? s : std::min<int64_t>(s, a.Wy - (bx[i] * 16 + p) * s);
      if (nrx <= 0) break;
      std::memcpy(a.y + y0 + p * run, src + p * Co, static_cast<size_t>(nrx * a.Cy) * 2);
    }
  });
}

// Where the A tiles come from: the first tap row of output row oy of image n, column block xb,
// is at at(n, oy, xb); tap row ky is rowel elements further per ky, pixel p of the block pstride
// elements further per p. The padded copy: rows of Wp*C elements, Hp per image (seg null). x
// itself (ConvAmxArgs::in_place): rows of W*C, H per image, shifted by shift elements (-(pad_top
// rows + pad_left pixels): only interior blocks read it). The window layout: rows of Wq*32, the
// stored rows of image n (padded input rows iy0[n - n0]..) from base + seg[n - n0].
struct ASource {
  const uint16_t* base = nullptr;
  int64_t rowel = 0, pstride = 0, Hp = 0, stride = 1, shift = 0;
  int64_t n0 = 0;
  const int64_t* seg = nullptr;
  const int64_t* iy0 = nullptr;
  const uint16_t* at(int64_t n, int64_t oy, int64_t xb) const {
    const int64_t iy = oy * stride, col = xb * 16 * pstride;
    if (seg == nullptr) return base + ((n * Hp + iy) * rowel + col + shift);
    return base + seg[n - n0] + (iy - iy0[n - n0]) * rowel + col;
  }
};

// The blocks that read x in place (ConvAmxArgs::in_place): output rows oy_lo..oy_hi and column
// blocks xb_lo..xb_hi of every image, whose taps and last-chunk over-read all lie inside x. A
// group all of whose blocks are such reads x through src and the chunk lists cl (xo: offsets in
// x); the others read the padded copy. With 2-row groups, order pairs the column blocks border
// with border (those before xb_lo, then those from xb_hi, then the inside ones), so that a group
// mixes them at most once per row pair.
struct InPlace {
  ASource src;
  ChunkLists cl{};
  const int64_t* order = nullptr;
  int64_t oy_lo = 0, oy_hi = 0, xb_lo = 0, xb_hi = 0, Ho = 1;
  bool inside(int mt, const int64_t* br, const int64_t* bx) const {
    for (int i = 0; i < mt; ++i) {
      const int64_t oy = br[i] % Ho;
      if (oy < oy_lo || oy >= oy_hi || bx[i] < xb_lo || bx[i] >= xb_hi) return false;
    }
    return true;
  }
};

// The ranges of InPlace for a bf16 x of cs == C channels without the window layout: the output
// rows and column blocks whose taps, and the last chunk's over-read (KC chunks of 32 elements
// from a block's first pixel), lie inside x (in padded coordinates: rows from pad_top, columns
// from pad_left). Returns whether any block is inside.
inline bool inside_ranges(const ConvAmxArgs& a, int64_t cs, int64_t KC, int64_t nxb,
                          InPlace& ip) {
  const int64_t s = a.stride, pt = a.pad_top, pl = a.pad_left;
  ip.Ho = a.Ho;
  ip.oy_lo = std::min(a.Ho, (pt + s - 1) / s);
  ip.oy_hi = pt + a.H - a.kh >= 0 ? std::min(a.Ho, (pt + a.H - a.kh) / s + 1) : 0;
  const int64_t last = (a.W + pl - 15 * s) * cs - KC * 32;  // >= (xb*16*s)*cs when inside
  ip.xb_lo = std::min(nxb, (pl + 16 * s - 1) / (16 * s));
  ip.xb_hi = last >= 0 ? std::min(nxb, last / (16 * s * cs) + 1) : 0;
  return ip.oy_lo < ip.oy_hi && ip.xb_lo < ip.xb_hi;
}

// The column blocks in the order that pairs the border ones in 2-row groups (InPlace::order):
// those before xb_lo, those from xb_hi, then the inside ones.
inline void border_first_order(const InPlace& ip, int64_t nxb, int64_t* order) {
  int64_t k = 0;
  for (int64_t xb = 0; xb < ip.xb_lo; ++xb) order[k++] = xb;
  for (int64_t xb = ip.xb_hi; xb < nxb; ++xb) order[k++] = xb;
  for (int64_t xb = ip.xb_lo; xb < ip.xb_hi; ++xb) order[k++] = xb;
}

// The spans of the padded copy's rows (N * Hp) that the groups not inside x read, as
// [0, span[2r]) from the left border and [span[2r+1], Wp) from the right (a block's span from the
// middle, e.g. of a border row, joins the nearer one; none: [0, 0) and [Wp, Wp)).
void border_spans(const ConvAmxArgs& a, const InPlace& ip, int64_t cs, int64_t KC, int64_t nxb,
                  int group_rows, int64_t* span) {
  const int64_t s = a.stride, rows = a.N * a.Hp;
  for (int64_t r = 0; r < rows; ++r) {
    span[2 * r] = 0;
    span[2 * r + 1] = a.Wp;
  }
  const int64_t reach = 15 * s + (KC * 32 + cs - 1) / cs;  // a block's pixel columns
  const int64_t groups = group_count(a.N * a.Ho, nxb, group_rows);
  int64_t br[kMaxBlocks], bx[kMaxBlocks];
  for (int64_t g = 0; g < groups; ++g) {
    const int mt = group_blocks(g, a.N * a.Ho, nxb, group_rows, br, bx, ip.order);
    if (ip.inside(mt, br, bx)) continue;
    for (int i = 0; i < mt; ++i) {
      const int64_t c0 = bx[i] * 16 * s, c1 = std::min(a.Wp, c0 + reach);
      const int64_t r0 = (br[i] / a.Ho) * a.Hp + (br[i] % a.Ho) * s;
      for (int64_t q = r0; q < r0 + a.kh; ++q) {
        if (c0 < a.Wp - c1)
          span[2 * q] = std::max(span[2 * q], c1);
        else
          span[2 * q + 1] = std::min(span[2 * q + 1], c0);
      }
    }
  }
}

// Groups g0..g1 (see group_blocks): tiles into accbuf, then the epilogue (bias, bf16, the GDN
// when eg is given, store or sub-pixel scatter). ip (may be null): the groups inside x read it.
// Returns the number of groups that read x in place.
SK_CTARGET int64_t run_blocks(const ConvAmxArgs& a, const ASource& pad, const ChunkLists& pcl,
                              int64_t g0, int64_t g1, int group_rows, float* accbuf, int64_t ldc,
                              const EpilogueGdn* eg, const InPlace* ip = nullptr) {
  int64_t inside = 0;
  const int64_t NBt = (a.Co + 15) / 16, per = pcl.per;
  const int64_t nxb = (a.Wo + 15) / 16, rows = a.N * a.Ho;
  const long sa = static_cast<long>(pad.pstride * 2), sc = static_cast<long>(ldc * 4);
  int64_t br[kMaxBlocks], bx[kMaxBlocks];
  for (int64_t g = g0; g < g1; ++g) {
    const int mt = group_blocks(g, rows, nxb, group_rows, br, bx, ip ? ip->order : nullptr);
    const bool in = ip != nullptr && ip->inside(mt, br, bx);
    inside += in;
    const ASource& src = in ? ip->src : pad;
    const ChunkLists& cl = in ? ip->cl : pcl;
    const uint16_t* xs[kMaxBlocks];
    for (int i = 0; i < mt; ++i) xs[i] = src.at(br[i] / a.Ho, br[i] % a.Ho, bx[i]);
    for (int64_t nb = 0; nb < NBt; ++nb) {
      float* acc[kMaxBlocks];
      for (int i = 0; i < mt; ++i) acc[i] = accbuf + i * 16 * ldc + nb * 16;
      if (cl.pair != nullptr && cl.pair[nb]) {  // channel tiles nb, nb + 1 together
        const int64_t* xo = cl.xo + nb * per;
        const int64_t* wo = cl.wo + nb * per;
        for (int i = 0; i < mt; i += 2) {
          if (i + 1 < mt)
            micro22<2>(xs + i, sa, xo, wo, per * 512, cl.nq[nb], a.w, acc + i, sc);
          else
            micro22<1>(xs + i, sa, xo, wo, per * 512, cl.nq[nb], a.w, acc + i, sc);
        }
        ++nb;
        continue;
      }
      const int64_t* xo = cl.xo + nb * per;
      const int64_t* wo = cl.wo + nb * per;
      const int64_t nq = cl.nq[nb];
      switch (mt) {
        case 4: micro<4>(xs, sa, xo, wo, nq, a.w, acc, sc); break;
        case 3: micro<3>(xs, sa, xo, wo, nq, a.w, acc, sc); break;
        case 2: micro<2>(xs, sa, xo, wo, nq, a.w, acc, sc); break;
        default: micro<1>(xs, sa, xo, wo, nq, a.w, acc, sc); break;
      }
    }
    if (eg != nullptr) {
      epilogue_gdn(a, *eg, accbuf, ldc, mt, br, bx);
      continue;
    }
    // epilogue: bias, bf16 (or the clamped fp32), store or sub-pixel scatter
    if (a.phase > 1 && a.phase * a.Cy <= 16) {
      store_narrow_phases(a, mt, br, bx, accbuf, ldc);
      continue;
    }
    store_blocks(a, mt, br, bx, accbuf, ldc);
  }
  return inside;
}

// One worker's range check of an fp32 x (ConvAmxArgs::check_lo): the bounds, and the lanes
// that held a value outside them or NaN.
struct RangeAcc {
  float lo = 1.0f, hi = 0.0f;
  uint32_t bad = 0;
};

// Lanes k of v checked against acc's bounds (NaN fails both compares' "unordered" forms).
SK_CTARGET inline void check_range(RangeAcc* acc, __m512 v, __mmask16 k) {
  acc->bad |= static_cast<uint32_t>(
      _mm512_mask_cmp_ps_mask(k, v, _mm512_set1_ps(acc->lo), _CMP_NGE_UQ) |
      _mm512_mask_cmp_ps_mask(k, v, _mm512_set1_ps(acc->hi), _CMP_NLE_UQ));
}

// x's 32 elements from element offset e (may lie before x: only the lanes of k are read),
// rounded to bf16 when x is fp32 (RNE), zeros outside k. acc (fp32 x): those lanes
// range-checked.
SK_CTARGET inline __m512i load_bf16x32(const ConvAmxArgs& a, int64_t e, __mmask32 k,
                                       RangeAcc* acc = nullptr) {
  if (a.xdtype == kBF16)
    return _mm512_maskz_loadu_epi16(
        k, reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(a.x) +
                                         static_cast<uintptr_t>(e * 2)));
  const uintptr_t p = reinterpret_cast<uintptr_t>(a.x) + static_cast<uintptr_t>(e * 4);
  const __m512 f0 = _mm512_maskz_loadu_ps(static_cast<__mmask16>(k),
                                          reinterpret_cast<const void*>(p));
  const __m512 f1 = _mm512_maskz_loadu_ps(static_cast<__mmask16>(k >> 16),
                                          reinterpret_cast<const void*>(p + 64));
  if (acc != nullptr) {
    check_range(acc, f0, static_cast<__mmask16>(k));
    check_range(acc, f1, static_cast<__mmask16>(k >> 16));
  }
  return reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(f1, f0));
}

// Pixels p0..p1 of x's row (n, h) into dst with cs >= C (a multiple of 32) elements per pixel:
// each pixel's C channels, then zeros (fp32 x rounded to bf16 as below).
SK_CTARGET void spread_pixels(const ConvAmxArgs& a, int64_t n, int64_t h, int64_t p0, int64_t p1,
                              int64_t cs, uint16_t* dst, RangeAcc* acc) {
  for (int64_t px = p0; px < p1; ++px) {
    const int64_t src0 = ((n * a.H + h) * a.W + px) * a.C;
    for (int64_t c = 0; c < cs; c += 32) {
      const int64_t m = std::max<int64_t>(0, std::min<int64_t>(32, a.C - c));
      const __mmask32 k = m >= 32 ? ~__mmask32(0) : static_cast<__mmask32>((1u << m) - 1u);
      _mm512_storeu_si512(reinterpret_cast<__m512i*>(dst + (px - p0) * cs + c),
                          load_bf16x32(a, src0 + c, k, acc));
    }
  }
}

// Pixel columns c0..c1 of padded row r of the bf16 buffer [N, Hp, Wp, cs] (cs: C, or Cp > C):
// zeros, with x's rows at pad_top and its columns at pad_left (fp32 x rounded to bf16, RNE as
// torch does for finite values).
SK_CTARGET void pad_span(const ConvAmxArgs& a, int64_t cs, uint16_t* xpad, int64_t r, int64_t c0,
                         int64_t c1, RangeAcc* range) {
  if (c0 >= c1) return;
  const int64_t n = r / a.Hp, h = r % a.Hp - a.pad_top;
  uint16_t* row = xpad + r * a.Wp * cs;
  // x's columns inside the span, in padded columns: xl..xr
  const int64_t xl = std::max(c0, a.pad_left), xr = std::min(c1, a.pad_left + a.W);
  if (h < 0 || h >= a.H || xl >= xr) {
    std::memset(row + c0 * cs, 0, static_cast<size_t>((c1 - c0) * cs) * 2);
    return;
  }
  std::memset(row + c0 * cs, 0, static_cast<size_t>((xl - c0) * cs) * 2);
  RangeAcc local = range != nullptr ? *range : RangeAcc{};  // (in registers: see build_windows)
  RangeAcc* acc = range != nullptr ? &local : nullptr;
  uint16_t* d = row + xl * cs;
  const int64_t src0 = ((n * a.H + h) * a.W + xl - a.pad_left) * a.C, count = (xr - xl) * a.C;
  if (cs != a.C) {
    spread_pixels(a, n, h, xl - a.pad_left, xr - a.pad_left, cs, d, acc);
  } else if (a.xdtype == kBF16) {
    std::memcpy(d, static_cast<const uint16_t*>(a.x) + src0, static_cast<size_t>(count) * 2);
  } else {
    const float* src = static_cast<const float*>(a.x) + src0;
    for (int64_t i = 0; i < count; i += 16) {
      const int64_t m = std::min<int64_t>(16, count - i);
      const __mmask16 k = static_cast<__mmask16>((1u << m) - 1u);
      const __m512 v = _mm512_maskz_loadu_ps(k, src + i);
      if (acc != nullptr) check_range(acc, v, k);
      _mm256_mask_storeu_epi16(d + i, k, reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v)));
    }
  }
  if (range != nullptr) range->bad |= local.bad;
  std::memset(row + xr * cs, 0, static_cast<size_t>((c1 - xr) * cs) * 2);
}

// The window layout (ConvAmxArgs::windows) of padded input rows iy0..iy1 of image n at dst (64-
// byte aligned): row iy - iy0 holds, for output column ox < Wq, the 32 elements at
// dst + ((iy - iy0) * Wq + ox) * 32: the padded row's kw*C elements from column ox*stride
// (x's, rounded to bf16 when fp32, or the border's zeros), then zeros. Read straight from x by
// masked loads (lanes outside x's row are not accessed). acc (fp32 x): each value read
// range-checked once per row: an interior window's first stride*C lanes (where the windows
// tile the row: kw >= stride), the last interior window's and the edge windows' all.
SK_CTARGET void build_windows(const ConvAmxArgs& a, int64_t n, int64_t iy0, int64_t iy1,
                              int64_t Wq, uint16_t* dst, RangeAcc* range) {
  const int64_t taps = a.kw * a.C, step = a.stride * a.C, xrow = a.W * a.C;
  const int64_t left = a.pad_left * a.C;
  const uint64_t tapmask = (uint64_t(1) << taps) - 1;  // taps <= 32
  // the lanes an interior window checks: those before the next window's first (all of them
  // where the windows leave gaps)
  const __mmask32 stepmask =
      static_cast<__mmask32>(step < taps ? (uint64_t(1) << step) - 1 : tapmask);
  // the range check's running min and max of the values checked and the sum of value * 0 (0,
  // or NaN once a NaN or inf was read), in registers: two compares into mask registers per
  // window cost 11 % of enc1 at w=48
  const __m512 zero = _mm512_setzero_ps();
  __m512 vmin = _mm512_set1_ps(range != nullptr ? range->lo : 0.0f), vmax = vmin, vnan = zero;
  const bool check = range != nullptr && a.xdtype == kF32;
  // a window's 32 lanes k from element e (as load_bf16x32), the lanes k & ck checked
  auto window = [&](int64_t e, __mmask32 k, __mmask32 ck) SK_CTARGET {
    if (!check) return load_bf16x32(a, e, k);
    const float* p = static_cast<const float*>(a.x) + e;
    const __m512 f0 = _mm512_maskz_loadu_ps(static_cast<__mmask16>(k), p);
    const __m512 f1 = _mm512_maskz_loadu_ps(static_cast<__mmask16>(k >> 16), p + 16);
    const __mmask32 c = k & ck;
    const __mmask16 c0 = static_cast<__mmask16>(c), c1 = static_cast<__mmask16>(c >> 16);
    vmin = _mm512_mask_min_ps(vmin, c0, vmin, f0);
    vmax = _mm512_mask_max_ps(vmax, c0, vmax, f0);
    vnan = _mm512_mask3_fmadd_ps(f0, zero, vnan, c0);
    if (c1 != 0) {
      vmin = _mm512_mask_min_ps(vmin, c1, vmin, f1);
      vmax = _mm512_mask_max_ps(vmax, c1, vmax, f1);
      vnan = _mm512_mask3_fmadd_ps(f1, zero, vnan, c1);
    }
    return reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(f1, f0));
  };
  // the windows of columns ox0..ox1 lie inside x's row: e0 = ox*step - left >= 0 and
  // e0 + taps <= xrow
  const int64_t ox0 = std::min<int64_t>(Wq, (left + step - 1) / step);
  const int64_t last = xrow - taps + left;  // ox*step <= last for the interior windows
  const int64_t ox1 =
      std::max<int64_t>(ox0, std::min<int64_t>(Wq, last >= 0 ? last / step + 1 : 0));
  for (int64_t iy = iy0; iy < iy1; ++iy) {
    uint16_t* d = dst + (iy - iy0) * Wq * 32;
    const int64_t h = iy - a.pad_top;
    if (h < 0 || h >= a.H) {
      std::memset(d, 0, static_cast<size_t>(Wq) * 64);
      continue;
    }
    const int64_t row0 = (n * a.H + h) * xrow;  // x's element offset of the row
    const __mmask32 all = ~__mmask32(0);
    auto edge = [&](int64_t ox) SK_CTARGET {  // lanes j with 0 <= e0 + j < xrow, j < taps
      const int64_t e0 = ox * step - left;
      const int64_t lo = std::max<int64_t>(0, -e0), hi = std::min<int64_t>(taps, xrow - e0);
      const uint64_t m = hi <= lo ? 0 : tapmask & ~((uint64_t(1) << lo) - 1) &
                                            ((uint64_t(1) << hi) - 1);
      _mm512_store_si512(reinterpret_cast<__m512i*>(d + ox * 32),
                         window(row0 + e0, static_cast<__mmask32>(m), all));
    };
    for (int64_t ox = 0; ox < ox0; ++ox) edge(ox);
    const __mmask32 tm = static_cast<__mmask32>(tapmask);
    for (int64_t ox = ox0; ox < ox1; ++ox)
      _mm512_store_si512(reinterpret_cast<__m512i*>(d + ox * 32),
                         window(row0 + ox * step - left, tm, ox + 1 < ox1 ? stepmask : all));
    for (int64_t ox = ox1; ox < Wq; ++ox) edge(ox);
  }
  if (check) {  // (the lanes stored and read: see image_io.cpp's vrange_into)
    alignas(64) float mn[16], mx[16], nn[16];
    _mm512_store_ps(mn, vmin);
    _mm512_store_ps(mx, vmax);
    _mm512_store_ps(nn, vnan);
    for (int i = 0; i < 16; ++i)  // (a NaN read: nn's lane is NaN, and so fails the test too)
      if (!(nn[i] == 0.0f && mn[i] >= range->lo && mx[i] <= range->hi)) range->bad = 1;
  }
}

// Output rows r0..r1 (flattened over images, r1 exclusive) of group g (see group_blocks).
inline void group_row_range(int64_t g, int64_t rows, int64_t nxb, int group_rows, int64_t* r0,
                            int64_t* r1) {
  if (group_rows == 2) {
    const int64_t ncp = (nxb + 1) / 2;
    *r0 = 2 * (g / ncp);
    *r1 = std::min<int64_t>(*r0 + 2, rows);
    return;
  }
  const int64_t b0 = g * kMaxBlocks, b1 = std::min<int64_t>(b0 + kMaxBlocks, rows * nxb);
  *r0 = b0 / nxb;
  *r1 = (b1 - 1) / nxb + 1;
}

// The range check of count fp32 values at x (a geometry whose windows skip some).
SK_CTARGET void scan_range(const float* x, int64_t count, RangeAcc* acc) {
  for (int64_t i = 0; i < count; i += 16) {
    const int64_t m = std::min<int64_t>(16, count - i);
    const __mmask16 k = static_cast<__mmask16>((1u << m) - 1u);
    check_range(acc, _mm512_maskz_loadu_ps(k, x + i), k);
  }
}

// Whether the window layout reads every value of x (the range check needs no scan of its own):
// the windows of a row tile it (kw*C >= stride*C) up to its end, and the bands' input rows
// tile x's rows (kh >= stride) down to its last.
inline bool windows_read_all(const ConvAmxArgs& a, int64_t Wq) {
  const int64_t taps = a.kw * a.C, step = a.stride * a.C;
  return a.kw >= a.stride && a.kh >= a.stride &&
         (Wq - 1) * step - a.pad_left * a.C + taps >= a.W * a.C &&
         (a.Ho - 1) * a.stride + a.kh - a.pad_top >= a.H;
}

// Output rows per band of the window layout (at most kWindowBand: a band's windows, ~0.45 MB
// at 192 output columns, stay in L2 while its blocks read them), fewer on wide images.
constexpr int64_t kWindowBand = 8;
constexpr int64_t kWindowBandBytes = int64_t(512) << 10;
static_assert(kWindowBand >= kMaxBlocks, "a band must hold a group's rows");

inline int64_t window_band(const ConvAmxArgs& a, int64_t Wq) {
  const int64_t in_rows = kWindowBandBytes / (Wq * 64);
  return std::max<int64_t>(2, std::min<int64_t>(kWindowBand, (in_rows - a.kh) / a.stride + 1));
}

// The fused GDN of groups g0..g1 of the window layout (phase 1), run once their outputs are in y
// (a band's: still in L2), in place on y's rows: per output row of a group, its blocks' pixels
// (contiguous in y) in one call of the GDN rows. The same bits as in each group's epilogue
// (epilogue_gdn) or as the GDN op after the conv; the group's epilogue would run the GDN's
// passes between the conv's tile loops, whose windows and weight tiles then leave L1.
SK_CTARGET void gdn_band(const ConvAmxArgs& a, const EpilogueGdn& eg, int64_t g0, int64_t g1,
                         int group_rows, int64_t nxb) {
  const int64_t rows = a.N * a.Ho;
  int64_t br[kMaxBlocks], bx[kMaxBlocks];
  for (int64_t g = g0; g < g1; ++g) {
    const int mt = group_blocks(g, rows, nxb, group_rows, br, bx);
    for (int i = 0; i < mt;) {
      // blocks i..j-1: one output row, consecutive column blocks (contiguous pixels in y)
      int j = i + 1;
      while (j < mt && br[j] == br[i] && bx[j] == bx[j - 1] + 1) ++j;
      const int64_t x0 = bx[i] * 16, x1 = std::min<int64_t>(a.Wo, bx[j - 1] * 16 + 16);
      if (x1 > x0)
        gdn_rows_bf16(eg.rows, a.y + (br[i] * a.Wo + x0) * a.Co, x1 - x0, eg.z, eg.n);
      i = j;
    }
  }
}

// Groups g0..g1 from the window layout: band by band (output rows [r0, r0 + band)), the band's
// windows built by this worker into wbuf, then its groups run.
SK_CTARGET int run_blocks_windows(const ConvAmxArgs& a, const ChunkLists& cl, int64_t g0,
                                  int64_t g1, int group_rows, float* accbuf, int64_t ldc,
                                  const EpilogueGdn* eg, AlignedBuffer& wbuf, RangeAcc* acc) {
  const int64_t Wq = (a.Wo + 15) / 16 * 16, nxb = Wq / 16, rows = a.N * a.Ho;
  const int64_t band = window_band(a, Wq);
  // a band spans at most max(band, 4) <= kWindowBand output rows (a group: <= 4 rows), so at
  // most that many images
  int64_t seg[kWindowBand], iy0[kWindowBand], iy1[kWindowBand];
  for (int64_t g = g0; g < g1;) {
    int64_t r0, r1, q0, q1;
    group_row_range(g, rows, nxb, group_rows, &r0, &r1);
    int64_t gb = g + 1;
    for (; gb < g1; ++gb) {
      group_row_range(gb, rows, nxb, group_rows, &q0, &q1);
      if (q1 > r0 + band) break;
      r1 = std::max(r1, q1);
    }
    // the band's images n0..n1: their padded input rows iy0..iy1, stored one after another
    const int64_t n0 = r0 / a.Ho, n1 = (r1 - 1) / a.Ho;
    int64_t total = 0;
    for (int64_t n = n0; n <= n1; ++n) {
      const int64_t oa = std::max(r0, n * a.Ho) - n * a.Ho;
      const int64_t ob = std::min(r1, (n + 1) * a.Ho) - n * a.Ho;
      seg[n - n0] = total;
      iy0[n - n0] = oa * a.stride;
      iy1[n - n0] = (ob - 1) * a.stride + a.kh;
      total += (iy1[n - n0] - iy0[n - n0]) * Wq * 32;
    }
    uint16_t* p = static_cast<uint16_t*>(wbuf.get(static_cast<size_t>(total) * 2, kKeepPadBytes));
    if (p == nullptr) return kCNoMem;
    for (int64_t n = n0; n <= n1; ++n)
      build_windows(a, n, iy0[n - n0], iy1[n - n0], Wq, p + seg[n - n0], acc);
    ASource src;
    src.base = p;
    src.rowel = Wq * 32;
    src.pstride = 32;
    src.stride = a.stride;
    src.n0 = n0;
    src.seg = seg;
    src.iy0 = iy0;
    run_blocks(a, src, cl, g, gb, group_rows, accbuf, ldc, nullptr);
    if (eg != nullptr) gdn_band(a, *eg, g, gb, group_rows, nxb);
    g = gb;
  }
  return kCOk;
}

}  // namespace

int conv_amx_forward(const ConvAmxArgs& a) {
  if (!amx_available()) return kCNoAmx;
  if (a.x == nullptr || a.w == nullptr || (a.y == nullptr) == (a.yf == nullptr) ||
      (a.xdtype != kF32 && a.xdtype != kBF16))
    return kCBadArgs;
  // the clamped fp32 output: no GDN, finite bounds lo <= hi
  if (a.yf != nullptr && (a.gdn != nullptr || !(a.out_lo <= a.out_hi) ||
                          !std::isfinite(a.out_lo) || !std::isfinite(a.out_hi)))
    return kCBadArgs;
  if (a.C <= 0 || a.N <= 0 || a.H <= 0 || a.W <= 0 || a.Ho <= 0 || a.Wo <= 0 || a.Co <= 0 ||
      a.kh <= 0 || a.kw <= 0 || a.stride <= 0 || a.phase <= 0 || a.pad_top < 0 || a.pad_left < 0)
    return kCBadArgs;
  if (a.pad_top + a.H > a.Hp || a.pad_left + a.W > a.Wp) return kCBadArgs;
  // the buffer's channels per pixel: C, or Cp (a multiple of 32 above C)
  if (a.Cp != 0 && (a.Cp < a.C || a.Cp % 32 != 0)) return kCBadArgs;
  const int64_t cs = a.Cp > 0 ? a.Cp : a.C;
  const int64_t Wq = (a.Wo + 15) / 16 * 16;
  const int64_t KC = (a.kw * cs + 31) / 32;
  // the last K chunk of a tap row may read up to 31 elements past it (zero weights there)
  if (a.Wp * cs < (Wq - 1) * a.stride * cs + KC * 32 || a.Hp < (a.Ho - 1) * a.stride + a.kh)
    return kCBadArgs;
  if (a.phase == 1 ? a.Cy != a.Co : a.Cy * a.phase * a.phase != a.Co) return kCBadArgs;
  // the range check (an fp32 x only: the image)
  const bool check = a.check_lo <= a.check_hi;
  if (check && a.xdtype != kF32) return kCBadArgs;
  std::atomic<bool> range_bad{false};
  // the padded input (unless the window layout is read): one 64-byte aligned buffer per calling
  // thread, reused across calls (workers only read it). Aligned, so that tile rows at 64-byte
  // multiples of the row start are single cache lines (an unaligned buffer measured 1.8x slower
  // at 48 channels).
  const bool windows = conv_amx_windows(a);
  thread_local AlignedBuffer padbuf;
  const int64_t rows = a.N * a.Hp;
  uint16_t* xpad = nullptr;
  if (!windows) {
    xpad = static_cast<uint16_t*>(
        padbuf.get(static_cast<size_t>(rows * a.Wp * cs) * 2, kKeepPadBytes));
    if (xpad == nullptr) return kCNoMem;
  }
  const int64_t ldc = (a.Co + 15) / 16 * 16;
  const int group_rows = a.group_rows == 2 ? 2 : 1;
  const int64_t nxb = Wq / 16, groups = group_count(a.N * a.Ho, nxb, group_rows);
  // per channel tile, the K chunks whose B tile is not all zero (all of them without tile_nz)
  const int64_t NBt = (a.Co + 15) / 16, per = a.kh * KC;
  // x read in place by the groups inside it (ConvAmxArgs::in_place)
  InPlace ip;
  const bool in_place = !windows && a.in_place && a.xdtype == kBF16 && cs == a.C &&
                        inside_ranges(a, cs, KC, nxb, ip);
  thread_local std::vector<int64_t> lists;
  try {
    lists.resize(static_cast<size_t>(NBt * (3 * per + 2)));
  } catch (const std::bad_alloc&) {
    return kCNoMem;
  }
  int64_t* xo = lists.data();
  int64_t* xi = xo + NBt * per;  // the chunks' offsets in x (in place)
  int64_t* wo = xi + NBt * per;
  int64_t* nq = wo + NBt * per;
  int64_t* pair = nq + NBt;
  const int64_t rowel = windows ? Wq * 32 : a.Wp * cs;  // elements between tap rows
  for (int64_t nb = 0; nb < NBt; ++nb) {
    int64_t k = 0;
    for (int64_t q = 0; q < per; ++q) {
      if (a.tile_nz != nullptr && a.tile_nz[nb * per + q] == 0) continue;
      xo[nb * per + k] = (q / KC) * rowel + (q % KC) * 32;
      xi[nb * per + k] = (q / KC) * a.W * cs + (q % KC) * 32;
      wo[nb * per + k] = (nb * per + q) * 512;
      ++k;
    }
    nq[nb] = k;
  }
  // the pairs of channel tiles with the same chunks (all of them without tile_nz: the same x
  // offsets, and xi's are the same as well then), from the first tile on: pair[nb] marks a
  // pair's first tile
  int64_t paired = 0;
  std::fill(pair, pair + NBt, 0);
  for (int64_t nb = 0; nb + 1 < NBt; ++nb)
    if (nq[nb] == nq[nb + 1] &&
        std::equal(xo + nb * per, xo + nb * per + nq[nb], xo + (nb + 1) * per)) {
      pair[nb] = 1;
      paired += 2;
      ++nb;
    }
  const int64_t* pairs = a.pair_tiles ? pair : nullptr;
  const ChunkLists cl{xo, wo, nq, per, pairs};
  // with x read in place: the column order and the spans of the padded copy the border groups
  // read (the plain copy: whole rows)
  thread_local std::vector<int64_t> order, span;
  if (in_place) {
    ip.cl = ChunkLists{xi, wo, nq, per, pairs};
    try {
      order.resize(static_cast<size_t>(nxb));
      span.resize(static_cast<size_t>(2 * rows));
    } catch (const std::bad_alloc&) {
      return kCNoMem;
    }
    if (group_rows == 2) {
      border_first_order(ip, nxb, order.data());
      ip.order = order.data();
    }
    border_spans(a, ip, cs, KC, nxb, group_rows, span.data());
    ip.src.base = static_cast<const uint16_t*>(a.x);
    ip.src.rowel = a.W * cs;
    ip.src.pstride = a.stride * cs;
    ip.src.Hp = a.H;
    ip.src.stride = a.stride;
    ip.src.shift = -(a.pad_top * a.W + a.pad_left) * cs;
  }
  // the fused GDN's effective beta (fp32, as the GDN kernels compute it), read by every worker
  const bool gdn = a.gdn != nullptr;
  const int64_t gK = (a.Cy + 31) / 32 * 32, gC = (a.Cy + 15) / 16 * 16;
  thread_local std::vector<float> gdn_beta;
  if (gdn) {
    GdnArgs g = *a.gdn;
    g.C = a.Cy;
    if (g.packed_gamma == nullptr || g.beta == nullptr || (g.bdtype != kF32 && g.bdtype != kBF16))
      return kCBadArgs;
    try {
      gdn_beta.resize(static_cast<size_t>(gC));
    } catch (const std::bad_alloc&) {
      return kCNoMem;
    }
    for (int64_t c = 0; c < gC; ++c) gdn_beta[c] = detail::gdn_beta(g, c);
  }
  const float* const beta_eff = gdn_beta.data();
  if (!windows) {
    // each row's [0, left) and [max(left, right), Wp): whole rows without in_place
    const int64_t* sp = in_place ? span.data() : nullptr;  // (thread_local: not the workers')
    const int64_t ntp = std::max<int64_t>(1, std::min<int64_t>(a.nthreads, rows / 8));
    run_on_threads(ntp, [&](int64_t t) {
      RangeAcc acc{a.check_lo, a.check_hi};  // (the copy reads every value of x)
      RangeAcc* ra = check ? &acc : nullptr;
      for (int64_t r = rows * t / ntp; r < rows * (t + 1) / ntp; ++r) {
        const int64_t left = sp ? sp[2 * r] : a.Wp, right = sp ? sp[2 * r + 1] : a.Wp;
        pad_span(a, cs, xpad, r, 0, left, ra);
        pad_span(a, cs, xpad, r, std::max(left, right), a.Wp, ra);
      }
      if (acc.bad != 0) range_bad.store(true, std::memory_order_relaxed);
    });
  }
  int64_t nt = std::max<int64_t>(1, std::min<int64_t>(a.nthreads, groups));
  std::atomic<bool> nomem{false};  // set by any worker that could not get its buffer
  std::atomic<int64_t> in_groups{0};  // groups that read x in place
  auto worker = [&](int64_t t) {
    const int64_t g0 = groups * t / nt, g1 = groups * (t + 1) / nt;
    thread_local std::vector<float> buf;
    const int64_t need = kMaxBlocks * 16 * ldc;
    if (static_cast<int64_t>(buf.size()) < need) {
      try {
        buf.resize(need);
      } catch (const std::bad_alloc&) {
        nomem.store(true, std::memory_order_relaxed);
        return;
      }
    }
    EpilogueGdn eg;
    if (gdn) {
      thread_local AlignedBuffer xbuf, zbuf, nbuf;
      eg.rows = GdnRows{a.Cy, static_cast<const uint16_t*>(a.gdn->packed_gamma), beta_eff,
                        a.gdn->inverse};
      // (the window layout runs the GDN on y itself, band by band: gdn_band, no group buffer)
      if (!windows)
        eg.xb = static_cast<uint16_t*>(
            xbuf.get(static_cast<size_t>(kMaxBlocks * 16 * a.Co) * 2, kKeepPadBytes));
      eg.z = static_cast<uint16_t*>(zbuf.get(static_cast<size_t>(32 * gK) * 2, kKeepPadBytes));
      eg.n = static_cast<float*>(nbuf.get(static_cast<size_t>(32 * gC) * 4, kKeepPadBytes));
      if ((!windows && eg.xb == nullptr) || eg.z == nullptr || eg.n == nullptr) {
        nomem.store(true, std::memory_order_relaxed);
        return;
      }
      std::memset(eg.z, 0, static_cast<size_t>(32 * gK) * 2);  // the columns past Cy stay 0
    }
    amx::config_full();
    if (windows) {
      thread_local AlignedBuffer wbuf;  // the band's windows
      RangeAcc acc{a.check_lo, a.check_hi};
      if (run_blocks_windows(a, cl, g0, g1, group_rows, buf.data(), ldc, gdn ? &eg : nullptr,
                             wbuf, check ? &acc : nullptr) != kCOk)
        nomem.store(true, std::memory_order_relaxed);
      if (acc.bad != 0) range_bad.store(true, std::memory_order_relaxed);
    } else {
      ASource src;
      src.base = xpad;
      src.rowel = a.Wp * cs;
      src.pstride = a.stride * cs;
      src.Hp = a.Hp;
      src.stride = a.stride;
      in_groups.fetch_add(run_blocks(a, src, cl, g0, g1, group_rows, buf.data(), ldc,
                                     gdn ? &eg : nullptr, in_place ? &ip : nullptr),
                          std::memory_order_relaxed);
    }
    amx::release();
  };
  run_on_threads(nt, worker);
  if (a.stats != nullptr) {
    a.stats[0] = in_groups.load(std::memory_order_relaxed);
    a.stats[1] = groups;
    a.stats[2] = pairs != nullptr ? paired : 0;
  }
  if (nomem.load(std::memory_order_relaxed)) return kCNoMem;
  if (check && windows && !windows_read_all(a, Wq) && !range_bad.load()) {
    // the windows skipped values of x (rows or columns no output reads): all of x scanned
    RangeAcc acc{a.check_lo, a.check_hi};
    scan_range(static_cast<const float*>(a.x), a.N * a.H * a.W * a.C, &acc);
    if (acc.bad != 0) range_bad.store(true);
  }
  return range_bad.load() ? kCRange : kCOk;
}

#else  // !SK_CONV_AMX_CODE

int conv_amx_forward(const ConvAmxArgs&) { return kCNoAmx; }

#endif


}  // namespace sk
