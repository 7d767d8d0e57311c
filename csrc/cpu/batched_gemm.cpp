// Batched fp32 GEMM for the Winograd rounds on AVX-512 and AVX2 (see batched_gemm.hpp).
#include "batched_gemm.hpp"

#include <algorithm>
#include <cstring>

#include "amx_tiles.hpp"  // run_on_threads
#include "avx2_common.hpp"
#include "bf16_dot.hpp"     // SK_BF16_TARGET, lanes16
#include "conv_avx2.hpp"    // conv_bf16_available
#include "gdn_avx2.hpp"     // gdn_avx2_available

namespace sk {

namespace {
enum GemmErr { kGOk = 0, kGNoIsa = 1, kGBadArgs = 2, kGNoBf16 = 3, kGNoAvx2 = 4 };
constexpr int64_t kRowBlock = 64;  // rows of one product per work item
constexpr int64_t kKBlock = 64;    // reduction steps summed in registers before adding into M
}  // namespace

const char* batched_gemm_error_message(int code) {
  switch (code) {
    case kGOk: return "ok";
    case kGNoIsa: return "AVX-512F is not available on this CPU; use torch.bmm";
    case kGBadArgs: return "bad arguments (null pointer or a size that is not positive)";
    case kGNoBf16: return "AVX512-BF16 is not available on this CPU; use the fp32 path";
    case kGNoAvx2: return "AVX2 + FMA is not available on this CPU; use torch.bmm";
  }
  return "unknown error";
}

#if SK_HAVE_AVX2_CODE
#define SK_GEMM512_TARGET __attribute__((target("avx512f,avx2,fma")))
// The register tiles fully unrolled (else GCC may keep the accumulators in memory).
#define SK_UNROLL_G _Pragma("GCC unroll 32")
namespace {
// One block of the reduction into m (row stride N; `last`: the lanes of the last vector): the
// first block written, later ones added to it.
template <int MR, int G>
SK_GEMM512_TARGET inline void store_block(const __m512 (&acc)[MR][G], float* m, int64_t N,
                                          __mmask16 last, bool first) {
  SK_UNROLL_G for (int r = 0; r < MR; ++r)
    SK_UNROLL_G for (int g = 0; g < G; ++g) {
      float* d = m + r * N + 16 * g;
      const __mmask16 mk = g == G - 1 ? last : static_cast<__mmask16>(0xFFFFu);
      const __m512 sum =
          first ? acc[r][g] : _mm512_add_ps(_mm512_maskz_loadu_ps(mk, d), acc[r][g]);
      _mm512_mask_storeu_ps(d, mk, sum);
    }
}

// tile<MR, G>(v, u, m, K, N, valid): rows [0, MR) of v (row stride K) times G 16-lane vectors
// of u's columns (row stride N; `valid` lanes in the last one) over the whole K, into m.
struct Avx512Ops {
  static constexpr int kMr = 8, kG = 3, kLanes = 16;
  static constexpr bool kPanelOuter = false;
  template <int MR, int G>
  SK_GEMM512_TARGET static void tile(const float* v, const float* u, float* m, int64_t K,
                                     int64_t N, int valid) {
    const __mmask16 last = static_cast<__mmask16>(valid >= 16 ? 0xFFFFu : (1u << valid) - 1u);
    for (int64_t k0 = 0; k0 < K; k0 += kKBlock) {
      // one block of the reduction from zero, then added to the sum of the blocks before it:
      // rounding errors grow with the block length and the block count, not with K (one FMA
      // chain over K = 768 measured 3x torch.bmm's error, which Winograd's output transform
      // then carries past its 2e-5 bound)
      __m512 acc[MR][G];
      SK_UNROLL_G for (int r = 0; r < MR; ++r)
        SK_UNROLL_G for (int g = 0; g < G; ++g) acc[r][g] = _mm512_setzero_ps();
      const int64_t k1 = std::min(K, k0 + kKBlock);
      for (int64_t k = k0; k < k1; ++k) {
        const float* uk = u + k * N;
        __m512 b[G];
        SK_UNROLL_G for (int g = 0; g < G; ++g)
          b[g] = g == G - 1 ? _mm512_maskz_loadu_ps(last, uk + 16 * g)
                            : _mm512_loadu_ps(uk + 16 * g);
        SK_UNROLL_G for (int r = 0; r < MR; ++r) {
          const __m512 a = _mm512_set1_ps(v[r * K + k]);
          SK_UNROLL_G for (int g = 0; g < G; ++g)
            acc[r][g] = _mm512_fmadd_ps(a, b[g], acc[r][g]);
        }
      }
      store_block<MR, G>(acc, m, N, last, k0 == 0);
    }
  }
};

// The same tiles on AVX2 (16 ymm registers): 4 rows x 3 8-lane vectors = 12 accumulators, 3
// loads of a row of U and one broadcast of V per row. The last vector of a row of U / M is
// read and written through a lane mask only when it is partial (a masked load in every step
// measured 0.6x torch.bmm on a Zen 3; without it, as fast: both at that CPU's FMA peak). A
// panel of U's columns is held for the row block (the 6 x 16 tile and the rows-outer order
// measured the same). Its body has Avx512Ops::tile's shape but its own: a shared template
// would need one target attribute for both, and with "avx512f" GCC may emit AVX-512
// instructions into the AVX2 instance, which a CPU without AVX-512 cannot run.
struct Avx2Ops {
  static constexpr int kMr = 4, kG = 3, kLanes = 8;
  static constexpr bool kPanelOuter = true;
  template <int MR, int G>
  SK_AVX2_TARGET static void tile(const float* v, const float* u, float* m, int64_t K,
                                  int64_t N, int valid) {
    if (valid == 8) {
      body<MR, G, false>(v, u, m, K, N, valid);
    } else {
      body<MR, G, true>(v, u, m, K, N, valid);
    }
  }

