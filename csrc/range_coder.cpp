// Interleaved rANS coder: implementation. See range_coder.hpp for the API, docs/coder.md for the
// algorithm and byte layout.
#include "range_coder.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <iomanip>
#include <sstream>
#include <system_error>
#include <limits>
#include <memory>
#include <mutex>
#include <numeric>
#include <thread>

#include <unistd.h>
#if defined(__linux__)
#include <pthread.h>
#include <sys/mman.h>
#include <sched.h>
#define SK_AFFINITY 1
#endif

#if defined(__GNUC__) || defined(__clang__)
#define SK_INLINE inline __attribute__((always_inline))
#define SK_NOINLINE __attribute__((noinline))
#define SK_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define SK_INLINE inline
#define SK_NOINLINE
#define SK_UNLIKELY(x) (x)
#endif

// The renormalisations' x86-64 inline assembly (GCC / Clang); -DSK_NO_ASM: the portable C++
// (tests/test_coding_portable.py checks it writes the same bytes).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(SK_NO_ASM)
#define SK_X86_ASM 1
#else
#define SK_X86_ASM 0
#endif

#ifndef SK_LUT_BITS
#define SK_LUT_BITS 12
#endif

namespace slimcoder {
namespace {

// ---------------------------------------------------------------------------------------------
// Constants of the format.
// State x of every lane lives in [kL, 2^63); renormalisation moves 32-bit words.
constexpr uint64_t kL = 1ull << 31;
constexpr int kLenBits = 6;        // width of the bypass length field of an escape
constexpr int kMaxLen = 32;        // largest legal value of that field
constexpr int kChunk = 16;         // bypass payload is coded in chunks of at most 16 bits
constexpr int kMaxWordsPerSymbol = 4;  // escape symbol + length field + two payload chunks
constexpr int64_t kStateBytes = 8 * kLanes;
// A block of kLanes symbols reads at most this many bytes: the unchecked fast path needs them.
constexpr int64_t kBlockBytes = 4 * kMaxWordsPerSymbol * kLanes;

std::string str(int64_t v) { return std::to_string(v); }
std::string fmt(double v) {
  std::ostringstream os;
  os << std::setprecision(17) << v;
  return os.str();
}

SK_INLINE uint32_t load32(const uint8_t* p) {
  return uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) | (uint32_t(p[3]) << 24);
}
SK_INLINE uint64_t load64(const uint8_t* p) {
  return uint64_t(load32(p)) | (uint64_t(load32(p + 4)) << 32);
}
SK_INLINE void store32(uint8_t* p, uint32_t v) {
  p[0] = uint8_t(v); p[1] = uint8_t(v >> 8); p[2] = uint8_t(v >> 16); p[3] = uint8_t(v >> 24);
}
SK_INLINE void store64(uint8_t* p, uint64_t v) {
  store32(p, uint32_t(v)); store32(p + 4, uint32_t(v >> 32));
}

int bit_length(uint64_t v) {
  int k = 0;
  while (v) { ++k; v >>= 1; }
  return k;
}

void check_precision(int precision) {
  if (precision < kMinPrecision || precision > kMaxPrecision)
    throw Error("precision must be in [" + str(kMinPrecision) + ", " + str(kMaxPrecision) +
                "], got " + str(precision));
}

// Position of the first index outside [0, num_cdfs), or -1.
int64_t first_bad_index(const int32_t* indexes, int64_t n, int64_t num_cdfs) {
  // Branch-free reduction first (vectorises); locate the culprit only on failure.
  int32_t lo = 0, hi = 0;
  if (n > 0) {
    lo = hi = indexes[0];
    for (int64_t j = 0; j < n; ++j) {
      lo = std::min(lo, indexes[j]);
      hi = std::max(hi, indexes[j]);
    }
  }
  if (lo < 0 || int64_t(hi) >= num_cdfs) {
    for (int64_t j = 0; j < n; ++j)
      if (indexes[j] < 0 || int64_t(indexes[j]) >= num_cdfs) return j;
  }
  return -1;
}

Error index_error(int64_t at, int32_t value, int64_t num_cdfs) {
  return Error("indexes[" + str(at) + "] (flattened) = " + str(value) + " is out of range [0, " +
               str(num_cdfs) + ") (num_cdfs = cdfs.shape[0])");
}

// The first bad index (position in the indexes array) among those read by symbols [b, e) when
// symbol j uses indexes[j / run], or -1.
int64_t first_bad_index_of(const int32_t* indexes, int64_t run, int64_t b, int64_t e,
                           int64_t num_cdfs) {
  if (e <= b) return -1;
  const int64_t r0 = b / run, r1 = (e - 1) / run + 1;
  const int64_t at = first_bad_index(indexes + r0, r1 - r0, num_cdfs);
  return at < 0 ? -1 : r0 + at;
}

// Checks a run length: run >= 1 dividing n (the indexes array holds n / run entries).
void check_run(int64_t n, int64_t run) {
  if (run < 1) throw Error("index run must be >= 1, got " + str(run));
  if (n % run != 0)
    throw Error("index run " + str(run) + " does not divide the symbol count " + str(n) +
                " (indexes must hold symbol count / run entries)");
}

void atomic_min(std::atomic<int64_t>& a, int64_t v) {
  int64_t cur = a.load(std::memory_order_relaxed);
  while (v < cur && !a.compare_exchange_weak(cur, v, std::memory_order_relaxed)) {
  }
}

// ---------------------------------------------------------------------------------------------
// Container header: [version u8][precision u8][varint n][varint K][K x varint substream bytes].
void put_varint(std::vector<uint8_t>& out, uint64_t v) {
  while (v >= 0x80) { out.push_back(uint8_t(v) | 0x80); v >>= 7; }
  out.push_back(uint8_t(v));
}

uint64_t get_varint(const uint8_t* data, size_t size, size_t& pos, const char* what) {
  uint64_t v = 0;
  for (int shift = 0; shift < 63; shift += 7) {
    if (pos >= size)
      throw Error(std::string("corrupt stream: header ends inside the ") + what + " field");
    const uint8_t b = data[pos++];
    v |= uint64_t(b & 0x7f) << shift;
    if (!(b & 0x80)) return v;
  }
  throw Error(std::string("corrupt stream: the ") + what + " field is longer than 9 bytes");
}

struct Header {
  int precision = 0;
  int64_t n = 0;
  std::vector<int64_t> offsets;  // K + 1 byte offsets of the substreams into data
};

Header parse_header(const uint8_t* data, size_t size) {
  if (size < 2)
    throw Error("corrupt stream: " + str(int64_t(size)) +
                " bytes is too short for the header (an encoded string has at least " +
                str(4 + kStateBytes) + ")");
  if (data[0] != kFormatVersion)
    throw Error("corrupt stream or unknown format: first byte is " + str(data[0]) +
                ", this decoder reads format " + str(kFormatVersion));
  Header h;
  h.precision = data[1];
  size_t pos = 2;
  const uint64_t n = get_varint(data, size, pos, "symbol count");
  const uint64_t k = get_varint(data, size, pos, "stream count");
  if (n > uint64_t(std::numeric_limits<int64_t>::max() / 8))
    throw Error("corrupt stream: symbol count " + std::to_string(n) + " is implausible");
  // Every symbol, the escape included, has a frequency >= 1 of at most 2^p: one costs at least
  // -log2(1 - 2^-p) > 2^-p bits, so `size` bytes hold fewer than (8 * size + 64) * 2^p symbols
  // (64 bits of slack for the coder's final state). A header claiming more would make the
  // caller allocate (and decode into) memory for symbols the data cannot hold.
  const int pb = std::min<int>(std::max<int>(h.precision, 1), kMaxPrecision);
  if ((unsigned __int128)n > ((unsigned __int128)size * 8 + 64) << pb)
    throw Error("corrupt stream: symbol count " + std::to_string(n) + " cannot fit in " +
                std::to_string(size) + " bytes at precision " + str(h.precision));
  h.n = int64_t(n);
  if (k < 1 || k > std::max<uint64_t>(1, n) || k > size)
    throw Error("corrupt stream: stream count " + std::to_string(k) + " is invalid for " +
                std::to_string(n) + " symbols in " + std::to_string(size) + " bytes");
  std::vector<uint64_t> sizes(k);
  for (uint64_t s = 0; s < k; ++s) {
    sizes[s] = get_varint(data, size, pos, "substream size");
    if (sizes[s] < uint64_t(kStateBytes) || sizes[s] % 4 != 0 || sizes[s] > size)
      throw Error("corrupt stream: substream " + std::to_string(s) + " has an invalid size " +
                  std::to_string(sizes[s]) + " (must be a multiple of 4, >= " + str(kStateBytes) +
                  ")");
  }
  h.offsets.resize(k + 1);
  uint64_t off = pos;
  h.offsets[0] = int64_t(off);
  for (uint64_t s = 0; s < k; ++s) {
    off += sizes[s];
    if (off > size)
      throw Error("corrupt stream: substream sizes add up to more than the " +
                  std::to_string(size) + " bytes given (truncated data?)");
    h.offsets[s + 1] = int64_t(off);
  }
  if (off != size)
    throw Error("corrupt stream: " + std::to_string(size - off) +
                " trailing bytes after the last substream");
  return h;
}

// First symbol of substream s when n symbols are split into k contiguous chunks.
SK_INLINE int64_t chunk_begin(int64_t n, int64_t k, int64_t s) {
  return int64_t((__int128)n * s / k);
}

// ---------------------------------------------------------------------------------------------
// Threads. One process-wide pool of worker threads, created on first use and kept for the next
// calls (starting threads per call costs ~35 us each on a VM, a good part of a 1 ms call).
// A job is a number of tasks; the calling thread runs tasks itself and claims them dynamically
// together with the workers, so a worker that wakes late (busy machine) just finds less to do.
// After a job, workers spin briefly for the next one (a futex wake-up costs tens of us on a
// VM), then sleep on a condition variable. Only one job runs on the pool at a time; a caller
// that finds it busy (another Python thread coding) starts its own threads as before.
// fork(): the child gets a new pool (the parent's threads do not exist there; its pool object,
// whose mutexes may be held, is left alone and leaked).
constexpr int64_t kMaxPoolTasks = 0xffff;  // a job's task count and next task share one word

class WorkerPool {
 public:
  explicit WorkerPool(pid_t pid) : pid_(pid) {
#ifdef SK_AFFINITY
    CPU_ZERO(&restore_);
#endif
  }
  pid_t pid() const { return pid_; }

