// libFuzzer harness for the slimkernels rANS coder (run under ASan + UBSan, see run_fuzz.sh).
//
// Input layout: byte 0 selects the mode, byte 1 the table set, bytes 2-3 the symbol count;
// the rest feeds the mode:
//   mode 0: the rest is decoded as-is (arbitrary byte strings, mostly rejected by the header);
//   mode 1: a well-formed header is synthesised (right version, precision, count, stream sizes)
//           and the rest becomes the substream payloads, so the rANS decoder itself is reached;
//   mode 2: symbols (escapes of extreme values included) are derived from the rest, encoded,
//           decoded, and must round-trip exactly (any mismatch aborts);
//   mode 3: as mode 2, then the valid stream is corrupted (bit flips, truncation, byte
//           overwrites, wrong tables, tables changed in place after a decode that cached
//           them) and decoded again.
// Byte 0 also picks an index run (1..28, 255, 256, 257 or 1000): every encode and decode runs
// twice, with one index per symbol and with one index per run of symbols (the same indexes,
// compact), and both must agree (same bytes, same success, same symbols).
// Decoding must return or throw slimcoder::Error, and a successful decode must re-encode to the
// very same bytes; anything else (crash, sanitizer report, other exception, mismatch, timeout)
// is a finding.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "range_coder.hpp"

using slimcoder::Tables;

