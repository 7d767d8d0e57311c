// A stand-in for libFuzzer where clang is not installed: feeds LLVMFuzzerTestOneInput random
// inputs (not coverage-guided) for a number of seconds, or replays the files named on the
// command line. Built with g++ and ASan + UBSan by run_fuzz.sh.
//
// Usage: fuzz_random SECONDS [SEED]   |   fuzz_random --replay FILE...
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {
const std::vector<uint8_t>* g_current = nullptr;

// On abort (a finding: mismatch, ASan or UBSan report), save the input for --replay.
void save_input(int sig) {
  if (g_current) {
    if (FILE* f = std::fopen("crash-input", "wb")) {
      std::fwrite(g_current->data(), 1, g_current->size(), f);
      std::fclose(f);
      std::fprintf(stderr, "fuzz_random: finding; input saved to ./crash-input (%zu bytes)\n",
                   g_current->size());
    }
  }
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}
}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && std::strcmp(argv[1], "--replay") == 0) {
    for (int i = 2; i < argc; ++i) {
      std::ifstream f(argv[i], std::ios::binary);
      std::vector<uint8_t> buf((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
      LLVMFuzzerTestOneInput(buf.data(), buf.size());
    }
    std::printf("replayed %d inputs\n", argc - 2);
    return 0;
  }
  const double seconds = argc >= 2 ? std::atof(argv[1]) : 60.0;
  const uint64_t seed = argc >= 3 ? std::strtoull(argv[2], nullptr, 10) : 1;
  std::mt19937_64 rng(seed);
  const auto t0 = std::chrono::steady_clock::now();
  uint64_t runs = 0;
  std::vector<uint8_t> buf;
  g_current = &buf;
  std::signal(SIGABRT, save_input);
  for (;;) {
    if ((runs & 63) == 0) {
      const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (el >= seconds) break;
    }
    // Mostly short inputs (the symbol count comes from bytes 2-3), some up to 8 KiB; the payload
    // bytes are uniform, or drawn from a few values so that runs, escapes and extremes occur.
    const size_t len = (rng() & 3) ? 4 + rng() % 512 : 4 + rng() % 8188;
    buf.resize(len);
    const bool skewed = rng() & 1;
    const uint8_t pick[4] = {0x00, 0xff, uint8_t(rng()), uint8_t(rng())};
    for (size_t i = 0; i < len; ++i) buf[i] = skewed && (rng() & 1) ? pick[rng() & 3] : uint8_t(rng());
    LLVMFuzzerTestOneInput(buf.data(), buf.size());
    ++runs;
  }
  std::printf("DONE %llu runs in %.0f s (seed %llu)\n", (unsigned long long)runs, seconds,
              (unsigned long long)seed);
  return 0;
}