  // Runs fn(ctx, t) for t in [0, count) (count <= kMaxPoolTasks) on at most `threads` threads,
  // the caller included. fn must not throw. Returns false without running anything if the pool
  // is busy with another caller's job.
  bool try_run(int64_t count, int threads, TaskFn fn, void* ctx) {
    std::unique_lock<std::mutex> use(use_mu_, std::try_to_lock);
    if (!use.owns_lock()) return false;
    const int want = int(std::min<int64_t>(threads, count)) - 1;  // workers besides the caller
    while (int(workers_.size()) < want && int(workers_.size()) < kMaxWorkers) {
      try {
        const int id = int(workers_.size());
        workers_.emplace_back([this, id] { worker_loop(id); });
      } catch (const std::system_error&) {
        break;  // out of threads: fewer helpers
      }
    }
    fn_.store(fn, std::memory_order_relaxed);
    ctx_.store(ctx, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    helpers_.store(std::min<int>(want, int(workers_.size())), std::memory_order_relaxed);
    const uint32_t gen = ++gen_;
    int sleepers;
    {
      std::lock_guard<std::mutex> lk(mu_);
      sleepers = sleepers_;
    }
    if (sleepers) steer_away_from_caller();
    {
      std::lock_guard<std::mutex> lk(mu_);
      // Publishes the fields above: a worker reads them only after claiming a task of `gen`.
      claim_.store((uint64_t(gen) << 32) | (uint64_t(count) << 16), std::memory_order_release);
      sleepers = sleepers_;
    }
    if (sleepers) wake_cv_.notify_all();
    run_tasks(gen);
    // Wait for the tasks that workers claimed. Spin first (they are usually nearly done), yield
    // for a while (a descheduled worker needs a core), then sleep.
    const auto t0 = std::chrono::steady_clock::now();
    bool spin = true;
    for (int i = 1; done_.load(std::memory_order_acquire) != count; ++i) {
      if (spin) {
        cpu_relax();
        if ((i & 63) == 0 && std::chrono::steady_clock::now() - t0 > kCallerSpin) {
          spin = false;
          i = 0;
        }
      } else if (i < 64) {
        std::this_thread::yield();
      } else {
        std::unique_lock<std::mutex> lk(mu_);
        done_cv_.wait(lk, [&] { return done_.load(std::memory_order_acquire) == count; });
        break;
      }
    }
    return true;
  }

 private:
  // The caller spins up to 50 us for the workers' last tasks; a worker stays awake 200 us
  // after a job, waiting for the next one.
  static constexpr std::chrono::microseconds kCallerSpin{50};
  static constexpr int64_t kWorkerSpinNs = 200000;

  static SK_INLINE void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
  }

  // A sleeping worker woken by the caller may be queued on the caller's CPU (the scheduler
  // prefers the waker's CPU, and on the project's VM it does not look for an idle one): then
  // either the caller waits for the CPU or the worker does, and the two substreams run one
  // after the other (measured: 2 streams slower than 1 for calls after a few ms of idle). So
  // before waking them, the caller keeps the workers off its own CPU; each worker lifts that
  // restriction as soon as it runs.
  void steer_away_from_caller() {
#ifdef SK_AFFINITY
    cpu_set_t mine;
    CPU_ZERO(&mine);
    const int cpu = sched_getcpu();
    if (cpu < 0 || cpu >= CPU_SETSIZE || sched_getaffinity(0, sizeof(mine), &mine) != 0 ||
        !CPU_ISSET(cpu, &mine) || CPU_COUNT(&mine) < 2)
      return;
    cpu_set_t away = mine;
    CPU_CLR(cpu, &away);
    {
      std::lock_guard<std::mutex> lk(mu_);
      restore_ = mine;  // what the workers go back to: the caller's CPUs
    }
    const int n = helpers_.load(std::memory_order_relaxed);
    for (int i = 0; i < n; ++i) {
      if (pthread_setaffinity_np(workers_[size_t(i)].native_handle(), sizeof(away), &away) == 0)
        steered_[i].store(true, std::memory_order_relaxed);
    }
#endif
  }

  void unsteer(int id) {
#ifdef SK_AFFINITY
    if (!steered_[id].exchange(false, std::memory_order_relaxed)) return;
    cpu_set_t m;
    {
      std::lock_guard<std::mutex> lk(mu_);
      m = restore_;
    }
    pthread_setaffinity_np(pthread_self(), sizeof(m), &m);
#else
    (void)id;
#endif
  }

  // Takes the next task of job `gen`; false when that job has none left (or is over).
  bool claim(uint32_t gen, int64_t& task) {
    uint64_t c = claim_.load(std::memory_order_acquire);
    for (;;) {
      const uint64_t count = (c >> 16) & 0xffff, next = c & 0xffff;
      if (uint32_t(c >> 32) != gen || next >= count) return false;
      if (claim_.compare_exchange_weak(c, c + 1, std::memory_order_acq_rel,
                                       std::memory_order_acquire)) {
        task = int64_t(next);
        return true;
      }
    }
  }

  // Runs tasks of job `gen` until none is left. A claimed task keeps its job (and the caller's
  // ctx) alive: the caller waits until every task is done before it returns, so fn_ and ctx_
  // read after a successful claim belong to that job.
  void run_tasks(uint32_t gen) {
    int64_t t;
    while (claim(gen, t)) {
      const int64_t count = int64_t((claim_.load(std::memory_order_relaxed) >> 16) & 0xffff);
      fn_.load(std::memory_order_relaxed)(ctx_.load(std::memory_order_relaxed), t);
      if (done_.fetch_add(1, std::memory_order_acq_rel) + 1 == count) {
        std::lock_guard<std::mutex> lk(mu_);  // the caller may be going to sleep
        done_cv_.notify_all();
      }
    }
  }

  void worker_loop(int id) {
    uint32_t seen = uint32_t(claim_.load(std::memory_order_acquire) >> 32);
    auto gen_now = [&] { return uint32_t(claim_.load(std::memory_order_acquire) >> 32); };
    for (;;) {
      // Wait for the next job: spin, then sleep.
      uint32_t g = gen_now();
      if (g == seen) {
        const auto t0 = std::chrono::steady_clock::now();
        for (int i = 1; (g = gen_now()) == seen; ++i) {
          cpu_relax();
          if ((i & 255) == 0 &&
              std::chrono::steady_clock::now() - t0 > std::chrono::nanoseconds(kWorkerSpinNs))
            break;
        }
      }
      if (g == seen) {
        std::unique_lock<std::mutex> lk(mu_);
        ++sleepers_;
        wake_cv_.wait(lk, [&] { return gen_now() != seen; });
        --sleepers_;
        g = gen_now();
      }
      unsteer(id);
      seen = g;
      if (id < helpers_.load(std::memory_order_relaxed)) run_tasks(seen);
    }
  }

  static constexpr int kMaxWorkers = 255;

