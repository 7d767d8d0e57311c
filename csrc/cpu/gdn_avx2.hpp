// Fused GDN / IGDN forward in fp32 on AVX2 + FMA, for CPUs without AMX (e.g. AMD EPYC Zen 2/3):
// y = x / sqrt(beta + gamma x^2)  (IGDN: x * sqrt(...)), fp32 or bf16 x (channels_last or NCHW),
// one pass.
// Plain C++17, no Python. The AVX2 code sits in functions with a target attribute and runs only
// where gdn_avx2_available() says so; the file builds with default compiler flags.
#pragma once
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

}  // namespace sk
