// Fused GDN / IGDN forward in fp32 on AVX2 + FMA, for CPUs without AMX (e.g. AMD EPYC Zen 2/3):
// y = x / sqrt(beta + gamma x^2)  (IGDN: x * sqrt(...)), fp32 or bf16 x (channels_last or NCHW),
// one pass.
// Plain C++17, no Python. The AVX2 code sits in functions with a target attribute and runs only
// where gdn_avx2_available() says so; the file builds with default compiler flags.
#pragma once
#include <cstdint>

#include "gdn_cpu.hpp"  // GdnArgs

namespace sk {

// The CPU has AVX2 and FMA (and the OS saves the ymm state). Checked once, cached.
bool gdn_avx2_available();

// Covers: xdtype kF32 or kBF16 (bf16 x is widened exactly per block, computed in fp32 like fp32 x,
// y rounded to bf16 to nearest even), channels_last [N*HW, C] or NCHW [N, C, HW] (a.channels_last);
// gamma / beta fp32 or bf16, any strides;
// SlimGDN+ scalars. fp32 arithmetic: n = beta + sum_i gamma[o, i] * x_i^2 accumulated
// with FMA in fp32 (the order: i ascending), then 1/sqrt(n) (IGDN: sqrt(n)) from the hardware
// estimate and one Newton step (a few ulp; relative error < 1e-6 vs float64).
// Returns 0 on success, else an error code (gdn_avx2_error_message).
int gdn_forward_avx2(const GdnArgs& a);
const char* gdn_avx2_error_message(int code);

// floats of gamma_k's packed panels for C active channels (C >= 1).
int64_t gdn_avx2_packed_size(int64_t C);
// Packs gamma_k (from a.gamma, a.gdtype, a.g_s0, a.g_s1, a.C, a.gamma_scale, a.gamma_bias) into
// out[gdn_avx2_packed_size(a.C)] (32-byte aligned): what gdn_forward_avx2 builds on every call.
// Passed back as GdnArgs::packed_gamma (same gamma values, C and scalars), the forward skips
// that step. Returns 0 on success, else an error code.
int gdn_pack_gamma_avx2(const GdnArgs& a, float* out);

}  // namespace sk
