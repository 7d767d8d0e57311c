// The image at the transforms' two ends, in one pass each: an fp32 RGB image to the bf16
// channels_last input of the analysis transform (or only its value range), and the synthesis
// transform's bf16 output to the fp32 image in [lo, hi]. Plain C++17 on raw pointers; AVX-512
// (F + BW) code in functions with target attributes, a scalar path elsewhere. Bit-exact with
// torch's own casts for finite values (round to nearest even, subnormals kept); NaN stays NaN.
#pragma once
#include <cstdint>

namespace sk {

struct ImageToBf16Args {
  // x: fp32 [N, C, H, W], contiguous NCHW (channels_last false) or dense channels_last (true).
  const float* x = nullptr;
  bool channels_last = false;
  int64_t N = 0, C = 0, H = 0, W = 0;
  // out: bf16 [N, C, H, W] dense channels_last (element (n, c, h, w) at ((n*H + h)*W + w)*C + c).
  uint16_t* out = nullptr;
  // range (optional, may be null): receives {min, max} over every value of x, both NaN when x
  // holds a NaN (in the same pass: compress checks the pixel range without a pass of its own).
  float* range = nullptr;
  int nthreads = 1;
};

struct Bf16ToImageArgs {
  // x: bf16 [n], out: fp32 [n] (any layout: element i to element i), out = min(max(x, lo), hi),
  // NaN kept. lo <= hi, both finite.
  const uint16_t* x = nullptr;
  float* out = nullptr;
  int64_t n = 0;
  float lo = 0.0f, hi = 1.0f;
  int nthreads = 1;
};

struct ValueRangeArgs {
  // x: fp32 [n] (any dense tensor's values, in memory order); range: receives {min, max} over
  // them, both NaN when x holds a NaN ({0, 0} for n == 0).
  const float* x = nullptr;
  int64_t n = 0;
  float* range = nullptr;
  int nthreads = 1;
};

// The CPU has AVX512F + AVX512BW (the vector paths; elsewhere scalar loops, correct but slower
// than torch's own casts).
bool image_io_simd_available();

// 0 on success; else an error code (image_io_error_message).
int image_to_bf16(const ImageToBf16Args& a);
int bf16_to_image(const Bf16ToImageArgs& a);
// ImageToBf16Args::range alone, without the cast (compress checks an image that the first conv
// reads as it is).
int value_range(const ValueRangeArgs& a);
const char* image_io_error_message(int code);

}  // namespace sk
