// Thin pybind11 binding of the CPU kernel library (slimkernels._cpu_kernels). Pointers arrive as
// integers (tensor.data_ptr()) after the Python side validated device, dtype and layout; the
// GIL is released while the kernel runs.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "conv_amx.hpp"
#include "gdn_avx2.hpp"
#include "gdn_bf16.hpp"
#include "gdn_cpu.hpp"
#include "image_io.hpp"
#include "latents.hpp"
#include "ssim_filter.hpp"
#include "winograd.hpp"
#include "cpu_common.hpp"  // detail::sizes_ok
#include "conv_avx2.hpp"
#include "batched_gemm.hpp"
#include "coder_executor.hpp"

#include <type_traits>

namespace py = pybind11;

namespace {

// conv_amx_forward's range check failed (kConvRangeError): ImageRangeError, a ValueError.
struct ImageRangeError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// fn(a) with the GIL released; a non-zero code becomes a RuntimeError naming the binding and
// carrying msg(code), but `passed` (non-zero: a code the caller raises its own error for), which
// is returned.
template <class Args>
int call_released(int (*fn)(const Args&), const Args& a, const char* (*msg)(int),
                  const char* name, int passed = 0) {
  int rc;
  {
    py::gil_scoped_release release;
    rc = fn(a);
  }
  if (rc != 0 && rc != passed) {
    throw std::runtime_error(std::string("slimkernels._cpu_kernels.") + name + ": " + msg(rc));
  }
  return rc;
}


// The gamma fields of a GDN call (the kernels' and the bf16 packing's arguments).
void set_gamma(sk::GdnArgs& a, uintptr_t gamma, int gdtype, int64_t g_s0, int64_t g_s1,
               double gamma_scale, double gamma_bias) {
  a.gamma = reinterpret_cast<const void*>(gamma);
  a.gdtype = gdtype;
  a.g_s0 = g_s0;
  a.g_s1 = g_s1;
  a.gamma_scale = gamma_scale;
  a.gamma_bias = gamma_bias;
}

// The beta fields of a GDN call (the kernels' and the direct conv's fused GDN).
void set_beta(sk::GdnArgs& a, uintptr_t beta, int bdtype, int64_t b_s0, double beta_scale,
              double beta_bias) {
  a.beta = reinterpret_cast<const void*>(beta);
  a.bdtype = bdtype;
  a.b_s0 = b_s0;
  a.beta_scale = beta_scale;
  a.beta_bias = beta_bias;
}

// One binding body for both GDN kernels (AMX: sk::gdn_forward, AVX2 fp32:
// sk::gdn_forward_avx2): the same raw arguments, the GIL released while Fn runs.
template <int (*Fn)(const sk::GdnArgs&), const char* (*Msg)(int)>
void gdn_call_py(uintptr_t x, uintptr_t y, int xdtype, int64_t N, int64_t C, int64_t HW,
                 bool channels_last, uintptr_t gamma, int gdtype, int64_t g_s0, int64_t g_s1,
                 uintptr_t beta, int bdtype, int64_t b_s0, double gamma_scale, double gamma_bias,
                 double beta_scale, double beta_bias, bool inverse, int splits, int nthreads,
                 uintptr_t r, uintptr_t packed_gamma) {
  sk::GdnArgs a;
  a.x = reinterpret_cast<const void*>(x);
  a.y = reinterpret_cast<void*>(y);
  a.xdtype = xdtype;
  a.N = N;
  a.C = C;
  a.HW = HW;
  a.channels_last = channels_last;
  set_gamma(a, gamma, gdtype, g_s0, g_s1, gamma_scale, gamma_bias);
  set_beta(a, beta, bdtype, b_s0, beta_scale, beta_bias);
  a.inverse = inverse;
  a.splits = splits;
  a.nthreads = nthreads;
  a.r = reinterpret_cast<float*>(r);
  a.packed_gamma = reinterpret_cast<const void*>(packed_gamma);
  call_released(Fn, a, Msg, "GDN kernel");
}

// One binding body for both packings (sk::gdn_pack_gamma_bf16, sk::gdn_pack_gamma_avx2).
template <typename T, int (*Pack)(const sk::GdnArgs&, T*), const char* (*Msg)(int)>
void gdn_pack_py(uintptr_t gamma, int gdtype, int64_t g_s0, int64_t g_s1, int64_t C,
                 double gamma_scale, double gamma_bias, uintptr_t out) {
  sk::GdnArgs a;
  set_gamma(a, gamma, gdtype, g_s0, g_s1, gamma_scale, gamma_bias);
  a.C = C;
  const int rc = Pack(a, reinterpret_cast<T*>(out));
  if (rc != 0)
    throw std::runtime_error(std::string("slimkernels._cpu_kernels GDN gamma packing: ") +
                             Msg(rc));
}

}  // namespace

// -- direct AMX-BF16 convolution (csrc/cpu/conv_amx.hpp) ----------------------------------------