  template <bool MASKED>
  SK_AVX2_TARGET static inline __m256 load(const float* p, __m256i last, bool is_last) {
    return MASKED && is_last ? _mm256_maskload_ps(p, last) : _mm256_loadu_ps(p);
  }

  template <int MR, int G, bool MASKED>
  SK_AVX2_TARGET static void body(const float* v, const float* u, float* m, int64_t K,
                                  int64_t N, int valid) {
    const __m256i last = detail::lane_mask(valid);
    for (int64_t k0 = 0; k0 < K; k0 += kKBlock) {  // blocks of the reduction as above
      __m256 acc[MR][G];
      SK_UNROLL_G for (int r = 0; r < MR; ++r)
        SK_UNROLL_G for (int g = 0; g < G; ++g) acc[r][g] = _mm256_setzero_ps();
      const int64_t k1 = std::min(K, k0 + kKBlock);
      for (int64_t k = k0; k < k1; ++k) {
        const float* uk = u + k * N;
        __m256 b[G];
        SK_UNROLL_G for (int g = 0; g < G; ++g)
          b[g] = load<MASKED>(uk + 8 * g, last, g == G - 1);
        SK_UNROLL_G for (int r = 0; r < MR; ++r) {
          const __m256 a = _mm256_broadcast_ss(v + r * K + k);
          SK_UNROLL_G for (int g = 0; g < G; ++g)
            acc[r][g] = _mm256_fmadd_ps(a, b[g], acc[r][g]);
        }
      }
      SK_UNROLL_G for (int r = 0; r < MR; ++r)
        SK_UNROLL_G for (int g = 0; g < G; ++g) {
          float* d = m + r * N + 8 * g;
          if (MASKED && g == G - 1) {
            const __m256 sum = k0 == 0 ? acc[r][g]
                                       : _mm256_add_ps(_mm256_maskload_ps(d, last), acc[r][g]);
            _mm256_maskstore_ps(d, last, sum);
          } else {
            _mm256_storeu_ps(d, k0 == 0 ? acc[r][g]
                                        : _mm256_add_ps(_mm256_loadu_ps(d), acc[r][g]));
          }
        }
    }
  }
};

#if SK_HAVE_BF16_CODE
// The same tiles with V and U in bf16 (vdpbf16ps: two products per lane): one pair of a row of V
// broadcast per row, a pair-row of U in G vectors. An odd K's last element is read alone (its
// partner taken as zero: nothing past a row of V is read).
struct Bf16Ops {
  static constexpr int kMr = 8, kG = 3, kLanes = 16;
  static constexpr bool kPanelOuter = false;
  template <int MR, int G>
  SK_BF16_TARGET static void tile(const uint16_t* v, const uint32_t* u, float* m, int64_t K,
                                  int64_t N, int valid) {
    const __mmask16 last = detail::lanes16(valid);
    const int64_t Kp = (K + 1) / 2;
    for (int64_t p0 = 0; p0 < Kp; p0 += kKBlock / 2) {
      __m512 acc[MR][G];
      SK_UNROLL_G for (int r = 0; r < MR; ++r)
        SK_UNROLL_G for (int g = 0; g < G; ++g) acc[r][g] = _mm512_setzero_ps();
      const int64_t p1 = std::min(Kp, p0 + kKBlock / 2), full = std::min(p1, K / 2);
      for (int64_t p = p0; p < full; ++p) pair<MR, G, false>(acc, v + 2 * p, K, u + p * N, last);
      if (full < p1) pair<MR, G, true>(acc, v + 2 * full, K, u + full * N, last);
      store_block<MR, G>(acc, m, N, last, p0 == 0);
    }
  }

