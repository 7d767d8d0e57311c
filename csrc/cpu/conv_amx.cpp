// Direct AMX-BF16 convolution (see conv_amx.hpp).
//
// Work unit: a group of up to 5 blocks of 16 output pixels, each block in one output row. A tile:
// 16 output pixels x 32 elements of one tap row's K = (kx, c) (contiguous in channels_last x),
// read straight from x with row stride stride*C*2 bytes. The blocks of a group share every B tile
// (16 K-pairs x 16 output channels, prepacked). C tiles (16 pixels x 16 channels, fp32) go
// through a small per-thread buffer to the epilogue (bias, round to bf16, store or sub-pixel
// scatter). Tiles: C 0..4, A 5/6 (alternating), B 7.
#include "conv_amx.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>
#if defined(_OPENMP)
#include <omp.h>
#endif

#include "gdn_cpu.hpp"  // amx_available()

#include "amx_tiles.hpp"
#define SK_CONV_AMX_CODE SK_HAVE_AMX_CODE

namespace sk {

namespace {
enum ConvErr { kCOk = 0, kCNoAmx = 1, kCBadArgs = 2, kCNoMem = 3 };
}

const char* conv_amx_error_message(int code) {
  switch (code) {
    case kCOk: return "ok";
    case kCNoAmx: return "AMX-BF16 is not available on this CPU/OS; use the oneDNN path";
    case kCBadArgs: return "bad arguments (x must be padded so every 16-pixel block reads in "
                           "bounds, see conv_amx.hpp; phase layout consistent)";
    case kCNoMem: return "out of memory for the per-thread buffer";
  }
  return "unknown error";
}

#if SK_CONV_AMX_CODE

#define SK_CTARGET SK_AMX_TARGET

namespace {

// MT pixel blocks (each 16 output pixels of one row: A tiles read from xs[i]) x one tile of 16
// output channels (B, prepacked at wnb): C tiles 0..MT-1, A tiles 5/6 alternating, B tile 7.
// Each B tile is loaded once per K chunk and used MT times. acc[i]: fp32 [16][ldc].
template <int MT>
SK_CTARGET void micro(const uint16_t* const* xs, int64_t pstride, const ConvAmxArgs& a,
                      const uint16_t* wnb, int64_t KC, int64_t NBt, float* const* acc,
                      int64_t ldc) {
  _tile_zero(0);
  if constexpr (MT > 1) _tile_zero(1);
  if constexpr (MT > 2) _tile_zero(2);
  if constexpr (MT > 3) _tile_zero(3);
  if constexpr (MT > 4) _tile_zero(4);
  const long sa = static_cast<long>(pstride * 2);
  const int64_t rowel = a.Wp * a.C;
  for (int64_t ky = 0; ky < a.kh; ++ky) {
    // K of one tap row: (kx, c) pairs, contiguous in channels_last x (kw * C elements)
    const int64_t xo = ky * rowel;
    const uint16_t* wt = wnb + ky * KC * NBt * 512;
    for (int64_t kc = 0; kc < KC; ++kc) {
      const int64_t o = xo + kc * 32;
      _tile_loadd(7, wt + kc * NBt * 512, 64);
      _tile_loadd(5, xs[0] + o, sa);
      _tile_dpbf16ps(0, 5, 7);
      if constexpr (MT > 1) { _tile_loadd(6, xs[1] + o, sa); _tile_dpbf16ps(1, 6, 7); }
      if constexpr (MT > 2) { _tile_loadd(5, xs[2] + o, sa); _tile_dpbf16ps(2, 5, 7); }
      if constexpr (MT > 3) { _tile_loadd(6, xs[3] + o, sa); _tile_dpbf16ps(3, 6, 7); }
      if constexpr (MT > 4) { _tile_loadd(5, xs[4] + o, sa); _tile_dpbf16ps(4, 5, 7); }
    }
  }
  const long sc = static_cast<long>(ldc * 4);
  _tile_stored(0, acc[0], sc);
  if constexpr (MT > 1) _tile_stored(1, acc[1], sc);
  if constexpr (MT > 2) _tile_stored(2, acc[2], sc);
  if constexpr (MT > 3) _tile_stored(3, acc[3], sc);
  if constexpr (MT > 4) _tile_stored(4, acc[4], sc);
}

SK_CTARGET inline void store_bf16(uint16_t* dst, const float* src, const float* bias, int64_t n) {
  for (int64_t c = 0; c < n; c += 16) {
    const int64_t m = std::min<int64_t>(16, n - c);
    const __mmask16 k = static_cast<__mmask16>((1u << m) - 1u);
    __m512 v = _mm512_maskz_loadu_ps(k, src + c);
    if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, bias + c));
    __m256i h = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v));
    _mm256_mask_storeu_epi16(dst + c, k, h);
  }
}

constexpr int kMaxBlocks = 5;