namespace {

void conv_amx_forward_py(uintptr_t x, int xdtype, int64_t N, int64_t H, int64_t W, int64_t C,
                         int64_t Hp, int64_t Wp, int64_t pad_top, int64_t pad_left, uintptr_t w,
                         uintptr_t tile_nz, int64_t kh, int64_t kw, int64_t stride, int64_t Co,
                         uintptr_t bias, int64_t Ho, int64_t Wo, uintptr_t y, int64_t Hy,
                         int64_t Wy, int64_t Cy, int64_t phase, int nthreads,
                         int group_rows, uintptr_t gdn_gamma, uintptr_t gdn_beta, int gdn_bdtype,
                         int64_t gdn_b_s0, double gdn_beta_scale, double gdn_beta_bias,
                         bool gdn_inverse, uintptr_t yf, double out_lo, double out_hi,
                         bool windows, int64_t Cp, bool in_place, uintptr_t stats,
                         bool pair_tiles, double check_lo, double check_hi) {
  sk::ConvAmxArgs a;
  a.x = reinterpret_cast<const void*>(x);
  a.xdtype = xdtype;
  a.N = N; a.H = H; a.W = W; a.C = C;
  a.Hp = Hp; a.Wp = Wp; a.pad_top = pad_top; a.pad_left = pad_left;
  a.w = reinterpret_cast<const uint16_t*>(w);
  a.tile_nz = reinterpret_cast<const uint8_t*>(tile_nz);
  a.kh = kh; a.kw = kw; a.stride = stride; a.Co = Co;
  a.bias = reinterpret_cast<const float*>(bias);
  a.Ho = Ho; a.Wo = Wo;
  a.y = reinterpret_cast<uint16_t*>(y);
  a.Hy = Hy; a.Wy = Wy; a.Cy = Cy; a.phase = phase;
  a.nthreads = nthreads;
  a.group_rows = group_rows;
  a.windows = windows;
  a.Cp = Cp;
  a.in_place = in_place;
  a.pair_tiles = pair_tiles;
  a.stats = reinterpret_cast<int64_t*>(stats);
  sk::GdnArgs g;  // the fused GDN's parameters (gdn_gamma 0: none)
  if (gdn_gamma != 0) {
    g.packed_gamma = reinterpret_cast<const void*>(gdn_gamma);
    set_beta(g, gdn_beta, gdn_bdtype, gdn_b_s0, gdn_beta_scale, gdn_beta_bias);
    g.inverse = gdn_inverse;
    a.gdn = &g;
  }
  a.yf = reinterpret_cast<float*>(yf);
  a.out_lo = static_cast<float>(out_lo);
  a.out_hi = static_cast<float>(out_hi);
  a.check_lo = static_cast<float>(check_lo);
  a.check_hi = static_cast<float>(check_hi);
  if (call_released(sk::conv_amx_forward, a, sk::conv_amx_error_message, "conv_amx_forward",
                    sk::kConvRangeError) == sk::kConvRangeError)
    throw ImageRangeError("slimkernels._cpu_kernels.conv_amx_forward: a value of the image is "
                          "outside [" + std::to_string(check_lo) + ", " +
                          std::to_string(check_hi) + "] or not finite");
}

}  // namespace

// -- latents <-> coder symbols (csrc/cpu/latents.hpp) ------------------------------------------

namespace {

int64_t quantize_latents_py(uintptr_t y, int ydtype, bool channels_last, int64_t N, int64_t C,
                            int64_t H, int64_t W, uintptr_t medians, uintptr_t out, int nthreads) {
  sk::QuantizeArgs a;
  a.y = reinterpret_cast<const void*>(y);
  a.ydtype = ydtype;
  a.channels_last = channels_last;
  a.N = N; a.C = C; a.H = H; a.W = W;
  a.medians = reinterpret_cast<const float*>(medians);
  a.out = reinterpret_cast<int32_t*>(out);
  a.nthreads = nthreads;
  int64_t invalid = 0;
  a.invalid = &invalid;
  call_released(sk::quantize_latents, a, sk::latents_error_message, "quantize_latents");
  return invalid;
}

// quantize_latents into a new numpy int32 array [N, C, H, W]: (symbols, invalid count).
py::tuple quantize_latents_array_py(uintptr_t y, int ydtype, bool channels_last, int64_t N,
                                    int64_t C, int64_t H, int64_t W, uintptr_t medians,
                                    int nthreads) {
  int64_t n = 0;  // (the array's bytes must fit: pybind's stride product overflowed first)
  if (!sk::detail::sizes_ok(N, C, H, W, &n) ||
      n > PTRDIFF_MAX / static_cast<int64_t>(sizeof(int32_t)))
    throw std::invalid_argument("quantize_latents_array: negative or too large a size");
  py::array_t<int32_t> out({static_cast<py::ssize_t>(N), static_cast<py::ssize_t>(C),
                            static_cast<py::ssize_t>(H), static_cast<py::ssize_t>(W)});
  const int64_t invalid = quantize_latents_py(y, ydtype, channels_last, N, C, H, W, medians,
                                              reinterpret_cast<uintptr_t>(out.mutable_data()),
                                              nthreads);
  return py::make_tuple(std::move(out), invalid);
}

void dequantize_latents_py(uintptr_t sym, int64_t N, int64_t C, int64_t H, int64_t W,
                           uintptr_t medians, uintptr_t out, int nthreads, int out_bf16) {
  sk::DequantizeArgs a;
  a.sym = reinterpret_cast<const int32_t*>(sym);
  a.N = N; a.C = C; a.H = H; a.W = W;
  a.medians = reinterpret_cast<const float*>(medians);
  a.out = reinterpret_cast<void*>(out);
  a.out_bf16 = out_bf16;
  a.nthreads = nthreads;
  call_released(sk::dequantize_latents, a, sk::latents_error_message, "dequantize_latents");
}

void ssim_filter_py(uintptr_t x, int64_t P, int64_t H, int64_t W, uintptr_t g, int64_t k,
                    uintptr_t out, int nthreads) {
  sk::SsimFilterArgs a;
  a.x = reinterpret_cast<const double*>(x);
  a.P = P; a.H = H; a.W = W;
  a.g = reinterpret_cast<const double*>(g);
  a.k = k;
  a.out = reinterpret_cast<double*>(out);
  a.nthreads = nthreads;
  call_released(sk::ssim_filter, a, sk::ssim_filter_error_message, "ssim_filter");
}

}  // namespace

// -- the image at the transforms' ends (csrc/cpu/image_io.hpp) ----------------------------------

