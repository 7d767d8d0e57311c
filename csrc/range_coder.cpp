// Interleaved rANS coder: implementation. See range_coder.hpp for the API, docs/coder.md for the
// algorithm and byte layout.
#include "range_coder.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <iomanip>
#include <sstream>
#include <system_error>
#include <limits>
#include <memory>
#include <numeric>
#include <thread>

#if defined(__GNUC__) || defined(__clang__)
#define SK_INLINE inline __attribute__((always_inline))
#define SK_NOINLINE __attribute__((noinline))
#define SK_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define SK_INLINE inline
#define SK_NOINLINE
#define SK_UNLIKELY(x) (x)
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

template <typename F>
void parallel_for(int64_t count, int threads, const F& f) {
  if (threads <= 1 || count <= 1) {
    for (int64_t s = 0; s < count; ++s) f(s);
    return;
  }
  // Worker t takes substreams t, t + threads, ...; the calling thread is worker 0.
  std::vector<std::exception_ptr> errors(static_cast<size_t>(threads));
  auto work = [&](int t) {
    try {
      for (int64_t s = t; s < count; s += threads) f(s);
    } catch (...) {
      errors[size_t(t)] = std::current_exception();
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(size_t(threads - 1));
  int spawned = 1;
  try {
    for (; spawned < threads; ++spawned) pool.emplace_back(work, spawned);
  } catch (const std::system_error&) {
    // Out of threads: the calling thread does the share of the workers that did not start.
  }
  work(0);
  for (int t = spawned; t < threads; ++t) work(t);
  for (auto& th : pool) th.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
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
struct WordSink {
  std::unique_ptr<uint32_t[]> buf;
  size_t cap = 0;
  uint32_t* ptr = nullptr;  // next word goes to ptr[-1]

  explicit WordSink(size_t c) : buf(new uint32_t[c]), cap(c), ptr(buf.get() + c) {}
  size_t used() const { return size_t(buf.get() + cap - ptr); }
  void grow(size_t need) {
    const size_t u = used();
    const size_t c = std::max(cap * 2, u + need + 64);
    std::unique_ptr<uint32_t[]> nb(new uint32_t[c]);
    std::memcpy(nb.get() + c - u, ptr, u * sizeof(uint32_t));
    buf.swap(nb);
    cap = c;
    ptr = buf.get() + c - u;
  }
};

struct EncCtx {
  const int32_t* sym;
  const int32_t* idx;
  const int32_t* cdfs;
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
SK_NOINLINE void enc_escape(uint64_t& x, uint32_t*& ptr, int64_t v, int64_t nd,
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
}

SK_INLINE void enc_one(const EncCtx& c, int64_t j, uint64_t& x, uint32_t*& ptr) {
  const int32_t i = c.idx[j];
  const int32_t* row = c.cdfs + int64_t(i) * c.stride;
  const int64_t nd = int64_t(c.lengths[i]) - 2;
  const int64_t v = int64_t(c.sym[j]) - int64_t(c.offsets[i]);
  if (SK_UNLIKELY(uint64_t(v) >= uint64_t(nd))) {
    enc_escape(x, ptr, v, nd, row, c.p);
    return;
  }
  const uint32_t start = uint32_t(row[v]);
  enc_put(x, ptr, start, uint32_t(row[v + 1]) - start, c.p);
}

// Encodes symbols [begin, end) into one substream: kLanes states then the words.
std::vector<uint8_t> encode_substream(const EncCtx& c, int64_t begin, int64_t end) {
  const int64_t m = end - begin;
  WordSink sink(size_t(m / 4 + 64));
  uint64_t x0 = kL, x1 = kL, x2 = kL, x3 = kL;
  static_assert(kLanes == 4, "the unrolled loops below assume 4 lanes");
  const size_t need = size_t(kMaxWordsPerSymbol) * kLanes;
  uint32_t* ptr = sink.ptr;
  auto ensure = [&]() {
    if (SK_UNLIKELY(size_t(ptr - sink.buf.get()) < need)) {
      sink.ptr = ptr;
      sink.grow(need);
      ptr = sink.ptr;
    }
  };
  const int64_t m4 = m & ~int64_t(3);
  for (int64_t j = m - 1; j >= m4; --j) {
    ensure();
    switch (j & 3) {
      case 0: enc_one(c, begin + j, x0, ptr); break;
      case 1: enc_one(c, begin + j, x1, ptr); break;
      case 2: enc_one(c, begin + j, x2, ptr); break;
      default: enc_one(c, begin + j, x3, ptr); break;
    }
  }
  for (int64_t j = m4 - 4; j >= 0; j -= 4) {
    ensure();
    const int64_t b = begin + j;
    enc_one(c, b + 3, x3, ptr);
    enc_one(c, b + 2, x2, ptr);
    enc_one(c, b + 1, x1, ptr);
    enc_one(c, b, x0, ptr);
  }
  sink.ptr = ptr;
  const size_t words = sink.used();
  std::vector<uint8_t> out(size_t(kStateBytes) + 4 * words);
  store64(out.data(), x0);
  store64(out.data() + 8, x1);
  store64(out.data() + 16, x2);
  store64(out.data() + 24, x3);
  uint8_t* o = out.data() + kStateBytes;
  for (size_t w = 0; w < words; ++w) store32(o + 4 * w, ptr[w]);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Decoder. Symbol lookup: a per-CDF table of 2^bits buckets gives the symbol at the start of the
// bucket holding the slot; a short forward scan over the CDF finishes the search.
template <typename LutT>
struct DecCtx {
  const int32_t* idx;
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
    // Arithmetic select: the renormalisation is taken about once per 9 symbols at random,
    // a branch would mispredict.
    const uint64_t c = uint64_t(x < kL);
    const uint64_t w = load32(st.ptr);
    x = (x << (c << 5)) | (w & (0 - c));
    st.ptr += c << 2;
  }
}

SK_INLINE uint32_t dec_bits(uint64_t& x, DecState& st, int k) {
  const uint32_t bits = uint32_t(x & ((1ull << k) - 1));
  x >>= k;
  dec_renorm<true>(x, st);
  return bits;
}

SK_NOINLINE int32_t dec_escape(uint64_t& x, DecState& st, int64_t nd, int32_t offset) {
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
  return int32_t(s);
}

// kP, kBits: compile-time precision and lookup-table bits (0: read them from c at run time).
template <typename LutT, bool kChecked, int kP, int kBits>
SK_INLINE void dec_one(const DecCtx<LutT>& c, int64_t j, uint64_t& x, DecState& st, int32_t* out,
                       uint64_t& overflow) {
  const int p = kP ? kP : c.p;
  const uint32_t mask = kP ? uint32_t((1u << kP) - 1) : c.mask;
  const int lut_bits = kP ? kBits : c.lut_bits;
  const int lut_shift = kP ? kP - kBits : c.lut_shift;
  const int32_t i = c.idx[j];
  const int32_t* row = c.cdfs + int64_t(i) * c.stride;
  const uint32_t slot = uint32_t(x) & mask;
  uint32_t s = c.lut[(int64_t(i) << lut_bits) + (slot >> lut_shift)];
  while (uint32_t(row[s + 1]) <= slot) ++s;
  const uint32_t start = uint32_t(row[s]);
  const uint32_t freq = uint32_t(row[s + 1]) - start;
  x = uint64_t(freq) * (x >> p) + (slot - start);
  dec_renorm<kChecked>(x, st);
  const int64_t nd = int64_t(c.lengths[i]) - 2;
  if (SK_UNLIKELY(int64_t(s) >= nd)) {
    out[j] = dec_escape(x, st, nd, c.offsets[i]);
    return;
  }
  const int64_t v = int64_t(c.offsets[i]) + int64_t(s);
  overflow |= uint64_t(v > std::numeric_limits<int32_t>::max());
  out[j] = int32_t(uint32_t(uint64_t(v)));
}

template <typename LutT, int kP, int kBits>
void decode_substream(const DecCtx<LutT>& c, const uint8_t* data, int64_t size, int64_t begin,
                      int64_t end, int32_t* out, int64_t stream_no) {
  // size >= kStateBytes and size % 4 == 0 were checked by parse_header.
  uint64_t x0 = load64(data), x1 = load64(data + 8), x2 = load64(data + 16),
           x3 = load64(data + 24);
  const uint64_t hi = 1ull << 63;
  if (x0 < kL || x1 < kL || x2 < kL || x3 < kL || x0 >= hi || x1 >= hi || x2 >= hi || x3 >= hi)
    throw Error("corrupt stream: substream " + str(stream_no) + " starts with an invalid state");
  DecState st{data + kStateBytes, data + size};
  uint64_t overflow = 0;
  const int64_t m = end - begin;
  const int64_t m4 = m & ~int64_t(3);
  int32_t* o = out + begin;
  const int32_t* idx = c.idx;
  DecCtx<LutT> cc = c;
  cc.idx = idx + begin;
  for (int64_t j = 0; j < m4; j += 4) {
    if (st.end - st.ptr >= kBlockBytes) {
      dec_one<LutT, false, kP, kBits>(cc, j, x0, st, o, overflow);
      dec_one<LutT, false, kP, kBits>(cc, j + 1, x1, st, o, overflow);
      dec_one<LutT, false, kP, kBits>(cc, j + 2, x2, st, o, overflow);
      dec_one<LutT, false, kP, kBits>(cc, j + 3, x3, st, o, overflow);
    } else {
      dec_one<LutT, true, kP, kBits>(cc, j, x0, st, o, overflow);
      dec_one<LutT, true, kP, kBits>(cc, j + 1, x1, st, o, overflow);
      dec_one<LutT, true, kP, kBits>(cc, j + 2, x2, st, o, overflow);
      dec_one<LutT, true, kP, kBits>(cc, j + 3, x3, st, o, overflow);
    }
  }
  for (int64_t j = m4; j < m; ++j) {
    switch (j & 3) {
      case 0: dec_one<LutT, true, kP, kBits>(cc, j, x0, st, o, overflow); break;
      case 1: dec_one<LutT, true, kP, kBits>(cc, j, x1, st, o, overflow); break;
      default: dec_one<LutT, true, kP, kBits>(cc, j, x2, st, o, overflow); break;  // m - m4 <= 3
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
}

template <typename LutT>
std::unique_ptr<LutT[]> build_lut(const Tables& t, int bits) {
  const int shift = t.precision - bits;
  const int64_t per = int64_t(1) << bits;
  std::unique_ptr<LutT[]> lut(new LutT[size_t(t.num_cdfs * per)]);
  const int64_t round = (int64_t(1) << shift) - 1;
  for (int64_t i = 0; i < t.num_cdfs; ++i) {
    const int32_t* row = t.cdfs + i * t.max_length;
    LutT* dst = lut.get() + i * per;
    const int32_t L = t.lengths[i];
    for (int32_t s = 0; s + 1 < L; ++s) {
      const int64_t b0 = (int64_t(row[s]) + round) >> shift;
      const int64_t b1 = (int64_t(row[s + 1]) + round) >> shift;
      std::fill(dst + b0, dst + b1, LutT(s));
    }
  }
  return lut;
}

template <typename LutT>
void decode_impl(const Header& h, const uint8_t* data, const int32_t* indexes, int64_t n,
                 const Tables& t, int threads, int32_t* out) {
  // Lookup table: up to 2^12 buckets per CDF, fewer when the table would dwarf the data.
  int bits = std::min(t.precision, SK_LUT_BITS);
  const int64_t budget = std::max<int64_t>(int64_t(1) << 16, 4 * n);
  while (bits > 0 && (t.num_cdfs << bits) > budget) --bits;
  auto lut = build_lut<LutT>(t, bits);
  DecCtx<LutT> c{indexes, t.cdfs, t.max_length, t.lengths, t.offsets, lut.get(),
                 t.precision, uint32_t((1u << t.precision) - 1), bits, t.precision - bits};
  const int64_t k = int64_t(h.offsets.size()) - 1;
  // The common case (16-bit CDFs, 12-bit lookup) gets compile-time shifts and masks.
  const bool fixed = t.precision == 16 && bits == 12;
  parallel_for(k, resolve_threads(threads, k), [&](int64_t s) {
    const uint8_t* sub = data + h.offsets[s];
    const int64_t size = h.offsets[s + 1] - h.offsets[s];
    const int64_t b = chunk_begin(n, k, s), e = chunk_begin(n, k, s + 1);
    if (fixed)
      decode_substream<LutT, 16, 12>(c, sub, size, b, e, out, s);
    else
      decode_substream<LutT, 0, 0>(c, sub, size, b, e, out, s);
  });
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
      if (indexes[j] < 0 || int64_t(indexes[j]) >= num_cdfs)
        throw Error("indexes[" + str(j) + "] (flattened) = " + str(indexes[j]) +
                    " is out of range [0, " + str(num_cdfs) + ") (num_cdfs = cdfs.shape[0])");
  }
}

std::vector<uint8_t> encode(const int32_t* symbols, const int32_t* indexes, int64_t n,
                            const Tables& t, int64_t streams, int threads) {
  validate_tables(t);
  if (n < 0) throw Error("negative symbol count");
  if (streams < 1) throw Error("streams must be >= 1, got " + str(streams));
  validate_indexes(indexes, n, t.num_cdfs);
  const int64_t k = std::min<int64_t>(streams, std::max<int64_t>(1, n));
  EncCtx c{symbols, indexes, t.cdfs, t.max_length, t.lengths, t.offsets, t.precision};
  std::vector<std::vector<uint8_t>> subs(static_cast<size_t>(k));
  parallel_for(k, resolve_threads(threads, k), [&](int64_t s) {
    subs[size_t(s)] = encode_substream(c, chunk_begin(n, k, s), chunk_begin(n, k, s + 1));
  });
  std::vector<uint8_t> head;
  head.push_back(kFormatVersion);
  head.push_back(uint8_t(t.precision));
  put_varint(head, uint64_t(n));
  put_varint(head, uint64_t(k));
  size_t total = 0;
  for (auto& s : subs) {
    put_varint(head, s.size());
    total += s.size();
  }
  std::vector<uint8_t> out(head.size() + total);
  std::memcpy(out.data(), head.data(), head.size());
  size_t pos = head.size();
  for (auto& s : subs) {
    std::memcpy(out.data() + pos, s.data(), s.size());
    pos += s.size();
  }
  return out;
}

int64_t stream_count(const uint8_t* data, size_t size) {
  return int64_t(parse_header(data, size).offsets.size()) - 1;
}

void decode(const uint8_t* data, size_t size, const int32_t* indexes, int64_t n,
            const Tables& t, int threads, int32_t* out) {
  validate_tables(t);
  if (n < 0) throw Error("negative symbol count");
  validate_indexes(indexes, n, t.num_cdfs);
  const Header h = parse_header(data, size);
  if (h.precision != t.precision)
    throw Error("stream was encoded with precision " + str(h.precision) +
                " but decode was called with precision " + str(t.precision));
  if (h.n != n)
    throw Error("stream holds " + str(h.n) + " symbols but indexes has " + str(n) +
                " elements (wrong indexes shape?)");
  // Symbol numbers fit in 8 bits when every CDF has at most 256 symbols (escape included).
  int64_t max_len = 0;
  for (int64_t i = 0; i < t.num_cdfs; ++i) max_len = std::max<int64_t>(max_len, t.lengths[i]);
  if (max_len - 1 <= 256)
    decode_impl<uint8_t>(h, data, indexes, n, t, threads, out);
  else
    decode_impl<uint16_t>(h, data, indexes, n, t, threads, out);
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
