// Small helpers shared by the CPU kernels (internal; no Python, no intrinsics).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "gdn_cpu.hpp"  // kBF16, GdnArgs

namespace sk {
namespace detail {

// N, C, H, W all >= 0 with a product (the element count, into *count) inside int64: the
// raw-pointer kernels' size check (a product that wrapped had read as 0 elements, "ok", or as a
// wrong count).
inline bool sizes_ok(int64_t N, int64_t C, int64_t H, int64_t W, int64_t* count) {
  return N >= 0 && C >= 0 && H >= 0 && W >= 0 && !__builtin_mul_overflow(N, C, count) &&
         !__builtin_mul_overflow(*count, H, count) && !__builtin_mul_overflow(*count, W, count);
}

// bf16 bits -> fp32 (exact).
inline float bf16_to_float(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Element idx of a parameter array stored as fp32 or bf16 (widened exactly).
inline float load_param(const void* p, int dtype, int64_t idx) {
  if (dtype == kBF16) return bf16_to_float(static_cast<const uint16_t*>(p)[idx]);
  return static_cast<const float*>(p)[idx];
}

// fp32 -> bf16 bits, round to nearest even as torch does; NaN stays a (quiet) NaN.
inline uint16_t to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// The effective (SlimGDN+) parameters of a GDN call in fp32, as every GDN kernel uses them:
// gamma_k[o, i] = gamma[o, i] * gamma_scale + gamma_bias (0 outside [0, C)^2) and
// beta_k[c] = beta[c] * beta_scale + beta_bias (pad: 1, never stored, keeps sqrt(n) finite).
inline float gdn_gamma(const GdnArgs& a, int64_t o, int64_t i) {
  return o < a.C && i < a.C ? load_param(a.gamma, a.gdtype, o * a.g_s0 + i * a.g_s1) *
                                  static_cast<float>(a.gamma_scale) +
                                  static_cast<float>(a.gamma_bias)
                            : 0.0f;
}
inline float gdn_beta(const GdnArgs& a, int64_t c) {
  return c < a.C ? load_param(a.beta, a.bdtype, c * a.b_s0) * static_cast<float>(a.beta_scale) +
                       static_cast<float>(a.beta_bias)
                 : 1.0f;
}

struct AlignedFree {
  void operator()(void* p) const { std::free(p); }
};
// An array from std::aligned_alloc, freed with std::free.
template <class T>
using Buf = std::unique_ptr<T[], AlignedFree>;

// n elements (uninitialized), 64-byte aligned; empty when out of memory.
template <class T>
Buf<T> alloc_aligned(int64_t n) {
  const int64_t bytes = (std::max<int64_t>(n, 1) * static_cast<int64_t>(sizeof(T)) + 63) / 64 * 64;
  return Buf<T>(static_cast<T*>(std::aligned_alloc(64, static_cast<size_t>(bytes))));
}

}  // namespace detail
}  // namespace sk