namespace {

py::tuple image_to_bf16_py(uintptr_t x, bool channels_last, int64_t N, int64_t C, int64_t H,
                           int64_t W, uintptr_t out, int nthreads) {
  sk::ImageToBf16Args a;
  a.x = reinterpret_cast<const float*>(x);
  a.channels_last = channels_last;
  a.N = N; a.C = C; a.H = H; a.W = W;
  a.out = reinterpret_cast<uint16_t*>(out);
  float range[2] = {0.0f, 0.0f};
  a.range = range;
  a.nthreads = nthreads;
  call_released(sk::image_to_bf16, a, sk::image_io_error_message, "image_to_bf16");
  return py::make_tuple(range[0], range[1]);
}

py::tuple value_range_py(uintptr_t x, int64_t n, int nthreads) {
  sk::ValueRangeArgs a;
  a.x = reinterpret_cast<const float*>(x);
  a.n = n;
  float range[2] = {0.0f, 0.0f};
  a.range = range;
  a.nthreads = nthreads;
  call_released(sk::value_range, a, sk::image_io_error_message, "value_range");
  return py::make_tuple(range[0], range[1]);
}

void bf16_to_image_py(uintptr_t x, uintptr_t out, int64_t n, float lo, float hi, int nthreads) {
  sk::Bf16ToImageArgs a;
  a.x = reinterpret_cast<const uint16_t*>(x);
  a.out = reinterpret_cast<float*>(out);
  a.n = n; a.lo = lo; a.hi = hi;
  a.nthreads = nthreads;
  call_released(sk::bf16_to_image, a, sk::image_io_error_message, "bf16_to_image");
}

}  // namespace

// -- Winograd F(4x4, 3x3) transforms, fp32 AVX2 (csrc/cpu/winograd.hpp) -------------------------

namespace {

void winograd_input_py(uintptr_t x, int64_t N, int64_t H, int64_t W, int64_t C, int64_t s,
                       int64_t P, int64_t th, int64_t tw, int64_t t_begin, int64_t t_count,
                       uintptr_t V, int nthreads, bool x_bf16, bool V_bf16) {
  sk::WinoInArgs a;
  if (x_bf16) {
    a.x_bf16 = reinterpret_cast<const uint16_t*>(x);
  } else {
    a.x = reinterpret_cast<const float*>(x);
  }
  if (V_bf16) {
    a.V_bf16 = reinterpret_cast<uint16_t*>(V);
  } else {
    a.V = reinterpret_cast<float*>(V);
  }
  a.N = N; a.H = H; a.W = W; a.C = C; a.s = s; a.P = P; a.th = th; a.tw = tw;
  a.t_begin = t_begin; a.t_count = t_count;
  a.nthreads = nthreads;
  call_released(sk::winograd_input_f43, a, sk::winograd_error_message, "winograd_input");
}

void winograd_output_py(uintptr_t M, uintptr_t bias, int64_t N, int64_t th, int64_t tw,
                        int64_t Co, int64_t r, int64_t Ho, int64_t Wo, int64_t t_begin,
                        int64_t t_count, uintptr_t y, int nthreads, bool y_bf16) {
  sk::WinoOutArgs a;
  a.M = reinterpret_cast<const float*>(M);
  a.bias = reinterpret_cast<const float*>(bias);
  a.N = N; a.th = th; a.tw = tw; a.Co = Co; a.r = r; a.Ho = Ho; a.Wo = Wo;
  a.t_begin = t_begin; a.t_count = t_count;
  if (y_bf16) {
    a.y_bf16 = reinterpret_cast<uint16_t*>(y);
  } else {
    a.y = reinterpret_cast<float*>(y);
  }
  a.nthreads = nthreads;
  call_released(sk::winograd_output_f43, a, sk::winograd_error_message, "winograd_output");
}

void winograd_weight_py(uintptr_t g, uintptr_t G, int64_t n, uintptr_t U, int nthreads) {
  sk::WinoWeightArgs a;
  a.g = reinterpret_cast<const float*>(g);
  a.G = reinterpret_cast<const float*>(G);
  a.n = n;
  a.U = reinterpret_cast<float*>(U);
  a.nthreads = nthreads;
  call_released(sk::winograd_weight_f43, a, sk::winograd_error_message, "winograd_weight");
}

void winograd_kernel_weight_py(uintptr_t w, int64_t kk, int64_t R, int64_t L, int64_t Ic,
                               int64_t Il, int64_t P, uintptr_t idx, uintptr_t G, uintptr_t U,
                               int64_t S36, int64_t Sph, int64_t Sc, int nthreads) {
  sk::WinoKernelWeightArgs a;
  a.w = reinterpret_cast<const float*>(w);
  a.kk = kk; a.R = R; a.L = L; a.Ic = Ic; a.Il = Il; a.P = P;
  a.idx = reinterpret_cast<const int32_t*>(idx);
  a.G = reinterpret_cast<const float*>(G);
  a.U = reinterpret_cast<float*>(U);
  a.S36 = S36; a.Sph = Sph; a.Sc = Sc;
  a.nthreads = nthreads;
  call_released(sk::winograd_kernel_weight_f43, a,
                sk::winograd_error_message, "winograd_kernel_weight");
}

void winograd_weight_grad_py(uintptr_t M, uintptr_t G, int64_t n, uintptr_t out, int nthreads,
                             uintptr_t taps, int64_t cp, int64_t c1, int64_t c2, int64_t s1,
                             int64_t s2) {
  sk::WinoWeightGradArgs a;
  a.M = reinterpret_cast<const float*>(M);
  a.G = reinterpret_cast<const float*>(G);
  a.n = n;
  a.out = reinterpret_cast<float*>(out);
  a.nthreads = nthreads;
  a.taps = reinterpret_cast<const int32_t*>(taps);
  a.cp = cp; a.c1 = c1; a.c2 = c2; a.s1 = s1; a.s2 = s2;
  call_released(sk::winograd_weight_grad_f43, a,
                sk::winograd_error_message, "winograd_weight_grad");
}

void winograd_grad_tiles_py(uintptr_t gy, int64_t N, int64_t Ho, int64_t Wo, int64_t Co,
                            int64_t s, int64_t th, int64_t tw, uintptr_t AT, uintptr_t U,
                            int nthreads) {
  sk::WinoGradTilesArgs a;
  a.gy = reinterpret_cast<const float*>(gy);
  a.N = N; a.Ho = Ho; a.Wo = Wo; a.Co = Co; a.s = s; a.th = th; a.tw = tw;
  a.AT = reinterpret_cast<const float*>(AT);
  a.U = reinterpret_cast<float*>(U);
  a.nthreads = nthreads;
  call_released(sk::winograd_grad_tiles_f43, a, sk::winograd_error_message, "winograd_grad_tiles");
}

}  // namespace

