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
// The same conv on AVX-512 (conv_avx512_available()), same arguments and packing: micro-tiles of
// 8 pixels x 48 channels in 24 zmm accumulators.
int conv_avx512_forward(const ConvAvx2Args& a);

// The same conv in bf16 on AVX512-BF16 (conv_bf16_available()): vdpbf16ps over pairs of the
// k*C run of a tap row, fp32 sums from the bias, each output value rounded to bf16 once.
struct ConvBf16Args {
  const uint16_t* x = nullptr;  // [N, H, W, C] dense bf16
  int64_t N = 0, H = 0, W = 0, C = 0;
  const uint16_t* w = nullptr;  // packed [ceil(Co/16)][k][ceil(k*C/2)][16][2] bf16:
                                // w[p][ky][j/2][i][j%2] = weight[16p + i, c, ky, kx] at
                                // j = kx*C + c, zero past Co and for the pad element of an odd k*C
  const float* bias = nullptr;  // [Co] fp32 or null
  int64_t Co = 0, k = 0, stride = 1, pad = 0;
  int64_t Ho = 0, Wo = 0;
  uint16_t* y = nullptr;        // [N, Ho, Wo, Co] dense bf16
  int nthreads = 1;
};
int conv_bf16_forward(const ConvBf16Args& a);

// Transposed conv onto few output channels (the output image layer: C_in = width, 3 outputs,
// 9x9, stride 4), exact taps (no zero taps of a padded sub-pixel kernel). Input-stationary: for
// one kernel row ky, an input pixel's k*Co products (kx, c) land on k*Co contiguous floats of a
// channels_last output row, so the kernel runs a [pixels x C] x [C x L] product in registers
// (L = k*Co rounded up to 8 lanes: 27 of 32 used for 9x9 onto RGB; broadcasts of x, no
// horizontal sums) and adds each pixel's lanes into a per-thread row buffer. Output row oy takes
// the x rows iy with oy + pad - s*iy in [0, k); neighbouring pixels add into different buffers
// (pixel ix into buffer ix % nb), which are summed with the bias into y.
struct ConvTAvx2Args {
  const float* x = nullptr;   // [N, H, W, C] dense fp32
  int64_t N = 0, H = 0, W = 0, C = 0;
  const float* w = nullptr;   // packed [k][C][L] fp32, 32-byte aligned:
                              // w[ky][c][kx*Co + o] = weight[c][o][ky][kx], zero past k*Co
  int64_t L = 0;              // k*Co rounded up to a multiple of 8
  const float* bias = nullptr;  // [Co] or null
  int64_t Co = 0, k = 0, s = 1, pad = 0;
  int64_t Ho = 0, Wo = 0;     // (H-1)*s - 2*pad + k + output_padding, 0 <= output_padding < s
  float* y = nullptr;         // [N, Ho, Wo, Co] dense fp32
  int nthreads = 1;
};
int conv_transpose_avx2_forward(const ConvTAvx2Args& a);
// The same on AVX-512 (16-lane vectors): a.L is k*Co rounded up to 16, the taps packed alike.
bool conv_avx512_available();
int conv_transpose_avx512_forward(const ConvTAvx2Args& a);

// The same transposed conv in bf16 on AVX512-BF16 (vdpbf16ps: two input channels per lane, fp32
// sums in the registers and row buffers, one rounding to bf16 per output value). Same geometry
// and rules as ConvTAvx2Args; the taps are packed in input-channel pairs.
struct ConvTBf16Args {
  const uint16_t* x = nullptr;  // [N, H, W, C] dense bf16
  int64_t N = 0, H = 0, W = 0, C = 0;
  const uint16_t* w = nullptr;  // packed [k][ceil(C/2)][L][2] bf16:
                                // w[ky][c/2][kx*Co + o][c%2] = weight[c][o][ky][kx], zero past
                                // k*Co and for the pad channel of an odd C
  int64_t L = 0;                // k*Co rounded up to a multiple of 16
  const float* bias = nullptr;  // [Co] fp32 or null
  int64_t Co = 0, k = 0, s = 1, pad = 0;
  int64_t Ho = 0, Wo = 0;
  uint16_t* y = nullptr;        // [N, Ho, Wo, Co] dense bf16
  int nthreads = 1;
};
// True when the CPU has AVX512-F/BW/VL + AVX512-BF16 (and this build has the code).
bool conv_bf16_available();
int conv_transpose_bf16_forward(const ConvTBf16Args& a);
const char* conv_avx2_error_message(int code);

}  // namespace sk
