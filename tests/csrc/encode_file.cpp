// Test driver: the C++ coder built on its own (e.g. with -DSK_NO_ASM, the portable C++ in place
// of the x86-64 assembly) encodes one case read from a file, so that a test can compare its
// bytes with the extension's. Used by tests/test_coding_portable.py.
//
// Input (little-endian int64 header, then int32 arrays):
//   n, num_cdfs, max_length, precision, streams, run,
//   symbols[n], indexes[n / run], cdfs[num_cdfs * max_length], lengths[num_cdfs],
//   offsets[num_cdfs]
// Output: the encoded bytes. Usage: encode_file IN OUT. Exit 1 with a message on an error,
// when the bytes do not decode back to the symbols (with the same build), or when encoding with
// 2 x streams threads (each substream's lanes in two halves where it is long enough) gives
// other bytes.
#include <algorithm>
#include <cstdio>
#include <exception>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <vector>

#include "range_coder.hpp"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: encode_file IN OUT\n");
    return 2;
  }
  try {
    std::ifstream in(argv[1], std::ios::binary);
    const std::vector<char> buf((std::istreambuf_iterator<char>(in)),
                                std::istreambuf_iterator<char>());
    size_t pos = 0;
    auto take = [&](void* dst, size_t bytes) {
      if (pos + bytes > buf.size()) throw std::runtime_error("input file too short");
      std::copy(buf.data() + pos, buf.data() + pos + bytes, static_cast<char*>(dst));
      pos += bytes;
    };
    int64_t head[6];
    take(head, sizeof(head));
    const int64_t n = head[0], num = head[1], len = head[2], run = head[5];
    if (n < 0 || num < 1 || len < 2 || run < 1 || n % run != 0)
      throw std::runtime_error("bad header");
    std::vector<int32_t> sym(static_cast<size_t>(n));
    std::vector<int32_t> idx(static_cast<size_t>(n / run));
    std::vector<int32_t> cdfs(static_cast<size_t>(num * len));
    std::vector<int32_t> lengths(static_cast<size_t>(num));
    std::vector<int32_t> offsets(static_cast<size_t>(num));
    take(sym.data(), sym.size() * 4);
    take(idx.data(), idx.size() * 4);
    take(cdfs.data(), cdfs.size() * 4);
    take(lengths.data(), lengths.size() * 4);
    take(offsets.data(), offsets.size() * 4);
    slimcoder::Tables t{cdfs.data(), num, len, lengths.data(), offsets.data(), int(head[3])};
    const std::vector<uint8_t> out =
        slimcoder::encode(sym.data(), idx.data(), n, t, head[4], 1, run);
    const std::vector<uint8_t> halves =
        slimcoder::encode(sym.data(), idx.data(), n, t, head[4], int(2 * head[4]), run);
    if (halves != out) throw std::runtime_error("2 x streams threads wrote other bytes");
    std::vector<int32_t> back(sym.size());
    slimcoder::decode(out.data(), out.size(), idx.data(), n, t, 1, back.data(), run);
    if (back != sym) throw std::runtime_error("the bytes do not decode back to the symbols");
    std::ofstream o(argv[2], std::ios::binary);
    o.write(reinterpret_cast<const char*>(out.data()), std::streamsize(out.size()));
    return o ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "encode_file: %s\n", e.what());
    return 1;
  }
}