// -- direct fp32 conv for few input channels, AVX2 (csrc/cpu/conv_avx2.hpp) ---------------------

namespace {

// conv_avx2_forward or conv_avx512_forward (same arguments)
template <int (*Fn)(const sk::ConvAvx2Args&)>
void conv_fp32_forward_py(uintptr_t x, int64_t N, int64_t H, int64_t W, int64_t C, uintptr_t w,
                          uintptr_t bias, int64_t Co, int64_t k, int64_t stride, int64_t pad,
                          int64_t Ho, int64_t Wo, uintptr_t y, int nthreads) {
  sk::ConvAvx2Args a;
  a.x = reinterpret_cast<const float*>(x);
  a.N = N; a.H = H; a.W = W; a.C = C;
  a.w = reinterpret_cast<const float*>(w);
  a.bias = reinterpret_cast<const float*>(bias);
  a.Co = Co; a.k = k; a.stride = stride; a.pad = pad; a.Ho = Ho; a.Wo = Wo;
  a.y = reinterpret_cast<float*>(y);
  a.nthreads = nthreads;
  call_released(Fn, a, sk::conv_avx2_error_message,
                Fn == sk::conv_avx2_forward ? "conv_avx2_forward" : "conv_avx512_forward");
}

// batched_gemm_avx512 / _avx2 (fp32 operands) or batched_gemm_bf16 (bf16 V, bf16-pair U): the same
// arguments, the operand pointer types from the Args struct
const char* gemm_name(int (*fn)(const sk::BatchedGemmArgs&)) {
  return fn == sk::batched_gemm_avx512 ? "batched_gemm_avx512" : "batched_gemm_avx2";
}
const char* gemm_name(int (*)(const sk::BatchedGemmBf16Args&)) { return "batched_gemm_bf16"; }

template <class Args, int (*Fn)(const Args&)>
void batched_gemm_py(uintptr_t V, uintptr_t U, uintptr_t M, int64_t B, int64_t T, int64_t K,
                     int64_t N, int nthreads) {
  Args a;
  a.V = reinterpret_cast<decltype(a.V)>(V);
  a.U = reinterpret_cast<decltype(a.U)>(U);
  a.M = reinterpret_cast<float*>(M);
  a.B = B; a.T = T; a.K = K; a.N = N;
  a.nthreads = nthreads;
  call_released(Fn, a, sk::batched_gemm_error_message, gemm_name(Fn));
}

void conv_bf16_forward_py(uintptr_t x, int64_t N, int64_t H, int64_t W, int64_t C, uintptr_t w,
                          uintptr_t bias, int64_t Co, int64_t k, int64_t stride, int64_t pad,
                          int64_t Ho, int64_t Wo, uintptr_t y, int nthreads) {
  sk::ConvBf16Args a;
  a.x = reinterpret_cast<const uint16_t*>(x);
  a.N = N; a.H = H; a.W = W; a.C = C;
  a.w = reinterpret_cast<const uint16_t*>(w);
  a.bias = reinterpret_cast<const float*>(bias);
  a.Co = Co; a.k = k; a.stride = stride; a.pad = pad; a.Ho = Ho; a.Wo = Wo;
  a.y = reinterpret_cast<uint16_t*>(y);
  a.nthreads = nthreads;
  call_released(sk::conv_bf16_forward, a, sk::conv_avx2_error_message, "conv_bf16_forward");
}

template <int (*Fn)(const sk::ConvTAvx2Args&)>
void conv_transpose_fp32_py(uintptr_t x, int64_t N, int64_t H, int64_t W, int64_t C, uintptr_t w,
                            int64_t L, uintptr_t bias, int64_t Co, int64_t k, int64_t s,
                            int64_t pad, int64_t Ho, int64_t Wo, uintptr_t y, int nthreads) {
  sk::ConvTAvx2Args a;
  a.x = reinterpret_cast<const float*>(x);
  a.N = N; a.H = H; a.W = W; a.C = C;
  a.w = reinterpret_cast<const float*>(w);
  a.L = L;
  a.bias = reinterpret_cast<const float*>(bias);
  a.Co = Co; a.k = k; a.s = s; a.pad = pad;
  a.Ho = Ho; a.Wo = Wo;
  a.y = reinterpret_cast<float*>(y);
  a.nthreads = nthreads;
  call_released(Fn, a, sk::conv_avx2_error_message, "conv_transpose_fp32 kernel");
}

void conv_transpose_bf16_forward_py(uintptr_t x, int64_t N, int64_t H, int64_t W, int64_t C,
                                    uintptr_t w, int64_t L, uintptr_t bias, int64_t Co,
                                    int64_t k, int64_t s, int64_t pad, int64_t Ho, int64_t Wo,
                                    uintptr_t y, int nthreads) {
  sk::ConvTBf16Args a;
  a.x = reinterpret_cast<const uint16_t*>(x);
  a.N = N; a.H = H; a.W = W; a.C = C;
  a.w = reinterpret_cast<const uint16_t*>(w);
  a.L = L;
  a.bias = reinterpret_cast<const float*>(bias);
  a.Co = Co; a.k = k; a.s = s; a.pad = pad;
  a.Ho = Ho; a.Wo = Wo;
  a.y = reinterpret_cast<uint16_t*>(y);
  a.nthreads = nthreads;
  call_released(sk::conv_transpose_bf16_forward, a,
                sk::conv_avx2_error_message, "conv_transpose_bf16_forward");
}

}  // namespace

#ifndef SK_SOURCE_STAMP  // (the sources' stamp: setup.py, slimkernels/_build_stamp.py)
#define SK_SOURCE_STAMP ""
#endif

