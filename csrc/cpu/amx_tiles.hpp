// Shared AMX-BF16 plumbing of the CPU kernels: the compile-time guard, the target attribute and
// the one tile configuration both kernels use (8 tiles of 16 rows x 64 bytes).
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__) && !defined(SK_NO_AMX)
#define SK_HAVE_AMX_CODE 1
// gcc 12's AVX-512 headers trip -Wmaybe-uninitialized on their own _mm512_undefined_* helpers
#if !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#if !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#else
#define SK_HAVE_AMX_CODE 0
#endif

#include <cstdint>
#include <thread>
#include <vector>
#if defined(_OPENMP)
#include <omp.h>
#endif

namespace sk {

// Runs worker(t) for t in [0, nt) on nt threads, the caller being thread 0. With OpenMP (the
// kernels build with -fopenmp) these are torch's own intra-op workers: once torch is loaded, the
// loader resolves libgomp.so.1 to torch's copy. Fresh std::threads measured no faster than one
// thread right after a torch op (torch's workers keep spinning for milliseconds).
template <class F>
void run_on_threads(int64_t nt, const F& worker) {
  if (nt <= 1) {
    worker(0);
    return;
  }
#if defined(_OPENMP)
#pragma omp parallel num_threads(static_cast<int>(nt))
  worker(omp_get_thread_num());
#else
  std::vector<std::thread> pool;
  pool.reserve(static_cast<size_t>(nt - 1));
  for (int64_t t = 1; t < nt; ++t) pool.emplace_back([&worker, t] { worker(t); });
  worker(0);
  for (auto& th : pool) th.join();
#endif
}

// f(r) for the rows r in [0, rows) (per_row elements each), split over up to nthreads threads in
// contiguous ranges; small inputs on one thread (a parallel region costs more than it saves).
template <class F>
void for_rows(int64_t rows, int64_t per_row, int nthreads, const F& f) {
  const int64_t work = rows * per_row;
  int64_t nt = work / 65536 + 1;
  if (nt > nthreads) nt = nthreads;
  if (nt > rows) nt = rows;
  if (nt < 1) nt = 1;
  run_on_threads(nt, [&](int64_t t) {
    for (int64_t r = rows * t / nt; r < rows * (t + 1) / nt; ++r) f(r);
  });
}

// The CPU has AVX512F + AVX512BW (checked once; false without SK_HAVE_AMX_CODE).
inline bool cpu_avx512bw() {
#if SK_HAVE_AMX_CODE
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  return ok;
#else
  return false;
#endif
}

}  // namespace sk

#if SK_HAVE_AMX_CODE
#include <cstring>

// Functions using AMX / AVX-512 intrinsics carry this, so the files build with default flags.
#define SK_AMX_TARGET                                                                     \
  __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16," \
                        "fma,avx2")))

namespace sk {
namespace amx {

struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// Configures tiles 0..7 as 16 rows x 64 bytes on the calling thread.
SK_AMX_TARGET inline void config_full() {
  TileConfig cfg;
  std::memset(&cfg, 0, sizeof(cfg));
  cfg.palette_id = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  // not _tile_loadconfig: gcc 12's version declares only 8 bytes of the config as read, so the
  // stores of rows/colsb can be dropped as dead (seen: #UD on the first tilezero)
  __asm__ volatile("ldtilecfg %0" : : "m"(cfg) : "memory");
}

SK_AMX_TARGET inline void release() { _tile_release(); }

}  // namespace amx
}  // namespace sk
#endif
