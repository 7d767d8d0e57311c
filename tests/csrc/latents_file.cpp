// Test driver: the CPU latent kernels (csrc/cpu/latents.cpp) on a case read from a file, built by
// tests/test_latents_portable.py with -DSK_LATENTS_AVX2 so that the AVX2 row kernels run on any
// x86-64 CPU with AVX2 + FMA (the extension takes the AVX-512 ones where the CPU has them).
//
//   latents_file CASE OUT
// CASE: int64 N, C, H, W, out_bf16; int32 sym [N*C*H*W] (NCHW); float medians [C].
// OUT: dequantize_latents' output, [N, H, W, C] fp32 or bf16 (uint16) bytes.
#include <cstdint>
#include <cstdio>
#include <vector>

#include "latents.hpp"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: latents_file CASE OUT\n");
    return 2;
  }
  std::FILE* f = std::fopen(argv[1], "rb");
  if (!f) return 3;
  int64_t head[5];
  if (std::fread(head, sizeof(int64_t), 5, f) != 5) return 4;
  const int64_t n = head[0] * head[1] * head[2] * head[3];
  std::vector<int32_t> sym(static_cast<size_t>(n));
  std::vector<float> med(static_cast<size_t>(head[1]));
  if (std::fread(sym.data(), 4, sym.size(), f) != sym.size()) return 5;
  if (std::fread(med.data(), 4, med.size(), f) != med.size()) return 6;
  std::fclose(f);
  std::vector<uint32_t> out(static_cast<size_t>(n));  // room for fp32; bf16 uses half
  sk::DequantizeArgs a;
  a.sym = sym.data();
  a.N = head[0]; a.C = head[1]; a.H = head[2]; a.W = head[3];
  a.medians = med.data();
  a.out = out.data();
  a.out_bf16 = static_cast<int>(head[4]);
  a.nthreads = 2;
  const int rc = sk::dequantize_latents(a);
  if (rc != 0) {
    std::fprintf(stderr, "dequantize_latents: %s\n", sk::latents_error_message(rc));
    return 7;
  }
  std::FILE* o = std::fopen(argv[2], "wb");
  if (!o) return 8;
  const size_t bytes = static_cast<size_t>(n) * (head[4] ? 2 : 4);
  if (std::fwrite(out.data(), 1, bytes, o) != bytes) return 9;
  std::fclose(o);
  return 0;
}