  template <int MR, int G, bool ONE>
  SK_BF16_TARGET static inline void pair(__m512 (&acc)[MR][G], const uint16_t* v, int64_t K,
                                         const uint32_t* up, __mmask16 last) {
    __m512bh b[G];
    SK_UNROLL_G for (int g = 0; g < G; ++g)
      b[g] = (__m512bh)(g == G - 1 ? _mm512_maskz_loadu_epi32(last, up + 16 * g)
                                   : _mm512_loadu_si512(up + 16 * g));
    SK_UNROLL_G for (int r = 0; r < MR; ++r) {
      int32_t x;
      if (ONE) {
        x = static_cast<int32_t>(v[r * K]);
      } else {
        std::memcpy(&x, v + r * K, 4);
      }
      const __m512bh a = (__m512bh)_mm512_set1_epi32(x);
      SK_UNROLL_G for (int g = 0; g < G; ++g) acc[r][g] = _mm512_dpbf16_ps(acc[r][g], a, b[g]);
    }
  }
};
#endif

template <class Ops, class VT, class UT>
using TileFn = void (*)(const VT*, const UT*, float*, int64_t, int64_t, int);
// The tile of MR rows, null past Ops::kMr (not instantiated: too many accumulators).
template <class Ops, class VT, class UT, int MR, int G>
constexpr TileFn<Ops, VT, UT> tile_fn() {
  if constexpr (MR <= Ops::kMr) {
    return Ops::template tile<MR, G>;
  } else {
    return nullptr;
  }
}
template <class Ops, class VT, class UT, int G>
constexpr TileFn<Ops, VT, UT> kTiles[9] = {
    nullptr, tile_fn<Ops, VT, UT, 1, G>(), tile_fn<Ops, VT, UT, 2, G>(),
    tile_fn<Ops, VT, UT, 3, G>(), tile_fn<Ops, VT, UT, 4, G>(), tile_fn<Ops, VT, UT, 5, G>(),
    tile_fn<Ops, VT, UT, 6, G>(), tile_fn<Ops, VT, UT, 7, G>(), tile_fn<Ops, VT, UT, 8, G>()};

// Rows [t0, t1) of product b: tiles of Ops::kMr rows x Ops::kG vectors of columns.
// Ku: rows of U per product (K, or K/2 rounded up for bf16 pairs).
template <class Ops, class Args, class VT, class UT>
void rows(const Args& a, int64_t Ku, int64_t b, int64_t t0, int64_t t1) {
  const int64_t L = Ops::kLanes, nv = (a.N + L - 1) / L;
  const int rem = static_cast<int>(a.N - L * (nv - 1));  // lanes of the last vector, 1..L
  const VT* V = a.V + b * a.T * a.K;
  const UT* U = a.U + b * Ku * a.N;
  float* M = a.M + b * a.T * a.N;
  auto tile = [&](int64_t t, int64_t v0) {
    const int mr = static_cast<int>(std::min<int64_t>(Ops::kMr, t1 - t));
    const int g = static_cast<int>(std::min<int64_t>(Ops::kG, nv - v0));
    const TileFn<Ops, VT, UT> fn = g == 3   ? kTiles<Ops, VT, UT, 3>[mr]
                                   : g == 2 ? kTiles<Ops, VT, UT, 2>[mr]
                                            : kTiles<Ops, VT, UT, 1>[mr];
    fn(V + t * a.K, U + L * v0, M + t * a.N + L * v0, a.K, a.N,
       v0 + g == nv ? rem : static_cast<int>(L));
  };
  if (Ops::kPanelOuter) {   // a panel of U's columns over the block's rows (panel kept in L2)
    for (int64_t v0 = 0; v0 < nv; v0 += Ops::kG)
      for (int64_t t = t0; t < t1; t += Ops::kMr) tile(t, v0);
  } else {                  // a tile of V's rows across all of U
    for (int64_t t = t0; t < t1; t += Ops::kMr)
      for (int64_t v0 = 0; v0 < nv; v0 += Ops::kG) tile(t, v0);
  }
}

// All B products, row blocks of kRowBlock spread over the threads.
template <class Ops, class Args, class VT, class UT>
int run_gemm(const Args& a, int64_t Ku) {
  if (a.V == nullptr || a.U == nullptr || a.M == nullptr || a.B <= 0 || a.T <= 0 || a.K <= 0 ||
      a.N <= 0) {
    return kGBadArgs;
  }
  const int64_t blocks = (a.T + kRowBlock - 1) / kRowBlock, items = a.B * blocks;
  const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(a.nthreads, items));
  run_on_threads(nt, [&a, Ku, blocks, items, nt](int64_t i) {
    for (int64_t w = items * i / nt; w < items * (i + 1) / nt; ++w) {
      const int64_t b = w / blocks, t0 = (w % blocks) * kRowBlock;
      rows<Ops, Args, VT, UT>(a, Ku, b, t0, std::min(a.T, t0 + kRowBlock));
    }
  });
  return kGOk;
}
}  // namespace

