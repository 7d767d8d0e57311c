// The entropy coder's substreams on OpenMP threads (slimcoder::Executor, csrc/range_coder.hpp).
//
// The coder has its own worker pool; a sleeping worker of it takes ~250 us to wake up on the
// project's VM right after a transform (its CPU is busy or idle-halted), more than a whole
// substream takes to code. Torch's OpenMP threads are still spinning then (they wait ~ms after
// each parallel region before they sleep), so the substreams start at once on them. Built into
// slimkernels._cpu_kernels, which shares torch's libgomp.
#pragma once
#include <cstdint>

namespace sk {

// Runs task(ctx, t) for t in [0, count) on up to `threads` OpenMP threads (the caller's team;
// the calling thread is one of them), dynamically scheduled one task at a time. task must not
// throw. Inside a parallel region (nested parallelism off) the calling thread runs them all.
void coder_omp_executor(int64_t count, int threads, void (*task)(void* ctx, int64_t t),
                        void* ctx);

}  // namespace sk