namespace {

struct TableSet {
  std::vector<int32_t> cdfs, lengths, offsets;
  int64_t num = 0, max_length = 0;
  int precision = 16;
  Tables view() const {
    Tables t;
    t.cdfs = cdfs.data();
    t.num_cdfs = num;
    t.max_length = max_length;
    t.lengths = lengths.data();
    t.offsets = offsets.data();
    t.precision = precision;
    return t;
  }
};

void add_row(TableSet& ts, const std::vector<double>& pmf, int32_t offset) {
  std::vector<int32_t> cdf = slimcoder::pmf_to_quantized_cdf(pmf.data(), int64_t(pmf.size()),
                                                             ts.precision);
  std::vector<int32_t> row(static_cast<size_t>(ts.max_length), 0);
  std::copy(cdf.begin(), cdf.end(), row.begin());
  ts.cdfs.insert(ts.cdfs.end(), row.begin(), row.end());
  ts.lengths.push_back(int32_t(cdf.size()));
  ts.offsets.push_back(offset);
  ++ts.num;
}

std::vector<double> laplace(int n, double scale) {
  std::vector<double> p(static_cast<size_t>(n) + 1);
  double sum = 0;
  for (int i = 0; i < n; ++i) {
    const double x = i - n / 2;
    p[size_t(i)] = std::exp(-std::fabs(x) / scale);
    sum += p[size_t(i)];
  }
  for (int i = 0; i < n; ++i) p[size_t(i)] = p[size_t(i)] / sum * 0.999;
  p[size_t(n)] = 0.001;
  return p;
}

std::vector<TableSet> make_sets() {
  std::vector<TableSet> sets(4);
  // 0: Kodak-like, 81 symbols, 16 bits, 8 scales.
  sets[0].precision = 16;
  sets[0].max_length = 83;
  for (int c = 0; c < 8; ++c) add_row(sets[0], laplace(81, 0.3 + c), -40);
  // 1: tiny alphabets at precision 3, including an escape-only CDF (length 2), extreme offsets.
  sets[1].precision = 3;
  sets[1].max_length = 6;
  add_row(sets[1], {1.0}, 0);                                   // L = 2: escape only
  add_row(sets[1], {0.5, 0.5}, INT32_MAX);                      // L = 3
  add_row(sets[1], {0.2, 0.3, 0.4, 0.1}, INT32_MIN);            // L = 5
  add_row(sets[1], {0.9, 0.05, 0.01, 0.0, 0.04}, -2);           // L = 6
  // 2: 300-symbol alphabet at precision 12 (16-bit symbol lookup table).
  sets[2].precision = 12;
  sets[2].max_length = 302;
  add_row(sets[2], laplace(300, 40.0), -150);
  add_row(sets[2], laplace(300, 2.0), INT32_MAX - 100);
  // 3: precision 1: only one direct symbol (freq 1) plus the escape (freq 1).
  sets[3].precision = 1;
  sets[3].max_length = 3;
  add_row(sets[3], {0.5, 0.5}, 7);
  return sets;
}

const std::vector<TableSet>& sets() {
  static const std::vector<TableSet> s = make_sets();
  return s;
}

struct Reader {
  const uint8_t* p;
  size_t n;
  uint8_t byte() {
    if (!n) return 0;
    --n;
    return *p++;
  }
  uint32_t u32() { return byte() | (uint32_t(byte()) << 8) | (uint32_t(byte()) << 16) | (uint32_t(byte()) << 24); }
};

void put_varint(std::vector<uint8_t>& out, uint64_t v) {
  while (v >= 0x80) { out.push_back(uint8_t(v) | 0x80); v >>= 7; }
  out.push_back(uint8_t(v));
}

// The same indexes twice: one per symbol (full) and one per run of `run` symbols (compact).
struct Indexes {
  std::vector<int32_t> compact, full;
  int64_t run = 1;
  void set(int64_t n, int64_t r, int64_t num) {
    run = r;
    compact.resize(size_t(n / r));
    for (int64_t k = 0; k < n / r; ++k) compact[size_t(k)] = int32_t((k * 7 + k / 5) % num);
    expand();
  }
  void expand() {
    full.resize(compact.size() * size_t(run));
    for (size_t j = 0; j < full.size(); ++j) full[j] = compact[j / size_t(run)];
  }
};

// Decode must succeed or throw slimcoder::Error, the same way with full and compact indexes.
bool try_decode(const std::vector<uint8_t>& data, const Indexes& ix, const Tables& t,
                int threads, std::vector<int32_t>& out) {
  const int64_t n = int64_t(ix.full.size());
  out.assign(size_t(n), 0);
  std::vector<int32_t> out2(size_t(n), 0);
  bool ok = true, ok2 = true;
  try {
    slimcoder::decode(data.data(), data.size(), ix.full.data(), n, t, threads, out.data());
  } catch (const slimcoder::Error&) {
    ok = false;
  }
  try {
    slimcoder::decode(data.data(), data.size(), ix.compact.data(), n, t, threads, out2.data(),
                      ix.run);
  } catch (const slimcoder::Error&) {
    ok2 = false;
  }
  if (ok != ok2 || (ok && out != out2)) std::abort();
  return ok;
}

// Encodes with full and with compact indexes; the bytes must be equal.
std::vector<uint8_t> encode_both(const std::vector<int32_t>& sym, const Indexes& ix,
                                 const Tables& t, int64_t streams, int threads) {
  const int64_t n = int64_t(ix.full.size());
  std::vector<uint8_t> a = slimcoder::encode(sym.data(), ix.full.data(), n, t, streams, threads);
  std::vector<uint8_t> b =
      slimcoder::encode(sym.data(), ix.compact.data(), n, t, streams, threads, ix.run);
  if (a != b) std::abort();
  return a;
}

// A stream that decodes successfully must be exactly what the encoder writes for the decoded
// symbols (the final-state check makes decoding injective); anything else is a finding.
void check_reencode(const std::vector<uint8_t>& data, const Indexes& ix, const Tables& t,
                    const std::vector<int32_t>& out, int threads) {
  const int64_t k = slimcoder::stream_count(data.data(), data.size());
  if (encode_both(out, ix, t, k, threads) != data) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 4) return 0;
  const int mode = data[0] & 3;
  const int threads = 1 + ((data[0] >> 2) & 1);
  const TableSet& ts = sets()[data[1] % sets().size()];
  const Tables t = ts.view();
  // Index runs 1..28, and four long ones that reach the decoder's prefetch of the next run
  // (runs of >= 256 symbols with a run after them in the substream).
  static const int64_t kLongRuns[4] = {255, 256, 257, 1000};
  const int sel = (data[0] >> 3) & 31;
  const int64_t run = sel < 28 ? 1 + sel : kLongRuns[sel - 28];
  int64_t n = (data[2] | (int64_t(data[3]) << 8)) & 0xfff;  // at most 4095 symbols
  n -= n % run;
  Reader r{data + 4, size - 4};
  Indexes idx;
  idx.set(n, run, ts.num);
  std::vector<int32_t> out;

