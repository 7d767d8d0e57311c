// See ssim_filter.hpp. Work items are (plane, block of 32 output rows): the block's rows are
// filtered along the rows into a per-thread buffer ((32 + k - 1) rows of W - k + 1 doubles,
// ~250 KB for a Kodak image: L2), then along the columns into the output. On AVX2 + FMA CPUs 16
// columns at a time are summed over the taps in registers.
#include "ssim_filter.hpp"

#include <atomic>
#include <new>
#include <vector>

#include "amx_tiles.hpp"    // for_rows
#include "avx2_common.hpp"  // SK_HAVE_AVX2_CODE, SK_AVX2_TARGET
#include "gdn_avx2.hpp"     // gdn_avx2_available: AVX2 + FMA

namespace sk {
namespace {

constexpr int64_t kBlockRows = 32;

// dst[j] = sum_t w[t] * src[t * step + j] for j < n, each sum in tap order (t = 0 a product,
// then one multiply-add per tap: the PyTorch path's shifted-slice sums).
void taps_scalar(const double* __restrict src, int64_t step, const double* __restrict w,
                 int64_t k, double* __restrict dst, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = src[j] * w[0];
  for (int64_t t = 1; t < k; ++t) {
    const double wt = w[t];
    const double* __restrict s = src + t * step;
    for (int64_t j = 0; j < n; ++j) dst[j] += s[j] * wt;
  }
}

using TapsFn = void (*)(const double*, int64_t, const double*, int64_t, double*, int64_t);

template <TapsFn Taps>
__attribute__((always_inline)) inline void filter_block(const double* x, int64_t W,
                                                        const double* g, int64_t k, int64_t r0,
                                                        int64_t r1, double* out, double* tmp) {
  const int64_t Wo = W - k + 1;
  for (int64_t r = 0; r < r1 - r0 + k - 1; ++r)   // along the rows: taps one column apart
    Taps(x + (r0 + r) * W, 1, g, k, tmp + r * Wo, Wo);
  for (int64_t i = r0; i < r1; ++i)                 // along the columns: one row apart
    Taps(tmp + (i - r0) * Wo, Wo, g, k, out + i * Wo, Wo);
}

void filter_block_generic(const double* x, int64_t W, const double* g, int64_t k, int64_t r0,
                          int64_t r1, double* out, double* tmp) {
  filter_block<taps_scalar>(x, W, g, k, r0, r1, out, tmp);
}

#if SK_HAVE_AVX2_CODE
// taps_scalar with 16 columns summed in four registers over all taps (one store per output,
// not one per tap), each tap a fused multiply-add: the roundings of ATen's add_(x, alpha=w) on
// an AVX2 + FMA CPU (the PyTorch path's; the portable path's compiler contracts likewise).
SK_AVX2_TARGET void taps_avx2(const double* src, int64_t step, const double* w, int64_t k,
                              double* dst, int64_t n) {
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m256d w0 = _mm256_set1_pd(w[0]);
    __m256d a0 = _mm256_mul_pd(_mm256_loadu_pd(src + j), w0);
    __m256d a1 = _mm256_mul_pd(_mm256_loadu_pd(src + j + 4), w0);
    __m256d a2 = _mm256_mul_pd(_mm256_loadu_pd(src + j + 8), w0);
    __m256d a3 = _mm256_mul_pd(_mm256_loadu_pd(src + j + 12), w0);
    for (int64_t t = 1; t < k; ++t) {
      const __m256d wt = _mm256_set1_pd(w[t]);
      const double* s = src + t * step + j;
      a0 = _mm256_fmadd_pd(_mm256_loadu_pd(s), wt, a0);
      a1 = _mm256_fmadd_pd(_mm256_loadu_pd(s + 4), wt, a1);
      a2 = _mm256_fmadd_pd(_mm256_loadu_pd(s + 8), wt, a2);
      a3 = _mm256_fmadd_pd(_mm256_loadu_pd(s + 12), wt, a3);
    }
    _mm256_storeu_pd(dst + j, a0);
    _mm256_storeu_pd(dst + j + 4, a1);
    _mm256_storeu_pd(dst + j + 8, a2);
    _mm256_storeu_pd(dst + j + 12, a3);
  }
  for (; j < n; ++j) {
    double acc = src[j] * w[0];
    for (int64_t t = 1; t < k; ++t) acc = __builtin_fma(src[t * step + j], w[t], acc);
    dst[j] = acc;
  }
}

SK_AVX2_TARGET void filter_block_avx2(const double* x, int64_t W, const double* g, int64_t k,
                                      int64_t r0, int64_t r1, double* out, double* tmp) {
  filter_block<taps_avx2>(x, W, g, k, r0, r1, out, tmp);
}
#endif

}  // namespace

bool ssim_filter_available() { return true; }

const char* ssim_filter_error_message(int code) {
  switch (code) {
    case kSOk: return "ok";
    case kSBadArgs: return "bad arguments (a null pointer, k < 1, a plane smaller than k x k, "
                           "or a negative or overflowing size)";
    case kSNoMemory: return "out of memory for a thread's row buffer";
  }
  return "unknown error";
}

int ssim_filter(const SsimFilterArgs& a) {
  constexpr int64_t kMax = int64_t(1) << 40;   // (elements: no product below overflows)
  if (a.x == nullptr || a.g == nullptr || a.out == nullptr || a.k < 1 || a.P < 0 ||
      a.H < a.k || a.W < a.k || a.H > kMax || a.W > kMax || a.P > kMax ||
      (a.H > 0 && a.W > kMax / a.H) || (a.P > 0 && a.H * a.W > kMax / a.P) || a.k > 4096)
    return kSBadArgs;
  const int64_t Ho = a.H - a.k + 1, Wo = a.W - a.k + 1;
  const int64_t blocks = (Ho + kBlockRows - 1) / kBlockRows;
  void (*block_fn)(const double*, int64_t, const double*, int64_t, int64_t, int64_t, double*,
                   double*) = filter_block_generic;
#if SK_HAVE_AVX2_CODE
  if (gdn_avx2_available()) block_fn = filter_block_avx2;
#endif
  const int64_t tmp_size = (kBlockRows + a.k - 1) * Wo;
  std::atomic<bool> no_memory{false};
  // (work per item for the thread count: its output elements, kBlockRows * Wo <= 2^45)
  for_rows(a.P * blocks, kBlockRows * Wo, a.nthreads, [&](int64_t item) {
    thread_local std::vector<double> tmp;   // (grown once per thread, kept between calls)
    if (static_cast<int64_t>(tmp.size()) < tmp_size) {
      try {   // (an exception must not leave an OpenMP region: std::terminate)
        tmp.resize(tmp_size);
      } catch (const std::bad_alloc&) {
        no_memory = true;
        return;
      }
    }
    const int64_t p = item / blocks, r0 = (item % blocks) * kBlockRows;
    const int64_t r1 = r0 + kBlockRows < Ho ? r0 + kBlockRows : Ho;
    block_fn(a.x + p * a.H * a.W, a.W, a.g, a.k, r0, r1, a.out + p * Ho * Wo, tmp.data());
  });
  return no_memory ? kSNoMemory : kSOk;
}

}  // namespace sk