  const pid_t pid_;
#ifdef SK_AFFINITY
  cpu_set_t restore_;  // guarded by mu_: the CPUs of the last caller that steered the workers
#endif
  std::atomic<bool> steered_[kMaxWorkers] = {};
  std::mutex use_mu_;                 // one job at a time
  uint32_t gen_ = 0;                  // guarded by use_mu_
  std::vector<std::thread> workers_;  // never joined: the pool lives as long as the process
  std::mutex mu_;
  std::condition_variable wake_cv_, done_cv_;
  int sleepers_ = 0;                   // guarded by mu_
  std::atomic<uint64_t> claim_{0};     // job generation << 32 | task count << 16 | next task
  std::atomic<TaskFn> fn_{nullptr};
  std::atomic<void*> ctx_{nullptr};
  std::atomic<int64_t> done_{0};
  std::atomic<int> helpers_{0};
};

// The process's instance of T (WorkerPool, TableCache), created on first use. A forked child
// gets its own: the parent's may have threads that do not exist in the child, or mutexes locked
// at the time of the fork; it is left alone (leaked) there.
template <typename T>
T* per_process(std::atomic<T*>& slot) {
  const pid_t pid = getpid();
  for (;;) {
    T* p = slot.load(std::memory_order_acquire);
    if (p && p->pid() == pid) return p;
    T* fresh = new T(pid);
    if (slot.compare_exchange_strong(p, fresh, std::memory_order_acq_rel)) return fresh;
    delete fresh;
  }
}

WorkerPool* worker_pool() {
  static std::atomic<WorkerPool*> pool{nullptr};
  return per_process(pool);
}

// Fallback when the pool is busy: threads started for this call (the calling thread is one).
void run_spawned(int64_t count, int threads, TaskFn fn, void* ctx) {
  std::atomic<int64_t> next{0};
  auto work = [&] {
    for (int64_t t; (t = next.fetch_add(1, std::memory_order_relaxed)) < count;) fn(ctx, t);
  };
  std::vector<std::thread> pool;
  pool.reserve(size_t(threads - 1));
  try {
    for (int i = 1; i < threads; ++i) pool.emplace_back(work);
  } catch (const std::system_error&) {
    // Out of threads: the others (the calling thread at least) do the rest.
  }
  work();
  for (auto& th : pool) th.join();
}

// Runs f(s) for s in [0, count) on up to `threads` threads: the executor's, or the worker pool's
// when it is null. Exceptions thrown by f are caught per task; the one of the lowest task is
// rethrown after all tasks finished.
template <typename F>
void parallel_for(int64_t count, int threads, const F& f, Executor executor = nullptr) {
  if (threads <= 1 || count <= 1) {
    for (int64_t s = 0; s < count; ++s) f(s);
    return;
  }
  struct Ctx {
    const F* f = nullptr;
    int64_t count = 0, groups = 0;
    std::mutex mu;
    int64_t err_at = std::numeric_limits<int64_t>::max();
    std::exception_ptr err;
  } ctx;
  ctx.f = &f;
  ctx.count = count;
  ctx.groups = std::min(count, kMaxPoolTasks);  // task g runs a contiguous group of indices
  const TaskFn fn = [](void* p, int64_t g) {
    Ctx& c = *static_cast<Ctx*>(p);
    const int64_t b = int64_t((__int128)c.count * g / c.groups);
    const int64_t e = int64_t((__int128)c.count * (g + 1) / c.groups);
    for (int64_t s = b; s < e; ++s) {
      try {
        (*c.f)(s);
      } catch (...) {
        std::lock_guard<std::mutex> lk(c.mu);
        if (s < c.err_at) {
          c.err_at = s;
          c.err = std::current_exception();
        }
      }
    }
  };
  if (executor)
    executor(ctx.groups, threads, fn, &ctx);
  else if (!worker_pool()->try_run(ctx.groups, threads, fn, &ctx))
    run_spawned(ctx.groups, threads, fn, &ctx);
  if (ctx.err) std::rethrow_exception(ctx.err);
}

constexpr int64_t kMaxThreads = 256;

int resolve_threads(int threads, int64_t streams) {
  int64_t t = threads;
  if (t <= 0) {
    const unsigned hw = std::thread::hardware_concurrency();
    t = hw ? hw : 1;
  }
  return int(std::max<int64_t>(1, std::min({t, streams, kMaxThreads})));
}

// ---------------------------------------------------------------------------------------------
// Encoder. Symbols are coded last to first; words are written backwards into a buffer so that
// the decoder reads them forwards.
// One coded symbol of a CDF row, with the division by its frequency done as a multiplication
// (ryg_rans' rans64 construction after Alverson, "Integer division using reciprocals"): with
// q = mulhi(x, rcp) >> shift = x / freq exactly for every state x < 2^63,
//   x' = (x / freq) * 2^p + x % freq + start = x + bias + q * cmpl,   cmpl = 2^p - freq.
// freq = 1 cannot have a reciprocal below 1: rcp = 2^64 - 1 and shift = 0 give q = x - 1, and
// bias = start + 2^p - 1 makes up for it. The bytes are those of the division (same x').
struct EncSym {
  uint64_t rcp;
  uint32_t bias;
  uint16_t cmpl;  // 2^p - freq (freq >= 1, p <= 16)
  uint8_t shift;
  uint8_t pad;
};
static_assert(sizeof(EncSym) == 16, "EncSym is meant to be 16 bytes");

EncSym make_enc_sym(uint32_t start, uint32_t freq, int p) {
  EncSym e{};
  e.cmpl = uint16_t((1u << p) - freq);
  if (freq < 2) {
    e.rcp = ~0ull;
    e.shift = 0;
    e.bias = start + (1u << p) - 1;
  } else {
    uint32_t shift = 0;  // ceil(log2(freq)); freq <= 2^16 in validated tables
    while (shift < 31 && freq > (1u << shift)) ++shift;
    const uint64_t x1 = 1ull << (shift + 31);
    const uint64_t t1 = x1 / freq;
    const uint64_t x0 = (freq - 1) + ((x1 % freq) << 32);
    const uint64_t t0 = x0 / freq;
    e.rcp = t0 + (t1 << 32);
    e.shift = uint8_t(shift - 1);
    e.bias = start;
  }
  return e;
}

// Indexes come one per symbol (run == 1) or one per run of `run` consecutive symbols (symbol j
// uses idx[j / run]: a latent's channel index for its h * w symbols). Runs of at least
// kMinRowRun symbols are coded run by run, a row's constants read once per run; shorter runs
// (a group of 4 lanes spans several rows) are written out a block at a time into a small index
// buffer that stays in L1 and coded as one index per symbol (the run loops were 0.7x there).
constexpr int64_t kMinRowRun = 4;
constexpr int64_t kIdxBlock = 2048;  // symbols per block (a multiple of kLanes)
static_assert(kIdxBlock % kLanes == 0, "blocks must keep the lanes of the format");

// The indexes of symbols [lo, hi) (hi - lo <= kIdxBlock): p[j - lo] for symbol j. A view of idx
// when run == 1, else the runs written out into buf.
const int32_t* block_indexes(const int32_t* idx, int64_t run, int64_t lo, int64_t hi,
                             int32_t* buf) {
  if (run == 1) return idx + lo;
  int64_t r = lo / run;
  for (int64_t j = lo; j < hi; ++r) {
    const int64_t e = std::min(hi, (r + 1) * run);
    std::fill(buf + (j - lo), buf + (e - lo), idx[r]);
    j = e;
  }
  return buf;
}

struct EncCtx {
  const int32_t* sym;
  const int32_t* idx;
  int64_t run;
  const int32_t* cdfs;
  const EncSym* enc;  // [num_cdfs, stride]: entry s of row i codes symbol s of CDF i
  int64_t stride;
  const int32_t* lengths;
  const int32_t* offsets;
  int p;
};

// Codes (start, freq) at scale 2^p.
SK_INLINE void enc_put(uint64_t& x, uint32_t*& ptr, uint32_t start, uint32_t freq, int p) {
  const uint64_t xmax = uint64_t(freq) << (63 - p);  // ((kL >> p) << 32) * freq
  const bool c = x >= xmax;
  ptr[-1] = uint32_t(x);
  ptr -= c;
  x = c ? (x >> 32) : x;
  x = ((x / freq) << p) + (x % freq) + start;
}

// Codes k (1..16) raw bits: a uniform symbol of frequency 1 at scale 2^k.
SK_INLINE void enc_bits(uint64_t& x, uint32_t*& ptr, uint32_t bits, int k) {
  if (x >= (1ull << (63 - k))) {
    *--ptr = uint32_t(x);
    x >>= 32;
  }
  x = (x << k) | bits;
}

// Escape: value v (outside [0, nd)) as the escape symbol followed by bypass bits. The decoder
// reads the escape, a 6-bit length k, then the k low bits of w = zigzag(v) + 1 (w in [1, 2^33)).
// The state and write position after an escape (returned by value: the hot loop keeps them in
// registers; a call through references would hold them in memory for every symbol).
struct EncPos {
  uint64_t x;
  uint32_t* ptr;
};
SK_NOINLINE EncPos enc_escape(uint64_t x, uint32_t* ptr, int64_t v, int64_t nd,
                              const int32_t* row, int p) {
  const uint64_t z = v < 0 ? 2 * uint64_t(-(v + 1)) + 1 : 2 * uint64_t(v - nd);
  const uint64_t w = z + 1;
  const int k = bit_length(w) - 1;  // 0..32
  const uint64_t payload = w - (1ull << k);
  if (k > kChunk) enc_bits(x, ptr, uint32_t(payload >> kChunk), k - kChunk);
  const int lo = std::min(k, kChunk);
  if (lo > 0) enc_bits(x, ptr, uint32_t(payload & ((1ull << lo) - 1)), lo);
  enc_bits(x, ptr, uint32_t(k), kLenBits);
  const uint32_t start = uint32_t(row[nd]);
  enc_put(x, ptr, start, uint32_t(row[nd + 1]) - start, p);
  return EncPos{x, ptr};
}

// Asks the CPU to bring [p, p + bytes) into its caches (a prefetch never faults). The decoder's
// run loop fetches the next run's tables while it decodes this one: right after a transform has
// evicted them, each line would otherwise be a miss on first use (a lookup row, 4 KiB at 12 bits
// with uint8 entries, 8 KiB with uint16 ones, is read at uniformly random buckets: a run touches
// all of it). Measured right after the decoder transform (768x512, 2-core AMX Xeon VM):
// 2-substream decode 0.94 -> 0.63 ms at w=192, 0.39 -> 0.31 at w=96, one substream 0.28 -> 0.26
// at w=48. The encoder reads few lines of its rows (values near the median): the same prefetch
// there changed nothing measurable. Only for runs long enough to touch most of a row (a shorter
// run would pay 64 prefetches for a few symbols: 17 ns per symbol at runs of 2).
constexpr int64_t kMinPrefetchRun = 256;
SK_INLINE void prefetch_bytes(const void* p, size_t bytes) {
#if defined(__GNUC__) || defined(__clang__)
  const char* b = static_cast<const char*>(p);
  for (size_t i = 0; i < bytes; i += 64) __builtin_prefetch(b + i);
#else
  (void)p;
  (void)bytes;
#endif
}

// The constants of CDF row i that coding one of its symbols needs (the run coder keeps them in
// registers for a whole run of symbols that share the row).
struct EncRow {
  const EncSym* enc;   // entry v codes value v
  const int32_t* cdf;  // the CDF row (for the escape)
  int64_t nd;          // values [0, nd) are coded directly, the others escaped
  int32_t offset;      // value = symbol - offset
};

SK_INLINE EncRow enc_row(const EncCtx& c, int32_t i) {
  return EncRow{c.enc + int64_t(i) * c.stride, c.cdfs + int64_t(i) * c.stride,
                int64_t(c.lengths[i]) - 2, c.offsets[i]};
}

// Renormalisation before coding a symbol of frequency freq = 2^p - cmpl at scale 2^p: when
// x >= freq << (63 - p), the low word of x goes out and x keeps its high word. The test is
// x + (cmpl << (63 - p)) >= 2^63 (x < 2^63), the sign of one addition: `shifted_cmpl` is
// cmpl << (63 - p). The word is stored whether or not it goes out (ptr moves only if it does).
// Without branches: whether a word goes out depends on the data (at 1.6 bits per symbol, one
// symbol in ~20 per lane). GCC turns the plain C++ form of this test into a branch, hence the
// x86-64 assembly. 768x512 latents of the bundled model, one substream, 2-core AMX Xeon VM, ns
// per symbol at w=72 (0.72 bits per symbol) / w=192 (1.65): the previous code (a comparison with
// freq << (63 - p), ptr moved by setcc and a subtraction) 1.61 / 1.64; this 1.32 / 1.37; the
// branch 1.25 / 1.64 (better at low rates, where a word rarely goes out, much worse at high ones:
// the conditional moves cost the same at every rate).
SK_INLINE void enc_renorm(uint64_t& x, uint32_t*& ptr, uint64_t shifted_cmpl) {
  ptr[-1] = uint32_t(x);
#if SK_X86_ASM
  const uint64_t hi = x >> 32;
  uint32_t* const down = ptr - 1;
  asm("add %[x], %[t]\n\t"
      "cmovs %[hi], %[x]\n\t"
      "cmovs %[down], %[ptr]"
      : [x] "+r"(x), [ptr] "+r"(ptr), [t] "+r"(shifted_cmpl)
      : [hi] "r"(hi), [down] "r"(down)
      : "cc");
#else
  const bool c = int64_t(x + shifted_cmpl) < 0;
  ptr -= c;
  x = c ? (x >> 32) : x;
#endif
}

// Codes one symbol of row r. kP: the precision when known at compile time (0: p). kKeyed (the
// lane halves below): every word this symbol may write gets `key` at the same place in a
// parallel array, `delta` words above the word (one more store per symbol).
template <int kP, bool kKeyed = false>
SK_INLINE void enc_sym(const EncRow& r, int p_rt, int32_t sym, uint64_t& x, uint32_t*& ptr,
                       ptrdiff_t delta = 0, uint32_t key = 0) {
  const int p = kP ? kP : p_rt;
  const int64_t v = int64_t(sym) - int64_t(r.offset);
  if (SK_UNLIKELY(uint64_t(v) >= uint64_t(r.nd))) {
    const EncPos o = enc_escape(x, ptr, v, r.nd, r.cdf, p);
    if (kKeyed)
      for (uint32_t* w = o.ptr; w < ptr; ++w) w[delta] = key;
    x = o.x;
    ptr = o.ptr;
    return;
  }
  const EncSym e = r.enc[v];
  if (kKeyed) ptr[delta - 1] = key;
  enc_renorm(x, ptr, uint64_t(e.cmpl) << (63 - p));
  const uint64_t q = uint64_t((unsigned __int128)x * e.rcp >> 64) >> e.shift;
  x = x + e.bias + q * e.cmpl;
}

template <int kP>
SK_INLINE void enc_one(const EncCtx& c, int32_t sym, int32_t i, uint64_t& x, uint32_t*& ptr) {
  enc_sym<kP>(enc_row(c, i), c.p, sym, x, ptr);
}

// One encoded substream: bytes [data, data + size), in the caller's scratch buffer or in `own`
// when it outgrew its share of the scratch buffer.
struct Piece {
  const uint8_t* data = nullptr;
  size_t size = 0;
  std::unique_ptr<uint32_t[]> own;
};

// Moves the words written so far, [ptr, top), to a buffer twice as large (at least `need` words
// free below them) owned by `out`; returns the new write position. lo and top are updated.
SK_NOINLINE uint32_t* enc_grow(uint32_t*& lo, uint32_t*& top, uint32_t* ptr, size_t need,
                               Piece& out) {
  const size_t used = size_t(top - ptr);
  const size_t ncap = std::max(2 * size_t(top - lo), used + need + 64);
  std::unique_ptr<uint32_t[]> nb(new uint32_t[ncap]);
  std::memcpy(nb.get() + ncap - used, ptr, used * sizeof(uint32_t));
  lo = nb.get();
  top = lo + ncap;
  out.own = std::move(nb);
  return top - used;
}

// Room for one group of kLanes symbols plus the final states below ptr, checked once per group:
// ptr, or the position in a larger buffer.
SK_INLINE uint32_t* enc_room(uint32_t* ptr, uint32_t*& lo, uint32_t*& top, Piece& out) {
  constexpr size_t kNeed = size_t(kMaxWordsPerSymbol) * kLanes + 2 * kLanes;
  return SK_UNLIKELY(size_t(ptr - lo) < kNeed) ? enc_grow(lo, top, ptr, kNeed, out) : ptr;
}

// Codes symbol j of row r on its lane, (j - begin) & 3.
template <int kP>
SK_INLINE void enc_lane(const EncCtx& c, const EncRow& r, int64_t j, int64_t begin, uint64_t& x0,
                        uint64_t& x1, uint64_t& x2, uint64_t& x3, uint32_t*& ptr) {
  switch ((j - begin) & 3) {
    case 0: enc_sym<kP>(r, c.p, c.sym[j], x0, ptr); break;
    case 1: enc_sym<kP>(r, c.p, c.sym[j], x1, ptr); break;
    case 2: enc_sym<kP>(r, c.p, c.sym[j], x2, ptr); break;
    default: enc_sym<kP>(r, c.p, c.sym[j], x3, ptr); break;
  }
}

// Encodes symbols [begin, end) into one substream (kLanes states then the words), written
// backwards from the end of words [region, region + cap). Symbol j goes to lane (j - begin) & 3;
// symbols are coded from the last one down (the decoder reads them forwards).
template <int kP>
void encode_substream(const EncCtx& ctx, int64_t begin, int64_t end, uint32_t* region,
                      size_t cap, Piece& out) {
  // A local copy: the word stores below cannot alias it, so its fields stay in registers.
  const EncCtx c = ctx;
  uint64_t x0 = kL, x1 = kL, x2 = kL, x3 = kL;
  static_assert(kLanes == 4, "the unrolled loops below assume 4 lanes");
  uint32_t* lo = region;
  uint32_t* top = region + cap;
  uint32_t* ptr = top;  // the next word goes to ptr[-1]
  if (c.run >= kMinRowRun) {
    // Runs of symbols sharing one CDF row (a latent channel's h * w symbols): the row's
    // constants are read once per run, not once per symbol (same bytes).
    int64_t r = end > begin ? (end - 1) / c.run : 0;  // the run of symbol j, counted down
    for (int64_t j = end - 1; j >= begin; --r) {
      const int64_t rb = std::max(begin, r * c.run);
      const EncRow row = enc_row(c, c.idx[r]);
      for (; j >= rb && ((j - begin) & 3) != 3; --j) {
        ptr = enc_room(ptr, lo, top, out);
        enc_lane<kP>(c, row, j, begin, x0, x1, x2, x3, ptr);
      }
      for (; j - 3 >= rb; j -= 4) {
        ptr = enc_room(ptr, lo, top, out);
        enc_sym<kP>(row, c.p, c.sym[j], x3, ptr);
        enc_sym<kP>(row, c.p, c.sym[j - 1], x2, ptr);
        enc_sym<kP>(row, c.p, c.sym[j - 2], x1, ptr);
        enc_sym<kP>(row, c.p, c.sym[j - 3], x0, ptr);
      }
      for (; j >= rb; --j) {
        ptr = enc_room(ptr, lo, top, out);
        enc_lane<kP>(c, row, j, begin, x0, x1, x2, x3, ptr);
      }
    }
  } else {
    // One index per symbol, a block at a time from the last block down; every block starts at
    // begin + a multiple of kIdxBlock, so only the last one ends with a partial group of lanes.
    int32_t ibuf[kIdxBlock];
    const int64_t m = end - begin;
    for (int64_t blk = m > 0 ? (m - 1) / kIdxBlock : -1; blk >= 0; --blk) {
      const int64_t b0 = begin + blk * kIdxBlock;
      const int64_t mb = std::min(end, b0 + kIdxBlock) - b0;
      const int32_t* ix = block_indexes(c.idx, c.run, b0, b0 + mb, ibuf);
      const int32_t* sy = c.sym + b0;
      const int64_t m4 = mb & ~int64_t(3);
      for (int64_t j = mb - 1; j >= m4; --j) {
        ptr = enc_room(ptr, lo, top, out);
        enc_lane<kP>(c, enc_row(c, ix[j]), b0 + j, begin, x0, x1, x2, x3, ptr);
      }
      for (int64_t j = m4 - 4; j >= 0; j -= 4) {
        ptr = enc_room(ptr, lo, top, out);
        enc_one<kP>(c, sy[j + 3], ix[j + 3], x3, ptr);
        enc_one<kP>(c, sy[j + 2], ix[j + 2], x2, ptr);
        enc_one<kP>(c, sy[j + 1], ix[j + 1], x1, ptr);
        enc_one<kP>(c, sy[j], ix[j], x0, ptr);
      }
    }
  }
  ptr = enc_room(ptr, lo, top, out);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  for (uint32_t* w = ptr; w < top; ++w) {  // words are little-endian in the format
    const uint32_t v = *w;
    store32(reinterpret_cast<uint8_t*>(w), v);
  }
#endif
  ptr -= 2 * kLanes;
  uint8_t* st = reinterpret_cast<uint8_t*>(ptr);
  store64(st, x0);
  store64(st + 8, x1);
  store64(st + 16, x2);
  store64(st + 24, x3);
  out.data = st;
  out.size = size_t(top - ptr) * sizeof(uint32_t);
}

// ---------------------------------------------------------------------------------------------
// Lane halves: one substream coded by two threads, same bytes. Lanes {0, 1} and {2, 3} of a
// substream never read each other's state; they only share the word buffer, into which the
// encoder writes words in the order it codes symbols (from the last down; in a group of kLanes
// symbols, lane 3 first). So each half codes its own lanes into its own buffer, tagging every
// word with its group (j - begin) >> 2, and the halves' words are merged by group: in the
// decoder's (forward) order groups ascend, and within a group the words of lanes {0, 1} come
// before those of lanes {2, 3}. A 768x512 latent at w=48 (73,728 symbols) writes ~1,300 words;
// at ~2 bits a symbol (28,800 words for 295k symbols) the merge is worth merging from both ends.

// The words of one half in the decoder's order: words[0..count) tagged keys[0..count), and the
// final states of its lanes 2h (lo) and 2h + 1 (hi).
struct HalfPiece {
  const uint32_t* words = nullptr;
  const uint32_t* keys = nullptr;
  size_t count = 0;
  uint64_t lo = kL, hi = kL;
  std::unique_ptr<uint32_t[]> own;  // when it outgrew its share of the scratch buffer
};

// Moves a keyed buffer (words [ptr, top), keys delta words above them) into one twice as large
// owned by `out`: words [nb, nb + ncap), keys [nb + ncap, nb + 2 ncap). Returns the new ptr.
SK_NOINLINE uint32_t* enc_grow_keyed(uint32_t*& lo, uint32_t*& top, ptrdiff_t& delta,
                                     uint32_t* ptr, size_t need, HalfPiece& out) {
  const size_t used = size_t(top - ptr);
  const size_t ncap = std::max(2 * size_t(top - lo), used + need + 64);
  std::unique_ptr<uint32_t[]> nb(new uint32_t[2 * ncap]);
  std::memcpy(nb.get() + ncap - used, ptr, used * sizeof(uint32_t));
  std::memcpy(nb.get() + 2 * ncap - used, ptr + delta, used * sizeof(uint32_t));
  lo = nb.get();
  top = lo + ncap;
  delta = ptrdiff_t(ncap);
  out.own = std::move(nb);
  return top - used;
}

// Room for the words of two symbols below ptr (as enc_room): ptr, or its place in a larger buffer.
SK_INLINE uint32_t* enc_room_keyed(uint32_t* ptr, uint32_t*& lo, uint32_t*& top, ptrdiff_t& delta,
                                   HalfPiece& out) {
  constexpr size_t kNeed = size_t(kMaxWordsPerSymbol) * 2;
  return SK_UNLIKELY(size_t(ptr - lo) < kNeed) ? enc_grow_keyed(lo, top, delta, ptr, kNeed, out)
                                               : ptr;
}

// Codes the symbols of substream [begin, end) on lanes 2 * half and 2 * half + 1 (offsets
// o = j - begin with (o >> 1) & 1 == half), from the last down, into words [region,
// region + cap) and their keys [region + cap, region + 2 cap). Indexes: one per symbol
// (run == 1: a run of one symbol per row below) or runs of at least kMinRowRun symbols.
template <int kP>
void encode_half(const EncCtx& ctx, int64_t begin, int64_t end, int half, uint32_t* region,
                 size_t cap, HalfPiece& out) {
  const EncCtx c = ctx;
  uint64_t xl = kL, xh = kL;  // lanes 2 * half, 2 * half + 1
  uint32_t* lo = region;
  uint32_t* top = region + cap;
  uint32_t* ptr = top;
  ptrdiff_t delta = ptrdiff_t(cap);
  const int64_t run = c.run;  // 1 or >= kMinRowRun (the caller's rule)
  const int32_t* sy = c.sym + begin;
  // The last offset <= o of this half.
  auto last_of_half = [half](int64_t o) {
    return ((o >> 1) & 1) == half ? o : (o & ~int64_t(3)) + (half ? -1 : 1);
  };
  int64_t o = last_of_half(end - 1 - begin);
  for (int64_t r = end > begin ? (end - 1) / run : 0; o >= 0; --r) {
    const int64_t ob = std::max(begin, r * run) - begin;  // this run's first offset
    const EncRow row = enc_row(c, c.idx[r]);
    if (o >= ob && !(o & 1)) {  // lane 2 * half without its pair: alone
      ptr = enc_room_keyed(ptr, lo, top, delta, out);
      enc_sym<kP, true>(row, c.p, sy[o], xl, ptr, delta, uint32_t(o >> 2));
      o -= 3;
    }
    for (; o - 1 >= ob; o -= 4) {  // pairs: lane 2 * half + 1, then lane 2 * half
      ptr = enc_room_keyed(ptr, lo, top, delta, out);
      const uint32_t key = uint32_t(o >> 2);
      enc_sym<kP, true>(row, c.p, sy[o], xh, ptr, delta, key);
      enc_sym<kP, true>(row, c.p, sy[o - 1], xl, ptr, delta, key);
    }
    if (o >= ob) {  // lane 2 * half + 1 whose pair is in the run before
      ptr = enc_room_keyed(ptr, lo, top, delta, out);
      enc_sym<kP, true>(row, c.p, sy[o], xh, ptr, delta, uint32_t(o >> 2));
      o -= 1;
    }
  }
  out.words = ptr;
  out.keys = ptr + delta;
  out.count = size_t(top - ptr);
  out.lo = xl;
  out.hi = xh;
}

// The substream of halves a (lanes 0, 1) and b (lanes 2, 3): its states, then the words merged
// by key (a's first among equal keys), as little-endian bytes in [dst, dst + cap words) or in an
// owned buffer when they do not fit.
void merge_halves(const HalfPiece& a, const HalfPiece& b, uint32_t* dst, size_t cap,
                  Piece& out) {
  const size_t words = a.count + b.count + 2 * kLanes;
  if (words > cap) {
    out.own.reset(new uint32_t[words]);
    dst = out.own.get();
  }
  uint8_t* d = reinterpret_cast<uint8_t*>(dst);
  out.data = d;
  out.size = words * sizeof(uint32_t);
  store64(d, a.lo);
  store64(d + 8, a.hi);
  store64(d + 16, b.lo);
  store64(d + 24, b.hi);
  d += kStateBytes;
  // From both ends at once: the smallest of what is left goes to the front (a's first among
  // equal keys), the largest to the back (b's first there: they come after a's), two
  // independent chains of loads and comparisons in one loop instead of one chain twice as long.
  // What is left is always a[i, ie) and b[k, ke); once one is empty, the other fills [lo, hi).
  const uint32_t *ak = a.keys, *aw = a.words, *bk = b.keys, *bw = b.words;
  size_t i = 0, ie = a.count, k = 0, ke = b.count, lo = 0, hi = a.count + b.count;
  while (i < ie && k < ke) {
    const bool fa = ak[i] <= bk[k];
    store32(d + 4 * lo++, fa ? aw[i] : bw[k]);
    i += fa;
    k += !fa;
    // (when that emptied a side, this compares the word it took, no larger than any left on
    // the other side, and so takes from the other side)
    const bool bb = bk[ke - 1] >= ak[ie - 1];
    store32(d + 4 * --hi, bb ? bw[ke - 1] : aw[ie - 1]);
    ke -= bb;
    ie -= !bb;
  }
  for (; i < ie; ++i, ++lo) store32(d + 4 * lo, aw[i]);
  for (; k < ke; ++k, ++lo) store32(d + 4 * lo, bw[k]);
}

// Scratch words for the substreams of this thread's encode calls, kept between calls (no
// allocation, no page faults on repeated calls). Shrunk when a call needs far less.
struct Scratch {
  std::unique_ptr<uint32_t[]> buf;
  size_t cap = 0;
  uint32_t* get(size_t words) {
    if (cap < words || (cap > (size_t(1) << 23) && cap / 4 > words)) {
      buf.reset();
      buf.reset(new uint32_t[words]);
      cap = words;
    }
    return buf.get();
  }
};
thread_local Scratch tls_scratch;

// ---------------------------------------------------------------------------------------------
// Decoder. Symbol lookup: a per-CDF table of 2^bits buckets gives the symbol at the start of the
// bucket holding the slot; a short forward scan over the CDF finishes the search.
template <typename LutT>
struct DecCtx {
  const int32_t* idx;
  int64_t run;  // as in EncCtx
  const int32_t* cdfs;
  int64_t stride;
  const int32_t* lengths;
  const int32_t* offsets;
  const LutT* lut;
  int p;
  uint32_t mask;
  int lut_bits;
  int lut_shift;
};

struct DecState {
  const uint8_t* ptr;
  const uint8_t* end;
  bool overrun = false;  // a renormalisation wanted a word past the end of the substream
  int64_t* escapes = nullptr;  // counts the escaped symbols (the cold path only)
};

// Renormalisation. The unchecked variant is only used when the caller has verified that the
// substream holds kBlockBytes more bytes.
template <bool kChecked>
SK_INLINE void dec_renorm(uint64_t& x, DecState& st) {
  if (kChecked) {
    if (x < kL) {
      uint32_t w = 0;
      if (st.end - st.ptr >= 4) {
        w = load32(st.ptr);
        st.ptr += 4;
      } else {
        st.overrun = true;
      }
      x = (x << 32) | w;
    }
  } else {
    // Without branches: the renormalisation is taken about once per 9 symbols at random, a
    // branch would mispredict. Two conditional moves (the x86-64 assembly; GCC does not emit
    // them for the C++ form): 768x512 latents of the bundled model, one substream, 2-core AMX
    // Xeon VM: 2.31 -> 1.85 ns per symbol at w=72, 2.63 -> 2.16 at w=192, against the
    // arithmetic select below (a shift by a variable count).
    const uint64_t w = load32(st.ptr);
#if SK_X86_ASM
    const uint64_t refilled = (x << 32) | w;
    const uint8_t* const next = st.ptr + 4;
    asm("cmp %[low], %[x]\n\t"
        "cmovb %[refilled], %[x]\n\t"
        "cmovb %[next], %[ptr]"
        : [x] "+r"(x), [ptr] "+r"(st.ptr)
        : [refilled] "r"(refilled), [next] "r"(next), [low] "r"(kL)
        : "cc");
#else
    const uint64_t c = uint64_t(x < kL);
    x = (x << (c << 5)) | (w & (0 - c));
    st.ptr += c << 2;
#endif
  }
}

SK_INLINE uint32_t dec_bits(uint64_t& x, DecState& st, int k) {
  const uint32_t bits = uint32_t(x & ((1ull << k) - 1));
  x >>= k;
  dec_renorm<true>(x, st);
  return bits;
}

// The decoder's state after an escape, and the escaped symbol (by value, as EncPos).
struct DecEsc {
  uint64_t x;
  DecState st;
  int32_t sym;
};
SK_NOINLINE DecEsc dec_escape(uint64_t x, DecState st, int64_t nd, int32_t offset) {
  const int k = int(dec_bits(x, st, kLenBits));
  if (k > kMaxLen)
    throw Error("corrupt stream: escape length field " + str(k) + " > " + str(kMaxLen) +
                " (wrong tables or damaged data)");
  uint64_t payload = 0;
  const int lo = std::min(k, kChunk);
  if (lo > 0) payload = dec_bits(x, st, lo);
  if (k > kChunk) payload |= uint64_t(dec_bits(x, st, k - kChunk)) << kChunk;
  const uint64_t z = ((1ull << k) | payload) - 1;
  const int64_t v = (z & 1) ? -int64_t((z + 1) >> 1) : nd + int64_t(z >> 1);
  const int64_t s = int64_t(offset) + v;
  if (s < std::numeric_limits<int32_t>::min() || s > std::numeric_limits<int32_t>::max())
    throw Error("corrupt stream: an escaped symbol decodes to " + str(s) +
                ", outside int32 (wrong tables or damaged data)");
  ++*st.escapes;
  return DecEsc{x, st, int32_t(s)};
}

// The constants of CDF row i that decoding one of its symbols needs (as EncRow).
template <typename LutT>
struct DecRow {
  const int32_t* cdf;
  const LutT* lut;  // the row's lookup buckets
  int64_t nd;       // symbols [0, nd) are values, nd the escape
  int32_t offset;
};

// kBits: the lookup-table bits when known at compile time (0: c.lut_bits).
template <int kBits, typename LutT>
SK_INLINE DecRow<LutT> dec_row(const DecCtx<LutT>& c, int32_t i) {
  const int bits = kBits ? kBits : c.lut_bits;
  return DecRow<LutT>{c.cdfs + int64_t(i) * c.stride, c.lut + (int64_t(i) << bits),
                      int64_t(c.lengths[i]) - 2, c.offsets[i]};
}

// kP, kBits: compile-time precision and lookup-table bits (0: read them from c at run time).
template <typename LutT, bool kChecked, int kP, int kBits>
SK_INLINE void dec_sym(const DecCtx<LutT>& c, const DecRow<LutT>& r, uint64_t& x, DecState& st,
                       int32_t& out, uint64_t& overflow) {
  const int p = kP ? kP : c.p;
  const uint32_t mask = kP ? uint32_t((1u << kP) - 1) : c.mask;
  const int lut_shift = kP ? kP - kBits : c.lut_shift;
  const uint32_t slot = uint32_t(x) & mask;
  uint32_t s = r.lut[slot >> lut_shift];
  while (uint32_t(r.cdf[s + 1]) <= slot) ++s;
  const uint32_t start = uint32_t(r.cdf[s]);
  const uint32_t freq = uint32_t(r.cdf[s + 1]) - start;
  x = uint64_t(freq) * (x >> p) + (slot - start);
  dec_renorm<kChecked>(x, st);
  if (SK_UNLIKELY(int64_t(s) >= r.nd)) {
    const DecEsc e = dec_escape(x, st, r.nd, r.offset);
    x = e.x;
    st = e.st;
    out = e.sym;
    return;
  }
  const int64_t v = int64_t(r.offset) + int64_t(s);
  overflow |= uint64_t(v > std::numeric_limits<int32_t>::max());
  out = int32_t(uint32_t(uint64_t(v)));
}

// Decodes symbol j of row r on its lane, (j - begin) & 3 (checked renormalisation).
template <typename LutT, int kP, int kBits>
SK_INLINE void dec_lane(const DecCtx<LutT>& c, const DecRow<LutT>& r, int64_t j, int64_t begin,
                        uint64_t& x0, uint64_t& x1, uint64_t& x2, uint64_t& x3, DecState& st,
                        int32_t* out, uint64_t& overflow) {
  switch ((j - begin) & 3) {
    case 0: dec_sym<LutT, true, kP, kBits>(c, r, x0, st, out[j], overflow); break;
    case 1: dec_sym<LutT, true, kP, kBits>(c, r, x1, st, out[j], overflow); break;
    case 2: dec_sym<LutT, true, kP, kBits>(c, r, x2, st, out[j], overflow); break;
    default: dec_sym<LutT, true, kP, kBits>(c, r, x3, st, out[j], overflow); break;
  }
}

// Decodes the group of 4 symbols [j, j + 4) (lanes 0..3), symbol j + k of row row_of(j + k)
// (read just before it is decoded), unchecked when the substream holds kBlockBytes more bytes.
template <typename LutT, int kP, int kBits, typename RowOf>
SK_INLINE void dec_group(const DecCtx<LutT>& c, const RowOf& row_of, int64_t j, uint64_t& x0,
                         uint64_t& x1, uint64_t& x2, uint64_t& x3, DecState& st, int32_t* out,
                         uint64_t& overflow) {
  if (st.end - st.ptr >= kBlockBytes) {
    dec_sym<LutT, false, kP, kBits>(c, row_of(j), x0, st, out[j], overflow);
    dec_sym<LutT, false, kP, kBits>(c, row_of(j + 1), x1, st, out[j + 1], overflow);
    dec_sym<LutT, false, kP, kBits>(c, row_of(j + 2), x2, st, out[j + 2], overflow);
    dec_sym<LutT, false, kP, kBits>(c, row_of(j + 3), x3, st, out[j + 3], overflow);
  } else {
    dec_sym<LutT, true, kP, kBits>(c, row_of(j), x0, st, out[j], overflow);
    dec_sym<LutT, true, kP, kBits>(c, row_of(j + 1), x1, st, out[j + 1], overflow);
    dec_sym<LutT, true, kP, kBits>(c, row_of(j + 2), x2, st, out[j + 2], overflow);
    dec_sym<LutT, true, kP, kBits>(c, row_of(j + 3), x3, st, out[j + 3], overflow);
  }
}

template <typename LutT, int kP, int kBits>
int64_t decode_substream(const DecCtx<LutT>& ctx, const uint8_t* data, int64_t size,
                         int64_t begin, int64_t end, int32_t* out, int64_t stream_no) {
  // A local copy: the symbol stores below cannot alias it, so its fields stay in registers.
  const DecCtx<LutT> c = ctx;
  // size >= kStateBytes and size % 4 == 0 were checked by parse_header.
  uint64_t x0 = load64(data), x1 = load64(data + 8), x2 = load64(data + 16),
           x3 = load64(data + 24);
  const uint64_t hi = 1ull << 63;
  if (x0 < kL || x1 < kL || x2 < kL || x3 < kL || x0 >= hi || x1 >= hi || x2 >= hi || x3 >= hi)
    throw Error("corrupt stream: substream " + str(stream_no) + " starts with an invalid state");
  int64_t escapes = 0;
  DecState st{data + kStateBytes, data + size, false, &escapes};
  uint64_t overflow = 0;
  if (c.run >= kMinRowRun) {
    // Runs of symbols sharing one CDF row: its constants read once per run (as the encoder).
    int64_t r = begin / c.run;  // the run of symbol j, counted up
    for (int64_t j = begin; j < end; ++r) {
      const int64_t re = std::min(end, (r + 1) * c.run);
      const DecRow<LutT> row = dec_row<kBits>(c, c.idx[r]);
      if (re < end && c.run >= kMinPrefetchRun) {  // the next run: its lookup row and CDF
        const DecRow<LutT> next = dec_row<kBits>(c, c.idx[r + 1]);
        prefetch_bytes(next.lut, (size_t(1) << c.lut_bits) * sizeof(LutT));
        prefetch_bytes(next.cdf, size_t(next.nd + 2) * sizeof(int32_t));
      }
      for (; j < re && ((j - begin) & 3) != 0; ++j)
        dec_lane<LutT, kP, kBits>(c, row, j, begin, x0, x1, x2, x3, st, out, overflow);
      const auto same = [&row](int64_t) -> const DecRow<LutT>& { return row; };
      for (; j + 3 < re; j += 4)
        dec_group<LutT, kP, kBits>(c, same, j, x0, x1, x2, x3, st, out, overflow);
      for (; j < re; ++j)
        dec_lane<LutT, kP, kBits>(c, row, j, begin, x0, x1, x2, x3, st, out, overflow);
      if (st.overrun) break;  // the data ran out: the rest would decode garbage (reported below)
    }
  } else {
    // One index per symbol, a block at a time from begin (lanes as in the encoder): groups of
    // 4, then the last block's partial group.
    int32_t ibuf[kIdxBlock];
    for (int64_t b0 = begin; b0 < end; b0 += kIdxBlock) {
      const int64_t mb = std::min(end, b0 + kIdxBlock) - b0;
      const int32_t* ix = block_indexes(c.idx, c.run, b0, b0 + mb, ibuf);  // ix[j - b0]
      const auto own = [&c, ix, b0](int64_t k) { return dec_row<kBits>(c, ix[k - b0]); };
      const int64_t m4 = b0 + (mb & ~int64_t(3));
      for (int64_t j = b0; j < m4; j += 4)
        dec_group<LutT, kP, kBits>(c, own, j, x0, x1, x2, x3, st, out, overflow);
      for (int64_t j = m4; j < b0 + mb; ++j)
        dec_lane<LutT, kP, kBits>(c, own(j), j, begin, x0, x1, x2, x3, st, out, overflow);
      if (st.overrun) break;  // as above
    }
  }
  if (overflow)
    throw Error("corrupt stream: substream " + str(stream_no) +
                " decodes a symbol above INT32_MAX (wrong tables or damaged data)");
  if (st.overrun)
    throw Error("corrupt stream: substream " + str(stream_no) +
                " ends early (truncated data or wrong tables)");
  if (st.ptr != st.end)
    throw Error("corrupt stream: substream " + str(stream_no) + " has " +
                str(int64_t(st.end - st.ptr)) + " unread bytes (wrong tables or damaged data)");
  if (x0 != kL || x1 != kL || x2 != kL || x3 != kL)
    throw Error("corrupt stream: substream " + str(stream_no) +
                " fails its final state check (wrong tables or damaged data)");
  return escapes;
}

// Lookup table rows [i0, i1) of CDFs t at `bits` bits: entry (i, b) is the symbol whose
// interval holds the first slot of bucket b.
template <typename LutT>
void build_lut_rows(const int32_t* cdfs, int64_t stride, const int32_t* lengths, int precision,
                    int bits, int64_t i0, int64_t i1, LutT* lut) {
  const int shift = precision - bits;
  const int64_t per = int64_t(1) << bits;
  const int64_t round = (int64_t(1) << shift) - 1;
  for (int64_t i = i0; i < i1; ++i) {
    const int32_t* row = cdfs + i * stride;
    LutT* dst = lut + i * per;
    const int32_t L = lengths[i];
    for (int32_t s = 0; s + 1 < L; ++s) {
      const int64_t b0 = (int64_t(row[s]) + round) >> shift;
      const int64_t b1 = (int64_t(row[s + 1]) + round) >> shift;
      std::fill(dst + b0, dst + b1, LutT(s));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Table cache. An entropy model codes every image with the same tables, so validating them and
// building the decoder's lookup tables on every call is wasted work (serial work, too, that
// limits the multi-thread speed-up). The cache keeps validated copies of the last few table sets
// with their lookup tables; a call whose tables are equal (memcmp of cdfs and cdf_lengths, same
// precision and shape) to a cached set uses it. The coder reads the cached copies, never the
// caller's arrays after that comparison. Offsets are read from the caller (any value is valid).
// Memory of a lookup table. Large ones are mapped with MAP_POPULATE on Linux: the kernel fills
// in all pages at once (~70 us for the Kodak tables' 768 KiB on the project's VM, against
// ~200 us of page faults, one per 4 KiB, when fresh heap memory is first written).
class LutBuf {
 public:
  LutBuf() = default;
  explicit LutBuf(size_t size) : size_(size) {
#if defined(__linux__) && defined(MAP_POPULATE)
    if (size >= kMapMin) {
      void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
      if (p != MAP_FAILED) {
        p_ = static_cast<uint8_t*>(p);
        mapped_ = true;
        return;
      }
    }
#endif
    p_ = new uint8_t[size];
  }
  LutBuf(LutBuf&& o) noexcept : p_(o.p_), size_(o.size_), mapped_(o.mapped_) { o.p_ = nullptr; }
  LutBuf& operator=(LutBuf&& o) noexcept {
    if (this != &o) {
      release();
      p_ = o.p_;
      size_ = o.size_;
      mapped_ = o.mapped_;
      o.p_ = nullptr;
    }
    return *this;
  }
  LutBuf(const LutBuf&) = delete;
  LutBuf& operator=(const LutBuf&) = delete;
  ~LutBuf() { release(); }

  uint8_t* get() const { return p_; }
  size_t size() const { return size_; }
  explicit operator bool() const { return p_ != nullptr; }

 private:
  static constexpr size_t kMapMin = size_t(64) << 10;
  void release() {
    if (!p_) return;
#if defined(__linux__) && defined(MAP_POPULATE)
    if (mapped_) {
      munmap(p_, size_);
      p_ = nullptr;
      return;
    }
#endif
    delete[] p_;
    p_ = nullptr;
  }
  uint8_t* p_ = nullptr;
  size_t size_ = 0;
  bool mapped_ = false;
};

class TableCache;

struct CachedTables {
  TableCache* owner = nullptr;  // takes the lookup-table buffers back for reuse
  int precision = 0;
  int64_t num = 0, stride = 0, max_len = 0;
  std::vector<int32_t> cdfs, lengths;
  std::mutex lut_mu;
  LutBuf luts[kMaxPrecision + 1];  // by lookup bits (uint8 or uint16 entries)
  std::atomic<size_t> bytes{0};

  // min_bits[i]: the fewest bits a symbol of CDF i can cost, -log2 of its largest frequency
  // (the escape's included) over 2^precision (see check_capacity_of).
  std::vector<double> min_bits;

  CachedTables(const Tables& t, TableCache* cache)
      : owner(cache), precision(t.precision), num(t.num_cdfs), stride(t.max_length),
        cdfs(t.cdfs, t.cdfs + t.num_cdfs * t.max_length),
        lengths(t.lengths, t.lengths + t.num_cdfs) {
    for (int32_t L : lengths) max_len = std::max<int64_t>(max_len, L);
    // (computed before validation, from the copy: an invalid table is dropped with its entry)
    min_bits.resize(size_t(num));
    for (int64_t i = 0; i < num; ++i) {
      const int32_t* row = cdfs.data() + i * stride;
      const int64_t L = std::min<int64_t>(lengths[size_t(i)], stride);
      int64_t top = 1;
      for (int64_t k = 0; k + 1 < L; ++k)
        top = std::max<int64_t>(top, int64_t(row[k + 1]) - row[k]);
      min_bits[size_t(i)] = std::max(0.0, double(precision) - std::log2(double(top)));
    }
    bytes = (cdfs.size() + lengths.size()) * sizeof(int32_t) + min_bits.size() * sizeof(double);
  }
  ~CachedTables();

  bool matches(const Tables& t) const {
    return t.precision == precision && t.num_cdfs == num && t.max_length == stride &&
           std::memcmp(t.lengths, lengths.data(), lengths.size() * sizeof(int32_t)) == 0 &&
           std::memcmp(t.cdfs, cdfs.data(), cdfs.size() * sizeof(int32_t)) == 0;
  }

  // The lookup table at `bits` bits, built on first use with up to `threads` threads.
  template <typename LutT>
  const LutT* lut(int bits, int threads) {
    std::lock_guard<std::mutex> lk(lut_mu);
    LutBuf& slot = luts[bits];
    if (!slot) {
      const size_t size = size_t(num << bits) * sizeof(LutT);
      LutBuf buf = take_buffer(size);
      LutT* dst = reinterpret_cast<LutT*>(buf.get());
      const int64_t parts = std::min<int64_t>(num, threads);
      parallel_for(parts, threads, [&](int64_t g) {
        build_lut_rows<LutT>(cdfs.data(), stride, lengths.data(), precision, bits,
                             num * g / parts, num * (g + 1) / parts, dst);
      });
      slot = std::move(buf);
      bytes += size;
    }
    return reinterpret_cast<const LutT*>(slot.get());
  }

  // The encoder's per-symbol reciprocals [num, stride] (EncSym), built on first use.
  const EncSym* enc_table() {
    std::lock_guard<std::mutex> lk(lut_mu);
    if (!enc_) {
      const size_t size = size_t(num * stride) * sizeof(EncSym);
      LutBuf buf = take_buffer(size);
      EncSym* dst = reinterpret_cast<EncSym*>(buf.get());
      for (int64_t i = 0; i < num; ++i) {
        const int32_t* row = cdfs.data() + i * stride;
        EncSym* out = dst + i * stride;
        const int64_t L = lengths[size_t(i)];
        for (int64_t s = 0; s + 1 < L; ++s)
          out[s] = make_enc_sym(uint32_t(row[s]), uint32_t(row[s + 1] - row[s]), precision);
        for (int64_t s = std::max<int64_t>(L - 1, 0); s < stride; ++s) out[s] = EncSym{};
      }
      enc_ = std::move(buf);
      bytes += size;
    }
    return reinterpret_cast<const EncSym*>(enc_.get());
  }

 private:
  LutBuf take_buffer(size_t size);
  LutBuf enc_;
};

class TableCache {
 public:
  explicit TableCache(pid_t pid) : pid_(pid) {}
  pid_t pid() const { return pid_; }

  // The cached entry equal to t, or a new one: t's arrays copied, then the COPY validated
  // (validate_tables throws Error). Validating t and copying it after would let a caller's
  // thread that writes the arrays in between put tables that were never checked in the cache
  // (a negative frequency then made the encoder table's shift loop spin forever).
  std::shared_ptr<CachedTables> get(const Tables& t) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      for (size_t i = 0; i < lru_.size(); ++i) {
        if (lru_[i]->matches(t)) {
          std::shared_ptr<CachedTables> e = lru_[i];
          lru_.erase(lru_.begin() + int64_t(i));
          lru_.insert(lru_.begin(), e);
          trim();
          return e;
        }
      }
    }
    auto e = std::make_shared<CachedTables>(t, this);
    Tables copy = t;
    copy.cdfs = e->cdfs.data();
    copy.lengths = e->lengths.data();
    validate_tables(copy);
    std::lock_guard<std::mutex> lk(mu_);
    lru_.insert(lru_.begin(), e);
    trim();
    return e;
  }

  // Lookup-table memory of dropped entries is reused: fresh memory costs a page fault per 4 KiB
  // (~1.3 us each on the project's VM: ~250 us for the Kodak tables, 15 us to fill them).
  LutBuf take_buffer(size_t size) {
    {
      std::lock_guard<std::mutex> lk(buf_mu_);
      size_t best = spare_.size();  // the smallest that fits; the newest of equal ones
      for (size_t i = spare_.size(); i-- > 0;)
        if (spare_[i].size() >= size && spare_[i].size() <= 2 * size &&
            (best == spare_.size() || spare_[i].size() < spare_[best].size()))
          best = i;
      if (best != spare_.size()) {
        LutBuf b = std::move(spare_[best]);
        spare_.erase(spare_.begin() + int64_t(best));
        return b;
      }
    }
    return LutBuf(size);
  }

  void give_buffer(LutBuf b) {
    if (!b || b.size() > kMaxBytes / 4) return;
    std::lock_guard<std::mutex> lk(buf_mu_);
    spare_.push_back(std::move(b));
    size_t total = 0;
    for (const LutBuf& x : spare_) total += x.size();
    while (spare_.size() > kMaxSpare || total > kMaxBytes / 2) {  // keeps the newest ones
      total -= spare_.front().size();
      spare_.erase(spare_.begin());
    }
  }

 private:
  static constexpr size_t kMaxEntries = 8;
  static constexpr size_t kMaxSpare = kMaxEntries;
  static constexpr size_t kMaxBytes = size_t(64) << 20;

  // Drops least recently used entries beyond kMaxEntries or kMaxBytes (the newest always stays;
  // entries in use by a call live on through their shared_ptr).
  void trim() {
    size_t total = 0, keep = 0;
    for (; keep < lru_.size() && keep < kMaxEntries; ++keep) {
      total += lru_[keep]->bytes.load();
      if (keep > 0 && total > kMaxBytes) break;
    }
    lru_.resize(keep);
  }

  const pid_t pid_;
  std::mutex mu_;
  std::vector<std::shared_ptr<CachedTables>> lru_;  // most recently used first
  std::mutex buf_mu_;  // not mu_: an entry may die (and give its buffers back) inside trim()
  std::vector<LutBuf> spare_;
};

CachedTables::~CachedTables() {
  for (int b = 0; b <= kMaxPrecision; ++b) owner->give_buffer(std::move(luts[b]));
  owner->give_buffer(std::move(enc_));
}

LutBuf CachedTables::take_buffer(size_t size) {
  return owner->take_buffer(size);
}

TableCache* table_cache() {
  static std::atomic<TableCache*> cache{nullptr};
  return per_process(cache);
}

// Returns the number of escaped symbols decoded.
template <typename LutT>
int64_t decode_impl(const Header& h, const uint8_t* data, const int32_t* indexes, int64_t run,
                    int64_t n, const Tables& t, CachedTables& tables, int threads, int32_t* out,
                    Executor executor) {
  // Lookup table: up to 2^12 buckets per CDF, fewer when the table would dwarf the data.
  int bits = std::min(t.precision, SK_LUT_BITS);
  const int64_t budget = std::max<int64_t>(int64_t(1) << 16, 4 * n);
  while (bits > 0 && (t.num_cdfs << bits) > budget) --bits;
  const int64_t k = int64_t(h.offsets.size()) - 1;
  const int nthreads = resolve_threads(threads, k);
  const LutT* lut = tables.lut<LutT>(bits, nthreads);
  DecCtx<LutT> c{indexes, run, tables.cdfs.data(), t.max_length, tables.lengths.data(), t.offsets,
                 lut, t.precision, uint32_t((1u << t.precision) - 1), bits, t.precision - bits};
  // The common case (16-bit CDFs, 12-bit lookup) gets compile-time shifts and masks.
  const bool fixed = t.precision == 16 && bits == 12;
  // Each task checks the indexes it reads; a bad index is reported before any stream error.
  std::atomic<int64_t> bad{std::numeric_limits<int64_t>::max()};
  auto check_bad = [&] {
    const int64_t at = bad.load();
    if (at != std::numeric_limits<int64_t>::max())
      throw index_error(at, indexes[at], t.num_cdfs);
  };
  std::atomic<int64_t> escapes{0};
  try {
    parallel_for(k, nthreads, [&](int64_t s) {
      const uint8_t* sub = data + h.offsets[s];
      const int64_t size = h.offsets[s + 1] - h.offsets[s];
      const int64_t b = chunk_begin(n, k, s), e = chunk_begin(n, k, s + 1);
      const int64_t at = first_bad_index_of(indexes, run, b, e, t.num_cdfs);
      if (at >= 0) {
        atomic_min(bad, at);
        return;
      }
      escapes += fixed ? decode_substream<LutT, 16, 12>(c, sub, size, b, e, out, s)
                       : decode_substream<LutT, 0, 0>(c, sub, size, b, e, out, s);
    }, executor);
  } catch (const Error&) {
    check_bad();
    throw;
  }
  check_bad();
  return escapes.load();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
void validate_tables(const Tables& t) {
  check_precision(t.precision);
  if (t.num_cdfs < 1) throw Error("cdfs must have at least one row (num_cdfs >= 1)");
  if (t.num_cdfs > std::numeric_limits<int32_t>::max())
    throw Error("too many CDFs: " + str(t.num_cdfs) + " (indexes are int32)");
  if (t.max_length < 2)
    throw Error("cdfs rows must have at least 2 entries (got max_length " + str(t.max_length) +
                ")");
  const int64_t total = int64_t(1) << t.precision;
  for (int64_t i = 0; i < t.num_cdfs; ++i) {
    const int64_t L = t.lengths[i];
    if (L < 2 || L > t.max_length)
      throw Error("cdf_lengths[" + str(i) + "] = " + str(L) + " is out of range [2, " +
                  str(t.max_length) + "] (cdfs.shape[1])");
    if (L - 1 > total)
      throw Error("cdf_lengths[" + str(i) + "] = " + str(L) + " needs " + str(L - 1) +
                  " nonzero frequencies but precision " + str(t.precision) + " allows only " +
                  str(total));
    const int32_t* row = t.cdfs + i * t.max_length;
    if (row[0] != 0)
      throw Error("cdfs[" + str(i) + ", 0] = " + str(row[0]) + ", must be 0");
    if (row[L - 1] != total)
      throw Error("cdfs[" + str(i) + ", " + str(L - 1) + "] = " + str(row[L - 1]) +
                  ", the total must be 2^precision = " + str(total) + " (wrong total)");
    for (int64_t s = 0; s + 1 < L; ++s) {
      if (row[s + 1] <= row[s])
        throw Error("cdfs[" + str(i) + "] is not strictly increasing at entry " + str(s + 1) +
                    " (" + str(row[s]) + " -> " + str(row[s + 1]) + "): symbol " + str(s) +
                    (s == L - 2 ? " (the escape)" : "") +
                    " has a zero or negative frequency; every symbol needs frequency >= 1");
    }
  }
}

void validate_indexes(const int32_t* indexes, int64_t n, int64_t num_cdfs) {
  const int64_t at = first_bad_index(indexes, n, num_cdfs);
  if (at >= 0) throw index_error(at, indexes[at], num_cdfs);
}

void encode_parts(const int32_t* symbols, const int32_t* indexes, int64_t n, const Tables& t,
                  int64_t streams, int threads, EncodedParts& out, int64_t run,
                  Executor executor) {
  if (n < 0) throw Error("negative symbol count");
  if (streams < 1) throw Error("streams must be >= 1, got " + str(streams));
  check_run(n, run);
  const auto tables = table_cache()->get(t);  // validated (or found equal to validated tables)
  const int64_t k = std::min<int64_t>(streams, std::max<int64_t>(1, n));
  EncCtx c{symbols, indexes, run, tables->cdfs.data(), tables->enc_table(), t.max_length,
           tables->lengths.data(), t.offsets, t.precision};
  // Each substream gets a share of the scratch buffer sized for 16 bits per symbol (it moves to
  // its own buffer if it needs more); the indexes a substream reads are checked by its task.
  std::vector<size_t> region(static_cast<size_t>(k) + 1, 0);
  for (int64_t s = 0; s < k; ++s) {
    const int64_t m = chunk_begin(n, k, s + 1) - chunk_begin(n, k, s);
    region[size_t(s) + 1] = region[size_t(s)] + size_t(m / 2 + 64);
  }
  // Threads beyond the substreams (asked for explicitly: threads=0 keeps one per substream) code
  // each substream's lanes in two halves when every substream is long enough (see HalfPiece);
  // each half gets its words and keys, a quarter of the symbols' 16 bits each, after the
  // merged substreams' regions.
  const bool halves = threads >= 2 * k && 2 * k <= kMaxThreads &&
                      (run == 1 || run >= kMinRowRun) && n / k >= kMinHalvesSymbols &&
                      n / k / kLanes < int64_t(std::numeric_limits<uint32_t>::max());
  std::vector<size_t> half_region(halves ? size_t(2 * k) + 1 : 0, region.back());
  for (int64_t s = 0; halves && s < 2 * k; ++s) {
    const int64_t m = chunk_begin(n, k, s / 2 + 1) - chunk_begin(n, k, s / 2);
    half_region[size_t(s) + 1] = half_region[size_t(s)] + 2 * size_t(m / 4 + 32);
  }
  uint32_t* scratch = tls_scratch.get(halves ? half_region.back() : region.back());
  std::vector<Piece> pieces(static_cast<size_t>(k));
  std::vector<HalfPiece> half_pieces(halves ? size_t(2 * k) : 0);
  std::atomic<int64_t> bad{std::numeric_limits<int64_t>::max()};
  const int64_t tasks = halves ? 2 * k : k;
  parallel_for(tasks, resolve_threads(threads, tasks), [&](int64_t task) {
    const int64_t s = halves ? task / 2 : task;
    const int64_t b = chunk_begin(n, k, s), e = chunk_begin(n, k, s + 1);
    const int64_t at = first_bad_index_of(indexes, run, b, e, t.num_cdfs);
    if (at >= 0) {
      atomic_min(bad, at);
      return;
    }
    if (halves) {
      uint32_t* const reg = scratch + half_region[size_t(task)];
      const size_t cap = (half_region[size_t(task) + 1] - half_region[size_t(task)]) / 2;
      const int half = int(task % 2);
      if (c.p == 16)
        encode_half<16>(c, b, e, half, reg, cap, half_pieces[size_t(task)]);
      else
        encode_half<0>(c, b, e, half, reg, cap, half_pieces[size_t(task)]);
      return;
    }
    uint32_t* const reg = scratch + region[size_t(s)];
    const size_t cap = region[size_t(s) + 1] - region[size_t(s)];
    if (c.p == 16)  // the usual precision: its shifts as constants
      encode_substream<16>(c, b, e, reg, cap, pieces[size_t(s)]);
    else
      encode_substream<0>(c, b, e, reg, cap, pieces[size_t(s)]);
  }, executor);
  const int64_t first_bad = bad.load();
  if (first_bad != std::numeric_limits<int64_t>::max())
    throw index_error(first_bad, indexes[first_bad], t.num_cdfs);
  for (int64_t s = 0; halves && s < k; ++s)
    merge_halves(half_pieces[size_t(2 * s)], half_pieces[size_t(2 * s + 1)],
                 scratch + region[size_t(s)], region[size_t(s) + 1] - region[size_t(s)],
                 pieces[size_t(s)]);
  out.split = halves ? k : 0;
  out.header.clear();
  out.header.push_back(kFormatVersion);
  out.header.push_back(uint8_t(t.precision));
  put_varint(out.header, uint64_t(n));
  put_varint(out.header, uint64_t(k));
  out.parts.resize(size_t(k));
  out.sizes.resize(size_t(k));
  out.owned.clear();
  for (int64_t s = 0; s < k; ++s) {
    Piece& pc = pieces[size_t(s)];
    put_varint(out.header, pc.size);
    out.parts[size_t(s)] = pc.data;
    out.sizes[size_t(s)] = pc.size;
    if (pc.own) out.owned.push_back(std::move(pc.own));
  }
}

size_t EncodedParts::total_size() const {
  size_t total = header.size();
  for (size_t z : sizes) total += z;
  return total;
}

void EncodedParts::copy_to(uint8_t* dst) const {
  std::memcpy(dst, header.data(), header.size());
  dst += header.size();
  for (size_t s = 0; s < parts.size(); ++s) {
    std::memcpy(dst, parts[s], sizes[s]);
    dst += sizes[s];
  }
}

std::vector<uint8_t> encode(const int32_t* symbols, const int32_t* indexes, int64_t n,
                            const Tables& t, int64_t streams, int threads, int64_t run,
                            Executor executor) {
  EncodedParts parts;
  encode_parts(symbols, indexes, n, t, streams, threads, parts, run, executor);
  std::vector<uint8_t> out(parts.total_size());
  parts.copy_to(out.data());
  return out;
}

int64_t stream_count(const uint8_t* data, size_t size) {
  return int64_t(parse_header(data, size).offsets.size()) - 1;
}

int64_t symbol_count(const uint8_t* data, size_t size) {
  return parse_header(data, size).n;
}

namespace {

// decode_to's capacity check, on validated tables. Every symbol of CDF i costs at least
// min_bits[i] - 2^-14 bits: a rANS step scales the state by 2^p / f up to the rounding of
// floor(x / f) with x / f >= 2^(31 - p) (x >= 2^31), i.e. by at least (2^p / f)(1 - 2^-15):
// log2 of that is above -log2(f / 2^p) - 4.5e-5. The state words (4 x 64 bits) and every
// emitted word lie inside the data, so n symbols need more than sum(min_bits) - n 2^-14 bits.
void check_capacity_of(const CachedTables& c, size_t size, const int32_t* indexes, int64_t n,
                       int64_t run) {
  // Eight running sums: one sum's chain of float additions (4 cycles each) made this check half
  // of a decode with an index per symbol (295k symbols: ~0.5 ms against ~1 ms of decoding).
  // Their order changes the sum by ~1e-16 of it, far inside the 2^-14 bits of slack a symbol.
  constexpr int kSums = 8;
  double sums[kSums] = {};
  const int64_t runs = n / run;
  const auto bits_of = [&c](int32_t i) {  // (a bad index counts 0 here: decode reports it)
    return uint32_t(i) < uint64_t(c.num) ? c.min_bits[size_t(i)] : 0.0;
  };
  int64_t r = 0;
  for (; r + kSums <= runs; r += kSums)
    for (int a = 0; a < kSums; ++a) sums[a] += bits_of(indexes[r + a]);
  for (; r < runs; ++r) sums[0] += bits_of(indexes[r]);
  double total = 0.0;
  for (double v : sums) total += v;
  const double need = double(run) * total - double(n) * std::ldexp(1.0, -14);
  const double have = double(size) * 8.0 + 64.0;
  if (need > have)
    throw Error("corrupt stream: " + std::to_string(n) + " symbols need at least " +
                std::to_string(int64_t(need / 8.0)) + " bytes with these tables, the data has " +
                std::to_string(size) + " (a damaged or forged header, or the wrong shape)");
}

}  // namespace

int64_t decode_to(const uint8_t* data, size_t size, const int32_t* indexes, int64_t n,
                  const Tables& t, int threads, const std::function<int32_t*()>& out_for,
                  int64_t run, Executor executor) {
  if (n < 0) throw Error("negative symbol count");
  check_run(n, run);
  const auto tables = table_cache()->get(t);  // validated (or found equal to validated tables)
  Header h;
  try {
    h = parse_header(data, size);
    if (h.precision != t.precision)
      throw Error("stream was encoded with precision " + str(h.precision) +
                  " but decode was called with precision " + str(t.precision));
    if (h.n != n)
      throw Error("stream holds " + str(h.n) + " symbols but " + str(n) +
                  " were asked for (wrong indexes or shape?)");
    // before the output exists: n symbols the data cannot hold are refused at once (decoding
    // them filled gigabytes from a forged header of a few hundred bytes)
    check_capacity_of(*tables, size, indexes, n, run);
  } catch (const Error&) {
    validate_indexes(indexes, n / run, t.num_cdfs);  // a bad argument is reported before bad data
    throw;
  }
  int32_t* const out = out_for();
  // Symbol numbers fit in 8 bits when every CDF has at most 256 symbols (escape included).
  if (tables->max_len - 1 <= 256)
    return decode_impl<uint8_t>(h, data, indexes, run, n, t, *tables, threads, out, executor);
  return decode_impl<uint16_t>(h, data, indexes, run, n, t, *tables, threads, out, executor);
}

int64_t decode(const uint8_t* data, size_t size, const int32_t* indexes, int64_t n,
               const Tables& t, int threads, int32_t* out, int64_t run, Executor executor) {
  return decode_to(data, size, indexes, n, t, threads, [out] { return out; }, run, executor);
}

// ---------------------------------------------------------------------------------------------
std::vector<int32_t> pmf_to_quantized_cdf(const double* pmf, int64_t m, int precision) {
  check_precision(precision);
  if (m < 1)
    throw Error("pmf is empty: it needs at least one entry (the tail mass, coded as the escape)");
  const int64_t total = int64_t(1) << precision;
  if (m > total)
    throw Error("precision " + str(precision) + " is too small for " + str(m) +
                " symbols (pmf entries incl. the tail mass): each needs frequency >= 1 but "
                "2^precision = " + str(total) + "; raise precision or shorten the pmf");
  double sum = 0.0;
  for (int64_t i = 0; i < m; ++i) {
    const double q = pmf[i];
    if (!(q >= 0.0) || !std::isfinite(q))
      throw Error("pmf[" + str(i) + "] = " + fmt(q) +
                  " is negative, NaN or infinite; probabilities must be finite and >= 0 "
                  "(clip float rounding residue, e.g. a tail mass 1 - sum(pmf) < 0, to 0)");
    sum += q;
  }
  if (!std::isfinite(sum)) throw Error("pmf sums to infinity");
  const int64_t spare = total - m;  // slots left after giving every symbol frequency 1
  std::vector<int64_t> freq(size_t(m), 1);
  std::vector<double> frac(size_t(m), 0.0);
  int64_t assigned = m;
  if (sum > 0.0) {
    for (int64_t i = 0; i < m; ++i) {
      const double share = pmf[i] / sum * double(spare);
      double f = std::floor(share);
      if (f > double(spare)) f = double(spare);
      freq[size_t(i)] += int64_t(f);
      frac[size_t(i)] = share - f;
      assigned += int64_t(f);
    }
  }
  // Largest remainder: hand out what is left by decreasing fractional part (ties: lower index),
  // or take back (only possible through float rounding) by increasing fractional part.
  int64_t left = total - assigned;
  if (left != 0) {
    std::vector<int64_t> order(static_cast<size_t>(m));
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      if (frac[size_t(a)] != frac[size_t(b)])
        return left > 0 ? frac[size_t(a)] > frac[size_t(b)] : frac[size_t(a)] < frac[size_t(b)];
      return a < b;
    });
    while (left > 0)
      for (int64_t r = 0; r < m && left > 0; ++r, --left) ++freq[size_t(order[size_t(r)])];
    while (left < 0) {
      bool took = false;
      for (int64_t r = 0; r < m && left < 0; ++r) {
        int64_t& f = freq[size_t(order[size_t(r)])];
        if (f > 1) { --f; ++left; took = true; }
      }
      if (!took) break;  // unreachable: m <= total guarantees room
    }
  }
  std::vector<int32_t> cdf(size_t(m + 1));
  int64_t acc = 0;
  cdf[0] = 0;
  for (int64_t i = 0; i < m; ++i) {
    acc += freq[size_t(i)];
    cdf[size_t(i + 1)] = int32_t(acc);
  }
  return cdf;
}

void pmfs_to_quantized_cdfs(const double* pmfs, int64_t rows, int64_t row_stride,
                            const int32_t* pmf_lengths, const double* tail_masses, int precision,
                            int32_t* cdfs, int64_t cdf_stride, int32_t* cdf_lengths) {
  check_precision(precision);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t len = pmf_lengths[r];
    if (len < 0 || len > row_stride)
      throw Error("pmf_lengths[" + str(r) + "] = " + str(len) + " is out of range [0, " +
                  str(row_stride) + "] (pmfs.shape[1])");
    if (len + 2 > cdf_stride)
      throw Error("internal: cdf row too short");
  }
  std::vector<double> buf;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t len = pmf_lengths[r];
    buf.assign(pmfs + r * row_stride, pmfs + r * row_stride + len);
    buf.push_back(tail_masses ? tail_masses[r] : 0.0);
    std::vector<int32_t> cdf;
    try {
      cdf = pmf_to_quantized_cdf(buf.data(), len + 1, precision);
    } catch (const Error& e) {
      throw Error("row " + str(r) + ": " + e.what());
    }
    int32_t* dst = cdfs + r * cdf_stride;
    std::copy(cdf.begin(), cdf.end(), dst);
    std::fill(dst + cdf.size(), dst + cdf_stride, 0);
    cdf_lengths[r] = int32_t(cdf.size());
  }
}

}  // namespace slimcoder