  if (mode == 0) {
    std::vector<uint8_t> raw(r.p, r.p + r.n);
    int64_t recorded = -1;  // the header parser alone must agree with decode's
    try {
      recorded = slimcoder::symbol_count(raw.data(), raw.size());
    } catch (const slimcoder::Error&) {
    }
    if (try_decode(raw, idx, t, threads, out)) {
      if (recorded != n) std::abort();
      check_reencode(raw, idx, t, out, threads);
    }
    return 0;
  }
  if (mode == 1) {
    const int k = 1 + (r.byte() & 7);
    const int64_t streams = std::min<int64_t>(k, std::max<int64_t>(1, n));
    std::vector<std::vector<uint8_t>> subs(static_cast<size_t>(streams));
    const size_t per = r.n / size_t(streams);
    for (auto& s : subs) {
      size_t len = std::max<size_t>(32, per & ~size_t(3));
      for (size_t b = 0; b < len; ++b) s.push_back(r.byte());
      // Give the states a fair chance of passing the range check: force bit 62 on, 63 off.
      for (int lane = 0; lane < 4; ++lane) {
        s[size_t(lane * 8 + 7)] = uint8_t((s[size_t(lane * 8 + 7)] & 0x3f) | 0x40);
      }
    }
    std::vector<uint8_t> buf{slimcoder::kFormatVersion, uint8_t(ts.precision)};
    put_varint(buf, uint64_t(n));
    put_varint(buf, uint64_t(streams));
    for (auto& s : subs) put_varint(buf, s.size());
    for (auto& s : subs) buf.insert(buf.end(), s.begin(), s.end());
    if (try_decode(buf, idx, t, threads, out)) check_reencode(buf, idx, t, out, threads);
    return 0;
  }
  // Modes 2 and 3: a valid stream first.
  std::vector<int32_t> sym(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) {
    const uint8_t b = r.byte();
    const int32_t off = ts.offsets[size_t(idx.full[size_t(j)])];
    switch (b >> 5) {
      case 0: sym[size_t(j)] = INT32_MIN + (b & 3); break;
      case 1: sym[size_t(j)] = INT32_MAX - (b & 3); break;
      case 2: sym[size_t(j)] = int32_t(r.u32()); break;
      default: sym[size_t(j)] = int32_t(uint32_t(off) + uint32_t(b & 31)); break;
    }
  }
  const int64_t streams = 1 + (r.byte() & 7);
  std::vector<uint8_t> enc = encode_both(sym, idx, t, streams, threads);
  if (mode == 2) {
    if (!try_decode(enc, idx, t, threads, out) || out != sym) {
      std::abort();  // round trip failed
    }
    return 0;
  }
  // Mode 3: corrupt it.
  const int ops = 1 + (r.byte() & 7);
  const TableSet* tables = &ts;
  bool mutate = false;
  for (int o = 0; o < ops && !enc.empty(); ++o) {
    const uint8_t op = r.byte();
    const size_t pos = size_t(r.u32()) % enc.size();
    switch (op & 3) {
      case 0: enc[pos] ^= uint8_t(1u << (op >> 5)); break;
      case 1: enc.resize(pos); break;
      case 2: enc[pos] = r.byte(); break;
      default:
        if (op & 0x80)
          mutate = true;
        else
          tables = &sets()[(op >> 2) % sets().size()];
        break;
    }
  }
  Indexes idx2 = idx;
  for (auto& i : idx2.compact) i %= int32_t(tables->num);
  idx2.expand();
  if (mutate) {
    // Tables changed in place between calls (same addresses): the coder's table cache must
    // follow the content. Decoding with a copy at other addresses must give the same result.
    static TableSet scratch;
    scratch = *tables;
    try_decode(enc, idx2, scratch.view(), threads, out);  // caches the unchanged content
    const size_t at = size_t(r.u32()) % scratch.cdfs.size();
    scratch.cdfs[at] = int32_t(int64_t(scratch.cdfs[at]) + int64_t(r.byte()) - 128);
    if (r.byte() & 1) {
      const size_t row = size_t(r.byte()) % scratch.lengths.size();
      scratch.lengths[row] = int32_t(r.byte() % (scratch.max_length + 2));
    }
    const TableSet copy = scratch;
    std::vector<int32_t> out2;
    const bool ok1 = try_decode(enc, idx2, scratch.view(), threads, out);
    const bool ok2 = try_decode(enc, idx2, copy.view(), threads, out2);
    if (ok1 != ok2 || (ok1 && out != out2)) std::abort();
    bool valid = true;  // validate_tables itself caches nothing: an independent oracle
    try {
      slimcoder::validate_tables(scratch.view());
    } catch (const slimcoder::Error&) {
      valid = false;
    }
    if (ok1 && !valid) std::abort();  // decoded with tables that are no longer valid
    if (ok1) check_reencode(enc, idx2, scratch.view(), out, threads);
    return 0;
  }
  if (try_decode(enc, idx2, tables->view(), threads, out))
    check_reencode(enc, idx2, tables->view(), out, threads);
  return 0;
}
