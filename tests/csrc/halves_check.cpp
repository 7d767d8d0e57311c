// Test driver: the encoder's lane halves under AddressSanitizer + UBSan (built by
// tests/test_coding_portable.py). Random tables (precision 8..16, every frequency >= 1), symbols
// with escapes of every size (a quarter of the cases all escaped: the halves' buffers and the
// merged one outgrow the scratch space), indexes per symbol or in runs of 4, 5, 37 and 1536,
// 1..3 substreams: encoding with 2 x streams threads must split every substream, write the bytes
// of one thread, decode back, and decode must count the escaped symbols.
// Usage: halves_check CASES SEED. Exit 0 when every case passes, 1 with a message otherwise.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "range_coder.hpp"

namespace {

struct Case {
  int num = 0, max_len = 0, precision = 0;
  std::vector<int32_t> cdfs, lengths, offsets, idx, sym;
  int64_t n = 0, run = 1, streams = 1;
};

Case make_case(std::mt19937_64& rng, int k) {
  Case c;
  c.num = 1 + int(rng() % 6);
  c.max_len = 3 + int(rng() % 40);
  c.precision = 8 + int(rng() % 9);
  c.cdfs.assign(size_t(c.num * c.max_len), 0);
  for (int i = 0; i < c.num; ++i) {
    const int L = std::min(3 + int(rng() % (c.max_len - 2)), (1 << c.precision) + 1);
    c.lengths.push_back(L);
    c.offsets.push_back(int32_t(rng() % 21) - 10);
    std::vector<int64_t> f(size_t(L - 1), 1);  // L - 1 frequencies >= 1 summing to 2^precision
    int64_t spare = (int64_t(1) << c.precision) - (L - 1);
    for (int s = 0; s < L - 1 && spare > 0; ++s) {
      const int64_t t = s == L - 2 ? spare : int64_t(rng() % uint64_t(spare + 1));
      f[size_t(s)] += t;
      spare -= t;
    }
    int32_t acc = 0;
    for (int s = 0; s < L - 1; ++s) c.cdfs[size_t(i * c.max_len + s + 1)] = acc += int32_t(f[s]);
  }
  const int64_t runs[] = {1, 4, 5, 37, 1536};
  c.run = runs[rng() % 5];
  c.streams = 1 + int64_t(rng() % 3);
  c.n = c.streams * slimcoder::kMinHalvesSymbols + int64_t(rng() % 5000);
  c.n += (c.run - c.n % c.run) % c.run;
  c.idx.resize(size_t(c.n / c.run));
  for (auto& v : c.idx) v = int32_t(rng() % uint64_t(c.num));
  const double escaped = k % 4 == 0 ? 1.0 : k % 4 == 1 ? 0.05 : 0.0;
  std::uniform_real_distribution<double> u(0.0, 1.0);
  c.sym.resize(size_t(c.n));
  for (int64_t j = 0; j < c.n; ++j) {
    const size_t i = size_t(c.idx[size_t(j / c.run)]);
    const int32_t values = std::max(1, c.lengths[i] - 2);  // (a length of 2: escapes only)
    const int32_t in_table = c.offsets[i] + int32_t(rng() % uint64_t(values));
    c.sym[size_t(j)] = u(rng) < escaped ? int32_t(uint32_t(rng())) : in_table;
  }
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: halves_check CASES SEED\n");
    return 2;
  }
  const int cases = std::atoi(argv[1]);
  std::mt19937_64 rng(std::strtoull(argv[2], nullptr, 10));
  for (int k = 0; k < cases; ++k) {
    const Case c = make_case(rng, k);
    const slimcoder::Tables t{c.cdfs.data(), c.num, c.max_len, c.lengths.data(), c.offsets.data(),
                              c.precision};
    const std::vector<uint8_t> one =
        slimcoder::encode(c.sym.data(), c.idx.data(), c.n, t, c.streams, 1, c.run);
    slimcoder::EncodedParts parts;
    slimcoder::encode_parts(c.sym.data(), c.idx.data(), c.n, t, c.streams, int(2 * c.streams),
                            parts, c.run);
    std::vector<uint8_t> split(parts.total_size());
    parts.copy_to(split.data());
    if (parts.split != c.streams || split != one) {
      std::fprintf(stderr, "case %d: %lld of %lld substreams split, bytes %s\n", k,
                   (long long)parts.split, (long long)c.streams,
                   split == one ? "equal" : "differ");
      return 1;
    }
    std::vector<int32_t> back(size_t(c.n));
    const int64_t escapes = slimcoder::decode(split.data(), split.size(), c.idx.data(), c.n, t,
                                              2, back.data(), c.run);
    int64_t want = 0;
    for (int64_t j = 0; j < c.n; ++j) {
      const size_t i = size_t(c.idx[size_t(j / c.run)]);
      const int64_t v = int64_t(c.sym[size_t(j)]) - c.offsets[i];
      want += v < 0 || v > c.lengths[i] - 3;
    }
    if (back != c.sym || escapes != want) {
      std::fprintf(stderr, "case %d: %s, %lld escapes counted, %lld in the symbols\n", k,
                   back == c.sym ? "decoded back" : "decoded other symbols",
                   (long long)escapes, (long long)want);
      return 1;
    }
  }
  std::printf("%d cases\n", cases);
  return 0;
}
