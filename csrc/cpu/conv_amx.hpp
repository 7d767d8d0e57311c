// Direct AMX-BF16 convolution for narrow channels_last bf16 activations (no-grad inference path).
// Plain C++17 on raw pointers. The caller (slimkernels/ops/conv.py) pads x spatially and in
// channels and prepacks the weight into VNNI tiles; this file only runs the tile loop and the
// epilogue (bias, bf16 rounding, optional sub-pixel scatter of phase channels).
#pragma once
#include <cstdint>

namespace sk {

struct ConvAmxArgs {
  // x: [N, Hp, Wp, C] bf16 contiguous, already zero padded. The GEMM's K runs over the kw*C
  // contiguous elements (kx, c) of one tap row in chunks of 32 (KC = ceil(kw*C/32)); the last
  // chunk may read past the row's taps (into finite data: the weights there are zero), so every
  // 16-pixel block of output columns (Wq = round_up(Wo, 16)) must stay in its row:
  // Wp*C >= (Wq - 1)*stride*C + 32*KC.
  const uint16_t* x = nullptr;
  int64_t N = 0, Hp = 0, Wp = 0, C = 0;
  // w: [kh, KC, CoP/16, 16, 32] bf16 VNNI tiles: element [ky, kc, nb, r, 2j+e] is
  // W[nb*16+j, c, ky, kx] with kx*C + c = kc*32+2r+e (zero past kw*C and past Co);
  // CoP = round_up(Co, 16).
  const uint16_t* w = nullptr;
  int64_t kh = 0, kw = 0, stride = 1;
  int64_t Co = 0;             // conv output channels (phases * Cy when phase > 1)
  const float* bias = nullptr;  // [Co] fp32 or nullptr
  int64_t Ho = 0, Wo = 0;     // conv output grid
  // y: bf16 channels_last [N, Hy, Wy, Cy] contiguous. phase == 1: Cy == Co, Hy == Ho, Wy == Wo.
  // phase == s > 1 (sub-pixel transposed conv): channel ((ry*s + rx)*Cy + c) of conv pixel
  // (qy, qx) goes to y[qy*s+ry, qx*s+rx, c] when inside [Hy, Wy].
  uint16_t* y = nullptr;
  int64_t Hy = 0, Wy = 0, Cy = 0, phase = 1;
  int nthreads = 1;
};

// 0 on success, else an error code (conv_amx_error_message).
int conv_amx_forward(const ConvAmxArgs& a);
const char* conv_amx_error_message(int code);

}  // namespace sk
