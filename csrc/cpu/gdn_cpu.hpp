// Fused GDN / IGDN forward on CPU: y = x * rsqrt(beta + gamma x^2)  (IGDN: x * sqrt(...)).
// Plain C++17, no Python: raw pointers, strides and sizes. The channel mixing runs on AMX-BF16
// tiles with fp32 accumulation; everything else (x^2, rsqrt/sqrt, the product) is fused around
// it, so x is read once and y written once. Built with default compiler flags: the AMX /
// AVX-512 code sits in functions with target attributes and is only called when the CPU and the
// OS support it (see amx_available()).
#pragma once
#include <cstdint>

namespace sk {

enum DType : int { kF32 = 0, kBF16 = 1 };

struct GdnArgs {
  const void* x = nullptr;  // activations, dtype xdtype
  void* y = nullptr;        // output, same dtype and layout as x
  int xdtype = kF32;
  int64_t N = 0, C = 0, HW = 0;  // batch, active channels, pixels per image
  // true: x is [N*HW, C] (channels_last, channel stride 1, pixel stride C);
  // false: x is [N, C, HW] contiguous (NCHW).
  bool channels_last = false;
  const void* gamma = nullptr;  // [C_max, C_max] parameter, read at [o * g_s0 + i * g_s1]
  int gdtype = kF32;
  int64_t g_s0 = 0, g_s1 = 1;
  const void* beta = nullptr;  // [C_max] parameter, read at [c * b_s0]
  int bdtype = kF32;
  int64_t b_s0 = 1;
  // SlimGDN+ per-width affine maps: gamma_k = gamma * gamma_scale + gamma_bias, likewise beta
  double gamma_scale = 1.0, gamma_bias = 0.0, beta_scale = 1.0, beta_bias = 0.0;
  bool inverse = false;
  // Channel-mixing precision: 1 = one bf16 product (bf16 inputs); 3 = "bf16x3": z and gamma split
  // into bf16 hi + lo parts, n = z_hi g_hi + z_lo g_hi + z_hi g_lo in fp32 (fp32 inputs).
  int splits = 1;
  int nthreads = 1;
  // Optional (AVX2 kernel, fp32 channels_last only; nullptr: not written): the factor of y = x *
  // r per element, r = 1/sqrt(n) (GDN) or sqrt(n) (IGDN), [N*HW, C] fp32 like y (for a backward).
  float* r = nullptr;
  // Optional (nullptr: packed in the call): gamma_k already packed for this gamma, C and gamma
  // scalars by gdn_pack_gamma_bf16 (AVX512-BF16 kernel, bf16 panels), gdn_pack_gamma_avx2
  // (AVX2 kernel, fp32 panels, 32-byte aligned) or gdn_pack_gamma_amx (the AMX kernel, for
  // these splits and this layout too).
  const void* packed_gamma = nullptr;
};

// CPU has AMX-TILE, AMX-BF16, AVX512F/BW/VL/DQ and AVX512-BF16, the OS enables the tile state,
// and (Linux) the process got permission to use it. Checked once, cached.
bool amx_available();

// Runs the fused forward. Returns 0 on success, else an error code (see gdn_error_message).
int gdn_forward(const GdnArgs& a);

// uint16 elements of gdn_pack_gamma_amx's output for C active channels (C >= 1) and `splits`.
int64_t gdn_amx_packed_size(int64_t C, int splits);
// Packs gamma_k (from a.gamma, a.gdtype, a.g_s0, a.g_s1, a.C, a.gamma_scale, a.gamma_bias,
// a.splits and a.channels_last; the other fields unused) into out[gdn_amx_packed_size(a.C,
// a.splits)] as gdn_forward builds it: passed back as GdnArgs::packed_gamma (same gamma values,
// C, scalars, splits and layout), the forward skips its own packing and the check of its
// per-thread cache (one packed gamma per thread: the layers of a transform alternate, so every
// call repacked, ~24 us at C = 192). Returns 0 on success, else an error code.
int gdn_pack_gamma_amx(const GdnArgs& a, uint16_t* out);
const char* gdn_error_message(int code);

// GDN / IGDN in place on rows of bf16 channels inside another AMX kernel (the fused epilogue of
// conv_amx_forward): x [rows, C] bf16 (row stride C) is replaced by y, computed as gdn_forward
// computes a bf16 channels_last x with splits 1 (the same bits). Only for amx_available(), from
// a thread whose tiles are configured (amx::config_full). The caller owns the scratch:
// z [32 x round_up(C, 32)] bf16 with its columns past C zero, n [32 x round_up(C, 16)] fp32, both
// 64-byte aligned. gpack: gamma_k from gdn_pack_gamma_amx (C, splits 1, channels_last); beta:
// the effective beta, fp32 [round_up(C, 16)].
struct GdnRows {
  int64_t C = 0;
  const uint16_t* gpack = nullptr;
  const float* beta = nullptr;
  bool inverse = false;
};
void gdn_rows_bf16(const GdnRows& g, uint16_t* x, int64_t rows, uint16_t* z, float* n);

}  // namespace sk
