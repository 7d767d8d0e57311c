// The separable Gaussian window of SSIM / MS-SSIM (slimkernels.evaluation.metrics): a 'valid'
// k-tap filter along the rows, then along the columns, of float64 planes. Plain C++17 on raw
// pointers; an AVX2 + FMA path (chosen at run time) and a portable one.
#pragma once
#include <cstdint>

namespace sk {

struct SsimFilterArgs {
  // x: P planes of H x W float64, rows contiguous: element (p, i, j) at p*H*W + i*W + j.
  const double* x = nullptr;
  int64_t P = 0, H = 0, W = 0;
  const double* g = nullptr;  // [k] taps
  int64_t k = 0;
  // out: [P, H - k + 1, W - k + 1] contiguous:
  //   out[p, i, j] = sum_a g[a] * (sum_b g[b] * x[p, i + a, j + b]),
  // each sum in tap order, as the PyTorch path's shifted-slice sums.
  double* out = nullptr;
  int nthreads = 1;
};

enum : int { kSOk = 0, kSBadArgs = 1, kSNoMemory = 2 };

int ssim_filter(const SsimFilterArgs& a);
const char* ssim_filter_error_message(int code);
bool ssim_filter_available();  // true (a portable path exists); the probe the package asks

}  // namespace sk
