// Direct fp32 convolution for inputs with few channels (the image layer: 3 channels, 9x9,
// stride 4) on AVX2 + FMA (internal API). Plain C++17, no Python.
//
// In channels_last x the k*C values of one tap row (kx, c) of an output pixel are contiguous, so
// the kernel reads them in place (no im2col): micro-tiles of 6 output pixels x 16 output
// channels accumulate in 12 ymm registers over ky and the k*C run (a broadcast of x, two weight
// loads, 12 FMAs), the 16-channel weight panel staying in L1 and the k input rows of an output
// row in L2. Pixels whose window crosses the left / right border read a zero-padded copy of
// their window; rows outside x are skipped.
#pragma once
#include <cstdint>

namespace sk {

struct ConvAvx2Args {
  const float* x = nullptr;   // [N, H, W, C] dense fp32
  int64_t N = 0, H = 0, W = 0, C = 0;
  const float* w = nullptr;   // packed [ceil(Co/16)][k][k*C][16] fp32 (conv_avx2_pack layout),
                              // zero past Co
  const float* bias = nullptr;  // [Co] or null
  int64_t Co = 0, k = 0, stride = 1, pad = 0;
  int64_t Ho = 0, Wo = 0;     // must equal (H + 2 pad - k) / stride + 1 (and for W)
  float* y = nullptr;         // [N, Ho, Wo, Co] dense fp32
  int nthreads = 1;
};

// Return 0 on success, else an error code (conv_avx2_error_message).
int conv_avx2_forward(const ConvAvx2Args& a);

// Transposed conv onto few output channels (the output image layer: C_in = width, 3 outputs,
// 9x9, stride 4), exact taps (no zero taps of a padded sub-pixel kernel). Output row
// q*s + r reads x rows q + tap_off[r][t] with kernel row tap_k[r][t], t < ntap[r] (the same
// plan for columns); vectors run over the input channels, 4 output pixels of one phase x Co
// accumulators share each weight load, and a horizontal sum ends each output.
struct ConvTAvx2Args {
  const float* x = nullptr;   // [N, H, W, C] dense fp32
  int64_t N = 0, H = 0, W = 0, C = 0;
  const float* w = nullptr;   // packed [k][k][Co][Cpad] fp32, zero past C
  int64_t Cpad = 0;           // C rounded up to a multiple of 8
  const float* bias = nullptr;  // [Co] or null
  int64_t Co = 0, k = 0, s = 1;   // 1 <= Co <= 3
  const int32_t* tap_off = nullptr;  // [s][kmax]
  const int32_t* tap_k = nullptr;    // [s][kmax]
  const int32_t* ntap = nullptr;     // [s]
  int64_t kmax = 0;
  int64_t Ho = 0, Wo = 0;
  float* y = nullptr;         // [N, Ho, Wo, Co] dense fp32
  int nthreads = 1;
};
int conv_transpose_avx2_forward(const ConvTAvx2Args& a);
const char* conv_avx2_error_message(int code);

}  // namespace sk
