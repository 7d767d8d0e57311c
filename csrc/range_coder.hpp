// slimkernels entropy coder: interleaved rANS ("range ANS") over integer CDF tables.
//
// Plain C++17, no Python. The pybind11 binding lives in bindings.cpp; the libFuzzer harness in
// fuzz/. Every function validates its inputs and throws slimcoder::Error (a std::invalid_argument,
// which pybind11 turns into ValueError) before touching any symbol.
//
// Semantics (CompressAI's encode_with_indexes): element j uses CDF i = indexes[j]; its value is
// v = symbols[j] - offsets[i] (computed in 64 bits). A CDF of length L codes v in [0, L-3] directly;
// L-2 is the escape symbol, followed by the value in bypass bits, so any int32 round-trips.
//
// Byte layout and algorithm: see docs/coder.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace slimcoder {

// Raised for every invalid argument and every corrupt / mismatched stream.
class Error : public std::invalid_argument {
 public:
  explicit Error(const std::string& what) : std::invalid_argument(what) {}
};

constexpr int kMinPrecision = 1;
constexpr int kMaxPrecision = 16;
constexpr int kLanes = 4;               // interleaved rANS states per substream
constexpr uint8_t kFormatVersion = 1;   // first byte of every encoded string
// The fewest symbols per substream whose lanes encode() codes as two halves on two threads
// (given the threads; below, waking a thread costs about what the half saves).
constexpr int64_t kMinHalvesSymbols = int64_t(1) << 14;

// An external thread pool for the substreams, in place of the coder's own worker pool: it runs
// task(ctx, t) for every t in [0, count) on up to `threads` threads (the calling thread
// included) and returns when all are done. task never throws and may run on any thread. E.g. an
// OpenMP team that is still spinning after the caller's own parallel work: its threads start at
// once, where a sleeping worker of the coder's pool can take hundreds of microseconds to wake up
// on a busy or virtualised machine. Null: the coder's own pool.
using TaskFn = void (*)(void* ctx, int64_t task);
using Executor = void (*)(int64_t count, int threads, TaskFn task, void* ctx);

// Borrowed, read-only view of the CDF tables (row-major int32 [num_cdfs, max_length]).
struct Tables {
  const int32_t* cdfs = nullptr;
  int64_t num_cdfs = 0;
  int64_t max_length = 0;
  const int32_t* lengths = nullptr;  // [num_cdfs]
  const int32_t* offsets = nullptr;  // [num_cdfs]
  int precision = 16;
};

// Checks precision in [1, 16], num_cdfs >= 1, 2 <= max_length, every length in [2, max_length],
// cdf[0] == 0, cdf[L-1] == 2^precision and strictly increasing cdf[0..L-1] (every symbol, the
// escape included, has a frequency >= 1). Throws Error naming the first problem found.
void validate_tables(const Tables& t);

// Checks 0 <= indexes[j] < num_cdfs for all j. Throws Error naming the first bad position.
void validate_indexes(const int32_t* indexes, int64_t n, int64_t num_cdfs);

// Encodes n symbols into the multi-stream container. streams >= 1 (clamped to max(1, n));
// threads <= 0 means min(streams, hardware threads); at most 256 threads are used (the calling
// thread is one of them; the others come from a process-wide pool kept between calls). With
// threads >= 2 x streams and at least kMinHalvesSymbols symbols per substream (indexes one per
// symbol or in runs >= 4), each substream's lanes are coded as two halves on two threads: the
// same bytes.
// Validates everything first (tables found equal to recently validated ones are not re-checked).
//
// run >= 1 (dividing n): symbol j uses CDF indexes[j / run], indexes holding n / run entries
// (e.g. one index per channel of an NCHW latent with run = H * W); 1 = one index per symbol.
// The bytes do not depend on run, only on the index each symbol gets.
// executor: the threads of the substreams (see Executor; null: the coder's own pool).
std::vector<uint8_t> encode(const int32_t* symbols, const int32_t* indexes, int64_t n,
                            const Tables& t, int64_t streams, int threads, int64_t run = 1,
                            Executor executor = nullptr);

