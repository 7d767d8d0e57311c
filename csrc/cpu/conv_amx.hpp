// Direct AMX-BF16 convolution for narrow channels_last activations (no-grad inference path).
// Plain C++17 on raw pointers. The caller (slimkernels/ops/conv.py) prepacks the weight into VNNI
// tiles; this file pads (and casts) x into a per-thread buffer, runs the tile loop and the
// epilogue (bias, bf16 rounding, optional GDN / IGDN, optional sub-pixel scatter of phase
// channels).
#pragma once
#include <cstdint>

#include "gdn_cpu.hpp"  // GdnArgs

namespace sk {

struct ConvAmxArgs {
  // x: [N, H, W, C] dense channels_last, fp32 (xdtype kF32) or bf16 (kBF16), NOT padded. The
  // kernel copies it (rounding fp32 to bf16, RNE) into a zero-bordered bf16 buffer [N, Hp, Wp, C]
  // owned by the calling thread, with x's pixel (h, w) at (pad_top + h, pad_left + w) (with
  // in_place only the parts the border work groups read; the others read x itself). The GEMM's
  // K runs over the kw*C contiguous elements (kx, c) of one tap row of that buffer in chunks of
  // 32 (KC = ceil(kw*C/32)); the last chunk may read past the row's taps (into zeros or finite
  // data: the weights there are zero), so every 16-pixel block of output columns
  // (Wq = round_up(Wo, 16)) must stay in its row: Wp*C >= (Wq - 1)*stride*C + 32*KC.
  const void* x = nullptr;
  int xdtype = 1;
  int64_t N = 0, H = 0, W = 0, C = 0;
  int64_t Hp = 0, Wp = 0, pad_top = 0, pad_left = 0;
  // Cp: the padded buffer's channels per pixel (0: C; else >= C, the channels C..Cp-1 zero): a
  // multiple of 32 puts every tile row of a stride-1 conv on its own cache lines (C = 72: rows
  // 144 bytes apart, 3 of 4 straddling two lines). Everything below that says C of the buffer
  // or of the weights' K means Cp then (w packed for Cp input channels, zero weights past C).
  int64_t Cp = 0;
  // w: [CoP/16, kh, KC, 16, 32] bf16 VNNI tiles (all K chunks of one channel tile contiguous:
  // the order the kernel streams them): element [nb, ky, kc, r, 2j+e] is
  // W[nb*16+j, c, ky, kx] with kx*C + c = kc*32+2r+e (zero past kw*C and past Co);
  // CoP = round_up(Co, 16).
  const uint16_t* w = nullptr;
  // tile_nz: [CoP/16, kh, KC] bytes, 0 where w's B tile is all zero (its products are skipped:
  // the taps a sub-pixel phase does not use); nullptr: every tile is used.
  const uint8_t* tile_nz = nullptr;
  int64_t kh = 0, kw = 0, stride = 1;
  int64_t Co = 0;             // conv output channels (phases * Cy when phase > 1)
  const float* bias = nullptr;  // [Co] fp32 or nullptr
  int64_t Ho = 0, Wo = 0;     // conv output grid
  // y: bf16 channels_last [N, Hy, Wy, Cy] contiguous. phase == 1: Cy == Co, Hy == Ho, Wy == Wo.
  // phase == s > 1 (sub-pixel transposed conv): channel ((ry*s + rx)*Cy + c) of conv pixel
  // (qy, qx) goes to y[qy*s+ry, qx*s+rx, c] when inside [Hy, Wy].
  uint16_t* y = nullptr;
  int64_t Hy = 0, Wy = 0, Cy = 0, phase = 1;
  // Or (y nullptr, no GDN): the output as float32 [N, Hy, Wy, Cy] at yf, each value the bf16
  // output's (the same rounding) widened and clamped to [out_lo, out_hi] (NaN kept): a
  // synthesis transform's last layer writing the image itself (decompress), as y followed by
  // bf16_to_image (image_io.hpp) would.
  float* yf = nullptr;
  float out_lo = 0.0f, out_hi = 1.0f;
  // Optional GDN / IGDN of every output pixel's Cy channels, fused into the epilogue (nullptr:
  // none): y = gdn(bf16(conv + bias)), the same bits as this kernel's y followed by gdn_forward
  // on it (bf16 channels_last, splits 1). Its parameters as gdn_forward takes them: packed_gamma
  // (required here: gamma_k for C = Cy packed by gdn_pack_gamma_amx, splits 1, channels_last),
  // beta, bdtype, b_s0, beta_scale, beta_bias and inverse; its other fields are not read. With
  // the window layout it runs band by band on y once a band's work groups are done (in place,
  // the band's output still in L2), else in each work group's epilogue (a group buffer in L1).
  const GdnArgs* gdn = nullptr;
  // Work groups of 4 pixel blocks that share every weight tile: 2 = 2 output rows x 2 column
  // blocks (A data of neighbouring rows reused from L1), 1 = 4 blocks of one row.
  int group_rows = 2;
  // Allow the window layout where it applies (a conv whose tap row fits one
  // K chunk, kw*C <= 32, and whose pixel step stride*C*2 bytes is not a multiple of 64, e.g. a
  // 9x9/4 conv from an RGB image): instead of the zero-bordered copy of x, each worker writes,
  // band by band of output rows, one 64-byte row per (padded input row, output column): the tap
  // row's kw*C elements, zeros after. A block's A tile is then 1 KB, contiguous and aligned,
  // instead of 16 rows straddling cache lines. The same products (the elements past kw*C meet
  // zero weights either way), so the same output for finite x; a non-finite x only reaches the
  // outputs whose taps read it (the plain layout's last chunk also multiplies the zero weights
  // with up to 31 - (kw*C - 1) % 32 elements of the next pixels).
  bool windows = true;
  // Allow the work groups whose every tap (the last K chunk's over-read included) lies inside x
  // to read their A tiles from x itself (bf16 x, no window layout, Cp 0 or C): the padded copy
  // then holds only the rows and columns the border groups read. The same values, so the same
  // output; it saves most of the copy (~0.2 of a 48-channel 5x5/2 conv on 2 threads).
  bool in_place = true;
  // Run pairs of output channel tiles with the same K chunks (all of them, but the sub-pixel
  // phases' skipped tiles) together: per chunk, each block's A tile is loaded once for both
  // tiles' products (2 blocks x 2 channel tiles in the C tiles) instead of once per tile. The
  // same products in the same order, so the same output.
  bool pair_tiles = true;
  // Check every value of an fp32 x as it is read (check_lo <= check_hi; the default: none): a
  // value below check_lo or above check_hi, or NaN, makes the call return kConvRangeError (its
  // output is written all the same). The values are compared where the kernel reads them (the
  // window layout's build, the padded copy), and where the windows do not read all of x (a
  // geometry that skips rows or columns) the rest is scanned after: every value of x is
  // checked. compress's image range check, without a pass of its own over the image.
  float check_lo = 1.0f, check_hi = 0.0f;
  // Optional (nullptr: none): stats[0] = the work groups that read x in place, stats[1] = all
  // work groups, stats[2] = the output channel tiles each group runs in pairs (pair_tiles; for
  // tests and benchmarks).
  int64_t* stats = nullptr;
  int nthreads = 1;
};

// The code of a value of x outside [check_lo, check_hi] or NaN (ConvAmxArgs::check_lo).
constexpr int kConvRangeError = 4;

// 0 on success, else an error code (conv_amx_error_message).
int conv_amx_forward(const ConvAmxArgs& a);
const char* conv_amx_error_message(int code);

}  // namespace sk
