// Quantization of latents to coder symbols and back, in one pass each, with the layout change
// between the transforms (channels_last activations) and the coder (NCHW symbol order) fused in.
// Plain C++17 on raw pointers; the AVX-512 and AVX2 code sits in functions with target
// attributes: AVX-512 when the CPU has AVX512F + AVX512BW, else AVX2 + FMA
// (latents_simd_available(): one of the two).
#pragma once
#include <cstdint>

namespace sk {

struct QuantizeArgs {
  // y: [N, C, H, W] latents, fp32 (ydtype kF32) or bf16 (kBF16), dense channels_last
  // (element (n, c, h, w) at ((n*H + h)*W + w)*C + c) or contiguous NCHW.
  const void* y = nullptr;
  int ydtype = 0;
  bool channels_last = true;
  int64_t N = 0, C = 0, H = 0, W = 0;
  const float* medians = nullptr;  // [C]
  // out: int32 [N, C, H, W] contiguous: round_half_even(float(y) - medians[c]) converted as x86's
  // cvttss2si does (NaN and values outside the int32 range give INT32_MIN), which is what
  // torch's float -> int32 cast gives on this CPU.
  int32_t* out = nullptr;
  int nthreads = 1;
  // optional output: the number of INT32_MIN results (NaN, inf or |y - median| >= 2^31, or
  // exactly -2^31), counted in the same pass so callers need no second scan of `out`.
  int64_t* invalid = nullptr;
};

struct DequantizeArgs {
  // sym: int32 [N, C, H, W] contiguous; out: [N, C, H, W] dense channels_last,
  // out = float(sym) + medians[c] (exactly torch's int32 + float32 -> float32 addition), fp32
  // (out_bf16 = 0) or rounded to bf16 (out_bf16 = 1: round to nearest even, as torch's
  // .to(torch.bfloat16) of that float; finite inputs, so no NaN case).
  const int32_t* sym = nullptr;
  int64_t N = 0, C = 0, H = 0, W = 0;
  const float* medians = nullptr;  // [C]
  void* out = nullptr;
  int out_bf16 = 0;
  int nthreads = 1;
};

// The CPU has AVX512F + AVX512BW, or AVX2 + FMA (checked once).
bool latents_simd_available();

// 0 on success; else an error code (latents_error_message).
int quantize_latents(const QuantizeArgs& a);
int dequantize_latents(const DequantizeArgs& a);
const char* latents_error_message(int code);

}  // namespace sk
