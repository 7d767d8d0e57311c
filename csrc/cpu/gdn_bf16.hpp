// Fused GDN / IGDN forward for bf16 channels_last x on AVX512-BF16 (CPUs without AMX, e.g. AMD
// Zen 4): y = x / sqrt(beta + gamma x^2) (IGDN: x * sqrt(...)) in one pass, at the precision
// of bf16 autocast (what oneDNN's bf16 1x1 convolution of the PyTorch path computes): z = x^2
// rounded to bf16, gamma rounded to bf16, n accumulated in fp32 by vdpbf16ps (two input
// channels per lane), 1/sqrt(n) (or sqrt(n)) in fp32, y rounded to bf16 once.
// Plain C++17, no Python; the AVX-512 code sits in functions with a target attribute and runs
// only where conv_bf16_available() (conv_avx2.hpp) says so.
#pragma once
#include <cstdint>

#include "gdn_cpu.hpp"  // GdnArgs

namespace sk {

// Covers: xdtype kBF16, channels_last [N*HW, C] x and y; gamma / beta fp32 or bf16, any
// strides; SlimGDN+ scalars (applied in fp32, then gamma rounded to bf16); splits and r unused
// (must be 1 / nullptr). Returns 0 on success, else an error code (gdn_bf16_error_message).
int gdn_forward_bf16(const GdnArgs& a);
const char* gdn_bf16_error_message(int code);

// uint16 elements of gamma_k's packed panels for C active channels (C >= 1).
int64_t gdn_bf16_packed_size(int64_t C);
// Packs gamma_k (from a.gamma, a.gdtype, a.g_s0, a.g_s1, a.C, a.gamma_scale, a.gamma_bias; the
// other fields unused) into out[gdn_bf16_packed_size(a.C)]: what gdn_forward_bf16 builds on
// every call. Passed back as GdnArgs::packed_gamma (same gamma values, C and scalars), the
// forward skips that step. Returns 0 on success, else an error code.
int gdn_pack_gamma_bf16(const GdnArgs& a, uint16_t* out);

}  // namespace sk
