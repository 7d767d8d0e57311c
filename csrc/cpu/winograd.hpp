// Winograd F(4x4, 3x3) transforms for fp32 convolutions on AVX2 + FMA CPUs (internal API).
//
// A stride-s conv whose kernel spans at most 3 phase taps (k <= 3s: SlimCAE's 5x5/2 and 9x9/4
// layers) is a stride-1 3x3 correlation over the s*s polyphase images of x; a stride-s
// transposed conv with a 3-tap sub-pixel plan is a stride-1 3x3 correlation onto s*s output
// phases. Either way the work is Y = A^T [ (G g G^T) . (B^T d B) ] A per 4x4 output tile: the
// input transform below writes V = B^T d B for every tile, a batched GEMM (done by the caller)
// multiplies V by the transformed weights U, and the output transform writes A^T M A.
// Interpolation points 0, 1, -1, 1/2, -1/2, inf (max relative error ~1e-5 against float64, as
// direct fp32 summation order effects; the +-2 points of Lavin & Gray are ~4x worse).
// Plain C++17, no Python; AVX2 code only behind a runtime check (gdn_avx2_available()).
#pragma once
#include <cstdint>

namespace sk {

// Input transform. x: [N, H, W, C] dense fp32 or bf16 (channels_last). For tile t = (n, ty, tx)
// (t = (n * th + ty) * tw + tx) and phases (p, q) in [0, s)^2 the 6x6 input patch is
//   d[i][j][(p*s + q)*C + c] = x[n][s*(4*ty + i) + p - P][s*(4*tx + j) + q - P][c]
// (zero outside x), and V[(u*6 + v)][t][k] = (B^T d B)[u][v][k] with K = s*s*C.
struct WinoInArgs {
  const float* x = nullptr;
  const uint16_t* x_bf16 = nullptr;  // or x in bf16 (exactly one of the two; widened exactly)
  int64_t N = 0, H = 0, W = 0, C = 0;
  int64_t s = 1, P = 0;       // phases per axis, offset of the first row / column
  int64_t th = 0, tw = 0;     // tiles per axis
  int64_t t_begin = 0;        // transform tiles [t_begin, t_begin + t_count) of all N*th*tw;
  int64_t t_count = 0;        // 0: all of them
  float* V = nullptr;         // [36][t_count][s * s * C], tile t at row t - t_begin
  uint16_t* V_bf16 = nullptr;  // or V in bf16 (exactly one of the two; rounded to nearest even)
  int nthreads = 1;
};

// Output transform. M: [36][t_count][r*r*Co] (tiles t_begin.., phase-major channels (ry, rx, co));
// writes y[n][r*(4*ty + i) + ry][r*(4*tx + j) + rx][co] = (A^T M A)[i][j] + bias[co] for every
// position inside [Ho, Wo]. y: [N, Ho, Wo, Co] dense fp32 (channels_last), or bf16 (rounded to
// nearest even) in y_bf16.
struct WinoOutArgs {
  const float* M = nullptr;
  const float* bias = nullptr;  // [Co] or null
  int64_t N = 0, th = 0, tw = 0, Co = 0;
  int64_t r = 1;                // output phases per axis
  int64_t Ho = 0, Wo = 0;
  int64_t t_begin = 0, t_count = 0;  // as in WinoInArgs (0: all N*th*tw tiles)
  float* y = nullptr;
  uint16_t* y_bf16 = nullptr;  // or y in bf16 (exactly one of the two)
  int nthreads = 1;
};

// Weight transform. g: [9][n] fp32, the 3x3 taps (a*3 + b) of n kernels (a column each);
// G: [6][3] fp32 row-major; writes U[(i*6 + j)][c] = (G g_c G^T)[i][j] for every column c.
// For weights that change every training step (the inference caches transform once, in
// float64). U: [36][n] fp32.
struct WinoWeightArgs {
  const float* g = nullptr;
  const float* G = nullptr;
  int64_t n = 0;
  float* U = nullptr;
  int nthreads = 1;
};

// Weight transform straight from a conv / transposed-conv weight (training: no copies before
// it). w: [A][B][k][k] fp32 contiguous. Column blocks: "rows" c in [0, R) and "lanes" o in [0, L),
// kernel (c, o) at w + c*Ic + o*Il (its k*k taps contiguous). For every phase ph in [0, P) the
// 3x3 Winograd kernel takes tap (a, b) from kernel tap idx[ph*9 + a*3 + b] (-1: zero), and
// U[ij][...] = (G g G^T)[i][j] is written at U + ij*S36 + ph*Sph + c*Sc + o.
//   conv [Co, Ci, k, k], stride s:  R = Ci, L = Co, Ic = k*k, Il = Ci*k*k, P = s*s,
//       U [36][P*Ci][Co]: S36 = P*Ci*Co, Sph = Ci*Co, Sc = Co;
//   transposed [Ci, Co, k, k]:      R = Ci, L = Co, Ic = Co*k*k, Il = k*k, P = s*s,
//       U [36][Ci][P*Co]: S36 = Ci*P*Co, Sph = Co, Sc = P*Co.
struct WinoKernelWeightArgs {
  const float* w = nullptr;
  int64_t kk = 0;               // k*k
  int64_t R = 0, L = 0, Ic = 0, Il = 0;
  int64_t P = 0;
  const int32_t* idx = nullptr;  // [P][9]
  const float* G = nullptr;      // [6][3]
  float* U = nullptr;
  int64_t S36 = 0, Sph = 0, Sc = 0;
  int nthreads = 1;
};

// Inverse weight transform (weight gradients by F(3x3, 4x4)): M [36][n] fp32 (the 6x6 products
// summed over tiles, one column per (input channel, output channel) pair), G [6][3]; writes
// (G^T M_col G)[a][b] straight into the final weight gradient out (no permuting copy):
// column col = kidx * cp + j, kidx = ph1 * c1 + i1, j = ph2 * c2 + i2 (phase ph = ph1 * (cp /
// c2) + ph2; one of ph1, ph2 is always 0), and value t = a*3 + b goes to
// out[i1 * s1 + i2 * s2 + taps[ph * 9 + t]] where that tap is >= 0 (dropped where -1). The caller
// guarantees that no two (ph, t) share a tap and zeroes taps that none covers.
struct WinoWeightGradArgs {
  const float* M = nullptr;
  const float* G = nullptr;
  int64_t n = 0;
  float* out = nullptr;
  int nthreads = 1;
  const int32_t* taps = nullptr;  // [phases][9] (required)
  int64_t cp = 0, c1 = 0, c2 = 0, s1 = 0, s2 = 0;
};

// Output-gradient transform of the weight gradient (F(3x3, 4x4)): gy [N, Ho, Wo, Co] dense fp32
// (channels_last) on s x s output phases (s = 1 for a conv): phase (ry, rx) is the grid
// q -> gy[s*qy + ry][s*qx + rx], Qh = ceil(Ho / s) rows, in 4x4 tiles (tile t = (n*th + ty)*tw +
// tx, zero past the image); writes U[ij][t][(ry*s + rx)*Co + co] = (A g A^T)[i][j], A = AT^T.
struct WinoGradTilesArgs {
  const float* gy = nullptr;
  int64_t N = 0, Ho = 0, Wo = 0, Co = 0, s = 1;
  int64_t th = 0, tw = 0;
  const float* AT = nullptr;  // [4][6]
  float* U = nullptr;         // [36][N*th*tw][s*s*Co]
  int nthreads = 1;
};

// Return 0 on success, else an error code (winograd_error_message).
int winograd_input_f43(const WinoInArgs& a);
int winograd_output_f43(const WinoOutArgs& a);
int winograd_weight_f43(const WinoWeightArgs& a);
int winograd_kernel_weight_f43(const WinoKernelWeightArgs& a);
int winograd_weight_grad_f43(const WinoWeightGradArgs& a);
int winograd_grad_tiles_f43(const WinoGradTilesArgs& a);
const char* winograd_error_message(int code);

}  // namespace sk