// Pixel blocks b0..b1 (block b: image/row r = b / nxb, columns 16 * (b % nxb) ..), in groups of
// up to kMaxBlocks that share every B tile.
SK_CTARGET void run_blocks(const ConvAmxArgs& a, int64_t b0, int64_t b1, float* accbuf,
                           int64_t ldc) {
  const int64_t KC = (a.kw * a.C + 31) / 32, NBt = (a.Co + 15) / 16;
  const int64_t pstride = a.stride * a.C;
  const int64_t nxb = (a.Wo + 15) / 16;
  const int64_t s = a.phase;
  for (int64_t g = b0; g < b1; g += kMaxBlocks) {
    const int mt = static_cast<int>(std::min<int64_t>(kMaxBlocks, b1 - g));
    const uint16_t* xs[kMaxBlocks];
    for (int i = 0; i < mt; ++i) {
      const int64_t b = g + i, r = b / nxb, xb = b % nxb;
      const int64_t n = r / a.Ho, oy = r % a.Ho;
      xs[i] = a.x + ((n * a.Hp + oy * a.stride) * a.Wp) * a.C + xb * 16 * pstride;
    }
    for (int64_t nb = 0; nb < NBt; ++nb) {
      float* acc[kMaxBlocks];
      for (int i = 0; i < mt; ++i) acc[i] = accbuf + i * 16 * ldc + nb * 16;
      const uint16_t* wnb = a.w + nb * 512;
      switch (mt) {
        case 5: micro<5>(xs, pstride, a, wnb, KC, NBt, acc, ldc); break;
        case 4: micro<4>(xs, pstride, a, wnb, KC, NBt, acc, ldc); break;
        case 3: micro<3>(xs, pstride, a, wnb, KC, NBt, acc, ldc); break;
        case 2: micro<2>(xs, pstride, a, wnb, KC, NBt, acc, ldc); break;
        default: micro<1>(xs, pstride, a, wnb, KC, NBt, acc, ldc); break;
      }
    }
    // epilogue: bias, bf16, store (or sub-pixel scatter)
    for (int i = 0; i < mt; ++i) {
      const int64_t b = g + i, r = b / nxb, xb = b % nxb;
      const int64_t n = r / a.Ho, oy = r % a.Ho;
      const int64_t npx = std::min<int64_t>(16, a.Wo - xb * 16);
      for (int64_t p = 0; p < npx; ++p) {
        const int64_t ox = xb * 16 + p;
        const float* src = accbuf + (i * 16 + p) * ldc;
        if (s == 1) {
          store_bf16(a.y + ((n * a.Hy + oy) * a.Wy + ox) * a.Cy, src, a.bias, a.Co);
        } else {
          for (int64_t ry = 0; ry < s; ++ry) {
            const int64_t yy = oy * s + ry;
            if (yy >= a.Hy) break;
            for (int64_t rx = 0; rx < s; ++rx) {
              const int64_t xx = ox * s + rx;
              if (xx >= a.Wy) break;
              const int64_t off = (ry * s + rx) * a.Cy;
              store_bf16(a.y + ((n * a.Hy + yy) * a.Wy + xx) * a.Cy, src + off,
                         a.bias ? a.bias + off : nullptr, a.Cy);
            }
          }
        }
      }
    }
  }
}

}  // namespace

int conv_amx_forward(const ConvAmxArgs& a) {
  if (!amx_available()) return kCNoAmx;
  if (a.C <= 0 || a.N <= 0 || a.Ho <= 0 || a.Wo <= 0 || a.Co <= 0 ||
      a.kh <= 0 || a.kw <= 0 || a.stride <= 0 || a.phase <= 0)
    return kCBadArgs;
  const int64_t Wq = (a.Wo + 15) / 16 * 16;
  const int64_t KC = (a.kw * a.C + 31) / 32;
  // the last K chunk of a tap row may read up to 31 elements past it (zero weights there)
  if (a.Wp * a.C < (Wq - 1) * a.stride * a.C + KC * 32 || a.Hp < (a.Ho - 1) * a.stride + a.kh)
    return kCBadArgs;
  if (a.phase == 1 ? a.Cy != a.Co : a.Cy * a.phase * a.phase != a.Co) return kCBadArgs;
  const int64_t ldc = (a.Co + 15) / 16 * 16;
  const int64_t blocks = a.N * a.Ho * (Wq / 16);
  int64_t nt = std::max<int64_t>(1, std::min<int64_t>(a.nthreads, blocks));
  auto worker = [&](int64_t t) {
    const int64_t b0 = blocks * t / nt, b1 = blocks * (t + 1) / nt;
    thread_local std::vector<float, std::allocator<float>> buf;
    const int64_t need = kMaxBlocks * 16 * ldc;
    if (static_cast<int64_t>(buf.size()) < need) buf.resize(need);
    float* acc = buf.data();
    amx::config_full();
    run_blocks(a, b0, b1, acc, ldc);
    amx::release();
  };
  run_on_threads(nt, worker);
  return kCOk;
}

#else  // !SK_CONV_AMX_CODE

int conv_amx_forward(const ConvAmxArgs&) { return kCNoAmx; }

#endif

}  // namespace sk
