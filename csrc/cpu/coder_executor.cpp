#include "coder_executor.hpp"

#include <type_traits>

#include "../range_coder.hpp"

namespace sk {

static_assert(std::is_same<decltype(&coder_omp_executor), slimcoder::Executor>::value,
              "coder_omp_executor must have the signature of slimcoder::Executor");

void coder_omp_executor(int64_t count, int threads, void (*task)(void* ctx, int64_t t),
                        void* ctx) {
  if (count <= 0) return;
  if (threads < 1) threads = 1;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (int64_t t = 0; t < count; ++t) task(ctx, t);
}

}  // namespace sk
