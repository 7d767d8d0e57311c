// Batched fp32 GEMM for the Winograd rounds on AVX-512 (internal API):
// M[b] = V[b] U[b] for the 36 transform points b. Plain C++17, no Python; the SIMD code sits
// behind runtime checks.
//
// Winograd F(4x4, 3x3) turns SlimCAE's 5x5/2 layers into 36 independent products
// [tiles x K] x [K x N] (K = s*s*C_in, N = r*r*C_out: 192 x 48 at w=48). General GEMM
// libraries run these narrow products well below the FMA peak; here each product is cut into
// register micro-tiles held for the whole K: 8 rows x 48 columns (24 zmm accumulators; a row of
// U as three 16-lane loads, one broadcast of V per row, three FMAs). The last vector of a row of
// U / M is masked, so any N works; nothing outside M is written. The AVX2 variant (4 x 24 ymm
// tiles) measured 1.07-1.22x torch.bmm at N = 48 but 0.9-1.0x at 72-192 on a Zen 4 running
// AVX2 code, and 1.0x at every width on a Zen 3 (both at its FMA peak): the Winograd convs use
// it on CPUs without AVX-512 because it is a call of these kernels, which a CPU replay
// (slimkernels/cpu_replay.py) can repeat, where torch.bmm is not.
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

// The same products in bf16 (AVX512-BF16: vdpbf16ps, fp32 sums in blocks as above).
struct BatchedGemmBf16Args {
  const uint16_t* V = nullptr;  // [B][T][K] contiguous bf16
  const uint32_t* U = nullptr;  // [B][ceil(K/2)][N]: two bf16 each, k = 2p in the low half,
                                // k = 2p + 1 in the high one (zero past an odd K)
  float* M = nullptr;           // [B][T][N] contiguous, written (not accumulated)
  int64_t B = 0, T = 0, K = 0, N = 0;
  int nthreads = 1;
};

// True when the CPU has AVX-512F (and this build has the code).
bool batched_gemm_avx512_available();
// 0 on success; else an error code (batched_gemm_error_message).
int batched_gemm_avx512(const BatchedGemmArgs& a);
// The same products on AVX2 + FMA (4 x 24 ymm tiles): for CPUs without AVX-512.
bool batched_gemm_avx2_available();
int batched_gemm_avx2(const BatchedGemmArgs& a);
// True when the CPU has AVX512-BF16 (conv_bf16_available) and this build has the code.
bool batched_gemm_bf16_available();
int batched_gemm_bf16(const BatchedGemmBf16Args& a);
const char* batched_gemm_error_message(int code);

}  // namespace sk