PYBIND11_MODULE(_cpu_kernels, m) {
  m.attr("SOURCE_STAMP") = SK_SOURCE_STAMP;
  m.doc() = "CPU kernels of slimkernels (AMX-BF16 GDN/IGDN and conv, AVX2 fp32 GDN/IGDN, latent "
           "quantization).";
  py::register_exception<ImageRangeError>(m, "ImageRangeError", PyExc_ValueError);
  m.attr("F32") = static_cast<int>(sk::kF32);
  m.attr("BF16") = static_cast<int>(sk::kBF16);
  m.def("amx_available", &sk::amx_available,
        "True when the CPU has AMX-BF16 + AVX512-BF16 and the OS granted the tile state.");
  // the three GDN kernels take the same arguments (gdn_forward_avx2: splits is ignored, its
  // accumulation is plain fp32; gdn_forward_bf16: bf16 channels_last x, splits 1)
  auto def_gdn = [&m](const char* name, auto fn, const char* doc) {
    m.def(name, fn, py::arg("x"), py::arg("y"), py::arg("xdtype"), py::arg("N"), py::arg("C"),
          py::arg("HW"), py::arg("channels_last"), py::arg("gamma"), py::arg("gdtype"),
          py::arg("g_s0"), py::arg("g_s1"), py::arg("beta"), py::arg("bdtype"), py::arg("b_s0"),
          py::arg("gamma_scale"), py::arg("gamma_bias"), py::arg("beta_scale"),
          py::arg("beta_bias"), py::arg("inverse"), py::arg("splits"), py::arg("nthreads"),
          py::arg("r") = 0, py::arg("packed_gamma") = 0, doc);
  };
  def_gdn("gdn_forward", &gdn_call_py<sk::gdn_forward, sk::gdn_error_message>,
          "Fused GDN/IGDN forward on raw pointers (see csrc/cpu/gdn_cpu.hpp). x: [N*HW, C] "
          "(channels_last) or [N, C, HW] (NCHW), fp32 (xdtype 0) or bf16 (1); y likewise.");
  def_gdn("gdn_forward_avx2", &gdn_call_py<sk::gdn_forward_avx2, sk::gdn_avx2_error_message>,
          "Fused fp32 GDN/IGDN forward on AVX2 + FMA (see csrc/cpu/gdn_avx2.hpp): x and y fp32 "
          "(xdtype 0), [N*HW, C] (channels_last) or [N, C, HW] (NCHW); gamma/beta fp32 (0) or "
          "bf16 (1), any strides; r (optional, channels_last): the factors y / x, fp32 like y.");
  def_gdn("gdn_forward_bf16", &gdn_call_py<sk::gdn_forward_bf16, sk::gdn_bf16_error_message>,
          "Fused bf16 GDN/IGDN forward on AVX512-BF16 (see csrc/cpu/gdn_bf16.hpp): x and y bf16 "
          "(xdtype 1), [N*HW, C] (channels_last only); gamma/beta fp32 (0) or bf16 (1), any "
          "strides; splits 1, no r. Available where conv_bf16_available().");
  m.def("gdn_amx_packed_size", &sk::gdn_amx_packed_size, py::arg("C"), py::arg("splits"),
        "uint16 elements of gamma_k packed for gdn_forward (AMX) at C channels and splits.");
  m.def("gdn_pack_amx",
        [](uintptr_t gamma, int gdtype, int64_t g_s0, int64_t g_s1, int64_t C,
           double gamma_scale, double gamma_bias, int splits, bool channels_last, uintptr_t out) {
          sk::GdnArgs a;
          set_gamma(a, gamma, gdtype, g_s0, g_s1, gamma_scale, gamma_bias);
          a.C = C;
          a.splits = splits;
          a.channels_last = channels_last;
          const int rc = sk::gdn_pack_gamma_amx(a, reinterpret_cast<uint16_t*>(out));
          if (rc != 0)
            throw std::runtime_error(std::string("slimkernels._cpu_kernels.gdn_pack_amx: ") +
                                     sk::gdn_error_message(rc));
        },
        py::arg("gamma"), py::arg("gdtype"), py::arg("g_s0"), py::arg("g_s1"), py::arg("C"),
        py::arg("gamma_scale"), py::arg("gamma_bias"), py::arg("splits"),
        py::arg("channels_last"), py::arg("out"),
        "Packs gamma_k (gamma[:C, :C] * gamma_scale + gamma_bias, fp32 (0) or bf16 (1), any "
        "strides) into out (gdn_amx_packed_size(C, splits) uint16) for gdn_forward's "
        "packed_gamma with the same splits and layout: the step that call does otherwise.");
  m.def("gdn_bf16_packed_size", &sk::gdn_bf16_packed_size, py::arg("C"),
        "uint16 elements of gamma_k's packed panels for gdn_forward_bf16 at C channels.");
  auto def_pack = [&m](const char* name, auto fn, const char* doc) {
    m.def(name, fn, py::arg("gamma"), py::arg("gdtype"), py::arg("g_s0"), py::arg("g_s1"),
          py::arg("C"), py::arg("gamma_scale"), py::arg("gamma_bias"), py::arg("out"), doc);
  };
  def_pack("gdn_pack_bf16",
           &gdn_pack_py<uint16_t, sk::gdn_pack_gamma_bf16, sk::gdn_bf16_error_message>,
           "Packs gamma_k (gamma[:C, :C] * gamma_scale + gamma_bias, fp32 (0) or bf16 (1), any "
           "strides) into out (gdn_bf16_packed_size(C) uint16) for gdn_forward_bf16's "
           "packed_gamma: the step that call does otherwise.");
  m.def("gdn_avx2_packed_size", &sk::gdn_avx2_packed_size, py::arg("C"),
        "floats of gamma_k's packed panels for gdn_forward_avx2 at C channels.");
  def_pack("gdn_pack_avx2",
           &gdn_pack_py<float, sk::gdn_pack_gamma_avx2, sk::gdn_avx2_error_message>,
           "Packs gamma_k like gdn_pack_bf16, in fp32 panels, into out (gdn_avx2_packed_size(C) "
           "floats, 32-byte aligned) for gdn_forward_avx2's packed_gamma.");
  m.def("gdn_avx2_available", &sk::gdn_avx2_available,
        "True when the CPU has AVX2 + FMA (gdn_forward_avx2).");
  m.def("coder_executor", [] {
    return py::capsule(reinterpret_cast<void*>(&sk::coder_omp_executor),
                       "slimkernels.coder_executor");
  }, "A capsule for slimkernels._coder's encode / decode (executor=): the substreams run on "
     "torch's OpenMP threads instead of the coder's own worker pool (see "
     "csrc/cpu/coder_executor.hpp).");
  m.def("latents_simd_available", &sk::latents_simd_available,
        "True when the CPU has AVX512F + AVX512BW or AVX2 + FMA (quantize_latents / "
        "dequantize_latents).");
  m.def("quantize_latents", &quantize_latents_py, py::arg("y"), py::arg("ydtype"),
        py::arg("channels_last"), py::arg("N"), py::arg("C"), py::arg("H"), py::arg("W"),
        py::arg("medians"), py::arg("out"), py::arg("nthreads"),
        "out int32 NCHW = round_half_even(float(y) - medians[c]) (see csrc/cpu/latents.hpp); y "
        "fp32 (0) or bf16 (1), dense channels_last or NCHW; medians fp32 [C]. Returns the number "
        "of INT32_MIN results (NaN, inf or out of the int32 range), counted in the same pass.");
  m.def("quantize_latents_array", &quantize_latents_array_py, py::arg("y"), py::arg("ydtype"),
        py::arg("channels_last"), py::arg("N"), py::arg("C"), py::arg("H"), py::arg("W"),
        py::arg("medians"), py::arg("nthreads"),
        "quantize_latents into a new numpy int32 array [N, C, H, W] (C order): returns "
        "(symbols, number of INT32_MIN results).");
  m.def("dequantize_latents", &dequantize_latents_py, py::arg("sym"), py::arg("N"), py::arg("C"),
        py::arg("H"), py::arg("W"), py::arg("medians"), py::arg("out"), py::arg("nthreads"),
        py::arg("out_bf16") = 0,
        "out dense channels_last = float(sym) + medians[c], fp32 or (out_bf16=1) rounded to "
        "bf16 (nearest even); sym int32 NCHW contiguous.");
  m.def("ssim_filter_available", &sk::ssim_filter_available,
        "True (ssim_filter has a portable path; AVX2 + FMA where the CPU has them).");
  m.def("ssim_filter", &ssim_filter_py, py::arg("x"), py::arg("P"), py::arg("H"), py::arg("W"),
        py::arg("g"), py::arg("k"), py::arg("out"), py::arg("nthreads"),
        "out [P, H-k+1, W-k+1] float64 = the 'valid' separable filter by g [k] (float64) along "
        "the rows, then the columns, of x [P, H, W] float64 contiguous (see "
        "csrc/cpu/ssim_filter.hpp).");
  m.def("image_io_simd_available", &sk::image_io_simd_available,
        "True when the CPU has AVX512F + AVX512BW (image_to_bf16 / bf16_to_image vector paths).");
  m.def("image_to_bf16", &image_to_bf16_py, py::arg("x"), py::arg("channels_last"), py::arg("N"),
        py::arg("C"), py::arg("H"), py::arg("W"), py::arg("out"), py::arg("nthreads"),
        "out bf16 [N, C, H, W] dense channels_last = x rounded as torch does (see "
        "csrc/cpu/image_io.hpp); x fp32 contiguous NCHW or dense channels_last. Returns (min, "
        "max) of x's values, both NaN when x holds a NaN (0, 0 for an empty x).");
  m.def("value_range", &value_range_py, py::arg("x"), py::arg("n"), py::arg("nthreads"),
        "(min, max) of the n fp32 values at x, both NaN when one is NaN (0, 0 for n == 0).");
  m.def("bf16_to_image", &bf16_to_image_py, py::arg("x"), py::arg("out"), py::arg("n"),
        py::arg("lo"), py::arg("hi"), py::arg("nthreads"),
        "out fp32 [n] = clamp(float(x), lo, hi) elementwise, NaN kept; x bf16 [n].");
  m.def("winograd_input", &winograd_input_py, py::arg("x"), py::arg("N"), py::arg("H"),
        py::arg("W"), py::arg("C"), py::arg("s"), py::arg("P"), py::arg("th"), py::arg("tw"),
        py::arg("t_begin"), py::arg("t_count"), py::arg("V"), py::arg("nthreads"),
        py::arg("x_bf16") = false, py::arg("V_bf16") = false,
        "Winograd F(4x4,3x3) input transform (see csrc/cpu/winograd.hpp): x [N, H, W, C] dense "
        "fp32 (bf16 with x_bf16=True); V [36, t_count, s*s*C] fp32 (bf16, rounded to nearest "
        "even, with V_bf16=True): tiles [t_begin, t_begin + t_count) of N*th*tw (t_count 0: "
        "all), the s*s polyphase 6x6 patches at row / column s*4*t - P, transformed.");
  m.def("winograd_output", &winograd_output_py, py::arg("M"), py::arg("bias"), py::arg("N"),
        py::arg("th"), py::arg("tw"), py::arg("Co"), py::arg("r"), py::arg("Ho"), py::arg("Wo"),
        py::arg("t_begin"), py::arg("t_count"), py::arg("y"), py::arg("nthreads"),
        py::arg("y_bf16") = false,
        "Winograd F(4x4,3x3) output transform: M [36, t_count, r*r*Co] fp32 (tiles t_begin.., "
        "channels (ry, rx, co)), bias [Co] fp32 or 0; y [N, Ho, Wo, Co] dense fp32 (bf16, rounded "
        "to nearest even, with y_bf16=True), the r*r output phases interleaved.");
  m.def("winograd_weight", &winograd_weight_py, py::arg("g"), py::arg("G"), py::arg("n"),
        py::arg("U"), py::arg("nthreads"),
        "Winograd F(4x4,3x3) weight transform: g [9, n] fp32 (3x3 taps of n kernels, one per "
        "column), G [6, 3] fp32; writes U [36, n] fp32 = G g G^T per column.");
  m.def("winograd_kernel_weight", &winograd_kernel_weight_py, py::arg("w"), py::arg("kk"),
        py::arg("R"), py::arg("L"), py::arg("Ic"), py::arg("Il"), py::arg("P"), py::arg("idx"),
        py::arg("G"), py::arg("U"), py::arg("S36"), py::arg("Sph"), py::arg("Sc"),
        py::arg("nthreads"),
        "Winograd F(4x4,3x3) weights straight from a conv / transposed-conv weight (see "
        "WinoKernelWeightArgs in csrc/cpu/winograd.hpp): kernel (c, o) at w + c*Ic + o*Il, phase "
        "taps idx [P, 9] int32 (-1: zero), U written at ij*S36 + ph*Sph + c*Sc + o.");
  m.def("winograd_weight_grad", &winograd_weight_grad_py, py::arg("M"), py::arg("G"), py::arg("n"),
        py::arg("out"), py::arg("nthreads"), py::arg("taps"), py::arg("cp"), py::arg("c1"),
        py::arg("c2"), py::arg("s1"), py::arg("s2"),
        "Inverse Winograd weight transform (weight gradients by F(3x3,4x4)): M [36, n] fp32, "
        "G [6, 3] fp32; writes G^T M G of each column into the final weight gradient out through "
        "taps ([phases, 9] int32; WinoWeightGradArgs in csrc/cpu/winograd.hpp).");
  m.def("winograd_grad_tiles", &winograd_grad_tiles_py, py::arg("gy"), py::arg("N"), py::arg("Ho"),
        py::arg("Wo"), py::arg("Co"), py::arg("s"), py::arg("th"), py::arg("tw"), py::arg("AT"),
        py::arg("U"), py::arg("nthreads"),
        "Output-gradient transform of the Winograd weight gradient: gy [N, Ho, Wo, Co] dense fp32 "
        "on s x s phases, 4x4 tiles -> U [36, N*th*tw, s*s*Co] = A g A^T (see winograd.hpp).");
  m.def("conv_avx2_forward", &conv_fp32_forward_py<sk::conv_avx2_forward>, py::arg("x"),
        py::arg("N"), py::arg("H"), py::arg("W"), py::arg("C"), py::arg("w"), py::arg("bias"),
        py::arg("Co"), py::arg("k"), py::arg("stride"), py::arg("pad"), py::arg("Ho"),
        py::arg("Wo"), py::arg("y"), py::arg("nthreads"),
        "Direct fp32 conv for few input channels on AVX2 (see csrc/cpu/conv_avx2.hpp): x [N, H, "
        "W, C] dense fp32; w packed [ceil(Co/16), k, k*C, 16] fp32 (64-byte aligned); bias [Co] "
        "fp32 or 0; y [N, Ho, Wo, Co] dense fp32.");
  m.def("conv_bf16_forward", &conv_bf16_forward_py, py::arg("x"), py::arg("N"), py::arg("H"),
        py::arg("W"), py::arg("C"), py::arg("w"), py::arg("bias"), py::arg("Co"), py::arg("k"),
        py::arg("stride"), py::arg("pad"), py::arg("Ho"), py::arg("Wo"), py::arg("y"),
        py::arg("nthreads"),
        "Direct bf16 conv for few input channels on AVX512-BF16 (see csrc/cpu/conv_avx2.hpp): x "
        "[N, H, W, C] dense bf16; w packed [ceil(Co/16), k, ceil(k*C/2), 16, 2] bf16; bias [Co] "
        "fp32 or 0; y [N, Ho, Wo, Co] dense bf16.");
  m.def("conv_avx512_forward", &conv_fp32_forward_py<sk::conv_avx512_forward>, py::arg("x"),
        py::arg("N"), py::arg("H"), py::arg("W"), py::arg("C"), py::arg("w"), py::arg("bias"),
        py::arg("Co"), py::arg("k"), py::arg("stride"), py::arg("pad"), py::arg("Ho"),
        py::arg("Wo"), py::arg("y"), py::arg("nthreads"),
        "conv_avx2_forward on AVX-512 (conv_avx512_available()): the same arguments and packing, "
        "micro-tiles of 8 pixels x 48 channels.");
  m.def("batched_gemm_avx512_available", &sk::batched_gemm_avx512_available,
        "True when the CPU has AVX-512F (batched_gemm_avx512).");
  // the batched GEMMs take the same arguments (V, U, M pointers; B, T, K, N; nthreads)
  auto def_gemm = [&m](const char* name, auto fn, const char* doc) {
    m.def(name, fn, py::arg("V"), py::arg("U"), py::arg("M"), py::arg("B"), py::arg("T"),
          py::arg("K"), py::arg("N"), py::arg("nthreads"), doc);
  };
  def_gemm("batched_gemm_avx512",
           &batched_gemm_py<sk::BatchedGemmArgs, sk::batched_gemm_avx512>,
           "M[b] = V[b] U[b] on AVX-512 (see csrc/cpu/batched_gemm.hpp): V [B, T, K], "
           "U [B, K, N], M [B, T, N], contiguous fp32 (M written).");
  m.def("batched_gemm_avx2_available", &sk::batched_gemm_avx2_available,
        "True when the CPU has AVX2 and FMA (batched_gemm_avx2).");
  def_gemm("batched_gemm_avx2", &batched_gemm_py<sk::BatchedGemmArgs, sk::batched_gemm_avx2>,
           "batched_gemm_avx512's products on AVX2 + FMA (see csrc/cpu/batched_gemm.hpp): the "
           "same arguments.");
  m.def("batched_gemm_bf16_available", &sk::batched_gemm_bf16_available,
        "True when the CPU has AVX512-BF16 (batched_gemm_bf16).");
  def_gemm("batched_gemm_bf16",
           &batched_gemm_py<sk::BatchedGemmBf16Args, sk::batched_gemm_bf16>,
           "M[b] = V[b] U[b] by vdpbf16ps (see csrc/cpu/batched_gemm.hpp): V [B, T, K] bf16, "
           "U [B, ceil(K/2), N] bf16 pairs (int32), M [B, T, N] fp32 (written).");
  m.def("conv_avx512_available", &sk::conv_avx512_available,
        "True when the CPU has AVX-512F (conv_avx512_forward, conv_transpose_avx512_forward).");
  m.def("conv_transpose_avx512_forward",
        &conv_transpose_fp32_py<sk::conv_transpose_avx512_forward>, py::arg("x"), py::arg("N"),
        py::arg("H"), py::arg("W"), py::arg("C"), py::arg("w"), py::arg("L"), py::arg("bias"),
        py::arg("Co"), py::arg("k"), py::arg("s"), py::arg("pad"), py::arg("Ho"), py::arg("Wo"),
        py::arg("y"), py::arg("nthreads"),
        "conv_transpose_avx2_forward on AVX-512: the same arguments with L = k*Co rounded up to "
        "16 (taps packed [k, C, L] fp32).");
  m.def("conv_transpose_avx2_forward", &conv_transpose_fp32_py<sk::conv_transpose_avx2_forward>,
        py::arg("x"),
        py::arg("N"), py::arg("H"), py::arg("W"), py::arg("C"), py::arg("w"), py::arg("L"),
        py::arg("bias"), py::arg("Co"), py::arg("k"), py::arg("s"), py::arg("pad"),
        py::arg("Ho"), py::arg("Wo"), py::arg("y"), py::arg("nthreads"),
        "Transposed fp32 conv onto few output channels on AVX2 (see csrc/cpu/conv_avx2.hpp): x "
        "[N, H, W, C] dense fp32; w packed [k, C, L] fp32 (32-byte aligned, L = k*Co rounded up "
        "to 8); bias [Co] fp32 or 0; y [N, Ho, Wo, Co] dense fp32.");
  m.def("conv_bf16_available", &sk::conv_bf16_available,
        "True when the CPU has AVX512-F/BW/VL + AVX512-BF16 (conv_transpose_bf16_forward).");
  m.def("conv_transpose_bf16_forward", &conv_transpose_bf16_forward_py, py::arg("x"),
        py::arg("N"), py::arg("H"), py::arg("W"), py::arg("C"), py::arg("w"), py::arg("L"),
        py::arg("bias"), py::arg("Co"), py::arg("k"), py::arg("s"), py::arg("pad"),
        py::arg("Ho"), py::arg("Wo"), py::arg("y"), py::arg("nthreads"),
        "Transposed bf16 conv onto few output channels on AVX512-BF16 (see "
        "csrc/cpu/conv_avx2.hpp): x [N, H, W, C] dense bf16; w packed [k, ceil(C/2), L, 2] bf16 "
        "(L = k*Co rounded up to 16); bias [Co] fp32 or 0; y [N, Ho, Wo, Co] dense bf16.");
  m.def("conv_amx_forward", &conv_amx_forward_py, py::arg("x"), py::arg("xdtype"), py::arg("N"),
        py::arg("H"), py::arg("W"), py::arg("C"), py::arg("Hp"), py::arg("Wp"),
        py::arg("pad_top"), py::arg("pad_left"), py::arg("w"), py::arg("tile_nz"), py::arg("kh"),
        py::arg("kw"),
        py::arg("stride"), py::arg("Co"), py::arg("bias"), py::arg("Ho"), py::arg("Wo"),
        py::arg("y"), py::arg("Hy"), py::arg("Wy"), py::arg("Cy"), py::arg("phase"),
        py::arg("nthreads"), py::arg("group_rows") = 2, py::arg("gdn_gamma") = 0,
        py::arg("gdn_beta") = 0, py::arg("gdn_bdtype") = 0, py::arg("gdn_b_s0") = 1,
        py::arg("gdn_beta_scale") = 1.0, py::arg("gdn_beta_bias") = 0.0,
        py::arg("gdn_inverse") = false, py::arg("yf") = 0, py::arg("out_lo") = 0.0,
        py::arg("out_hi") = 1.0, py::arg("windows") = true,
        py::arg("Cp") = 0, py::arg("in_place") = true,
        py::arg("stats") = 0, py::arg("pair_tiles") = true, py::arg("check_lo") = 1.0,
        py::arg("check_hi") = 0.0,
        "Direct AMX-BF16 conv on raw pointers (see csrc/cpu/conv_amx.hpp): x [N, H, W, C] "
        "dense channels_last fp32 (xdtype 0) or bf16 (1), padded into [N, Hp, Wp, C] inside; "
        "w VNNI-packed bf16 (tile_nz: uint8 per B tile, 0 = all zero, skipped; or 0 = none), "
        "bias fp32 or 0, y bf16 channels_last. gdn_gamma (0 = none): GDN / IGDN (gdn_inverse) "
        "of y's Cy channels in the epilogue, gamma_k packed by gdn_pack_amx (C = Cy, splits 1, "
        "channels_last), beta fp32 (gdn_bdtype 0) or bf16 (1) at stride gdn_b_s0, scaled by "
        "gdn_beta_scale plus gdn_beta_bias. yf (with y = 0, no GDN): the output as float32 "
        "[N, Hy, Wy, Cy], the bf16 values widened and clamped to [out_lo, out_hi] (NaN kept). "
        "windows: allow the window layout of x where it applies (conv_amx.hpp; same output for "
        "finite x). Cp (0: C): the padded buffer's channels per pixel, a multiple of 32 >= C "
        "(w packed for Cp input channels). in_place: allow the work groups inside x to read it "
        "itself (conv_amx.hpp; the same output). stats (0: none): int64 [3], set to the work "
        "groups read in place, all work groups and the channel tiles each group runs in "
        "pairs. pair_tiles: allow pairs of output channel tiles with the same K chunks to "
        "share each A tile load (conv_amx.hpp; the same output). check_lo <= check_hi (fp32 x "
        "only): every value of x checked as it is read; ImageRangeError (a ValueError) when "
        "one is outside [check_lo, check_hi] or NaN (y is written all the same).");
}