bool batched_gemm_avx512_available() { return detail::avx512f_available(); }

bool batched_gemm_avx2_available() { return gdn_avx2_available(); }

int batched_gemm_avx2(const BatchedGemmArgs& a) {
  if (!batched_gemm_avx2_available()) return kGNoAvx2;
  return run_gemm<Avx2Ops, BatchedGemmArgs, float, float>(a, a.K);
}

int batched_gemm_avx512(const BatchedGemmArgs& a) {
  if (!batched_gemm_avx512_available()) return kGNoIsa;
  return run_gemm<Avx512Ops, BatchedGemmArgs, float, float>(a, a.K);
}

bool batched_gemm_bf16_available() {
#if SK_HAVE_BF16_CODE
  return conv_bf16_available();
#else
  return false;
#endif
}

int batched_gemm_bf16(const BatchedGemmBf16Args& a) {
#if SK_HAVE_BF16_CODE
  if (!batched_gemm_bf16_available()) return kGNoBf16;
  return run_gemm<Bf16Ops, BatchedGemmBf16Args, uint16_t, uint32_t>(a, (a.K + 1) / 2);
#else
  (void)a;
  return kGNoBf16;
#endif
}

#else

bool batched_gemm_avx512_available() { return false; }
int batched_gemm_avx512(const BatchedGemmArgs&) { return kGNoIsa; }
bool batched_gemm_avx2_available() { return false; }
int batched_gemm_avx2(const BatchedGemmArgs&) { return kGNoAvx2; }
bool batched_gemm_bf16_available() { return false; }
int batched_gemm_bf16(const BatchedGemmBf16Args&) { return kGNoBf16; }

#endif

}  // namespace sk
