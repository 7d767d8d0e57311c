// Batched fp32 GEMM on AVX-512 for the Winograd rounds (internal API): M[b] = V[b] U[b] for the
// 36 transform points b. Plain C++17, no Python; the AVX-512 code sits behind a runtime check.
//
// Winograd F(4x4, 3x3) turns SlimCAE's 5x5/2 layers into 36 independent products
// [tiles x K] x [K x N] (K = s*s*C_in, N = r*r*C_out: 192 x 48 at w=48). General GEMM
// libraries run these narrow products at about half of the FMA peak; here each product is cut
// into micro-tiles of 8 rows x 48 columns held in 24 zmm accumulators for the whole K (a row of
// U: three 16-lane loads, then one broadcast of V per row and three FMAs), which keeps the FMA
// units busy for any N (the last 16-lane vector of a row masked).
#pragma once
#include <cstdint>

namespace sk {

struct BatchedGemmArgs {
  const float* V = nullptr;  // [B][T][K] contiguous
  const float* U = nullptr;  // [B][K][N] contiguous
  float* M = nullptr;        // [B][T][N] contiguous, written (not accumulated)
  int64_t B = 0, T = 0, K = 0, N = 0;
  int nthreads = 1;
};

// True when the CPU has AVX-512F (and this build has the code).
bool batched_gemm_avx512_available();
// 0 on success; else an error code (batched_gemm_error_message).
int batched_gemm_avx512(const BatchedGemmArgs& a);
const char* batched_gemm_error_message(int code);

}  // namespace sk