// The encoder's output before concatenation: the container header and one byte range per
// substream, so that a caller can copy them straight into its own buffer (one copy).
struct EncodedParts {
  std::vector<uint8_t> header;
  std::vector<const uint8_t*> parts;  // valid until this thread's next encode call
  std::vector<size_t> sizes;
  std::vector<std::unique_ptr<uint32_t[]>> owned;  // substreams that outgrew the scratch space
  int64_t split = 0;  // substreams whose lanes were coded as two halves by two threads
  size_t total_size() const;
  void copy_to(uint8_t* dst) const;  // writes total_size() bytes: the encoded string
};

// encode() without the final copy: same arguments, same result once copied.
void encode_parts(const int32_t* symbols, const int32_t* indexes, int64_t n, const Tables& t,
                  int64_t streams, int threads, EncodedParts& out, int64_t run = 1,
                  Executor executor = nullptr);

// Decodes n symbols into out[0..n). Any byte string is accepted as input: the result is either a
// successful decode or an Error, in time O(n * max_length + size) (n at most what decode_to's
// capacity check allows for size bytes; a substream stops at the first read past its end).
// threads <= 0 means min(streams in the data, hardware threads). run, executor: as for encode.
// Returns the number of escaped symbols (values outside their CDF's table: 0 in a latent the
// entropy model covers, so a caller can skip a check of the symbols' range).
int64_t decode(const uint8_t* data, size_t size, const int32_t* indexes, int64_t n,
               const Tables& t, int threads, int32_t* out, int64_t run = 1,
               Executor executor = nullptr);

// decode() that asks for its output only once every check passed (arguments, tables, header,
// and that `size` bytes can hold n symbols with these tables: each costs at least -log2 of its
// CDF's largest frequency over 2^precision, less 2^-14 bits of rounding): out_for() returns the
// buffer of n int32 (called once, on the calling thread, before any symbol is decoded), so a
// caller that allocates it there allocates nothing for a stream decode refuses (a forged
// symbol count must not allocate gigabytes). Returns decode()'s escape count.
int64_t decode_to(const uint8_t* data, size_t size, const int32_t* indexes, int64_t n,
                  const Tables& t, int threads, const std::function<int32_t*()>& out_for,
                  int64_t run = 1, Executor executor = nullptr);

// Number of substreams recorded in an encoded string (parses and validates only the header).
int64_t stream_count(const uint8_t* data, size_t size);

// Number of symbols recorded in an encoded string (parses and validates only the header).
int64_t symbol_count(const uint8_t* data, size_t size);

// Quantizes a pmf (m >= 1 float64 entries, the last one being the tail mass that becomes the
// escape) into an integer CDF of m + 1 entries: cdf[0] = 0, cdf[m] = 2^precision, every frequency
// >= 1. Deterministic: float64 arithmetic in a fixed order, then integer largest-remainder.
std::vector<int32_t> pmf_to_quantized_cdf(const double* pmf, int64_t m, int precision);

// Same as above for the rows of pmfs [rows, row_stride]: row r uses pmfs[r, 0:pmf_lengths[r]]
// followed by tail_masses[r] (tail_masses may be null: tail mass 0). Writes CDFs into
// cdfs [rows, cdf_stride] (cdf_stride >= max(pmf_lengths) + 2, unused entries set to 0) and
// lengths pmf_lengths[r] + 2 into cdf_lengths.
void pmfs_to_quantized_cdfs(const double* pmfs, int64_t rows, int64_t row_stride,
                            const int32_t* pmf_lengths, const double* tail_masses, int precision,
                            int32_t* cdfs, int64_t cdf_stride, int32_t* cdf_lengths);

}  // namespace slimcoder
