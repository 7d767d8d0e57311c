#!/usr/bin/env bash
# Builds the libFuzzer harness over the C++ coder with AddressSanitizer + UBSan and runs it.
# Usage: csrc/fuzz/run_fuzz.sh [seconds=620] [extra libFuzzer flags...]
# Needs clang++ with libFuzzer (Debian/Ubuntu: apt-get install clang). Work files go to
# build/fuzz/ (ignored by git). Exit status is libFuzzer's: 0 = no crash, leak, timeout or OOM.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
SECONDS_TO_RUN="${1:-620}"
shift || true
CXX="${CXX_FUZZ:-clang++}"
OUT="$ROOT/build/fuzz"
mkdir -p "$OUT/corpus" "$OUT/artifacts"
if ! command -v "$CXX" >/dev/null 2>&1; then
  # No clang (libFuzzer): random inputs through the same harness, g++ with ASan + UBSan. Not
  # coverage-guided, so weaker than libFuzzer; it says so in its output.
  echo "run_fuzz.sh: $CXX not found; random-input driver (g++, ASan + UBSan, not coverage-guided)"
  g++ -g -O1 -std=c++17 -fno-omit-frame-pointer -fsanitize=address,undefined \
    -fno-sanitize-recover=undefined -I"$ROOT/csrc" "$ROOT/csrc/range_coder.cpp" \
    "$ROOT/csrc/fuzz/fuzz_decode.cpp" "$ROOT/csrc/fuzz/random_driver.cpp" \
    -o "$OUT/fuzz_random" -pthread
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1"
  cd "$OUT/artifacts"  # a finding's input is saved here as crash-input
  exec "$OUT/fuzz_random" "$SECONDS_TO_RUN" "${FUZZ_SEED:-1}"
fi
"$CXX" -g -O1 -std=c++17 -fno-omit-frame-pointer \
  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -I"$ROOT/csrc" "$ROOT/csrc/range_coder.cpp" "$ROOT/csrc/fuzz/fuzz_decode.cpp" \
  -o "$OUT/fuzz_decode" -pthread
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1"
exec "$OUT/fuzz_decode" -max_total_time="$SECONDS_TO_RUN" -timeout=10 -rss_limit_mb=2048 \
  -max_len=8192 -print_final_stats=1 -artifact_prefix="$OUT/artifacts/" "$@" "$OUT/corpus"
