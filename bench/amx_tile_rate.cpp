// AMX-BF16 tile-product rate on this core: the ceiling the direct conv kernel
// (csrc/cpu/conv_amx.cpp) is measured against by bench/bench_amx_rate.py, which compiles and
// runs this file. Standalone (no slimkernels code, no Python): each case runs the 2 x 2 register
// blocking of the kernel's micro22 (C tiles 0-3, A tiles 4-5, B tiles 6-7) on synthetic bf16
// data and prints one line "case ns_per_tile_product", a tile product being one TDPBF16PS
// (16 x 16 x 32 multiply-adds).
//
//   c++ -O2 -std=c++17 bench/amx_tile_rate.cpp -o /tmp/amx_tile_rate && /tmp/amx_tile_rate 1
//
// The argument scales the repetitions (1: ~2 s in all). Exit status 2 where the CPU or the
// kernel does not give this process AMX (no output lines then).
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512f")))

namespace {

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

double seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// 64-byte aligned bf16 storage of pseudo-random values in (-2, -0.5] and [0.5, 2) (finite
// products, no denormals). The data matters: all-zero tiles ran the loads-and-products steps
// ~1.25x faster than these (1.0 everywhere ran within 10 % of these).
struct Buffer {
  uint16_t* p = nullptr;
  explicit Buffer(size_t n) {
    p = static_cast<uint16_t*>(std::aligned_alloc(64, (n * 2 + 63) / 64 * 64));
    if (p == nullptr) std::exit(3);
    uint32_t r = 12345;
    for (size_t i = 0; i < n; ++i) {
      r = r * 1664525u + 1013904223u;  // sign, exponent 126 or 127, 7 random mantissa bits
      p[i] = static_cast<uint16_t>((r >> 31) << 15 | (126u + ((r >> 30) & 1u)) << 7 |
                                   ((r >> 16) & 0x7fu));
    }
  }
  ~Buffer() { std::free(p); }
};

alignas(64) float g_acc[4][256];

AMX_TARGET void store_acc() {
  _tile_stored(0, g_acc[0], 64);
  _tile_stored(1, g_acc[1], 64);
  _tile_stored(2, g_acc[2], 64);
  _tile_stored(3, g_acc[3], 64);
}

// The 2 x 2 block's 4 products: C tile 2i + j += A tile 4 + i . B tile 6 + j.
AMX_TARGET inline void products_2x2() {
  _tile_dpbf16ps(0, 4, 6);
  _tile_dpbf16ps(1, 4, 7);
  _tile_dpbf16ps(2, 5, 6);
  _tile_dpbf16ps(3, 5, 7);
}

// 4 products per step on tiles loaded once: the issue rate alone.
AMX_TARGET double no_loads(long steps) {
  Buffer a(2 * 512);
  _tile_loadd(4, a.p, 64);
  _tile_loadd(5, a.p + 512, 64);
  _tile_loadd(6, a.p, 64);
  _tile_loadd(7, a.p + 512, 64);
  _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
  const double t = seconds();
  for (long i = 0; i < steps; ++i) products_2x2();
  const double dt = seconds() - t;
  store_acc();
  return dt / (4.0 * steps);
}

// 2 A + 2 B tile loads per 4 products, contiguous 1 KB tiles cycling through a set of `kb` KB
// (half A, half B; kb a power of 2 >= 4): the micro-kernel's step with its operands in L1
// (32 KB) or L2 (128 KB).
AMX_TARGET double cycling(long steps, int kb) {
  const int per = kb / 2, half = per / 2;  // tiles of A (and of B); the two loads' distance
  Buffer a(static_cast<size_t>(per) * 512), b(static_cast<size_t>(per) * 512);
  _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
  const double t = seconds();
  for (long i = 0; i < steps; ++i) {
    const long k = i & (half - 1);
    _tile_loadd(4, a.p + k * 512, 64);
    _tile_loadd(5, a.p + (k + half) * 512, 64);
    _tile_loadd(6, b.p + k * 512, 64);
    _tile_loadd(7, b.p + (k + half) * 512, 64);
    products_2x2();
  }
  const double dt = seconds() - t;
  store_acc();
  return dt / (4.0 * steps);
}

// The direct kernel's loop without its epilogue: a 5x5 stride-1 conv of a channels_last bf16
// [68, 132, c] padded input onto 64 output channels at 64 x 128 output pixels, in the kernel's
// order (output row, pairs of 16-pixel blocks, pairs of channel tiles, then every K chunk: 32
// elements (kx, c) of one tap row), A tile rows c * 2 bytes apart, B tiles prepacked and
// contiguous (1 KB each), the micro22 instruction order. kblock > 0: the chunks in blocks of
// that many, two block pairs sharing each block's B tiles (from L1) with their C tiles stored
// and reloaded between blocks (the same products in the same order).
AMX_TARGET double conv_loop(int reps, int c, int kblock, long* products) {
  constexpr int H = 68, W = 132, KH = 5, CT = 4, HO = 64, WO = 128;
  const int kc = (5 * c + 31) / 32, nq = KH * kc;
  Buffer x(static_cast<size_t>(H) * W * c + 64), w(static_cast<size_t>(CT) * nq * 512);
  std::vector<long> xo(nq), wo(nq);
  for (int q = 0; q < nq; ++q) {
    xo[q] = static_cast<long>(q / kc) * W * c + (q % kc) * 32;
    wo[q] = static_cast<long>(q) * 512;
  }
  const long sa = c * 2, dw = static_cast<long>(nq) * 512;
  alignas(64) static float acc[2][4][256];
  long count = 0;
  const double t = seconds();
  for (int r = 0; r < reps; ++r)
    for (int oy = 0; oy < HO; ++oy)
      for (int nb = 0; nb < CT; nb += 2) {
        const uint16_t* w0 = w.p + nb * dw;
        const int pairs = kblock > 0 ? 2 : 1;  // block pairs sharing the K blocks
        for (int bx = 0; bx < WO / 16; bx += 2 * pairs) {
          const int kb = kblock > 0 ? kblock : nq;
          for (int k0 = 0; k0 < nq; k0 += kb) {
            const int k1 = k0 + kb < nq ? k0 + kb : nq;
            for (int p = 0; p < pairs; ++p) {
              const uint16_t* x0 = x.p + (static_cast<long>(oy) * W + (bx + 2 * p) * 16) * c;
              const uint16_t* x1 = x0 + 16 * c;
              if (k0 == 0) {
                _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
              } else {
                _tile_loadd(0, acc[p][0], 64); _tile_loadd(1, acc[p][1], 64);
                _tile_loadd(2, acc[p][2], 64); _tile_loadd(3, acc[p][3], 64);
              }
              for (int q = k0; q < k1; ++q) {
                const uint16_t* wq = w0 + wo[q];
                _tile_loadd(4, x0 + xo[q], sa);
                _tile_loadd(6, wq, 64);
                _tile_dpbf16ps(0, 4, 6);
                _tile_loadd(7, wq + dw, 64);
                _tile_dpbf16ps(1, 4, 7);
                _tile_loadd(5, x1 + xo[q], sa);
                _tile_dpbf16ps(2, 5, 6);
                _tile_dpbf16ps(3, 5, 7);
              }
              _tile_stored(0, acc[p][0], 64); _tile_stored(1, acc[p][1], 64);
              _tile_stored(2, acc[p][2], 64); _tile_stored(3, acc[p][3], 64);
              count += 4L * (k1 - k0);
            }
          }
        }
      }
  const double dt = seconds() - t;
  *products = count;
  return dt / static_cast<double>(count);
}

bool request_amx() {
  // Linux >= 5.16: the tile data state is requested per process (ARCH_REQ_XCOMP_PERM, 18)
  if (syscall(SYS_arch_prctl, 0x1023, 18) != 0) return false;
  return __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16");
}

AMX_TARGET int run(double scale) {
  TileConfig cfg;
  for (int i = 0; i < 8; ++i) {
    cfg.colsb[i] = 64;
    cfg.rows[i] = 16;
  }
  _tile_loadconfig(&cfg);
  auto n = [scale](double base) { return static_cast<long>(base * scale) + 1; };
  long products = 0;
  // (warm-up, ~0.3 s: the core's clock and the tile unit's power state settle; shorter runs
  // read up to 1.3x slower)
  no_loads(n(1.5e7));
  std::printf("no_loads %.4f\n", no_loads(n(1e7)) * 1e9);
  std::printf("l1_32kb %.4f\n", cycling(n(5e6), 32) * 1e9);
  std::printf("l2_128kb %.4f\n", cycling(n(5e6), 128) * 1e9);
  for (int c : {64, 48}) {
    conv_loop(1, c, 0, &products);
    const int reps = static_cast<int>(n(40));
    std::printf("conv_c%d %.4f\n", c, conv_loop(reps, c, 0, &products) * 1e9);
    std::printf("conv_c%d_kblock10 %.4f\n", c, conv_loop(reps, c, 10, &products) * 1e9);
  }
  _tile_release();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const double scale = argc > 1 ? std::atof(argv[1]) : 1.0;
  if (!(scale > 0.0)) {
    std::fprintf(stderr, "amx_tile_rate: the scale must be a positive number, got %s\n",
                 argc > 1 ? argv[1] : "");
    return 1;
  }
  if (!request_amx()) {
    std::fprintf(stderr, "amx_tile_rate: no AMX-BF16 for this process (CPU or kernel)\n");
    return 2;
  }
  return run(scale);
}
